"""Load and run diffusers' own SD1.5 / SDXL pipelines with IP-Adapter.

Generation jobs hold the UNet (with the adapter's projection and attention
layers), the VAE and the scheduler, never a text or image encoder: prompt and
reference embeddings are computed once per sweep by `encode_prompt` /
`encode_reference` and passed to the pipeline as `prompt_embeds` and
`ip_adapter_image_embeds`. Every step runs inside diffusers' loop;
`callback_on_step_end` times it. When trajectories are recorded, the step's clean-image estimate
x0 is the scheduler's own where its step output reports one (`pred_original_sample`: DDIM,
Euler, Euler ancestral; LCM's `denoised`, which its last step returns as the final latents), else
computed from the guided noise prediction and the scheduler's `alphas_cumprod` (`clean_estimate`:
PNDM, DPM-Solver++, TCD). Recording reads the step's tensors and changes none of them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewstep.core.errors import ConfigError
from fewstep.families.base import StepTimer, synchronize
from fewstep.families.sd.scales import reached_layers
from fewstep.families.sd.specs import SCHEDULER_SETTINGS, SCHEDULERS, SDXL, VARIANT, SDFamily
from fewstep.registry.prepare import missing_weights


def load_pipeline(
    family: SDFamily,
    folder: Path,
    *,
    weights: str,
    device: torch.device,
    dtype: torch.dtype,
    text_encoders: bool = False,
    denoiser: bool = True,
) -> Any:
    """The family's diffusers pipeline from a prepared folder.

    `text_encoders` loads the tokenizers and text towers (prompt embedding jobs only);
    `denoiser` the UNet and VAE (generation and reference embedding jobs). Random
    weights build the published architectures on the device from the saved configs.
    """
    import diffusers

    from fewstep.registry.load import load_component

    folder = Path(folder)
    if not (folder / "model_index.json").exists():
        raise missing_weights(folder / "model_index.json", family.name)
    pipeline_class = getattr(diffusers, family.pipeline_class)
    components: dict[str, Any] = {}  # handed to from_pretrained: None leaves a component out
    if not text_encoders:
        components |= {name: None for name in family.text_encoders}
        components |= {name: None for name in family.tokenizers}
    if not denoiser:
        components |= {"unet": None, "vae": None}
    # SD1.5's index names a safety checker and its feature extractor, which are never fetched.
    components |= {"feature_extractor": None}
    if family is not SDXL:
        components |= {"safety_checker": None, "requires_safety_checker": False}
    if weights == "random":
        import transformers

        classes = {
            "unet": diffusers.UNet2DConditionModel,
            "vae": diffusers.AutoencoderKL,
            **{name: getattr(transformers, cls) for name, (cls, _) in family.text_encoders.items()},
        }
        for name, cls in classes.items():
            if name not in components:
                components[name] = load_component(
                    cls, folder / name, weights, device, dtype, model=family.name
                )
        pipe = pipeline_class.from_pretrained(folder, **components)
    else:
        pipe = pipeline_class.from_pretrained(folder, variant=VARIANT, dtype=dtype, **components)
    pipe.set_progress_bar_config(disable=True)  # jobs show one bar per cell, not per image
    return pipe.to(device)


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap in one of `SCHEDULERS` built from the shipped scheduler's config with its
    `SCHEDULER_SETTINGS` (as the model cards call `from_config`); "default" keeps it."""
    import diffusers

    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler {name!r} is not one of {', '.join(SCHEDULERS)}")
    if SCHEDULERS[name] is not None:
        scheduler_class = getattr(diffusers, SCHEDULERS[name])
        pipe.scheduler = scheduler_class.from_config(
            pipe.scheduler.config, **SCHEDULER_SETTINGS.get(name, {})
        )


def attach_ip_adapter(
    pipe: Any, family: SDFamily, kind: str, root: Path, *, weights: str, with_encoder: bool
) -> None:
    """diffusers' `load_ip_adapter` for the family's `kind` ("plain", "plus") from h94's layout.

    `with_encoder` also loads the image encoder the adapter was trained with, which
    only the reference-embedding job needs. Random weights pass diffusers a state
    dict of the published shapes, drawn on the device, and build the encoder from
    its config.
    """
    adapter = family.adapters[kind]
    root = Path(root)
    if weights == "random":
        from fewstep.families.sd.tiny import ip_adapter_state_dict

        with torch.device(pipe.device):
            vision = family.encoders[adapter.encoder_path]
            state = ip_adapter_state_dict(pipe.unet, adapter, vision, adapter.plus_width)
        pipe.load_ip_adapter(
            state, subfolder=adapter.subfolder, weight_name=adapter.weight_name, image_encoder_folder=None
        )
        if with_encoder:
            _attach_random_encoder(pipe, root / adapter.encoder_path)
        pipe.unet.to(pipe.unet.dtype)
        return
    if not (root / adapter.subfolder / adapter.weight_name).exists():
        raise missing_weights(root / adapter.subfolder / adapter.weight_name, "ip-adapter")
    pipe.load_ip_adapter(
        str(root),
        subfolder=adapter.subfolder,
        weight_name=adapter.weight_name,
        image_encoder_folder=adapter.image_encoder_folder if with_encoder else None,
        local_files_only=True,
    )


