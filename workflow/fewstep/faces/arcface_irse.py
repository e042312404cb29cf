"""IR-SE50 ArcFace, the face encoder InfiniteYou conditions generation on.

InfiniteYou embeds the aligned face with facexlib's
``Backbone(num_layers=50, drop_ratio=0.6, mode='ir_se')`` loaded from
``recognition_arcface_ir_se50.pth``. facexlib's loader moves the model to CUDA
and downloads the file, and importing facexlib pulls in numba and filterpy, so
this module re-implements the network. Module names follow facexlib's, which
makes ``state_dict()`` keys and shapes identical for the real configuration and
lets the published checkpoint load with ``strict=True``
(``tests/fixtures/irse50_state_dict.json`` records them).

Input: the BGR ``norm_crop`` output (112 x 112, uint8) scaled to [-1, 1], as
InfiniteYou's ``extract_arcface_bgr_embedding`` feeds it; output: a 512-d
L2-normalised embedding.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewstep.core.io import atomic_torch_save
from fewstep.faces.analyzer import FaceModelError

__all__ = [
    "CONFIGS",
    "IRSEArcFace",
    "IRSEConfig",
    "embed_aligned_bgr",
    "load_irse50",
    "save_tiny_irse",
    "tiny_irse",
]

CROP_SIZE = 112


@dataclass(frozen=True)
class IRSEConfig:
    """Depth and widths of an IR-SE ArcFace; the defaults are facexlib's IR-SE50."""

    stem: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    units: tuple[int, ...] = (3, 4, 14, 3)
    se_reduction: int = 16
    embedding_dim: int = 512
    drop_ratio: float = 0.6


CONFIGS: dict[str, IRSEConfig] = {
    "real": IRSEConfig(),
    "tiny": IRSEConfig(stem=8, widths=(8, 16, 16, 32), units=(1, 1, 1, 1), se_reduction=4),
}


class SqueezeExcite(nn.Module):
    """Channel gate: global average, bottleneck 1x1 convs, sigmoid."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(gate)


class IRSEUnit(nn.Module):
    """Pre-activation residual unit (BN-conv-PReLU-conv-BN-SE) plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, reduction: int) -> None:
        super().__init__()
        if in_channels == out_channels:
            # A 1x1 max-pool is a strided identity: it has no weights to load.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(kernel_size=1, stride=stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            SqueezeExcite(out_channels, reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSEArcFace(nn.Module):
    """IR-SE ArcFace backbone: [B, 3, 112, 112] in [-1, 1] -> [B, 512], unit norm."""

    def __init__(self, config: IRSEConfig) -> None:
        super().__init__()
        if len(config.widths) != len(config.units):
            raise ValueError("IRSEConfig: widths and units need one entry per stage")
        self.config = config
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, config.stem, 3, 1, 1, bias=False),
            nn.BatchNorm2d(config.stem),
            nn.PReLU(config.stem),
        )
        # output_layer before body: facexlib's registration order, hence its key order.
        width, side = config.widths[-1], CROP_SIZE // 2 ** len(config.widths)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Dropout(config.drop_ratio),
            nn.Flatten(),
            nn.Linear(width * side * side, config.embedding_dim),
            nn.BatchNorm1d(config.embedding_dim),
        )
        units = []
        channels = config.stem
        for width, count in zip(config.widths, config.units, strict=True):
            for index in range(count):
                stride = 2 if index == 0 else 1
                units.append(IRSEUnit(channels, width, stride, config.se_reduction))
                channels = width
        self.body = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


def tiny_irse(seed: int = 0) -> IRSEArcFace:
    """The tiny configuration with seeded weights and batch-norm statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = IRSEArcFace(CONFIGS["tiny"])
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
    return model.eval()


def save_tiny_irse(path: Path, seed: int = 0) -> Path:
    """Write the seeded tiny model as a plain state dict, like the published ``.pth``."""
    path = Path(path)
    atomic_torch_save(tiny_irse(seed).state_dict(), path)
    return path


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Empty when ``state`` fits ``model`` exactly, else a short summary."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    shapes = [k for k in expected.keys() & found.keys() if expected[k] != found[k]]
    if not (missing or unexpected or shapes):
        return ""
    return f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} mis-shaped tensors"


def load_irse50(
    path: Path | str,
    config: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> IRSEArcFace:
    """Build the network and load a state-dict file into it (strict), eval mode.

    ``config="auto"`` picks the configuration whose state-dict layout the file
    matches exactly (the published 50-layer one, or the tiny one).
    """
    if config != "auto" and config not in CONFIGS:
        raise ValueError(f"IR-SE config {config!r} is unknown; use auto or one of {sorted(CONFIGS)}")
    path = Path(path)
    if not path.is_file():
        from fewstep.registry.prepare import prepare_command

        # "arcface-irse50": the registry name (fewstep.faces.models, which imports this module)
        raise FaceModelError(
            f"ArcFace checkpoint {path} does not exist: prepare it: `{prepare_command('arcface-irse50')}` "
            "(downloads it for real weights, builds a tiny one for the demo)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError) as err:
        raise FaceModelError(
            f"ArcFace checkpoint {path} is not a readable state dict ({type(err).__name__}): re-download it"
        ) from err
    if not isinstance(state, dict):
        raise FaceModelError(f"ArcFace checkpoint {path} is not a state dict: re-download it")
    candidates = list(CONFIGS) if config == "auto" else [config]
    problems = {}
    for name in candidates:
        model = IRSEArcFace(CONFIGS[name])
        problems[name] = _mismatch(model, state)
        if not problems[name]:
            model.load_state_dict(state, strict=True)
            return model.to(device=device, dtype=dtype).eval()
    detail = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
    raise FaceModelError(
        f"ArcFace checkpoint {path} fits no IR-SE configuration ({detail}): re-download the file"
    )


def embed_aligned_bgr(model: IRSEArcFace, crop_bgr_uint8: np.ndarray) -> np.ndarray:
    """512-d float32 unit embedding of one aligned 112x112 BGR uint8 crop."""
    crop = np.asarray(crop_bgr_uint8)
    if crop.shape != (CROP_SIZE, CROP_SIZE, 3) or crop.dtype != np.uint8:
        raise ValueError(
            f"expected an aligned {CROP_SIZE}x{CROP_SIZE}x3 uint8 BGR crop, "
            f"got shape {crop.shape} dtype {crop.dtype}"
        )
    param = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
    x = (x.to(device=param.device, dtype=torch.float32) / 255.0 * 2.0 - 1.0).to(param.dtype)
    with torch.inference_mode():
        return model(x)[0].float().cpu().numpy()
