"""The networks behind the scoring metrics: registry entries, tiny stand-ins, recipes, loaders.

Every scoring network is a registry model (`fewstep.registry.catalog`), registered here with the
recipe of its three sources:

- ``real``: the published weights. Hub repos go through the download rule's
  `snapshot_download` (allow-patterns, the Hugging Face cache, a link at
  ``<models_dir>/real/<folder>``); torchvision's LPIPS trunks are plain URLs
  fetched into ``<models_dir>/real/torch/hub/checkpoints``, the folder the
  scoring job points ``TORCH_HOME`` at.
- ``tiny``: the same classes from tiny configs with seeded weights, saved in the
  published on-disk layout and read back by the same loaders below.
- ``random``: the tiny stand-ins as well. Scoring latency is not a result of the
  study and random weights make every score meaningless anyway, so full-size
  random scoring networks would only cost memory.

Scoring always runs in float32 (on the GPU when there is one): the metrics are
cheap next to generation and float32 keeps them comparable across machines.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import WeightsError
from fewstep.core.study import Study
from fewstep.registry.catalog import model_folder, model_revision, register
from fewstep.registry.hub import fetch_snapshot, fetch_url, link_folder, require_files, snapshot
from fewstep.registry.prepare import missing_weights
from fewstep.registry.spec import Build, Files, ModelSpec, Recipe, Usage
from fewstep.scoring.specs import BY_NAME, anchor_metrics

if TYPE_CHECKING:  # torch is imported where it is used: the workflow's parse never loads it
    import torch

    from fewstep.scoring.style_encoder import CSDStyleEncoder

#: torchvision's ImageNet trunks as published (file names carry a sha256 prefix), and their GB
#: (the download estimate)
LPIPS_TRUNKS = {
    "alex": (
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        0.24,
    ),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth", 0.55),
}
CHECKPOINTS = Path("hub") / "checkpoints"  # torch.hub's cache layout under TORCH_HOME
OPENAI_HEAD_DIM = 64  # OpenAI CLIP's ViTs use width // 64 attention heads

CLIP_FILES = [
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
]


def scoring_models(config: Study, metrics: Iterable[str]) -> list[str]:
    """Registry models `metrics` need (what a score job waits for; each spec lists its own)."""
    return sorted({name for metric in metrics for name in BY_NAME[metric].models(config)})


#: metrics that compare each image with the anchor cell's image of the same item
ANCHOR_METRICS = anchor_metrics()


# --------------------------------------------------------------------------- tiny


def _seeded(name: str) -> None:
    from fewstep.registry.tiny import manual_seed

    manual_seed(name)


def _staged(save: Callable[[Path], None]) -> Build:
    """A tiny builder that saves into a staging folder, moved into place once complete."""

    def build(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
        from fewstep.core.io import staged_dir

        with staged_dir(folder) as staging:
            save(staging)

    return build


def _lpips_tiny(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    save_tiny_lpips_trunk(spec.name.removeprefix("lpips-"), folder / CHECKPOINTS / spec.extra["file"])


def _tiny_clip_score(folder: Path) -> None:
    _save_tiny_clip(folder, _save_tiny_clip_processor(folder), "tiny-clip-score")


def _tiny_pickscore(folder: Path) -> None:
    _save_tiny_clip(folder / "model", _save_tiny_clip_processor(folder / "processor"), "tiny-pickscore")


def _tiny_csd(folder: Path) -> None:
    save_tiny_csd(folder / SCORING_MODELS["csd-vit-l"].extra["file"])


def save_tiny_lpips_trunk(net: str, path: Path) -> None:
    """torchvision's AlexNet/VGG16 state dict, seeded, under the published file name.

    LPIPS reads only the convolutional ``features``; they get torchvision's own
    initialisation from a fixed seed. The classifier, which LPIPS never runs, is
    stored as zero-stride views so the file stays small (AlexNet: 10 MB).
    torchvision checks the sha256 prefix in the name only when it downloads, so a
    file in the cache loads as is; these bytes do not match that prefix.
    """
    import torch
    from torchvision import models as tv

    from fewstep.core.io import atomic_torch_save

    _seeded(f"tiny-lpips-{net}")
    state = (tv.alexnet if net == "alex" else tv.vgg16)(weights=None).state_dict()
    compact = {
        key: value if key.startswith("features.") else torch.zeros((), dtype=value.dtype).expand(value.shape)
        for key, value in state.items()
    }
    atomic_torch_save(compact, path)


def _save_tiny_clip_processor(folder: Path) -> Any:
    """Tokenizer + CLIPImageProcessor files, as a CLIP repo publishes them; returns the tokenizer."""
    from transformers import CLIPImageProcessor

    from fewstep.registry.tiny import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return tokenizer


def _save_tiny_clip(folder: Path, tokenizer: Any, seed: str) -> None:
    """A tiny CLIPModel (text + vision towers) for `tokenizer`'s vocabulary."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    _seeded(seed)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)


