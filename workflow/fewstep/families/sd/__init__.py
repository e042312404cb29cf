"""Stable Diffusion 1.5 and SDXL with IP-Adapter style and object adapters.

`specs` holds the published configurations (plain data, no torch), `tiny` builds
offline stand-ins in the published layouts, `pipeline` loads and runs diffusers'
own pipelines, `scales` checks InstantStyle block scales.
"""
