"""A :class:`~manta_lib.pipeline.batches.BatchRunner` over local worker processes.

The tests drive the batch mapper of Modal mode with it: the same payloads and reports, with
spawned processes instead of containers, so scheduling, retries, crash handling and resume
run for real against chDB.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from manta_lib.pipeline.batches import Outcome, Payload
from manta_lib.pipeline.remote import map_batch, worker_environment
from manta_lib.settings import MantaSettings


def _apply_environment(env: dict[str, str]) -> None:
    os.environ.update(env)


class ProcessPoolRunner:
    """Runs batches in local worker processes (``spawn``), the same protocol as Modal.

    Each batch opens and closes the store itself. With the embedded chDB store only one
    process can hold the store at a time, so keep ``max_workers=1`` there (more workers just
    queue on the lock); with a ClickHouse server any number works. At most ``max_workers``
    batches are in flight, so a dying worker process takes down only those (a process pool
    fails every future in flight when one process dies): a lone one is reported as crashed, and
    several are rerun one by one in fresh processes so that only the culprit is reported.
    """

    def __init__(self, settings: MantaSettings, max_workers: int = 1) -> None:
        self.env = worker_environment(settings)
        self.max_workers = max(1, max_workers)
        self._shared: ProcessPoolExecutor | None = None

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_apply_environment,
            initargs=(self.env,),
        )

    def _shared_pool(self) -> ProcessPoolExecutor:
        if self._shared is None:
            self._shared = self._pool(self.max_workers)
        return self._shared

    def _discard_shared_pool(self) -> None:
        if self._shared is not None:
            self._shared.shutdown(wait=True, cancel_futures=True)
            self._shared = None

    def run(self, payloads: Sequence[Payload]) -> Iterator[tuple[Payload, Outcome]]:
        waiting = list(reversed(payloads))
        in_flight: dict[Future[Payload], Payload] = {}
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < self.max_workers:
                    payload = waiting.pop()
                    in_flight[self._shared_pool().submit(map_batch, payload)] = payload
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                crashed: list[Payload] = []
                for future in done:
                    payload = in_flight.pop(future)
                    try:
                        outcome: Outcome = future.result()
                    except BrokenProcessPool:
                        crashed.append(payload)
                        continue
                    except Exception as exc:  # noqa: BLE001 - reported to the mapper
                        outcome = exc
                    yield payload, outcome
                if crashed:
                    # The whole pool is broken: everything still in flight went down with it.
                    crashed.extend(in_flight.values())
                    in_flight.clear()
                    self._discard_shared_pool()
                    if len(crashed) == 1:
                        yield crashed[0], RuntimeError(_DIED)
                    else:
                        for payload in crashed:
                            yield payload, self._run_alone(payload)
        finally:
            for future in in_flight:
                future.cancel()

    def _run_alone(self, payload: Payload) -> Outcome:
        pool = self._pool(1)
        try:
            return pool.submit(map_batch, payload).result()
        except BrokenProcessPool:
            return RuntimeError(_DIED)
        except Exception as exc:  # noqa: BLE001 - reported to the mapper
            return exc
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the worker processes."""
        self._discard_shared_pool()


_DIED = "the worker process died while mapping this batch"
