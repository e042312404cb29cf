"""What the FLUX.1 families (`flux`, `kontext`) share: their CLIP-L + T5 text encoders and config
``memory``, the published size of their backbone folders and of a prompt's embedding file.
FLUX.2 [klein] has neither (a Qwen3 encoder; no memory options)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import WeightsError
from fewstep.registry.catalog import model_folder
from fewstep.registry.load import load_component

if TYPE_CHECKING:
    import torch

    from fewstep.core.study import Study

#: GB of the download estimate: a FLUX.1 backbone's weight folders at their published bf16 sizes
#: (dev, schnell and Kontext [dev] share the transformer architecture, VAE and text encoders)
BACKBONE_GB = {"transformer/*": 23.8, "vae/*": 0.17, "text_encoder/*": 0.25, "text_encoder_2/*": 9.52}


def prompt_embedding_floats(tokens: int) -> int:
    """float32 values of one prompt's embedding file: T5's `tokens` x 4096 and CLIP's pooled 768."""
    return tokens * 4096 + 768


def load_text_encoders(
    pipeline_class: Any, config: Study, model: str, device: torch.device, dtype: torch.dtype
) -> Any:
    """A text-only `pipeline_class` (CLIP-L + T5), loaded once per sweep to embed prompts."""
    from transformers import CLIPTextModel, T5EncoderModel

    weights, folder = config.weights, model_folder(config, model)
    return pipeline_class.from_pretrained(
        folder,
        transformer=None,
        vae=None,
        text_encoder=load_component(
            CLIPTextModel, folder / "text_encoder", weights, device, dtype, model=model
        ),
        text_encoder_2=load_component(
            T5EncoderModel, folder / "text_encoder_2", weights, device, dtype, model=model
        ),
        dtype=dtype,
    )


def apply_memory_options(
    big: Sequence[Any], vae: Any, memory: Mapping[str, Any], device: torch.device, dtype: torch.dtype
) -> None:
    """8-bit weight storage of the `big` networks and CPU offloading of them and the VAE, for GPUs
    smaller than the whole model."""
    import torch

    if memory["fp8_weights"]:
        for module in big:  # weights stored as float8 e4m3, each layer upcast to `dtype` as it runs
            module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if memory["offload"] == "none":
        return
    if device.type != "cuda":
        raise WeightsError("config memory.offload needs a CUDA device; set it to none on the CPU")
    cpu = torch.device("cpu")
    for module in (*big, vae):  # blocks stream in one group at a time, overlapped with compute
        module.to(cpu)
        module.enable_group_offload(
            device, cpu, offload_type="block_level", num_blocks_per_group=1, use_stream=True
        )
