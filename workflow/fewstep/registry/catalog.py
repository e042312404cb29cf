"""The model registry: every model the workflow can prepare, by name.

The module that owns a model registers its `ModelSpec` (with the `Recipe` that prepares it)
when it is imported: the families' model modules, `fewstep.faces.models`,
`fewstep.scoring.networks`. `fewstep.grid.bootstrap` imports all of them (and the grid that
module), so whatever knows a sweep knows its models; this module never imports upward.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from fewstep.core.errors import WeightsError
from fewstep.core.study import Study
from fewstep.registry.spec import ModelSpec

_MODELS: dict[str, ModelSpec] = {}
#: every registered model, read-only
MODELS: Mapping[str, ModelSpec] = MappingProxyType(_MODELS)


def register(*specs: ModelSpec) -> None:
    """Add models to the registry; a name belongs to one model only."""
    for spec in specs:
        if _MODELS.get(spec.name, spec) is not spec:
            raise ValueError(f"model {spec.name!r} is registered twice")
        _MODELS[spec.name] = spec


def lookup(name: str) -> ModelSpec:
    spec = _MODELS.get(name)
    if spec is None:
        raise WeightsError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    return spec


def model_folder(config: Study, name: str) -> Path:
    return Path(config.models_dir) / config.weights / lookup(name).folder


def marker_path(config: Study, name: str) -> Path:
    """The file that says a model is ready (the prepare rule's output)."""
    from fewstep.core.paths import Paths

    return Paths(config).model_marker(name)


def model_revision(config: Study, name: str) -> str | None:
    """The hub revision model `name` is fetched at: config `revisions`, else the spec's pin."""
    spec = _MODELS.get(name)
    if spec is None or spec.repo_id is None:
        return None
    return config.revisions.get(name, spec.revision)
