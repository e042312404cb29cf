"""`ModelSpec`: one model the workflow can prepare, whatever its source, and its `Recipe`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewstep.core.study import Study


@dataclass(frozen=True)
class Usage:
    """What a sweep uses of one model, worked out by the layer that knows the sweep (the grid).

    `adapters`: the adapter settings of the cells whose generation loads the model (a family's
    recipe picks the parts it fetches from them, e.g. InfuseNet variants); `embeds_text`: the
    sweep embeds its prompts with this model's text encoders; `family_adapters`: the same cells'
    (backbone family, adapter settings) pairs, for models several families share (h94/IP-Adapter);
    `backbones`: the same cells' backbone settings (a distilled SD backbone's files).
    """

    adapters: tuple[Mapping[str, Any], ...] = ()
    embeds_text: bool = False
    family_adapters: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    backbones: tuple[Mapping[str, Any], ...] = ()


#: (config, spec, folder, usage): make `folder` hold the model
Build = Callable[[Study, "ModelSpec", Path, Usage], None]
#: (config, spec, usage): files relative to the model's folder, or hub allow-patterns
Files = Callable[[Study, "ModelSpec", Usage], list[str]]


@dataclass(frozen=True)
class Recipe:
    """How a model is prepared, supplied by the module that owns it.

    `fetch` brings the real weights, `tiny` builds seeded stand-ins in the published layout,
    `random` writes what random mode loads (None: the tiny stand-ins). `required` lists the
    files without which the model cannot load (checked in `local_weights` folders and after a
    download); `patterns` are the hub allow-patterns of a model fetched as one snapshot.
    """

    fetch: Build
    tiny: Build
    required: Files
    random: Build | None = None
    patterns: Files | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model the workflow can prepare (download, build tiny, or write random configs).

    `revision` is the hub commit a download asks for (config `revisions` overrides it).
    A pinned commit is one a public source names (docs/weights.md lists them); `main`
    where none was found, and the prepared marker then records the commit it resolved to.
    """

    name: str
    folder: str
    repo_id: str | None = None
    gated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    revision: str = "main"
    recipe: Recipe | None = field(default=None, compare=False, repr=False)
