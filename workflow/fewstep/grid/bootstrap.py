"""Every model of the workflow, registered in `fewstep.registry.catalog` by importing its owner.

The one place that lists the modules registering models: the families (each family's
``family.py`` imports its models module; `fewstep.families.FAMILIES` lists the families),
the face networks and the scoring networks. `fewstep.grid` takes `FAMILIES` from here, so
whatever holds a `Grid` (the Snakefile, the rules, the jobs, the CLI) finds every model
registered.
"""

from __future__ import annotations

import fewstep.faces.models  # noqa: F401  registers insightface, arcface-irse50, dlib-face
import fewstep.scoring.networks  # noqa: F401  registers the LPIPS, CLIP, PickScore, DINOv2, CSD networks
from fewstep.families import FAMILIES  # registers each family's backbones and adapters

__all__ = ["FAMILIES"]
