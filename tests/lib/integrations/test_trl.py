"""TRL's GRPO completions through MantaCallback: per step, the stored scores average to the
reward TRL logged, each reward function is a grader criterion, a prompt's generations share a
datapoint, and a batch TRL logs twice is stored once.

``test_recorded_trl_logs`` replays what TRL 1.16's GRPOTrainer held at each ``on_log``
(recorded by ``record_trl_logs.py`` into ``trl_logs.json``), so it runs without TRL and torch,
which are not Manta dependencies. ``test_real_grpo_trainer`` trains a tiny GRPO model with
TRL's own classes on the CPU when TRL is installed.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from manta_lib import MantaService
from manta_lib.importers.verl import prompt_datapoint
from manta_lib.integrations.trl import GRADER_NAME, MantaCallback, completion_rows
from manta_lib.rollout_spool import ship_once
from manta_lib.store import Store

RECORDED = json.loads(Path(__file__).with_name("trl_logs.json").read_text())


class _Trainer(SimpleNamespace):
    """What MantaCallback reads of a TRL trainer, with the recorded values."""

    def add_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)


def _check_store(store: Store, run_id: str, logged: list[dict[str, Any]]) -> None:
    """The stored run against TRL's logged payloads and metrics."""
    service = MantaService(store)
    contexts = service.load_contexts(service.get_traces(run_id))
    by_step: dict[int, list[Any]] = defaultdict(list)
    for context in contexts:
        by_step[context.trace.step_number].append(context)
    generations = [call for call in logged if "reward" in call["logs"]]
    assert sorted(by_step) == [call["global_step"] for call in generations]
    for call in generations:
        contexts_at = by_step[call["global_step"]]
        payload = call["payload"]
        assert len(contexts_at) == len(payload["prompt"])  # the repeated log added nothing
        scores = [c.trace.score for c in contexts_at if c.trace.score is not None]
        assert sum(scores) / len(scores) == pytest.approx(call["logs"]["reward"], abs=1e-6)
        # a prompt's num_generations=2 completions share its datapoint (the dataset repeats
        # prompts, so a generation batch may hold the same prompt twice: 4)
        groups = Counter(c.trace.datapoint_id for c in contexts_at)
        assert groups == Counter(prompt_datapoint(p) for p in payload["prompt"])
        assert all(count % 2 == 0 for count in groups.values())
        stored_rows = sorted(
            (
                c.messages()[0].content,
                c.messages()[1].content,
                tuple(
                    (cr.name, cr.score)
                    for cr in c.grader_result().criteria  # type: ignore[union-attr]
                ),
                c.trace.meta["advantage"],
            )
            for c in contexts_at
        )
        expected = sorted(
            (
                prompt,
                completion,
                tuple(
                    (name, None if math.isnan(values[i]) else pytest.approx(values[i]))
                    for name, values in payload["rewards"].items()
                ),
                pytest.approx(payload["advantages"][i]),
            )
            for i, (prompt, completion) in enumerate(
                zip(payload["prompt"], payload["completion"], strict=True)
            )
        )
        assert stored_rows == expected
        assert {c.grader_result().name for c in contexts_at} == {GRADER_NAME}  # type: ignore[union-attr]


def test_recorded_trl_logs(store: Store, tmp_path: Path) -> None:
    trainer = _Trainer(
        callbacks=[],
        reward_func_names=RECORDED["reward_func_names"],
        reward_weights=RECORDED["reward_weights"],
    )
    callback = MantaCallback(run_id="trl_recorded", ship=False, spool_dir=tmp_path / "spool")
    callback.attach(trainer)
    assert trainer.callbacks == [callback]
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    callback.on_train_begin(None, state, None)
    for call in RECORDED["calls"]:
        trainer._logs = call["payload"]
        state.global_step = call["global_step"]
        callback.on_log(None, state, None, logs=call["logs"])
    callback.on_train_end(None, state, None)
    ship_once(tmp_path / "spool")
    _check_store(store, "trl_recorded", RECORDED["calls"])


def test_rows_of_an_eval_log_and_of_other_processes(store: Store, tmp_path: Path) -> None:
    payload = {
        "prompt": [[{"role": "user", "content": "2+2?"}]] * 2,
        "completion": [
            [{"role": "assistant", "content": "4"}],
            [{"role": "assistant", "content": "5"}],
        ],
        "rewards": {"acc": [1.0, 0.0], "fmt": [float("nan"), float("nan")]},
        "advantages": [0.7, -0.7],
        "extra": {"judge_note": ["ok", "wrong"]},
    }
    rows = completion_rows(payload, {"acc": 2.0})
    assert [row["score"] for row in rows] == [2.0, 0.0]
    assert rows[0]["criteria"] == {"acc": 1.0, "fmt": None}
    assert rows[1]["meta"] == {"advantage": -0.7, "judge_note": "wrong"}
    assert rows[0]["messages"] == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert rows[0]["datapoint"] == rows[1]["datapoint"]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        completion_rows({**payload, "completion": payload["completion"][:1]})

    trainer = _Trainer(
        callbacks=[], _logs=payload, reward_func_names=["acc", "fmt"], reward_weights=[2.0, 1.0]
    )
    callback = MantaCallback(run_id="trl_eval", ship=False, spool_dir=tmp_path / "spool").attach(
        trainer
    )
    other_rank = SimpleNamespace(is_world_process_zero=False, global_step=5)
    callback.on_log(None, other_rank, None, logs={"eval_loss": 1.0})
    main_rank = SimpleNamespace(is_world_process_zero=True, global_step=5)
    callback.on_log(None, main_rank, None, logs={"eval_loss": 1.0})
    callback.on_train_end(None, main_rank, None)
    ship_once(tmp_path / "spool")
    rows_stored = store.rows(
        "SELECT toString(phase), step_number, score FROM {db}.traces WHERE run_id = 'trl_eval' "
        "ORDER BY score"
    )
    assert rows_stored == [("eval", 5, 0.0), ("eval", 5, 2.0)]


@pytest.mark.slow
def test_real_grpo_trainer(store: Store, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from tests.lib.integrations.tiny_grpo import tiny_trainer

    captured: list[dict[str, Any]] = []
    callback = MantaCallback(run_id="trl_real", ship=False, spool_dir=tmp_path / "spool")
    original = callback.record

    def record(payload: Any, *, step: int, logs: Any) -> int:
        captured.append(
            {
                "global_step": step,
                "logs": dict(logs),
                "payload": {
                    "prompt": list(payload["prompt"]),
                    "completion": list(payload["completion"]),
                    "rewards": {k: list(v) for k, v in payload["rewards"].items()},
                    "advantages": list(payload["advantages"]),
                },
            }
        )
        return original(payload, step=step, logs=logs)

    callback.record = record  # type: ignore[method-assign]
    trainer = tiny_trainer(tmp_path / "out", [])
    callback.attach(trainer)
    trainer.train()
    ship_once(tmp_path / "spool")
    assert len(captured) >= 4
    _check_store(store, "trl_real", captured)
