"""A training loop using RolloutLogger, run as a subprocess by the rollout logger tests.

``train RUN SPOOL``: log rollouts until killed, printing ``<logged> <monotonic time>`` after
each batch (and first ``shipper <pid>``). ``finish RUN SPOOL N``: log N more rollouts (from
index 10**6), then close the logger: the restart after a crash.
"""

from __future__ import annotations

import sys
import time

from manta_lib.rollout_logger import RolloutLogger


def messages(i: int) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"What is {i} + 1?"},
        {"role": "assistant", "content": str(i + 1)},
    ]


def main() -> None:
    mode, run_id, spool = sys.argv[1:4]
    log = RolloutLogger(run_id=run_id, spool_dir=spool, close_timeout=120).start()
    print(f"shipper {log.shipper_pid}", flush=True)
    if mode == "train":
        i = 0
        while True:
            for _ in range(50):
                log.rollout(
                    step=i // 200,
                    datapoint=f"dp_{i % 10}",
                    messages=messages(i),
                    score=float(i % 2),
                    meta={"i": i},
                )
                i += 1
            print(f"{i} {time.monotonic()}", flush=True)
            time.sleep(0.02)
    count = int(sys.argv[4])
    for i in range(10**6, 10**6 + count):
        log.rollout(step=99, datapoint="dp_restart", messages=messages(i), meta={"i": i})
    log.close()


if __name__ == "__main__":
    main()
