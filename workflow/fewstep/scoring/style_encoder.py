"""CSD's style encoder as a torch module (kept apart: `fewstep.scoring.networks` imports no torch
at module level, and the workflow's parse reads its model lists)."""

from __future__ import annotations

from typing import Any

import torch


class CSDStyleEncoder(torch.nn.Module):
    """CLIP ViT image tower (pooled, pre-projection) followed by CSD's style head, L2-normalised."""

    def __init__(self, vision: Any, style: torch.Tensor):
        super().__init__()
        self.vision = vision
        self.style = torch.nn.Parameter(style, requires_grad=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision(pixel_values=pixel_values).pooler_output  # ln_post(CLS)
        return torch.nn.functional.normalize(pooled @ self.style, dim=-1)