def _attach_random_encoder(pipe: Any, folder: Path) -> None:
    """A random image encoder and the processor `load_ip_adapter` would pair with it."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from fewstep.registry.load import load_component

    encoder = load_component(
        CLIPVisionModelWithProjection, folder, "random", pipe.device, pipe.unet.dtype, model="ip-adapter"
    )
    size = encoder.config.image_size
    pipe.register_modules(
        image_encoder=encoder, feature_extractor=CLIPImageProcessor(size=size, crop_size=size)
    )


def _attention_of(processor_name: str) -> str:
    """`up_blocks.0.attentions.1.transformer_blocks.3.attn2.processor` -> `up_blocks.0.attentions.1`."""
    return re.match(r"^(.*?attentions\.\d+)\.", processor_name).group(1)


def apply_scale(pipe: Any, scale: float | dict, key: str) -> list[str]:
    """`set_ip_adapter_scale(scale)`; return the attention modules it reaches (non-zero scale).

    A dict that diffusers would silently turn into "adapter off" (it names only blocks
    without attention, like SD1.5's `up.block_0`) is refused first by the config check
    `scales.reached_layers`, with the config key `key` in the message.
    """
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    reached_layers(dict(pipe.unet.config), scale, key)
    pipe.set_ip_adapter_scale(scale)
    return sorted(
        {
            _attention_of(name)
            for name, proc in pipe.unet.attn_processors.items()
            if isinstance(proc, IPAdapterAttnProcessor | IPAdapterAttnProcessor2_0) and any(proc.scale)
        }
    )


def encode_prompt(
    pipe: Any, prompt: str, negative_prompt: str | None, device: torch.device
) -> dict[str, Any]:
    """The prompt's embeddings with their classifier-free-guidance negatives, keyed by the
    pipeline's own argument names (`prompt_embeds`, `negative_prompt_embeds`, SDXL's pooled)."""
    with torch.no_grad():
        out = pipe.encode_prompt(
            prompt=prompt,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=negative_prompt,
        )
    names = ["prompt_embeds", "negative_prompt_embeds"]
    if len(out) == 4:
        names += ["pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    return dict(zip(names, out, strict=True))


def encode_reference(pipe: Any, image: Any, device: torch.device) -> list[torch.Tensor]:
    """diffusers' `prepare_ip_adapter_image_embeds` for one reference image: one tensor per
    loaded adapter, `cat([negative, positive])` as classifier-free guidance wants it."""
    with torch.no_grad():
        return pipe.prepare_ip_adapter_image_embeds(image, None, device, 1, True)


@dataclass
class Condition:
    """One image's conditioning: prompt embeddings keyed by the pipeline's argument names and,
    with an adapter, one `cat([negative, positive])` image-embedding tensor per adapter."""

    prompt: dict[str, torch.Tensor]
    image_embeds: list[torch.Tensor] | None = None

    def same_reference(self, other: Condition) -> bool:
        if self.image_embeds is None or other.image_embeds is None:
            return self.image_embeds is other.image_embeds
        return all(torch.equal(a, b) for a, b in zip(self.image_embeds, other.image_embeds, strict=True))


def reference_runs(conditions: list[Condition]) -> list[list[int]]:
    """Indices of consecutive conditions that share a reference.

    diffusers' pipelines repeat the given `ip_adapter_image_embeds` over the whole batch
    (one reference image for every prompt of a call), so a batch can only hold items of
    one reference; the grid's item order (reference x prompt x seed) keeps runs long.
    """
    runs: list[list[int]] = []
    for i, condition in enumerate(conditions):
        if runs and conditions[runs[-1][0]].same_reference(condition):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


class RunTimers:
    """The `base.StepTimer` of a batch run as several pipeline calls (one per reference run):
    step i's time is the sum over the calls; a mark after the last call (decoding) goes to the last."""

    def __init__(self, timers: list[StepTimer]):
        self.timers = timers

    def mark(self) -> None:
        self.timers[-1].mark()

    def seconds(self) -> list[float]:
        each = [timer.seconds() for timer in self.timers]
        steps = min(len(intervals) for intervals in each)
        return [sum(intervals[k] for intervals in each) for k in range(steps)] + each[-1][steps:]


