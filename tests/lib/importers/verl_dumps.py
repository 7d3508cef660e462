"""verl rollout dumps as verl's trainer writes them, for the verl importer's tests.

``dump_generations`` reproduces what ``RayPPOTrainer._dump_generations`` writes in each of
its shapes (verl's own code cannot run here: it needs Ray, torch and a tokenizer):

- ``v1`` (spring 2025): ``input``, ``output``, ``score``, ``step`` and the extra reward fields
  of the right length; one ``write`` per line;
- ``v2`` (later 2025): ``gts`` after ``output``; all lines written at once;
- ``v3`` (2026): also ``uid`` (the GRPO group), rows sorted by it.

``simulate_run`` writes a small GRPO run: prompts drawn per step, k rollouts each, the train
batch shuffled (verl's ``balance_batch`` reorders it), validation at some steps.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSIONS = ("v1", "v2", "v3")

PROBLEMS = [
    ("What is 2 + 2?", "4"),
    ("What is 7 * 6?", "42"),
    ("Name the capital of France.", "Paris"),
    ("What is 10 - 3?", "7"),
    ("What is 9 / 3?", "3"),
    ("Spell 'cat' backwards.", "tac"),
]


def dump_generations(
    version: str,
    dump_path: Path,
    global_steps: int,
    inputs: list[str],
    outputs: list[str],
    gts: list[Any],
    scores: list[float],
    reward_extra_infos_dict: dict[str, list[Any]],
    uids: list[str] | None = None,
) -> Path:
    """Write ``{global_steps}.jsonl`` the way verl's ``version`` does; return its path."""
    os.makedirs(dump_path, exist_ok=True)
    filename = dump_path / f"{global_steps}.jsonl"
    n = len(inputs)
    base_data: dict[str, list[Any]] = {"input": inputs, "output": outputs}
    if version != "v1":
        base_data["gts"] = gts
    base_data["score"] = scores
    base_data["step"] = [global_steps] * n
    for key, values in reward_extra_infos_dict.items():
        if len(values) == n:
            base_data[key] = values
    order = list(range(n))
    if version == "v3":
        assert uids is not None
        base_data["uid"] = uids
        order.sort(key=lambda i: uids[i])
    lines = [json.dumps({k: v[i] for k, v in base_data.items()}, ensure_ascii=False) for i in order]
    with open(filename, "w") as handle:
        if version == "v1":
            for line in lines:
                handle.write(line + "\n")
        else:
            handle.write("\n".join(lines) + "\n")
    return filename


@dataclass
class SimulatedRun:
    """What was dumped: the directories and every line's dict per (phase, step)."""

    root: Path
    train_dir: Path
    val_dir: Path
    k: int
    lines: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)


def simulate_run(
    root: Path,
    version: str,
    *,
    steps: int = 3,
    prompts_per_step: int = 3,
    k: int = 4,
    val_steps: tuple[int, ...] = (0, 3),
    seed: int = 7,
) -> SimulatedRun:
    """A GRPO run of ``steps`` steps dumped by verl ``version`` under ``root``."""
    rng = random.Random(f"{seed}-{version}")
    run = SimulatedRun(root, root / "rollout", root / "validation", k)
    for step in range(1, steps + 1):
        chosen = rng.sample(PROBLEMS, prompts_per_step)
        rows = []
        for prompt, answer in chosen:
            uid = str(uuid.UUID(int=rng.getrandbits(128)))
            for _ in range(k):
                correct = rng.random() < 0.3 + 0.2 * step
                pred = answer if correct else str(rng.randint(0, 99))
                # a format-only score for some wrong answers: score > 0 is not "correct"
                score = 1.0 if correct else (0.1 if rng.random() < 0.3 else 0.0)
                rows.append((prompt, f"The answer is {pred}.", answer, score, correct, pred, uid))
        rng.shuffle(rows)  # balance_batch reorders the batch
        _dump_rows(run, version, run.train_dir, "train", step, rows)
        if step in val_steps or (step == steps and val_steps):
            _dump_validation(run, version, step, rng)
    if 0 in val_steps:
        _dump_validation(run, version, 0, rng)
    return run


def _dump_validation(run: SimulatedRun, version: str, step: int, rng: random.Random) -> None:
    rows = []
    for prompt, answer in PROBLEMS:
        uid = str(uuid.UUID(int=rng.getrandbits(128)))
        correct = rng.random() < 0.5
        pred = answer if correct else "?"
        rows.append((prompt, f"So {pred}.", answer, float(correct), correct, pred, uid))
    _dump_rows(run, version, run.val_dir, "eval", step, rows, validation=True)


def _dump_rows(
    run: SimulatedRun,
    version: str,
    directory: Path,
    phase: str,
    step: int,
    rows: list[tuple[str, str, str, float, bool, str, str]],
    *,
    validation: bool = False,
) -> None:
    inputs = [r[0] for r in rows]
    extras: dict[str, list[Any]] = {}
    if validation:
        extras["reward"] = [r[3] for r in rows]  # _validate adds the scores as "reward"
    extras["acc"] = [r[4] for r in rows]
    extras["pred"] = [r[5] for r in rows]
    extras["sub_scores"] = [[r[3], 0.5] for r in rows]  # a list-valued field
    extras["too_short"] = [1.0]  # not one value per rollout: verl leaves it out
    path = dump_generations(
        version,
        directory,
        step,
        inputs=inputs,
        outputs=[r[1] for r in rows],
        gts=[r[2] for r in rows],
        scores=[r[3] for r in rows],
        reward_extra_infos_dict=extras,
        uids=[r[6] for r in rows],
    )
    run.lines[(phase, step)] = [json.loads(line) for line in path.read_text().splitlines()]
