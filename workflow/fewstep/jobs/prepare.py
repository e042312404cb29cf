"""The prepare rule: one registered model, for what of it this sweep uses."""

from __future__ import annotations

from pathlib import Path

from fewstep.core.study import Study
from fewstep.grid import Grid
from fewstep.registry.prepare import prepare


def prepare_model(study: Study, name: str) -> Path:
    """Fetch, build or write model `name` for the configured weights mode; its ready marker."""
    return prepare(study, name, Grid.of(study).model_usage(name))
