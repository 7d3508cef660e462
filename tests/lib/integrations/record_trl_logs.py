"""Record what TRL's GRPOTrainer holds in ``trainer._logs`` at each ``on_log`` (the payload
``MantaCallback`` reads) into ``trl_logs.json``, for the tests that run without TRL.

    .venv/bin/python -m tests.lib.integrations.record_trl_logs   # needs trl, torch (CPU)
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tests.lib.integrations.tiny_grpo import tiny_trainer

OUT = Path(__file__).with_name("trl_logs.json")


def main() -> None:
    from transformers import TrainerCallback

    calls: list[dict[str, Any]] = []
    holder: dict[str, Any] = {}

    class Recorder(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            payload = holder["trainer"]._logs
            calls.append(
                {
                    "global_step": state.global_step,
                    "logs": dict(logs or {}),
                    "payload": {
                        "prompt": list(payload["prompt"]),
                        "completion": list(payload["completion"]),
                        "rewards": {k: list(v) for k, v in payload["rewards"].items()},
                        "advantages": list(payload["advantages"]),
                        "extra": {k: list(v) for k, v in payload["extra"].items()},
                    },
                }
            )

    with tempfile.TemporaryDirectory() as out:
        trainer = tiny_trainer(Path(out), [Recorder()])
        holder["trainer"] = trainer
        trainer.train()
    record = {
        "trl": version("trl"),
        "reward_func_names": trainer.reward_func_names,
        "reward_weights": trainer.reward_weights.tolist(),
        "calls": calls,
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(calls)} on_log calls recorded in {OUT}")


if __name__ == "__main__":
    main()
