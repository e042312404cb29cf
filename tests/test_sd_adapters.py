"""IP-Adapter on the tiny SD1.5 / SDXL pipelines: loading from h94's layout, scale 0,
InstantStyle block scales, precomputed image embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.core.errors import ConfigError
from fewstep.families.sd import specs
from fewstep.families.sd.pipeline import (
    apply_scale,
    attach_ip_adapter,
    encode_prompt,
    encode_reference,
    generate,
    load_pipeline,
)

CPU = torch.device("cpu")
FAMILIES = list(specs.FAMILIES.values())
CASES = [(f, kind) for f in FAMILIES for kind in ("plain", "plus")]
IDS = [f"{f.name}-{kind}" for f, kind in CASES]


def _pipe(tiny_sd, family, kind=None, *, with_encoder=False, text=False):
    pipe = load_pipeline(
        family, tiny_sd / family.folder, weights="tiny", device=CPU, dtype=torch.float32, text_encoders=text
    )
    if kind is not None:
        attach_ip_adapter(
            pipe, family, kind, tiny_sd / "IP-Adapter", weights="tiny", with_encoder=with_encoder
        )
    return pipe


@pytest.fixture(scope="module")
def reference() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture(scope="module")
def prompts(tiny_sd) -> dict:
    negative = "blurry, low quality"
    return {
        f.name: encode_prompt(_pipe(tiny_sd, f, text=True), "a cup of coffee, watercolor", negative, CPU)
        for f in FAMILIES
    }


@pytest.fixture(scope="module")
def references(tiny_sd, reference) -> dict:
    """Reference embeddings computed once, by a job that holds the image encoder."""
    return {
        (f.name, kind): encode_reference(_pipe(tiny_sd, f, kind, with_encoder=True), reference, CPU)
        for f, kind in CASES
    }


def _run(pipe, family, prompt, image_embeds, steps=3):
    return generate(
        pipe,
        prompt=prompt,
        image_embeds=image_embeds,
        steps=steps,
        guidance_scale=family.guidance_scale,
        seed=7,
        height=64,
        width=64,
    ).image


@pytest.mark.parametrize(("family", "kind"), CASES, ids=IDS)
def test_generation_jobs_hold_no_encoder(tiny_sd, family, kind):
    pipe = _pipe(tiny_sd, family, kind)
    assert pipe.image_encoder is None
    assert all(getattr(pipe, name) is None for name in family.text_encoders)
    assert type(pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__ == (
        "IPAdapterPlusImageProjection" if kind == "plus" else "ImageProjection"
    )


@pytest.mark.parametrize(("family", "kind"), CASES, ids=IDS)
def test_scale_zero_is_the_pipeline_without_the_adapter(tiny_sd, prompts, references, family, kind):
    prompt, embeds = prompts[family.name], references[family.name, kind]
    bare = _run(_pipe(tiny_sd, family), family, prompt, None)
    pipe = _pipe(tiny_sd, family, kind)
    apply_scale(pipe, 1.0, "adapters.test.scale")
    full = _run(pipe, family, prompt, embeds)
    apply_scale(pipe, 0.0, "adapters.test.scale")
    off = _run(pipe, family, prompt, embeds)
    pipe.unload_ip_adapter()
    unloaded = _run(pipe, family, prompt, None)
    assert np.array_equal(off, bare)
    assert np.array_equal(unloaded, bare)
    assert np.abs(full - bare).mean() > 1e-3, "the tiny adapter must visibly change the image"


@pytest.mark.parametrize(("family", "kind"), CASES, ids=IDS)
def test_precomputed_image_embeddings_equal_passing_the_image(
    tiny_sd, prompts, references, reference, family, kind
):
    pipe = _pipe(tiny_sd, family, kind, with_encoder=True)
    from_embeds = _run(pipe, family, prompts[family.name], references[family.name, kind])
    with torch.no_grad():
        from_image = pipe(
            **prompts[family.name],
            ip_adapter_image=reference,
            num_inference_steps=3,
            guidance_scale=family.guidance_scale,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(7),
            output_type="np",
        ).images[0]
    assert np.array_equal(from_embeds, from_image)


SD15_UP_1 = [f"up_blocks.1.attentions.{i}" for i in range(3)]


@pytest.mark.parametrize(
    ("family", "style", "reached"),
    [
        (specs.SDXL, "style", ["up_blocks.0.attentions.1"]),
        (specs.SDXL, "style_layout", ["down_blocks.2.attentions.1", "up_blocks.0.attentions.1"]),
        (specs.SD15, "style", SD15_UP_1),
        (
            specs.SD15,
            "style_layout",
            [
                "down_blocks.2.attentions.0",
                "down_blocks.2.attentions.1",
                "mid_block.attentions.0",
                *SD15_UP_1,
            ],
        ),
    ],
)
def test_instantstyle_scales_reach_exactly_the_intended_attention_layers(tiny_sd, family, style, reached):
    pipe = _pipe(tiny_sd, family, "plus")
    scale = specs.INSTANTSTYLE[family.name][style]
    assert apply_scale(pipe, scale, "adapters.style.scale") == reached
    for name, processor in pipe.unet.attn_processors.items():
        if hasattr(processor, "scale"):
            on = any(name.startswith(f"{layer}.") for layer in reached)
            assert processor.scale == [1.0 if on else 0.0], name


def test_a_style_dict_that_reaches_no_attention_is_refused(tiny_sd):
    """SD1.5's up.block_0 has no attention: diffusers silently sets every scale to 0."""
    pipe = _pipe(tiny_sd, specs.SD15, "plain")
    with pytest.raises(ConfigError) as err:
        apply_scale(pipe, {"up": {"block_0": [0.0, 1.0, 0.0]}}, "adapters.style.scale")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("adapters.style.scale: ")
    assert "up.block_1, up.block_2, up.block_3" in message and "up.block_0," not in message
    assert "kind none" in message


