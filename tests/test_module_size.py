"""No module of the package is over 600 lines: one that grows past it is split by role."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "workflow" / "fewstep"
MAX_LINES = 600


def oversized(package: Path, limit: int = MAX_LINES) -> list[str]:
    """'<module path>: <n> lines' for every .py file under `package` longer than `limit` lines."""
    lengths = {path: len(path.read_text().splitlines()) for path in sorted(package.rglob("*.py"))}
    return [f"{path.relative_to(package.parent)}: {n} lines" for path, n in lengths.items() if n > limit]


def test_no_package_module_is_over_600_lines():
    assert len(list(PACKAGE.rglob("*.py"))) > 50
    too_long = oversized(PACKAGE)
    assert not too_long, f"split by role (at most {MAX_LINES} lines a module): {'; '.join(too_long)}"


def test_the_size_check_names_each_long_module(tmp_path):
    package = tmp_path / "fewstep"
    (package / "jobs").mkdir(parents=True)
    (package / "at_limit.py").write_text("x = 1\n" * MAX_LINES)
    (package / "jobs" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (package / "notes.txt").write_text("x\n" * 1000)
    assert oversized(package) == [f"fewstep/jobs/long.py: {MAX_LINES + 1} lines"]
