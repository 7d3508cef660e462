"""Hostile import files built from real ones: Inspect ``.eval`` logs with a damaged, deeply
nested or bomb sample member, and the pieces the format fuzzer mixes."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The shared data folder sits beside the repository (or beside the folder of worktrees).
LOGS = next(
    (
        folder / "shared" / "data" / "inspect_logs"
        for folder in REPO_ROOT.parents
        if (folder / "shared" / "data" / "inspect_logs").is_dir()
    ),
    REPO_ROOT.parent / "shared" / "data" / "inspect_logs",
)
GOOD_EVALS = ("log_formats.eval", "mmlu-summary-choices.eval", "log_read_sample.eval")
SAMPLE = "samples/1_epoch_1.json"
SECOND = "samples/2_epoch_1.json"


def rewrite_eval(
    source: Path, target: Path, edit: Callable[[dict[str, bytes]], dict[str, bytes]]
) -> Path:
    """Copy an ``.eval`` zip with its members changed by ``edit`` (name -> bytes)."""
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in edit(members).items():
            out.writestr(name, data)
    return target


def two_samples(members: dict[str, bytes]) -> dict[str, bytes]:
    """The log with a second sample (id 2), a copy of the first."""
    sample = json.loads(members[SAMPLE])
    sample["id"] = 2
    members[SECOND] = json.dumps(sample).encode()
    for name in ("summaries.json", "_journal/summaries/1.json"):
        summaries = json.loads(members[name])
        members[name] = json.dumps([*summaries, {**summaries[0], "id": 2}]).encode()
    return members


def deep_second(members: dict[str, bytes]) -> dict[str, bytes]:
    """Two samples, the second nested 100,000 levels deep in its metadata."""
    members = two_samples(members)
    depth = 100_000
    head = members[SECOND].rstrip()[:-1]
    members[SECOND] = head + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    return members


def bomb_second(members: dict[str, bytes], megabytes: int = 40) -> dict[str, bytes]:
    """Two samples, the second a JSON member of ``megabytes`` MB of spaces (a zip bomb)."""
    members = two_samples(members)
    members[SECOND] = members[SECOND] + b" " * (megabytes << 20)
    return members


def corrupt_member(path: Path, member: str = SECOND) -> Path:
    """Overwrite the start of ``member``'s deflate stream (an invalid block type), in place."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(path.read_bytes())
    name_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    data[start : start + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    return path
