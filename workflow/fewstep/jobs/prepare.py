"""The prepare rule: one registered model, for what of it this sweep uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewstep.grid import Grid
from fewstep.registry.prepare import prepare


def prepare_model(config: dict[str, Any], name: str) -> Path:
    """Fetch, build or write model `name` for the configured weights mode; its ready marker."""
    return prepare(config, name, Grid(config).model_usage(name))
