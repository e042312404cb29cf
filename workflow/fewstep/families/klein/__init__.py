"""FLUX.2 [klein] 4B, a step-distilled model that takes reference images natively, as a family.

`family.py` is the grid side (`KLEIN`), `models.py` its registered model and loaders, `specs.py`
the published configs, `tiny.py` the seeded stand-ins, `pipeline.py` the sampling loop and
`cell.py` the job side.
"""
