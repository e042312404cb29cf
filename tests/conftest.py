"""Shared fixtures: the demo config pointed at temporary folders, tiny models built once."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


def demo_yaml() -> dict:
    return yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


@pytest.fixture
def raw_demo() -> dict:
    """The demo config as a user wrote it (not validated)."""
    return demo_yaml()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fewstep")


@pytest.fixture(scope="session")
def tiny_config(tiny_root) -> dict:
    """Validated demo config whose tiny models are built (once per test session)."""
    from fewstep.config import validate
    from fewstep.grid import Grid
    from fewstep.models import prepare

    raw = demo_yaml()
    raw["results_dir"] = str(tiny_root / "results")
    raw["models_dir"] = str(tiny_root / "models")
    raw["reports_dir"] = str(tiny_root / "reports")
    config = validate(raw)
    for name in Grid(config).models:
        prepare(config, name)
    return config


@pytest.fixture
def config(tiny_config) -> dict:
    return copy.deepcopy(tiny_config)
