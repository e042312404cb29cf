"""IP-Adapter FaceID (h94/IP-Adapter-FaceID) on SD1.5 and SDXL: the identity adapter of the SD families.

FaceID conditions on a face recognition embedding instead of a CLIP image embedding: insightface
`buffalo_l`'s ArcFace (`w600k_r50`), normed, of the face the identity's face policy chooses
(`fewstep.faces.models.FACEID_ENCODER`, embedded once per identity by the embed_identity job). So it
loads no image encoder (`load_ip_adapter(..., image_encoder_folder=None)`) and takes the embedding
through `ip_adapter_image_embeds`, built as diffusers documents it (`image_embeds`).

h94's files are the plain FaceID checkpoints, not Plus-v2: Plus-v2 also needs a CLIP ViT-H embedding
of the aligned face, set on the projection layer (`clip_embeds`, `shortcut`) outside
`ip_adapter_image_embeds`, which a precomputed per-identity file and diffusers' batch repetition do
not carry; the plain files measure identity from the face embedding alone.

An h94 FaceID `.bin` is `{"image_proj", "ip_adapter"}` like IP-Adapter's: `image_proj` an MLP
(`proj.0`, `proj.2`: 512 -> 1024 -> 4 tokens x cross width, then `norm`); `ip_adapter` numbers every
attention processor from 0 in diffusers' order, and besides cross-attention's `to_k_ip` / `to_v_ip`
every processor carries the LoRA h94 trained with it (`N.to_{q,k,v,out}_lora.{down,up}.weight`,
rank 128). That LoRA is the one the card pairs with SD1.5 as `ip-adapter-faceid_sd15_lora.safetensors`
for loaders that apply LoRAs separately; diffusers' `load_ip_adapter` applies it from the `.bin`
itself through PEFT (adapter `faceid_0`, weight 1.0), so the separate file is not fetched: loading it
too would apply the LoRA twice. Without PEFT diffusers only warns and drops the LoRA, so
`attach_faceid` refuses to run then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import ConfigError
from fewstep.faces.models import EMBEDDING_TENSORS, FACEID_ENCODER

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fewstep.core.study import Study
    from fewstep.families.base import IdentityEmbedding
    from fewstep.families.sd.specs import SDFamily

#: config ``adapters.<id>.file`` of a FaceID adapter (``role: identity``)
FACEID_FILE = "faceid"
FACEID_REPO = "h94/IP-Adapter-FaceID"
#: the registry model holding h94/IP-Adapter-FaceID's files (registered by `models`)
FACEID_MODEL = "ip-adapter-faceid"
#: the identity embedding file's tensor FaceID reads (`fewstep.jobs.precompute`)
FACEID_EMBEDDING = EMBEDDING_TENSORS[FACEID_ENCODER.name]
EMBEDDING_DIM = 512  # insightface ArcFace
PUBLISHED_LORA_RANK = 128
TOKENS = 4  # both files project the face to 4 tokens


@dataclass(frozen=True)
class FaceIDFile:
    """One FaceID checkpoint of h94/IP-Adapter-FaceID (at the repo root), its LoRA inside."""

    weight_name: str


FACEID_FILES = {
    "sd15": FaceIDFile("ip-adapter-faceid_sd15.bin"),
    "sdxl": FaceIDFile("ip-adapter-faceid_sdxl.bin"),
}


def is_faceid(adapter: Mapping[str, Any]) -> bool:
    return adapter["kind"] == "ip_adapter" and adapter.get("file") == FACEID_FILE


def check_faceid(key: str, adapter: Mapping[str, Any], family: str) -> None:
    """FaceID is the identity adapter and only FaceID is: role and file go together."""
    role, faceid = adapter.get("role"), adapter.get("file") == FACEID_FILE
    if faceid and role != "identity":
        raise ConfigError(f"config adapters.{key}.role: file faceid conditions on a face; set role identity")
    if role == "identity" and not faceid:
        raise ConfigError(
            f"config adapters.{key}.file: role identity needs h94's FaceID (file faceid); plain and plus "
            "take style or object pictures"
        )
    if faceid and family not in FACEID_FILES:
        raise ConfigError(f"config adapters.{key}.file: h94 publishes no FaceID file for {family}")


def generation_weights(family: str) -> dict[str, tuple[str, ...]]:
    """What of h94/IP-Adapter-FaceID a generation job of `family` reads."""
    return {FACEID_MODEL: (FACEID_FILES[family].weight_name,)}


# --- h94's layout -----------------------------------------------------------------
def faceid_state_dict(
    unet: Any, rank: int = PUBLISHED_LORA_RANK, std: float = 0.02
) -> dict[str, dict[str, torch.Tensor]]:
    """Random weights in h94's FaceID file format for `unet` (which may sit on the meta device).

    LoRA up-projections are random too (trained ones are not zero), so a stand-in's LoRA changes
    the images and a lost LoRA shows.
    """
    import torch

    cross = unet.config.cross_attention_dim
    layers: dict[str, torch.Tensor] = {}
    for index, name in enumerate(unet.attn_processors):
        attention = unet.get_submodule(name.removesuffix(".processor"))
        width = attention.to_q.weight.shape[0]
        context = attention.to_k.weight.shape[1]
        for proj, fan_in in (("q", width), ("k", context), ("v", context), ("out", width)):
            layers[f"{index}.to_{proj}_lora.down.weight"] = torch.randn(rank, fan_in) * std
            layers[f"{index}.to_{proj}_lora.up.weight"] = torch.randn(width, rank) * std
        if name.endswith("attn2.processor"):
            for proj in ("k", "v"):
                layers[f"{index}.to_{proj}_ip.weight"] = torch.randn(width, cross) * std
    image_proj = {
        "proj.0.weight": torch.randn(2 * EMBEDDING_DIM, EMBEDDING_DIM) * std,
        "proj.0.bias": torch.randn(2 * EMBEDDING_DIM) * std,
        "proj.2.weight": torch.randn(TOKENS * cross, 2 * EMBEDDING_DIM) * std,
        "proj.2.bias": torch.randn(TOKENS * cross) * std,
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    return {"image_proj": image_proj, "ip_adapter": layers}


def write_faceid_file(folder: Path, family: SDFamily, unet_config: Mapping[str, Any], **random: Any) -> Path:
    """A seeded FaceID `.bin` for a UNet of `unet_config`, as h94 ships it (`torch.save` of the dict)."""
    import diffusers
    import torch

    from fewstep.core.io import atomic_torch_save
    from fewstep.registry.tiny import manual_seed

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**unet_config)
    target = Path(folder) / FACEID_FILES[family.name].weight_name
    manual_seed(f"tiny-{family.name}-{target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(faceid_state_dict(unet, **random), target)
    return target


# --- the job side -----------------------------------------------------------------
def require_peft() -> None:
    """diffusers applies FaceID's LoRA through PEFT; without it, it would drop the LoRA with a warning."""
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise ConfigError(
            "config adapters (file faceid): diffusers applies FaceID's LoRA through PEFT; "
            "pip install peft==0.21.2"
        )


