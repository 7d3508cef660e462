"""`make test` runs the suite as groups of paths (a pytest process per group): every test file
must be in one group, or CI would silently skip it."""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_file_is_in_a_make_test_group() -> None:
    makefile = (REPO / "Makefile").read_text()
    found = re.search(r"^TEST_GROUPS := (.*?)(?<!\\)\n", makefile, re.M | re.S)
    assert found, "no TEST_GROUPS in the Makefile"
    groups = shlex.split(found.group(1).replace("\\\n", " "))
    assert groups
    covered: set[Path] = set()
    for group in groups:
        for pattern in group.split():
            for match in glob.glob(str(REPO / pattern)):
                path = Path(match)
                covered.update(path.rglob("test_*.py") if path.is_dir() else [path])
    every = set((REPO / "tests").rglob("test_*.py"))
    missing = sorted(str(p.relative_to(REPO)) for p in every - covered)
    assert not missing, f"test files in no TEST_GROUPS group of the Makefile: {missing}"
