"""The published SD1.5, SDXL and h94/IP-Adapter configurations, as plain data.

Copied field by field from the configs the hub repos ship
(`stable-diffusion-v1-5/stable-diffusion-v1-5`, `stabilityai/stable-diffusion-xl-base-1.0`,
`h94/IP-Adapter`), so random mode builds the real architectures and the tiny
stand-ins differ from them only in their sizes. No torch here: the grid and the
config check read these without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fewstep.registry.text_encoders import CLIP_L_TEXT

#: The noise schedule both base models were trained with.
_BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    **_BETAS,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    **_BETAS,
    "clip_sample": False,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

#: What both UNets share.
_UNET = dict(in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32)
SD15_UNET = dict(
    _UNET,
    sample_size=64,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    attention_head_dim=8,
    cross_attention_dim=768,
)
SDXL_UNET = dict(
    _UNET,
    sample_size=128,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280],
    attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
)
SD15_VAE = dict(_VAE, sample_size=512)
SDXL_VAE = dict(_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)

#: OpenCLIP ViT-bigG/14's text tower with its projection (SDXL's second encoder).
CLIP_BIGG_TEXT = dict(
    CLIP_L_TEXT,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)
#: h94/IP-Adapter's image encoders (`CLIPVisionModelWithProjection`).
VIT_H_VISION = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=1024,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)
VIT_BIGG_VISION = dict(
    VIT_H_VISION, hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, projection_dim=1280
)


@dataclass(frozen=True)
class IPAdapterFile:
    """One adapter file of h94/IP-Adapter and the image-encoder folder it was trained with."""

    subfolder: str
    weight_name: str
    image_encoder_folder: str  # diffusers' argument: a name with "/" is read from the repo root
    plus: bool
    plus_width: int = 0  # the Plus resampler's width (its heads are width // 64)

    @property
    def encoder_path(self) -> str:
        """The encoder folder relative to the repo root."""
        if "/" in self.image_encoder_folder:
            return self.image_encoder_folder
        return f"{self.subfolder}/{self.image_encoder_folder}"


IP_ADAPTER_REPO = "h94/IP-Adapter"
#: The fp16 safetensors variant every component folder is fetched in.
VARIANT = "fp16"
#: Plus resamplers: 16 queries; heads = inner width // 64; depth and ff_mult as diffusers assumes.
PLUS_RESAMPLER = {"num_queries": 16, "dim_head": 64, "depth": 4, "ff_mult": 4}
PLAIN_TOKENS = 4


@dataclass(frozen=True)
class SDFamily:
    """One Stable Diffusion base model: its repo, layout, defaults and adapter files."""

    name: str
    label: str  # its name on the report page
    repo_id: str
    folder: str
    pipeline_class: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    text_encoders: dict[str, tuple[str, dict[str, Any]]]  # component -> (transformers class, config)
    index_extras: dict[str, Any]  # model_index.json's entries for parts no job loads
    resolution: int
    guidance_scale: float
    adapters: dict[str, IPAdapterFile] = field(default_factory=dict)  # kind -> file
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo-root folder -> vision config

    @property
    def zeros_unset_negative(self) -> bool:
        """Its pipeline uses zero negative embeddings when no negative prompt is given (SDXL's
        ``force_zeros_for_empty_prompt``) rather than encoding ``""``."""
        return bool(self.index_extras.get("force_zeros_for_empty_prompt", False))

    @property
    def tokenizers(self) -> list[str]:
        return [name.replace("text_encoder", "tokenizer") for name in self.text_encoders]

    @property
    def model_index(self) -> dict[str, Any]:
        """The repo's model_index.json: each component's (library, class), keys sorted as published."""
        index = {
            "_class_name": self.pipeline_class,
            "image_encoder": [None, None],
            "scheduler": ["diffusers", self.scheduler["_class_name"]],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            **self.index_extras,
        }
        for encoder, tokenizer in zip(self.text_encoders, self.tokenizers, strict=True):
            index[encoder] = ["transformers", self.text_encoders[encoder][0]]
            index[tokenizer] = ["transformers", "CLIPTokenizer"]
        return dict(sorted(index.items()))

    def allow_patterns(self, text_encoders: bool) -> list[str]:
        """The files to fetch from the base model's repo: the component folders a job loads, in
        the fp16 safetensors variant (no single-file checkpoints, no other variants or formats).

        `text_encoders` adds the text towers and tokenizers (only the prompt embedding job reads them).
        """
        weights = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}
        if text_encoders:
            weights |= {name: "model" for name in self.text_encoders}
        patterns = ["model_index.json", "scheduler/scheduler_config.json"]
        for folder, stem in weights.items():
            patterns += [f"{folder}/config.json", f"{folder}/{stem}.{VARIANT}.safetensors"]
        if text_encoders:
            patterns += [f"{name}/*" for name in self.tokenizers]
        return patterns


def ip_adapter_patterns(uses: list[tuple[SDFamily, str, bool]]) -> list[str]:
    """The h94/IP-Adapter files for `(family, kind, with_encoder)` uses: each adapter file, and
    the image-encoder folders (config and safetensors) of the uses that embed references."""
    patterns = set()
    for family, kind, with_encoder in uses:
        adapter = family.adapters[kind]
        patterns.add(f"{adapter.subfolder}/{adapter.weight_name}")
        if with_encoder:
            patterns |= {f"{adapter.encoder_path}/config.json", f"{adapter.encoder_path}/model.safetensors"}
    return sorted(patterns)


SD15 = SDFamily(
    name="sd15",
    label="SD1.5",
    repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    folder="stable-diffusion-v1-5",
    pipeline_class="StableDiffusionPipeline",
    unet=SD15_UNET,
    vae=SD15_VAE,
    scheduler=SD15_SCHEDULER,
    text_encoders={"text_encoder": ("CLIPTextModel", CLIP_L_TEXT)},
    index_extras={
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "requires_safety_checker": True,
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    },
    resolution=512,
    guidance_scale=7.5,
    adapters={
        "plain": IPAdapterFile("models", "ip-adapter_sd15.bin", "image_encoder", plus=False),
        "plus": IPAdapterFile(
            "models", "ip-adapter-plus_sd15.bin", "image_encoder", plus=True, plus_width=768
        ),
    },
    encoders={"models/image_encoder": VIT_H_VISION},
)
SDXL = SDFamily(
    name="sdxl",
    label="SDXL",
    repo_id="stabilityai/stable-diffusion-xl-base-1.0",
    folder="stable-diffusion-xl-base-1.0",
    pipeline_class="StableDiffusionXLPipeline",
    unet=SDXL_UNET,
    vae=SDXL_VAE,
    scheduler=SDXL_SCHEDULER,
    text_encoders={
        "text_encoder": ("CLIPTextModel", CLIP_L_TEXT),
        "text_encoder_2": ("CLIPTextModelWithProjection", CLIP_BIGG_TEXT),
    },
    index_extras={"feature_extractor": [None, None], "force_zeros_for_empty_prompt": True},
    resolution=1024,
    guidance_scale=5.0,
    adapters={
        "plain": IPAdapterFile("sdxl_models", "ip-adapter_sdxl.bin", "image_encoder", plus=False),
        "plus": IPAdapterFile(
            "sdxl_models",
            "ip-adapter-plus_sdxl_vit-h.bin",
            "models/image_encoder",
            plus=True,
            plus_width=1280,
        ),
    },
    encoders={"models/image_encoder": VIT_H_VISION, "sdxl_models/image_encoder": VIT_BIGG_VISION},
)
FAMILIES = {f.name: f for f in (SD15, SDXL)}

#: Config name -> diffusers scheduler class; "default" keeps the one the base model ships.
SCHEDULERS = {
    "default": None,
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    # the distilled backbones' schedulers (`distillations`), as their model cards set them
    "euler_trailing": "EulerDiscreteScheduler",
    "euler_ancestral_trailing": "EulerAncestralDiscreteScheduler",
    "ddim_trailing": "DDIMScheduler",
    "lcm": "LCMScheduler",
    "tcd": "TCDScheduler",
}
#: settings passed to `from_config` with the shipped config (as the model cards do)
SCHEDULER_SETTINGS = {
    name: {"timestep_spacing": "trailing"}
    for name in ("euler_trailing", "euler_ancestral_trailing", "ddim_trailing")
}
#: InstantStyle's published block scales (the `scale` of a style adapter).
INSTANTSTYLE = {
    "sdxl": {
        "style": {"up": {"block_0": [0.0, 1.0, 0.0]}},
        "style_layout": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}},
    },
    "sd15": {
        "style": {"up": {"block_1": 1.0}},
        "style_layout": {"down": {"block_2": 1.0}, "mid": 1.0, "up": {"block_1": 1.0}},
    },
}