@dataclass
class DenoiseOutput:
    """A batch's final latents and its timer, marked before the first step and after each step
    (`cell.SDCellPipeline` turns it into the contract's `base.Denoised`)."""

    latents: torch.Tensor
    timesteps: list[float]  # one per UNet evaluation (PNDM: steps + 1)
    timer: Any  # base.StepTimer or RunTimers
    x0: list[torch.Tensor] = field(default_factory=list)  # latent clean-image estimate after each step

    @property
    def step_seconds(self) -> list[float]:
        """Seconds of each step (waits for the device). Step 0's time includes the set-up."""
        return self.timer.seconds()

    @property
    def denoise_seconds(self) -> float:
        return sum(self.step_seconds)


@dataclass
class Generation:
    """One image (diffusers' output_type="np": [H, W, 3] float in [0, 1]) and its timings."""

    image: np.ndarray
    timesteps: list[float]
    step_seconds: list[float]
    decode_seconds: float
    x0: list[torch.Tensor] = field(default_factory=list)


class _ModelInput:
    """Forward hook keeping the UNet's last input (x_t in the DDPM scaling, as `clean_estimate` takes it)."""

    def __init__(self, unet: Any):
        self.handle = unet.register_forward_hook(self, with_kwargs=True)
        self.sample = None

    def __call__(self, module, args, kwargs, output):
        self.sample = args[0] if args else kwargs["sample"]


#: fields of a scheduler's step output that hold its clean-image estimate (LCM: `denoised`)
REPORTED_X0 = ("pred_original_sample", "denoised")


class _SchedulerStep:
    """The scheduler's `step` for one pipeline call, keeping the noise prediction it is given and
    the x0 its output reports (`REPORTED_X0`, None where it reports none); it returns what the
    pipeline asked for (the same tensors), so the sampling is unchanged. It shows the step's own
    signature: pipelines pass `generator` and `eta` only to a step that names them."""

    def __init__(self, scheduler: Any):
        import inspect

        self.scheduler, self.own = scheduler, vars(scheduler).get("step")
        self.step = scheduler.step
        self.__signature__ = inspect.signature(self.step)
        self.eps = self.x0 = None
        scheduler.step = self

    def __call__(self, model_output: torch.Tensor, *args: Any, return_dict: bool = True, **kwargs: Any):
        out = self.step(model_output, *args, return_dict=True, **kwargs)
        self.eps = model_output
        self.x0 = next((x for x in (getattr(out, n, None) for n in REPORTED_X0) if x is not None), None)
        return out if return_dict or isinstance(out, tuple) else out.to_tuple()

    def remove(self) -> None:
        if self.own is None:
            del self.scheduler.step  # the class's method again
        else:
            self.scheduler.step = self.own


