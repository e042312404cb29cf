"""fewstep: how few denoising steps adapter-conditioned image generation needs.

The package's layers, lowest first. A module may import from its own unit and
from units of lower layers only; units of one layer stay independent of each other.
"""

__version__ = "0.1.0"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),  # config, errors, io, paths, provenance, images, job environment, GPU claims
    ("registry",),  # ModelSpec, register(), prepare(), hub/URL transport, loading
    ("faces",),  # insightface packs and IR-SE50 ArcFace (registered models + runtime)
    ("families", "scoring"),  # model families (FLUX, ...) and the scoring metrics
    ("grid",),  # cells and items of a sweep: the families injected
    ("jobs", "analysis", "tracking"),  # what the rules run: generation, scoring, tables, W&B
    ("cli",),  # `fewstep <command>`: the entry point of every rule
    ("__main__",),  # `python -m fewstep`
)
