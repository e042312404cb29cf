"""Every model of the workflow, registered in `fewstep.registry.catalog` by importing its owner.

The one place that lists the modules registering models: the families (through
`fewstep.families.FAMILIES`), the face networks and the scoring networks. `fewstep.grid`
imports it, so whatever holds a `Grid` (the Snakefile, the rules, the jobs, the CLI) finds
every model registered.
"""

from __future__ import annotations

from fewstep.faces import models as face_models
from fewstep.families import FAMILIES
from fewstep.registry.catalog import MODELS
from fewstep.scoring import networks as scoring_networks

#: the modules whose import registers models, in the order they register them
OWNERS = (FAMILIES, face_models, scoring_networks)

__all__ = ["FAMILIES", "MODELS", "OWNERS"]
