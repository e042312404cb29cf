"""Stable Diffusion 1.5 and SDXL with IP-Adapter style and object adapters.

`specs` holds the published configurations (plain data, no torch), `scales` checks
InstantStyle block scales against them (no torch), `tiny` builds offline stand-ins in
the published layouts, `random_weights` writes full-size random folders, `pipeline`
loads and runs diffusers' own pipelines.
"""
