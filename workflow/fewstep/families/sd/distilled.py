"""Load a distilled backbone into a base pipeline, as its model card does (job side, torch).

Two calls around the IP-Adapter, in the order diffusers' IP-Adapter guide combines them:
`load_unet` before `load_ip_adapter` (a UNet state dict loads into the base config strictly, a
UNet folder and its scheduler replace the base's), `fuse_lora` after it (`load_lora_weights`,
`fuse_lora`, then `unload_lora_weights`, which keeps the fused weights and drops PEFT's wrappers;
a LoRA the adapter brought, IP-Adapter FaceID's, stays active beside it through `set_adapters`, as
diffusers' guide combines LoRAs, so both are fused: loading alone would deactivate FaceID's).
A file that does not fit the base UNet stops with one line naming the backbone and the file.

Random weights (latency) skip the files: a fused LoRA or a distilled UNet has the base's shapes and
operations, so timing the base architecture times the distilled one; only a UNet folder's
scheduler is read (its config is written by the random recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewstep.core.errors import ConfigError
from fewstep.families.sd.distillations import PUBLISHERS, Distillation
from fewstep.registry.prepare import missing_weights

#: the adapter name the distillation's LoRA is loaded under (unloaded again once fused)
LORA_NAME = "distillation"
#: UNet config keys that fix the architecture a UNet folder must share with its base
ARCHITECTURE = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "addition_embed_type",
    "projection_class_embeddings_input_dim",
)


def _file(distillation: Distillation, folder: Path, name: str) -> Path:
    path = Path(folder) / name
    if not path.exists():
        raise missing_weights(path, distillation.publisher)
    return path


def _mismatch(key: str, distillation: Distillation, path: Path, problem: str) -> ConfigError:
    repo = PUBLISHERS[distillation.publisher].repo_id
    return ConfigError(
        f"config {key}: {path} does not fit the backbone's UNet ({problem}); "
        f"use {distillation.file} of {repo} (distillation {distillation.name})"
    )


def load_unet(pipe: Any, distillation: Distillation, folder: Path, *, weights: str, key: str) -> None:
    """Put the distilled UNet weights (and a UNet folder's scheduler) into `pipe`; LoRAs: nothing."""
    import diffusers

    if distillation.form == "lora":
        return
    if distillation.form == "unet_folder":
        import json

        scheduler = _file(distillation, folder, "scheduler/scheduler_config.json")
        class_name = json.loads(scheduler.read_text())["_class_name"]
        pipe.scheduler = getattr(diffusers, class_name).from_pretrained(scheduler.parent)
    if weights == "random":
        return
    if distillation.form == "unet":
        from safetensors.torch import load_file

        path = _file(distillation, folder, distillation.file)
        state = load_file(path, device=str(pipe.unet.device))
        expected = {name: tensor.shape for name, tensor in pipe.unet.state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unknown = sorted(set(state) - set(expected))
        shapes = sorted(name for name in set(state) & set(expected) if state[name].shape != expected[name])
        if missing or unknown or shapes:
            example = (missing or unknown or shapes)[0]
            problem = (
                f"{len(missing)} keys missing, {len(unknown)} unknown, {len(shapes)} of other shapes, "
                f"e.g. {example}"
            )
            raise _mismatch(key, distillation, path, problem)
        pipe.unet.load_state_dict(state)
        return
    path = _file(distillation, folder, f"{distillation.file}/config.json").parent
    config = diffusers.UNet2DConditionModel.load_config(path)
    differs = [
        name for name in ARCHITECTURE if _plain(config.get(name)) != _plain(pipe.unet.config.get(name))
    ]
    if differs:
        raise _mismatch(key, distillation, path, f"its {', '.join(differs)} differ")
    unet = diffusers.UNet2DConditionModel.from_pretrained(path, variant="fp16", dtype=pipe.unet.dtype)
    pipe.register_modules(unet=unet.to(pipe.unet.device))


def _plain(value: Any) -> Any:
    """Config values compared as JSON stores them (tuples and lists alike)."""
    return list(value) if isinstance(value, list | tuple) else value


def lora_problem(pipe: Any, path: Path) -> str | None:
    """Why the LoRA file at `path` cannot adapt `pipe.unet` (None: it fits), read from the state
    dict diffusers' `lora_state_dict` converts it to (kohya's and diffusers' layouts alike)."""
    try:
        state, _ = pipe.lora_state_dict(str(path.parent), weight_name=path.name, local_files_only=True)
    except (ValueError, KeyError, RuntimeError) as error:
        return f"diffusers cannot read it as a LoRA: {error!r}"[:300]
    text = [k for k in state if k.startswith(("text_encoder", "lora_te"))]
    if text:
        return f"it adapts more than the UNet, e.g. {text[0]}"
    down = [k for k in state if k.endswith((".lora.down.weight", ".lora_A.weight", ".lora_down.weight"))]
    if not down:
        return "it holds no LoRA weights"
    modules = dict(pipe.unet.named_modules())
    for key in down:
        name = key.removeprefix("unet.").rsplit(".lora", 1)[0]
        module = modules.get(name)
        width = getattr(module, "in_features", getattr(module, "in_channels", None))
        if module is None or width != state[key].shape[1]:
            found = "no such module" if module is None else f"its input is {width} wide"
            return f"{key.removeprefix('unet.')} takes {state[key].shape[1]} inputs, {found}"
    return None


def fuse_lora(pipe: Any, distillation: Distillation, folder: Path, *, weights: str, key: str) -> None:
    """`load_lora_weights` + `fuse_lora` (+ `unload_lora_weights`) of a LoRA distillation."""
    if distillation.form != "lora" or weights == "random":
        return
    path = _file(distillation, folder, distillation.file)
    problem = lora_problem(pipe, path)
    if problem:
        raise _mismatch(key, distillation, path, problem)
    loaded = list(getattr(pipe.unet, "peft_config", {}))  # IP-Adapter FaceID's LoRA (`faceid_0`)
    pipe.load_lora_weights(
        str(path.parent), weight_name=path.name, adapter_name=LORA_NAME, local_files_only=True
    )
    if loaded:  # loading makes the new LoRA the only active one: keep the adapter's active too
        names = [*loaded, LORA_NAME]
        pipe.set_adapters(names, adapter_weights=[1.0] * len(names))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