def _save_tiny_dinov2(folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

    _seeded("tiny-dinov2")
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8, image_size=32
    )
    Dinov2Model(config).save_pretrained(folder, safe_serialization=True)
    BitImageProcessor(
        size={"shortest_edge": 36},
        crop_size={"height": 32, "width": 32},
        resample=PILImageResampling.BICUBIC,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    ).save_pretrained(folder)


def save_tiny_csd(path: Path) -> None:
    """A CSD training checkpoint in the published key layout, with a tiny ViT (width 128)."""
    import numpy as np
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from fewstep.core.io import atomic_torch_save

    _seeded("tiny-csd")
    config = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=128 // OPENAI_HEAD_DIM,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
    )
    vision = CLIPVisionModel(config)
    backbone = hf_to_openai_visual(vision.state_dict())
    heads = {k: torch.randn(128, 64) / 128**0.5 for k in ("last_layer_style", "last_layer_content")}
    state = {f"module.backbone.{k}": v for k, v in backbone.items()}
    state.update({f"module.{k}": v for k, v in heads.items()})
    # Third-party loaders report numpy scalars next to the state dict in the published
    # file; one here keeps the restricted unpickling path honest.
    checkpoint = {"model_state_dict": state, "epoch": np.int64(0)}
    atomic_torch_save(checkpoint, path)


# --------------------------------------------------------------------------- real


def verify_name_hash(path: Path) -> None:
    """torchvision's convention: ``name-<sha256 prefix>.ext``. A mismatch deletes the file."""
    match = re.search(r"-([a-f0-9]{8,})\.", path.name)
    if match is None:
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(match.group(1)):
        path.unlink()
        raise WeightsError(
            f"{path} has sha256 {digest[:8]}..., not the {match.group(1)} its name promises "
            "(a corrupt or substituted download); it was deleted: rerun to download it again"
        )


def _patterns(config: Study, spec: ModelSpec, usage: Usage) -> list[str]:
    return spec.extra["patterns"]


def _transformers_required(config: Study, spec: ModelSpec, usage: Usage) -> list[str]:
    return ["config.json", "model.safetensors", "preprocessor_config.json"]


def _pickscore_required(config: Study, spec: ModelSpec, usage: Usage) -> list[str]:
    return ["model/config.json", "model/model.safetensors", "processor/preprocessor_config.json"]


def _file_required(config: Study, spec: ModelSpec, usage: Usage) -> list[str]:
    return [spec.extra["file"]]


def _lpips_required(config: Study, spec: ModelSpec, usage: Usage) -> list[str]:
    return [str(CHECKPOINTS / spec.extra["file"])]


