"""InstantStyle block scales checked at config time, without torch.

diffusers' `set_ip_adapter_scale` expands a dict such as
``{"up": {"block_0": [0.0, 1.0, 0.0]}}`` over the UNet's blocks *that have
attention* and sets every layer the dict does not name to 0. A dict naming only
blocks without attention (SD1.5's ``up.block_0``) is accepted and silently turns
the adapter off. The grid must refuse that while Snakemake parses the workflow,
where no torch is loaded, so this module follows the same expansion on the
published UNet config (block types and layers per block). The tests hold it to
diffusers' own result (`pipeline.apply_scale`) on the tiny and the published UNets.
"""

from __future__ import annotations

from typing import Any

from fewstep.core.errors import ConfigError


def attention_blocks(unet: dict[str, Any]) -> dict[str, list[int]]:
    """Indices of the down and up blocks that hold attention layers."""
    return {
        side: [i for i, kind in enumerate(unet[f"{side}_block_types"]) if kind.startswith("CrossAttn")]
        for side in ("down", "up")
    }


def _layers(unet: dict[str, Any], side: str) -> int:
    """Attention modules per block: one per resnet; up blocks have one resnet more."""
    return unet["layers_per_block"] + (1 if side == "up" else 0)


def reached_layers(unet: dict[str, Any], scale: float | dict, key: str) -> list[str]:
    """The attention modules (``up_blocks.0.attentions.1``) `scale` gives a non-zero weight.

    Raises `ConfigError` naming `key` for a per-block list of the wrong length and for
    a dict that reaches no attention layer.
    """
    blocks = attention_blocks(unet)
    if not isinstance(scale, dict):
        if scale == 0:
            return []
        names = [
            f"{side}_blocks.{i}.attentions.{j}"
            for side in ("down", "up")
            for i in blocks[side]
            for j in range(_layers(unet, side))
        ]
        return sorted([*names, "mid_block.attentions.0"])
    reached = []
    mid = scale.get("mid", 0.0)
    if isinstance(mid, list):
        if len(mid) != 1:
            raise ConfigError(f"{key}.mid: one scale for the mid block, got {len(mid)}")
        mid = mid[0]
    if mid != 0:
        reached.append("mid_block.attentions.0")
    for side in ("down", "up"):
        layers = _layers(unet, side)
        value = scale.get(side, 0.0)
        per_block = value if isinstance(value, dict) else {f"block_{i}": value for i in blocks[side]}
        for i in blocks[side]:
            weights = per_block.get(f"block_{i}", 0.0)
            if not isinstance(weights, list):
                weights = [weights] * layers
            elif len(weights) == 1:
                weights = weights * layers
            elif len(weights) != layers:
                raise ConfigError(
                    f"{key}.{side}.block_{i}: {layers} scales (one per attention layer), got {len(weights)}"
                )
            reached += [f"{side}_blocks.{i}.attentions.{j}" for j, w in enumerate(weights) if w != 0]
    if not reached:
        with_attention = [f"{side}.block_{i}" for side in ("down", "up") for i in blocks[side]]
        raise ConfigError(
            f"{key}: {scale} reaches no attention layer of this UNet (blocks with attention: "
            f"{', '.join(with_attention)}, mid); name one of those, or use adapter kind none for no adapter"
        )
    return sorted(reached)
