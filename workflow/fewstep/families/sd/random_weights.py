"""Full-size random mode: the published architectures, configs on disk, weights never.

Latency does not depend on weight values, so a GPU can time real SD1.5 / SDXL
steps without a download. The folders hold the published configs (and tiny
tokenizers, which only turn text into ids); `pipeline.load_pipeline` and
`pipeline.attach_ip_adapter` build the modules directly on the device.
"""

from __future__ import annotations

import json
from pathlib import Path

from fewstep.families.sd.specs import SDFamily


def write_random_pipeline(family: SDFamily, folder: Path) -> None:
    import transformers

    from fewstep.core.io import atomic_write_json
    from fewstep.registry.tiny import build_clip_tokenizer

    folder = Path(folder)
    atomic_write_json(folder / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **family.unet})
    atomic_write_json(folder / "vae" / "config.json", {"_class_name": "AutoencoderKL", **family.vae})
    atomic_write_json(folder / "scheduler" / "scheduler_config.json", family.scheduler)
    for encoder, (class_name, config) in family.text_encoders.items():
        getattr(transformers, class_name).config_class(**config).save_pretrained(folder / encoder)
        tokenizer = build_clip_tokenizer(folder / encoder.replace("text_encoder", "tokenizer"))
        if encoder == "text_encoder_2":  # OpenCLIP's tokenizer pads with "!"
            tokenizer.pad_token = "!"
            tokenizer.save_pretrained(folder / "tokenizer_2")
    (folder / "model_index.json").write_text(json.dumps(family.model_index, indent=2))


def write_random_ip_adapter(folder: Path, family: SDFamily, kinds: list[str]) -> None:
    """The image-encoder configs the adapters `kinds` use; the adapter weights are drawn at load time."""
    from transformers import CLIPVisionConfig

    for kind in kinds:
        path = family.adapters[kind].encoder_path
        CLIPVisionConfig(**family.encoders[path]).save_pretrained(Path(folder) / path)
