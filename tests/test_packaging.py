"""The conda env of `--sdm conda`: every rule names it, and it pins exactly what pyproject.toml pins."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO

ENV = REPO / "envs" / "fewstep.yaml"


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return dict(pin.split("==") for pin in project["dependencies"])


def env_pins() -> dict[str, str]:
    spec = yaml.safe_load(ENV.read_text())
    (pip,) = [entry["pip"] for entry in spec["dependencies"] if isinstance(entry, dict)]
    names = [pin.split("==")[0] for pin in pip]
    assert len(names) == len(set(names)), f"{ENV.name} lists a package twice: {sorted(names)}"
    return dict(pin.split("==") for pin in pip)


def test_the_conda_env_pins_what_pyproject_pins():
    assert env_pins() == pyproject_pins()


def test_every_rule_runs_in_the_conda_env():
    rules = 0
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for rule, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", path.read_text(), re.M | re.S):
            assert re.findall(r'conda:\s+"([^"]+)"', body) == ["../../envs/fewstep.yaml"], rule
            rules += 1
    assert rules >= 10