def clean_estimate(scheduler: Any, sample: torch.Tensor, timestep: Any, eps: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) for an epsilon-predicting UNet.

    Every scheduler here feeds the UNet x_t in the DDPM scaling (Euler's
    `scale_model_input` divides by sqrt(sigma^2 + 1), which is exactly that). Between
    training timesteps (Euler's "linspace" spacing) abar follows Euler's own linear
    interpolation of sigma = sqrt((1 - abar) / abar) in t.
    """
    abar = scheduler.alphas_cumprod.double().numpy()
    sigma = np.interp(float(timestep), np.arange(len(abar)), ((1 - abar) / abar) ** 0.5)
    abar_t = 1.0 / (1.0 + sigma**2)
    x0 = (sample.double() - (1 - abar_t) ** 0.5 * eps.double()) / abar_t**0.5
    return x0.to(sample.dtype)


#: called after each step of a pipeline call: (index, timestep, guided noise prediction, x0)
OnStep = Callable[[int, float, torch.Tensor, torch.Tensor], None]


def denoise(
    pipe: Any,
    conditions: list[Condition],
    seeds: list[int],
    *,
    steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    capture_x0: bool = False,
    on_step: OnStep | None = None,
    eta: float = 0.0,
) -> DenoiseOutput:
    """A batch through the pipeline's own loop (`output_type="latent"`), one call per run of
    items sharing a reference, image i from the noise of seed `seeds[i]` drawn on the CPU
    (the same on every device). Each call's steps are marked on a `base.StepTimer` in
    `callback_on_step_end` (no synchronize per step); `capture_x0` keeps each step's x0 on the
    CPU, `on_step` receives it on the device. `eta` is the pipeline's (DDIM's eta, TCD's gamma)."""
    runs = [
        _denoise_run(
            pipe,
            [conditions[i] for i in run],
            [seeds[i] for i in run],
            steps,
            guidance_scale,
            height,
            width,
            capture_x0,
            on_step,
            eta,
        )
        for run in reference_runs(conditions)
    ]
    return DenoiseOutput(
        latents=torch.cat([r.latents for r in runs]),
        timesteps=runs[0].timesteps,
        timer=runs[0].timer if len(runs) == 1 else RunTimers([r.timer for r in runs]),
        x0=[torch.cat(step) for step in zip(*(r.x0 for r in runs), strict=True)],
    )


def _denoise_run(
    pipe: Any,
    conditions: list[Condition],
    seeds: list[int],
    steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    capture_x0: bool,
    on_step: OnStep | None,
    eta: float,
) -> DenoiseOutput:
    device = pipe._execution_device
    cfg = guidance_scale > 1
    timer = StepTimer(device)
    record: dict[str, list] = {"t": [], "x0": []}
    recording = capture_x0 or on_step is not None
    hook = _ModelInput(pipe.unet) if recording else None
    stepped = _SchedulerStep(pipe.scheduler) if recording else None

    def on_step_end(pipeline, index, timestep, tensors):
        timer.mark()
        record["t"].append(float(timestep))
        if hook is not None:
            eps, x0 = stepped.eps, stepped.x0  # the guided noise prediction the scheduler stepped with
            if x0 is None:
                sample = hook.sample.chunk(2)[1] if cfg else hook.sample
                x0 = clean_estimate(pipeline.scheduler, sample, timestep, eps)
            if capture_x0:
                record["x0"].append(x0.cpu())
            if on_step is not None:
                on_step(index, float(timestep), eps, x0)
        return tensors

    kwargs = {k: torch.cat([c.prompt[k] for c in conditions]) for k in conditions[0].prompt}
    embeds = conditions[0].image_embeds
    if embeds is not None:
        kwargs["ip_adapter_image_embeds"] = embeds if cfg else [e.chunk(2)[1] for e in embeds]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    timer.mark()
    try:
        with torch.no_grad():
            latents = pipe(
                **kwargs,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                eta=eta,
                height=height,
                width=width,
                generator=generators,
                output_type="latent",
                callback_on_step_end=on_step_end,
            ).images
    finally:
        if hook is not None:
            hook.handle.remove()
            stepped.remove()
    return DenoiseOutput(latents=latents, timesteps=record["t"], timer=timer, x0=record["x0"])


def decode(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Latents (final or x0) to [B, H, W, 3] floats in [0, 1], as the pipeline decodes them
    (its fp16 VAE upcast never applies: jobs run in bf16 or float32)."""
    return pipe.image_processor.pt_to_numpy(decode_tensor(pipe, latents))


def decode_tensor(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents to [B, 3, H, W] in [0, 1] on the device, in the VAE's dtype (the pipeline's steps)."""
    vae = pipe.vae
    with torch.no_grad():
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="pt")


def decode_uint8(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] uint8 on the device, rounded as diffusers' `numpy_to_pil` rounds float32."""
    image = decode_tensor(pipe, latents).permute(0, 2, 3, 1).float()
    return (image * 255).round().to(torch.uint8)


def generate(
    pipe: Any,
    *,
    prompt: dict[str, Any],
    image_embeds: list[torch.Tensor] | None,
    steps: int,
    guidance_scale: float,
    seed: int,
    height: int,
    width: int,
    capture_x0: bool = False,
    eta: float = 0.0,
) -> Generation:
    """One image: `denoise` then `decode`."""
    device = pipe._execution_device
    result = denoise(
        pipe,
        [Condition(prompt, image_embeds)],
        [seed],
        steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        capture_x0=capture_x0,
        eta=eta,
    )
    start = time.perf_counter()
    image = decode(pipe, result.latents)[0]
    synchronize(device)
    return Generation(
        image=image,
        timesteps=result.timesteps,
        step_seconds=result.step_seconds,
        decode_seconds=time.perf_counter() - start,
        x0=result.x0,
    )