def test_a_block_list_of_the_wrong_length_names_the_key(tiny_sd):
    pipe = _pipe(tiny_sd, specs.SDXL, "plain")
    with pytest.raises(
        ConfigError, match=r"^adapters\.style\.scale\.up\.block_0: 3 scales \(one per attention"
    ):
        apply_scale(pipe, {"up": {"block_0": [0.0, 1.0]}}, "adapters.style.scale")


SCALE_DICTS = {
    "sdxl": [
        *specs.INSTANTSTYLE["sdxl"].values(),
        0.7,
        {"down": 1.0},
        {"mid": [0.5]},
        {"up": {"block_1": [1.0, 0.0, 1.0]}},
        {"down": {"block_1": [0.0, 1.0]}, "up": 0.3},
        {"up": {"block_2": 1.0, "block_0": [0.0, 0.0, 2.0]}},  # up.block_2 has no attention
    ],
    "sd15": [
        *specs.INSTANTSTYLE["sd15"].values(),
        1.0,
        {"down": {"block_0": 1.0}},
        {"up": {"block_3": [0.0, 0.0, 1.0]}},
        {"mid": 1.0, "up": {"block_0": 1.0}},
    ],
}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_the_config_check_agrees_with_diffusers(tiny_sd, family):
    """`scales.reached_layers` (no torch, run while the grid is built) predicts exactly the
    layers diffusers' `set_ip_adapter_scale` gives a non-zero scale."""
    from fewstep.families.sd.scales import reached_layers

    pipe = _pipe(tiny_sd, family, "plain")
    for scale in SCALE_DICTS[family.name]:
        predicted = reached_layers(family.unet, scale, "adapters.x.scale")
        assert predicted == apply_scale(pipe, scale, "adapters.x.scale"), scale
        assert predicted


@pytest.mark.parametrize(
    ("family", "kind"), [(specs.SDXL, "plus"), (specs.SD15, "plain")], ids=["sdxl", "sd15"]
)
def test_a_batch_gives_each_items_own_image(tiny_sd, prompts, references, family, kind):
    """A batch of items with two prompts and two references gives the images of the items
    run one at a time: no prompt or reference leaks into another item (diffusers repeats one
    reference over a call, so each run of one reference is its own call)."""
    from fewstep.families.sd.pipeline import Condition, decode, denoise, reference_runs

    pipe = _pipe(tiny_sd, family, kind)
    prompt, embeds = prompts[family.name], references[family.name, kind]
    other_prompt = {k: v.flip(-1) for k, v in prompt.items()}
    other_embeds = [e.flip(-1) for e in embeds]
    conditions = [
        Condition(prompt, embeds),
        Condition(other_prompt, embeds),
        Condition(prompt, other_embeds),
    ]
    assert reference_runs(conditions) == [[0, 1], [2]]
    seeds = [3, 4, 5]
    options = dict(steps=2, guidance_scale=family.guidance_scale, height=64, width=64)
    result = denoise(pipe, conditions, seeds, **options, capture_x0=True)
    evaluations = 3 if family is specs.SD15 else 2  # PNDM repeats its second timestep
    assert len(result.step_seconds) == len(result.timesteps) == len(result.x0) == evaluations
    assert result.x0[0].shape[0] == 3
    batch = decode(pipe, result.latents)
    for image, condition, seed in zip(batch, conditions, seeds, strict=True):
        alone = decode(pipe, denoise(pipe, [condition], [seed], **options).latents)[0]
        np.testing.assert_allclose(image, alone, atol=1e-4)
    assert min(np.abs(batch[i] - batch[j]).mean() for i, j in ((0, 1), (0, 2), (1, 2))) > 1e-3
