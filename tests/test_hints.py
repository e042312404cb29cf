"""Every command an error message names exists, and running it fixes what the message is about.

A hint is the part of a one-line error between backticks that starts with a command
(`fewstep`, `snakemake`, `wandb`, `hf`). The Snakefile's hints (a stale lock, deleted cell files)
are run in tests/test_reliability.py and tests/test_faults.py / tests/test_rerun_triggers.py.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from fewstep import cli
from fewstep.jobs.prepare import prepare_model
from fewstep.registry.catalog import model_folder
from tests.conftest import REPO, study_of

TOOLS = ("fewstep", "snakemake", "wandb", "hf")


def hints(message: str) -> list[str]:
    """The commands a message names: backticked text that starts with a known tool."""
    return [text for text in re.findall(r"`([^`]+)`", message) if text.split()[0] in TOOLS]


def run_hint(command: str) -> subprocess.CompletedProcess:
    """A hint's command as a user would run it in the activated .venv (`fewstep` is `python -m fewstep`)."""
    words = shlex.split(command)
    if words[0] == "fewstep":
        words = [sys.executable, "-m", "fewstep", *words[1:]]
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow"), WANDB_MODE="disabled")
    return subprocess.run(words, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


@pytest.fixture
def faces_only(tiny_config, tmp_path):
    """The demo config with its own models folder holding the face models its identity embedding
    job loads (insightface, InfuseNet's IR-SE50, FaceID's w600k), prepared."""
    from fewstep.grid import Grid

    config = copy.deepcopy(tiny_config)
    config.update(models_dir=str(tmp_path / "models"), results_dir=str(tmp_path / "results"))
    study = study_of(config)
    for name in Grid.of(study).identity_models():
        prepare_model(study, name)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


@pytest.mark.slow
@pytest.mark.parametrize("model", ["insightface", "arcface-irse50"])
def test_a_face_model_whose_files_are_gone_names_the_command_that_prepares_it(faces_only, capsys, model):
    """The ready marker is there (a plain rerun prepares nothing), the files are not: the error
    names `fewstep prepare-model ...` with this config; running it, the embedding works again."""
    config, path = faces_only
    shutil.rmtree(model_folder(study_of(config), model))
    embed = ["embed-identities", "--config", str(path), "--identity", "astronaut"]
    assert cli.main(embed) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    (command,) = hints(line)
    assert command == f"fewstep prepare-model --config {path} --model {model}"
    result = run_hint(command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert cli.main(embed) == 0


def test_the_wandb_hints_name_commands_that_exist(faces_only, capsys, monkeypatch):
    """Without an API key: `wandb login` exists and `fewstep wandb-sync --config ...` runs (here
    with --dry-run: uploading needs the key it is about)."""
    config, path = faces_only
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr("fewstep.tracking.runs.api_key_present", lambda: False)
    from fewstep.core.paths import Paths

    run = (
        Paths(study_of(config)).wandb_root / "generate" / "x" / "wandb" / "offline-run-1"
    )  # enough to reach the key check
    run.mkdir(parents=True)
    (run / "run-1.wandb").write_bytes(b"")
    assert cli.main(["wandb-sync", "--config", str(path)]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    login, sync = hints(line)
    assert login == "wandb login" and sync == f"fewstep wandb-sync --config {path}"
    assert run_hint(f"{login} --help").returncode == 0
    result = run_hint(f"{sync} --dry-run")
    assert result.returncode == 0, result.stderr[-2000:]


def source_hints() -> list[tuple[str, str]]:
    """(file, hint) for every backticked command in the package's string literals; f-string fields
    become their source text (`{prepare_command(model)}`)."""
    found = []
    for path in sorted((REPO / "workflow" / "fewstep").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(
                    part.value if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"
                    for part in node.values
                )
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            if '"""' in text or text.count("\n") > 1:  # docstrings and comments name code, not hints
                continue
            found += [(path.name, hint) for hint in hints(text)]
    return found


@pytest.mark.slow
def test_every_hint_in_the_source_names_a_command_that_exists():
    """Each `fewstep <command> ...` a message names is a command of the CLI with options it takes;
    each other tool's subcommand answers --help."""
    from fewstep.cli import parser

    found = source_hints()
    assert {"wandb login", "hf auth login"} <= {hint for _, hint in found}
    for name, hint in found:
        words = hint.replace("{config_option()}", "--config c.yaml").split()
        if words[0] == "fewstep":
            sub = parser()._subparsers._group_actions[0].choices
            assert words[1] in sub, (name, hint)
            options = {o for action in sub[words[1]]._actions for o in action.option_strings}
            assert {w for w in words[2:] if w.startswith("--")} <= options, (name, hint)
        elif words[0] in ("wandb", "hf"):
            assert run_hint(" ".join([*words, "--help"])).returncode == 0, (name, hint)
