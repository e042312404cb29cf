"""Model families: one folder each, one `Family` object each (the contract: `fewstep.families.base`).

Add a family by writing ``families/<name>/`` with an object satisfying `Family`
and listing it here; the grid and the rules find it by the config's
``backbones.<id>.family``.
"""

from fewstep.families.base import Family
from fewstep.families.flux.family import FLUX
from fewstep.families.klein.family import KLEIN
from fewstep.families.kontext.family import KONTEXT
from fewstep.families.sd.family import SD_FAMILIES

FAMILIES: dict[str, Family] = {
    family.name: family for family in (FLUX, *SD_FAMILIES.values(), KONTEXT, KLEIN)
}
