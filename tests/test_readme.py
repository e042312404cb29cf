"""Every command of the README works as written (in an activated .venv, from the repo root).

Cheap commands run; the ones that would run a sweep are dry-run (`snakemake -n`), parsed
(`fewstep` commands that would compute) or collected (`pytest --collect-only`). A command
of a kind this file does not know fails the test, so a new README command gets checked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from fewstep.cli import parser
from tests.conftest import REPO

#: fewstep commands cheap enough to run for real
CHEAP_FEWSTEP = {"--version", "validate", "config-reference", "estimate"}
#: what the test cannot do here, and why
NOT_RUN = {
    ("bash", "scripts/demo.sh"): "the quick start: the slow workflow tests run the same demo",
    ("bash", "scripts/test.sh"): "the quick start: it runs this very suite",
    ("export",): "sets a token for the real experiment",
    ("source", ".venv/bin/activate"): "the test already runs inside the activated environment",
}


def readme_commands() -> list[str]:
    """Every command line of the README's ```bash blocks, continuation lines joined."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [command.strip() for line in lines for command in line.split(" && ") if command.strip()]


def split(command: str) -> tuple[dict[str, str], list[str]]:
    """Leading VAR=value assignments and the words of a command, shell comments dropped."""
    words = shlex.split(command, comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def not_run(words: list[str]) -> str | None:
    for prefix, why in NOT_RUN.items():
        if tuple(words[: len(prefix)]) == prefix:
            return why
    return None


def checked(words: list[str]) -> list[str] | None:
    """The command to run in place of `words` (None: checked in-process, nothing to run)."""
    tool, args = words[0], words[1:]
    if tool == "snakemake":
        if "--report" in args:  # needs a finished run: dry-run the same workflow instead
            index = args.index("--report")
            args = args[:index] + args[index + 2 :]
        return [tool, *args, *([] if "--lint" in args else ["-n"])]
    if tool == "fewstep" or words[:3] == ["python", "-m", "fewstep"]:
        args = args if tool == "fewstep" else words[3:]
        if args[0] in CHEAP_FEWSTEP:
            return words
        if args[0] == "snakemake":  # Snakemake's arguments: dry-run them as the snakemake lines are
            return [*words, *([] if "-n" in args else ["-n"])]
        parser().parse_args(args)  # a wrong command or option exits here
        return None
    if words[:3] == ["python", "-m", "pytest"]:
        return [*words, "--collect-only", "-q"]
    if tool in ("ruff", "snakefmt"):
        return words
    raise AssertionError(f"README command of unknown kind {' '.join(words)!r}: teach tests/test_readme.py")


COMMANDS = readme_commands()


def test_the_readme_has_commands():
    assert "bash scripts/demo.sh" in " ".join(COMMANDS) and len(COMMANDS) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_works_as_written(command):
    assignments, words = split(command)
    if not words:
        return
    why = not_run(words)
    if why:
        pytest.skip(why)
    run = checked(words)
    if run is None:
        return
    # as in an activated .venv: its bin folder first on PATH
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, **assignments, "PATH": os.pathsep.join([bin_dir, os.environ["PATH"]])}
    result = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_the_wandb_reader_snippet_runs_on_the_demo(demo_run, monkeypatch, capsys):
    """docs/wandb.md's Python snippet, on the demo's offline runs (the aggregate run included)."""
    (snippet,) = re.findall(r"^```python\n(.*?)^```", (REPO / "docs" / "wandb.md").read_text(), re.M | re.S)
    monkeypatch.chdir(demo_run)
    exec(compile(snippet, "docs/wandb.md", "exec"), {})
    rows = capsys.readouterr().out.splitlines()
    assert any(row.startswith("aggregate demo None") for row in rows)
    assert any(row.startswith("score flux-schnell/infusenet-aes/4 4 ") for row in rows)


def test_the_reports_folder_is_kept_with_its_readme_and_generated_reports_are_ignored():
    """The top-level reports/ exists in a fresh clone (its README says what lands there);
    what the report rule writes under reports/<sweep>/ stays out of git."""
    from fewstep.core.paths import Paths
    from fewstep.core.study import load_study

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)

    assert git("ls-files", "reports").stdout.split() == ["reports/README.md"]
    index = Paths(load_study([REPO / "config" / "demo.yaml"])).report_index
    assert index.as_posix() == "reports/demo/index.html"
    assert git("check-ignore", "-q", index.as_posix()).returncode == 0
    assert git("check-ignore", "-q", "reports/README.md").returncode == 1
    readme = (REPO / "reports" / "README.md").read_text()
    assert "reports/<sweep>/index.html" in readme and "/reports/*/" in readme