def _lpips_fetch(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """torchvision's trunk, where torch.hub looks for it under the scoring job's TORCH_HOME."""
    verify_name_hash(fetch_url(spec.extra["url"], folder / CHECKPOINTS / spec.extra["file"]))


def _pickscore_fetch(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """The model from PickScore's repo, the processor from the CLIP-H repo it was tuned from."""
    extra = spec.extra
    model = snapshot(spec.repo_id, extra["patterns"], model_revision(config, spec.name))
    link_folder(folder / "model", model)
    processor = snapshot(extra["processor_repo"], extra["processor_patterns"], extra["processor_revision"])
    link_folder(folder / "processor", processor)
    require_files(folder, _pickscore_required(config, spec, usage), spec.name)


def _hub_recipe(save: Callable[[Path], None], required: Files) -> Recipe:
    """A network fetched as one hub snapshot of its spec's patterns."""
    return Recipe(fetch=fetch_snapshot, tiny=_staged(save), required=required, patterns=_patterns)


SCORING_MODELS: dict[str, ModelSpec] = {
    **{
        f"lpips-{net}": ModelSpec(
            f"lpips-{net}",
            "torch",
            extra={"file": file, "url": url, "published_gb": {file: gb}},
            recipe=Recipe(fetch=_lpips_fetch, tiny=_lpips_tiny, required=_lpips_required),
        )
        for net, (file, url, gb) in LPIPS_TRUNKS.items()
    },
    "clip-vit-l14": ModelSpec(
        "clip-vit-l14",
        "clip-vit-large-patch14",
        "openai/clip-vit-large-patch14",
        extra={
            "patterns": ["config.json", "model.safetensors", *CLIP_FILES],
            "published_gb": {"model.safetensors": 1.71},
        },
        revision="32bd64288804d66eefd0ccbe215aa642df71cc41",
        recipe=_hub_recipe(_tiny_clip_score, _transformers_required),
    ),
    # PickScore's repo holds the model; its processor is the one of the CLIP-H it was tuned from.
    "pickscore": ModelSpec(
        "pickscore",
        "PickScore_v1",
        "yuvalkirstain/PickScore_v1",
        extra={
            "patterns": ["config.json", "model.safetensors"],
            "published_gb": {"model.safetensors": 3.94},
            "processor_repo": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
            "processor_patterns": CLIP_FILES,
            "processor_revision": "1c2b8495b28150b8a4922ee1c8edee224c284c0c",
        },
        revision="a4e4367c6dfa7288a00c550414478f865b875800",
        recipe=Recipe(fetch=_pickscore_fetch, tiny=_staged(_tiny_pickscore), required=_pickscore_required),
    ),
    "dinov2-base": ModelSpec(
        "dinov2-base",
        "dinov2-base",
        "facebook/dinov2-base",
        extra={
            "patterns": ["config.json", "model.safetensors", "preprocessor_config.json"],
            "published_gb": {"model.safetensors": 0.35},
        },
        revision="f9e44c814b77203eaa57a6bdbbd535f21ede1415",
        recipe=_hub_recipe(_save_tiny_dinov2, _transformers_required),
    ),
    # CSD (Somepalli et al. 2024, github learn2phoenix/CSD): OpenAI CLIP ViT-L/14's image
    # tower with its projection replaced by a trained style head. The checkpoint holds
    # {"model_state_dict": {"module.backbone.<OpenAI visual keys>", "module.last_layer_style",
    # "module.last_layer_content"}, ...}.
    "csd-vit-l": ModelSpec(
        "csd-vit-l",
        "CSD-ViT-L",
        "tomg-group-umd/CSD-ViT-L",
        extra={
            "file": "pytorch_model.bin",
            "patterns": ["pytorch_model.bin"],
            "published_gb": {"pytorch_model.bin": 1.2},
        },
        revision="5bc26a6fb0487f3f00a2a7313135103a005b1b67",
        recipe=_hub_recipe(_tiny_csd, _file_required),
    ),
}


register(*SCORING_MODELS.values())


# --------------------------------------------------------------------------- loading


def _folder(config: Study, name: str) -> Path:
    folder = model_folder(config, name)
    if not folder.exists():
        raise missing_weights(folder, name)
    return folder


@contextlib.contextmanager
def torch_home(folder: Path) -> Iterator[None]:
    """Point torch.hub's cache (``$TORCH_HOME/hub/checkpoints``) at `folder` for a while."""
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_HOME"]
        else:
            os.environ["TORCH_HOME"] = previous


def load_lpips(config: Study, net: str, device: torch.device):
    """`lpips.LPIPS` with its packaged linear heads and torchvision's trunk from our cache."""
    import lpips

    name = f"lpips-{net}"
    folder = _folder(config, name)
    file = folder / CHECKPOINTS / SCORING_MODELS[name].extra["file"]
    if not file.exists():  # torchvision would try to download it
        raise missing_weights(file, name)
    with torch_home(folder), warnings.catch_warnings():
        # lpips 0.1.4 still calls torchvision's deprecated `pretrained=True`.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net=net, pnet_rand=False, verbose=False)
    return model.to(device).eval()


def load_clip(config: Study, name: str, device: torch.device) -> tuple[Any, Any]:
    """A CLIPModel and its CLIPProcessor (CLIP-L for CLIPScore/CLIP-I, or PickScore)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    folder = _folder(config, name)
    model_dir = processor_dir = folder
    if name == "pickscore":  # its model and its processor come from two repos
        model_dir, processor_dir = folder / "model", folder / "processor"
    model = CLIPModel.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return model, CLIPProcessor.from_pretrained(processor_dir)


def load_dinov2(config: Study, device: torch.device) -> tuple[Any, Any]:
    import torch
    from transformers import AutoImageProcessor, Dinov2Model

    folder = _folder(config, "dinov2-base")
    model = Dinov2Model.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    return model, AutoImageProcessor.from_pretrained(folder)


# ----------------------------------------------------------------------------- CSD


def _numpy_scalar_globals() -> list[Any]:
    import numpy as np

    return [np._core.multiarray.scalar, np.dtype, *(getattr(np.dtypes, n) for n in np.dtypes.__all__)]


def read_csd_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a CSD checkpoint (``module.`` stripped).

    Unpickling stays restricted (``weights_only``) with numpy scalars allowed:
    the training checkpoint carries a few next to its tensors.
    """
    import pickle

    import torch

    if not path.exists():
        raise missing_weights(path, "csd-vit-l")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0]
        raise WeightsError(
            f"{path} holds objects beyond tensors and numpy scalars ({reason}); "
            "check that it is the published CSD checkpoint"
        ) from None
    state = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(k.endswith("last_layer_style") for k in state):
        raise WeightsError(f"{path} is not a CSD checkpoint (no last_layer_style); re-download it")
    return {k.removeprefix("module."): v for k, v in state.items()}


_OPENAI_LAYER_PARTS = [
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
    ("attn.out_proj", "self_attn.out_proj"),
]


def _openai_layer_map(i: int) -> list[tuple[str, str]]:
    """(OpenAI key, transformers key) of one transformer block, fused attention input aside."""
    return [
        (f"transformer.resblocks.{i}.{oa}.{p}", f"encoder.layers.{i}.{hf}.{p}")
        for oa, hf in _OPENAI_LAYER_PARTS
        for p in ("weight", "bias")
    ]


_OPENAI_EMBEDDING_MAP = [
    ("conv1.weight", "embeddings.patch_embedding.weight"),
    ("class_embedding", "embeddings.class_embedding"),
    ("positional_embedding", "embeddings.position_embedding.weight"),
    ("ln_pre.weight", "pre_layrnorm.weight"),
    ("ln_pre.bias", "pre_layrnorm.bias"),
    ("ln_post.weight", "post_layernorm.weight"),
    ("ln_post.bias", "post_layernorm.bias"),
]


def _n_layers(keys: Any, prefix: str) -> int:
    return len({int(k[len(prefix) :].split(".")[0]) for k in keys if k.startswith(prefix)})


def openai_to_hf_visual(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP ``visual.*`` keys -> transformers ``CLIPVisionTransformer`` keys.

    The fused attention input projection (``in_proj_weight``: q, k, v stacked) is split.
    """
    out = {hf: state[oa] for oa, hf in _OPENAI_EMBEDDING_MAP}
    for i in range(_n_layers(state, "transformer.resblocks.")):
        out.update({hf: state[oa] for oa, hf in _openai_layer_map(i)})
        for p in ("weight", "bias"):
            q, k, v = state[f"transformer.resblocks.{i}.attn.in_proj_{p}"].chunk(3, dim=0)
            for part, tensor in zip("qkv", (q, k, v), strict=True):
                out[f"encoder.layers.{i}.self_attn.{part}_proj.{p}"] = tensor
    return out


def hf_to_openai_visual(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`openai_to_hf_visual` (used to write tiny CSD checkpoints)."""
    import torch

    out = {oa: state[hf] for oa, hf in _OPENAI_EMBEDDING_MAP}
    for i in range(_n_layers(state, "encoder.layers.")):
        out.update({oa: state[hf] for oa, hf in _openai_layer_map(i)})
        for p in ("weight", "bias"):
            parts = [state[f"encoder.layers.{i}.self_attn.{x}_proj.{p}"] for x in "qkv"]
            out[f"transformer.resblocks.{i}.attn.in_proj_{p}"] = torch.cat(parts, dim=0)
    return out


def load_csd(config: Study, device: torch.device) -> tuple[CSDStyleEncoder, Any]:
    """CSD's style encoder and its preprocessing (CLIP's: bicubic resize, centre crop, CLIP stats).

    The ViT's shape is read from the checkpoint (width, depth, patch, input size;
    heads = width / 64 as in OpenAI CLIP), so the published ViT-L/14 and the tiny
    stand-in go through the same code.
    """
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from fewstep.scoring.style_encoder import CSDStyleEncoder

    path = _folder(config, "csd-vit-l") / SCORING_MODELS["csd-vit-l"].extra["file"]
    state = read_csd_checkpoint(path)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    width, _, patch, _ = backbone["conv1.weight"].shape
    grid = round((backbone["positional_embedding"].shape[0] - 1) ** 0.5)
    vision_config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=backbone["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_n_layers(backbone, "transformer.resblocks."),
        num_attention_heads=width // OPENAI_HEAD_DIM,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="quick_gelu",
    )
    vision = CLIPVisionModel(vision_config)
    try:
        vision.load_state_dict(openai_to_hf_visual(backbone), strict=True)
    except (KeyError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0]
        raise WeightsError(f"{path}: the CSD backbone does not match CLIP's ViT layout ({reason})") from None
    model = CSDStyleEncoder(vision, state["last_layer_style"].float()).to(device).eval()
    size = grid * patch
    processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )  # CLIPImageProcessor's defaults are CSD's transforms: bicubic, centre crop, CLIP mean/std
    return model, processor