def attach_faceid(pipe: Any, family: SDFamily, root: Path, *, weights: str) -> None:
    """diffusers' `load_ip_adapter` for `family`'s FaceID file, without an image encoder.

    Random weights pass diffusers a state dict of the published shapes drawn on the device.
    """
    import torch

    from fewstep.registry.prepare import missing_weights

    require_peft()
    weight_name = FACEID_FILES[family.name].weight_name
    if weights == "random":
        with torch.device(pipe.device):
            state = faceid_state_dict(pipe.unet)
        pipe.load_ip_adapter(state, subfolder=None, weight_name=weight_name, image_encoder_folder=None)
        pipe.unet.to(pipe.unet.dtype)
        return
    if not (Path(root) / weight_name).exists():
        raise missing_weights(Path(root) / weight_name, FACEID_MODEL)
    pipe.load_ip_adapter(
        str(root), subfolder=None, weight_name=weight_name, image_encoder_folder=None, local_files_only=True
    )


class FaceIDFaceEncoder:
    """FaceID's face pipeline (the SD families' `identity_encoder`): the face config ``face.policy``
    picks among insightface's detections (as InfuseNet's), and buffalo_l's `w600k_r50` normed
    embedding of it (`FACEID_EMBEDDING`), on the CPU: a handful of 112 px faces per sweep."""

    def __init__(self, config: Study):
        import torch

        from fewstep.faces.models import CONDITIONING_FACE_PACK, face_analyzer, load_faceid_encoder

        self.device = torch.device("cpu")
        self.policy = config.face.policy
        self.analyzer = face_analyzer(config, CONDITIONING_FACE_PACK)
        self.recognizer = load_faceid_encoder(config)

    def encode(self, rgb: np.ndarray) -> IdentityEmbedding | None:
        import numpy as np
        import torch

        from fewstep.core.images import rgb_to_bgr
        from fewstep.families.base import IdentityEmbedding

        bgr = rgb_to_bgr(rgb)
        found = self.analyzer.analyze(bgr, self.policy)
        if found is None:
            return None
        embedding = np.asarray(self.recognizer.embed(bgr, found.face.kps), dtype=np.float32)
        return IdentityEmbedding(
            {FACEID_EMBEDDING: torch.from_numpy(embedding)[None]},
            {"n_faces": str(found.n_faces), "policy": self.policy},
        )


def image_embeds(embedding: torch.Tensor) -> torch.Tensor:
    """`ip_adapter_image_embeds`' one tensor for a [1, 512] normed face embedding, as diffusers'
    FaceID guide builds it: the face stacked to [1, 1, 1, 512] after zeros as its negative."""
    import torch

    face = torch.stack([embedding.reshape(1, EMBEDDING_DIM)], dim=0).unsqueeze(0)
    return torch.cat([torch.zeros_like(face), face])
