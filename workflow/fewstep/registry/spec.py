"""`ModelSpec`: one model the workflow can prepare, whatever its source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
