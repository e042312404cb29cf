"""InfiniteYou's identity projector: a perceiver resampler (IP-Adapter style).

A 512-d face embedding becomes `num_queries` identity tokens of width
`output_dim` (8 x 4096 for the published model). Parameter names follow the
published `image_proj_model.bin` (state dict under the key `image_proj`) so the
real file loads with `strict=True`; tests pin the key list. Shared by the families:
FLUX's InfiniteYou and SD's IP-Adapter Plus build theirs from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

STATE_DICT_KEY = "image_proj"


@dataclass(frozen=True)
class ResamplerConfig:
    dim: int = 1280
    depth: int = 4
    dim_head: int = 64
    heads: int = 20
    num_queries: int = 8
    embedding_dim: int = 512
    output_dim: int = 4096
    ff_mult: int = 4


#: The configuration InfiniteYou instantiates for `infu_flux_v1.0`.
PUBLISHED = ResamplerConfig()


class PerceiverAttention(nn.Module):
    """Latent queries attend to [inputs; latents] (keys/values from both)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.dim_head).transpose(1, 2)

    def forward(self, inputs: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        inputs = self.norm1(inputs)
        latents = self.norm2(latents)
        q = self._split_heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat([inputs, latents], dim=1)).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        # Scaling both q and k by dim_head**-0.25 is more stable in half precision.
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        weights = ((q * scale) @ (k * scale).transpose(-2, -1)).float().softmax(dim=-1)
        out = weights.to(v.dtype) @ v
        batch, _, length, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    inner = dim * mult
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


class Resampler(nn.Module):
    """Face embedding [B, N, embedding_dim] -> identity tokens [B, num_queries, output_dim]."""

    def __init__(self, config: ResamplerConfig = PUBLISHED):
        super().__init__()
        self.config = config
        c = config
        self.latents = nn.Parameter(torch.randn(1, c.num_queries, c.dim) / c.dim**0.5)
        self.proj_in = nn.Linear(c.embedding_dim, c.dim)
        self.proj_out = nn.Linear(c.dim, c.output_dim)
        self.norm_out = nn.LayerNorm(c.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads), _feed_forward(c.dim, c.ff_mult)])
            for _ in range(c.depth)
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(embedding.size(0), 1, 1)
        inputs = self.proj_in(embedding)
        for attention, feed_forward in self.layers:
            latents = attention(inputs, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


def infer_config(path: str | Path, dim_head: int = PUBLISHED.dim_head) -> ResamplerConfig:
    """Read a checkpoint's shapes back into its config (dim_head is not recoverable: 64)."""
    state = torch.load(path, map_location="cpu", weights_only=True)[STATE_DICT_KEY]
    dim, embedding_dim = state["proj_in.weight"].shape
    inner = state["layers.0.0.to_q.weight"].shape[0]
    return ResamplerConfig(
        dim=dim,
        depth=len({key.split(".")[1] for key in state if key.startswith("layers.")}),
        dim_head=dim_head,
        heads=inner // dim_head,
        num_queries=state["latents"].shape[1],
        embedding_dim=embedding_dim,
        output_dim=state["proj_out.weight"].shape[0],
        ff_mult=state["layers.0.1.1.weight"].shape[0] // dim,
    )


def load_resampler(
    path: str | Path, config: ResamplerConfig = PUBLISHED, device: str | torch.device = "cpu"
) -> Resampler:
    """Load `image_proj_model.bin` (torch pickle, state dict under `image_proj`), strictly."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if STATE_DICT_KEY not in state:
        raise ValueError(f"{path}: no {STATE_DICT_KEY!r} entry; is this an InfiniteYou image_proj_model.bin?")
    model = Resampler(config)
    model.load_state_dict(state[STATE_DICT_KEY], strict=True)
    return model.to(device).eval()


def save_resampler(model: Resampler, path: str | Path) -> None:
    """Write the published file format (used to build tiny checkpoints)."""
    from fewstep.core.io import atomic_torch_save

    atomic_torch_save({STATE_DICT_KEY: model.state_dict()}, path)
