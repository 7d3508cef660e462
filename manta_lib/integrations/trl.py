"""TRL: store the completions TRL's GRPO trainer logs, with their rewards, in Manta.

Example::

    from trl import GRPOConfig, GRPOTrainer
    from manta.integrations.trl import MantaCallback

    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy, format_reward],
                          args=GRPOConfig(output_dir="out", logging_steps=1), train_dataset=ds)
    MantaCallback(run_id="grpo_qwen_v1", project_id="math").attach(trainer)
    trainer.train()

What TRL keeps: for each generation batch, ``GRPOTrainer`` (and trainers built on it) collects
the prompt and completion texts, each reward function's rewards (NaN where a function returned
``None``) and the advantages in ``trainer._logs`` (``_textual_logs`` in TRL 0.17-0.19), the
table it prints and sends to W&B with ``log_completions=True``. ``Trainer.log`` calls the
callbacks' ``on_log`` before TRL prints that table, so the callback sees the same rows; it
receives no trainer, hence :meth:`MantaCallback.attach`.

Each row becomes one rollout (through a :class:`~manta_lib.RolloutLogger`): step = the
trainer's ``global_step``; phase ``eval`` when the log is an evaluation's (``eval_*`` keys),
else ``train``; datapoint = a hash of the prompt text (the same as the verl importer's, so the
``num_generations`` completions of one prompt share it); messages = the prompt as ``user`` and
the completion as ``assistant`` (message lists when TRL logged conversations); score = the
weighted sum of the rewards TRL trains on (``reward_weights``, functions without a value left
out); a ``grader`` span ``trl_rewards`` with one criterion per reward function; meta =
``advantage`` and the columns reward functions added with ``log_extra``. A batch logged again
unchanged (``logging_steps`` below ``steps_per_generation``) is stored once. Only the main
process writes (TRL gathers every process's rows there).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from manta_lib.importers.verl import prompt_datapoint
from manta_lib.rollout_logger import RolloutLogger

if TYPE_CHECKING:
    _CallbackBase = object
else:
    try:
        from transformers import TrainerCallback as _CallbackBase
    except ImportError:  # the pure parts (completion_rows) work without transformers
        _CallbackBase = object

log = logging.getLogger(__name__)

__all__ = ["MantaCallback", "completion_rows"]

GRADER_NAME = "trl_rewards"


def completion_rows(
    payload: Mapping[str, Any], weights: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """The rows of TRL's completion logs (``trainer._logs``) as rollout keyword arguments
    (``messages``, ``datapoint``, ``score``, ``criteria``, ``meta``)."""
    prompts = list(payload.get("prompt") or [])
    completions = list(payload.get("completion") or [])
    rewards = {name: list(values) for name, values in (payload.get("rewards") or {}).items()}
    advantages = list(payload.get("advantages") or [])
    extra = {name: list(values) for name, values in (payload.get("extra") or {}).items()}
    if len(completions) != len(prompts):
        raise ValueError(
            f"TRL logged {len(prompts)} prompts but {len(completions)} completions: "
            "cannot pair them"
        )
    rows = []
    for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        criteria = {
            name: _number(values[index]) if index < len(values) else None
            for name, values in rewards.items()
        }
        present = {name: value for name, value in criteria.items() if value is not None}
        score = (
            sum(value * (weights or {}).get(name, 1.0) for name, value in present.items())
            if present
            else None
        )
        meta: dict[str, Any] = {}
        if index < len(advantages):
            meta["advantage"] = _number(advantages[index])
        for name, values in extra.items():
            if index < len(values):
                meta[name] = values[index]
        rows.append(
            {
                "messages": _messages(prompt, "user") + _messages(completion, "assistant"),
                "datapoint": prompt_datapoint(_text(prompt)),
                "score": score,
                "criteria": criteria,
                "meta": meta,
            }
        )
    return rows


class MantaCallback(_CallbackBase):
    """A transformers ``TrainerCallback`` writing each batch of completions a TRL trainer logs.

    Pass it to the trainer with :meth:`attach` (the callback needs the trainer's logs).
    ``run_id``, ``project_id`` and the other keyword arguments are those of
    :class:`~manta_lib.RolloutLogger`.
    """

    def __init__(self, run_id: str, project_id: str = "", **logger_options: Any) -> None:
        super().__init__()
        self.logger = RolloutLogger(run_id=run_id, project_id=project_id, **logger_options)
        self.trainer: Any = None
        self._last_batch: str | None = None
        self._warned = False

    def attach(self, trainer: Any) -> MantaCallback:
        """Give the callback the trainer whose completions it stores, and add it to it."""
        self.trainer = trainer
        handler = getattr(trainer, "callback_handler", None)
        if handler is None or self not in handler.callbacks:
            trainer.add_callback(self)
        return self

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if getattr(state, "is_world_process_zero", True):
            self.logger.start()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.logger.close()

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not getattr(state, "is_world_process_zero", True):
            return
        payload = self._payload()
        if payload is None or not payload.get("prompt"):
            return
        try:
            self.record(payload, step=int(state.global_step), logs=logs or {})
        except Exception:  # a logging problem must not stop training
            log.exception("Manta: the completions of step %s were not stored", state.global_step)

    def record(self, payload: Mapping[str, Any], *, step: int, logs: Mapping[str, Any]) -> int:
        """Store one logged batch (TRL's ``_logs`` at ``on_log``); returns the rows written
        (0 for a batch already written)."""
        rows = completion_rows(payload, self._weights(payload))
        fingerprint = _fingerprint(rows)
        if fingerprint == self._last_batch:
            return 0
        self._last_batch = fingerprint
        phase = "eval" if any(str(key).startswith("eval_") for key in logs) else "train"
        self.logger.start()
        for row in rows:
            self.logger.rollout(step=step, phase=phase, grader=GRADER_NAME, **row)
        return len(rows)

    def _payload(self) -> Mapping[str, Any] | None:
        trainer = self.trainer
        payload = getattr(trainer, "_logs", None) or getattr(trainer, "_textual_logs", None)
        if isinstance(payload, Mapping):
            return payload
        if not self._warned:
            self._warned = True
            why = (
                "call MantaCallback(...).attach(trainer)"
                if trainer is None
                else f"{type(trainer).__name__} keeps no completion logs (_logs)"
            )
            log.warning("Manta: no completions to store: %s", why)
        return None

    def _weights(self, payload: Mapping[str, Any]) -> dict[str, float]:
        names = list(getattr(self.trainer, "reward_func_names", None) or payload.get("rewards", {}))
        weights = getattr(self.trainer, "reward_weights", None)
        if weights is None:
            return {}
        values = weights.tolist() if hasattr(weights, "tolist") else list(weights)
        if len(values) != len(names):
            return {}
        return {name: float(value) for name, value in zip(names, values, strict=True)}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    number = float(value)
    return number if math.isfinite(number) else None


def _messages(value: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value):
        return [dict(m) for m in value]
    return [{"role": role, "content": _text(value)}]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return "\n".join(
            str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value
        )
    return str(value)


def _fingerprint(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for row in rows:
        digest.update(repr((row["messages"], row["criteria"], row["meta"])).encode())
    return digest.hexdigest()
