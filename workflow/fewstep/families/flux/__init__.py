"""FLUX.1-dev / FLUX.1-schnell with InfiniteYou's InfuseNet: specs, tiny stand-ins, sampler, pipeline."""
