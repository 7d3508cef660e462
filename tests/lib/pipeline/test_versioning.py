"""A judge version depends on the code only, not on how its file was loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Seeded stores or seconds per test: make test runs them, make check leaves them out.
pytestmark = pytest.mark.slow

PIPELINE_FILE = textwrap.dedent(
    """
    from pydantic import BaseModel

    from manta import EntityLevel, MapReduceComputation, TraceContext


    class Out(BaseModel):
        n: int


    def helper(trace: TraceContext) -> int:
        return trace.tool_error_count


    def map_fn(trace: TraceContext) -> Out:
        return Out(n=helper(trace))


    pipeline = MapReduceComputation("Stable version").add_level(EntityLevel.TRACE, map_fn, Out)

    if __name__ == "__main__":
        print(pipeline.judge_version)
    """
)


def _version(args: list[str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip().splitlines()[-1]


def test_script_module_and_import_give_one_version(tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "judge.py").write_text(PIPELINE_FILE)

    as_script = _version([str(package / "judge.py")], cwd=tmp_path)
    as_module = _version(["-m", "mypkg.judge"], cwd=tmp_path)
    imported = _version(
        ["-c", "import mypkg.judge as j; print(j.pipeline.judge_version)"], cwd=tmp_path
    )

    assert len(as_script) == 12
    assert as_script == as_module == imported


def test_a_helper_change_in_the_module_changes_the_version(tmp_path: Path) -> None:
    path = tmp_path / "judge_a.py"
    path.write_text(PIPELINE_FILE)
    before = _version([str(path)], cwd=tmp_path)
    path.write_text(PIPELINE_FILE.replace("return trace.tool_error_count", "return 1"))
    assert _version([str(path)], cwd=tmp_path) != before


def test_a_label_names_what_changed_between_two_versions() -> None:
    from manta_lib.pipeline.versioning import changed_functions

    def source(fn: str = "return 1", output: str = "{}", module: str = "x = 1") -> str:
        return (
            f"# ==== level trace: judge_fn\ndef judge_fn():\n    {fn}\n"
            f"# ==== level trace output Out\n{output}\n# ==== module my_judges\n{module}\n"
        )

    assert changed_functions(source(), source()) == []
    assert changed_functions(source(), source(fn="return 2", module="x = 2")) == [
        "trace: judge_fn"
    ]  # the edited function, not the module that holds it
    assert changed_functions(source(), source(module="x = 2")) == ["my_judges"]  # a helper
    assert changed_functions(source(), source(output='{"a": 1}')) == ["trace output Out"]
