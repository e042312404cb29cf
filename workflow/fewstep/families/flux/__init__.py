"""FLUX.1-dev / FLUX.1-schnell with InfiniteYou's InfuseNet.

`family` is the grid side, `models` the registry specs and loaders, `specs` the published
configs, `tiny` the offline stand-ins, `pipeline` the denoising loop over loaded components,
`cell` the per-job `CellPipeline`; `acceleration`, `caches` and `control` are FLUX's own.
"""
