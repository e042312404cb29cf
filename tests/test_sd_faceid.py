"""IP-Adapter FaceID on SD1.5 and SDXL: h94's file layout, diffusers' documented usage bit for bit,
the buffalo_l face embedding the identity job writes for it, and the grid's view of its cells."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fewstep.core.errors import ConfigError
from fewstep.core.study import Study
from fewstep.families import FAMILIES
from fewstep.families.sd import faceid
from fewstep.families.sd.specs import FAMILIES as SD
from fewstep.grid import Grid
from tests.conftest import study_of

CPU = torch.device("cpu")
RAW = {
    "sweep": "faceid",
    "weights": "tiny",
    "device": "cpu",
    "dtype": "float32",
    "identities": [{"id": "astronaut", "image": "builtin:astronaut"}],
    "prompts": [{"id": "p", "text": "A portrait photo of the person, soft light"}],
    "seeds": [5],
    "backbones": {
        "sd15": {"family": "sd15", "model": "sd15", "steps": [2], "resolution": 64, "scheduler": "ddim"},
        "sdxl": {"family": "sdxl", "model": "sdxl", "steps": [2], "resolution": 64, "scheduler": "ddim"},
        # FaceID on a distilled backbone: LCM-LoRA fused after FaceID's layers and LoRA
        "sd15-lcm": {
            "family": "sd15",
            "model": "sd15",
            "distillation": "lcm-lora",
            "steps": [2],
            "resolution": 64,
        },
    },
    "adapters": {"face": {"kind": "ip_adapter", "role": "identity", "file": "faceid", "scale": 0.7}},
    "cells": [{"backbones": ["sd15", "sdxl", "sd15-lcm"], "adapters": ["face"]}],
}


def _config(root, **changes) -> Study:
    from fewstep.core.config import validate

    raw = copy.deepcopy(RAW) | {k: str(root / k) for k in ("results_dir", "models_dir", "reports_dir")}
    return study_of(validate(raw | changes))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Study:
    """The FaceID sweep with every model it needs prepared (tiny)."""
    from fewstep.jobs.prepare import prepare_model

    study = _config(tmp_path_factory.mktemp("faceid"))
    for name in Grid.of(study).models:
        prepare_model(study, name)
    return study


def _face(config) -> np.ndarray:
    """A normed face embedding from the prepared buffalo_l stand-in, as the identity job makes it."""
    from fewstep.core.images import load_rgb, rgb_to_bgr
    from fewstep.faces.models import CONDITIONING_FACE_PACK, face_analyzer, load_faceid_encoder

    bgr = rgb_to_bgr(load_rgb("builtin:astronaut"))
    found = face_analyzer(config, CONDITIONING_FACE_PACK).analyze(bgr, "largest")
    return load_faceid_encoder(config).embed(bgr, found.face.kps)


def test_the_tiny_file_has_h94s_layout_and_diffusers_loads_it_with_its_lora(prepared):
    """`image_proj` is FaceID's MLP; `ip_adapter` numbers every attention processor from 0, each with
    its LoRA and the cross-attention ones with `to_k_ip` / `to_v_ip`; load_ip_adapter builds
    diffusers' FaceID projection and applies the LoRA through PEFT, which changes the images."""
    import diffusers

    from fewstep.registry.catalog import model_folder

    family = SD["sd15"]
    path = model_folder(prepared, faceid.FACEID_MODEL) / "ip-adapter-faceid_sd15.bin"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter"}
    assert sorted(state["image_proj"]) == sorted(
        f"{layer}.{p}" for layer in ("proj.0", "proj.2", "norm") for p in ("weight", "bias")
    )
    assert state["image_proj"]["proj.0.weight"].shape == (1024, 512)
    unet = diffusers.UNet2DConditionModel.from_pretrained(
        model_folder(prepared, "sd15") / "unet", variant="fp16", dtype=torch.float32
    )
    processors = list(unet.attn_processors)
    lora = {k for k in state["ip_adapter"] if "_lora." in k}
    assert len(lora) == 8 * len(processors)
    cross = [i for i, name in enumerate(processors) if name.endswith("attn2.processor")]
    assert {k.split(".")[0] for k in state["ip_adapter"] if "_ip." in k} == {str(i) for i in cross}
    assert all(i % 2 == 1 for i in cross)

    embeds = [faceid.image_embeds(torch.from_numpy(_face(prepared))[None])]

    def image(ip_adapter: dict) -> np.ndarray:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            model_folder(prepared, "sd15"),
            variant="fp16",
            dtype=torch.float32,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        weights = {"image_proj": state["image_proj"], "ip_adapter": ip_adapter}
        pipe.load_ip_adapter(weights, subfolder=None, weight_name="faceid.bin", image_encoder_folder=None)
        kind = type(pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__
        assert kind == "IPAdapterFaceIDImageProjection"
        adapters = set(getattr(pipe.unet, "peft_config", {}))
        assert adapters == ({"faceid_0"} if lora & set(ip_adapter) else set())
        generator = torch.Generator("cpu").manual_seed(0)
        options = dict(num_inference_steps=1, height=64, width=64, generator=generator, output_type="np")
        return pipe("a face", ip_adapter_image_embeds=embeds, **options).images[0]

    without_lora = {k: v for k, v in state["ip_adapter"].items() if k not in lora}
    assert not np.array_equal(image(state["ip_adapter"]), image(without_lora))
    assert family.name == "sd15"


@pytest.mark.parametrize(
    ("name", "negative"),
    [
        ("sd15", "blurry, lowres"),
        ("sd15", None),
        ("sdxl", "blurry, lowres"),
        ("sdxl", None),
    ],
    ids=["sd15-negative", "sd15-no-negative", "sdxl-negative", "sdxl-no-negative"],
)
def test_the_workflow_equals_diffusers_documented_faceid_usage(prepared, name, negative):
    """The family's prompt encoder and cell pipeline (the identity file's buffalo_l embedding,
    float32, batch 1) give exactly diffusers' FaceID guide: the pipeline, DDIM, load_ip_adapter of
    h94's file without an image encoder, set_ip_adapter_scale, the raw prompt and negative prompt,
    and `ip_adapter_image_embeds` stacked from the same normed embedding after zeros."""
    import diffusers

    from fewstep.families.base import ItemInputs
    from fewstep.registry.catalog import model_folder

    family, spec = FAMILIES[name], SD[name]
    backbone = dict(prepared.backbones[name]) | ({"negative_prompt": negative} if negative else {})
    adapter = prepared.adapters["face"]
    text, steps, seed = prepared.prompts[0].text, 2, 5
    embedding = _face(prepared)

    prompt = family.prompt_encoder(prepared, name, CPU, torch.float32).encode(text, backbone)
    eager = {"compile": "none", "fp8": "none", "cache": "none"}
    cell = family.cell_pipeline(prepared, backbone, adapter, eager, CPU, torch.float32)
    reference = {faceid.FACEID_EMBEDDING: torch.from_numpy(embedding)[None]}
    condition, _ = cell.condition(ItemInputs(prompt, "astronaut", reference))
    ours = cell.decode(cell.denoise(condition, [seed], steps).latents)[0].numpy()

    extras = {} if spec.name == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    pipe = getattr(diffusers, spec.pipeline_class).from_pretrained(
        model_folder(prepared, name), variant="fp16", dtype=torch.float32, feature_extractor=None, **extras
    )
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_ip_adapter(
        str(model_folder(prepared, faceid.FACEID_MODEL)),
        subfolder=None,
        weight_name=faceid.FACEID_FILES[name].weight_name,
        image_encoder_folder=None,
        local_files_only=True,
    )
    pipe.set_ip_adapter_scale(0.7)
    ref_images_embeds = [torch.from_numpy(embedding).unsqueeze(0)]
    ref_images_embeds = torch.stack(ref_images_embeds, dim=0).unsqueeze(0)
    id_embeds = torch.cat([torch.zeros_like(ref_images_embeds), ref_images_embeds]).to(torch.float32)
    theirs = pipe(
        prompt=text,
        negative_prompt=negative,
        ip_adapter_image_embeds=[id_embeds],
        num_inference_steps=steps,
        guidance_scale=spec.guidance_scale,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    assert np.array_equal(ours, np.asarray(theirs))


def test_without_peft_faceid_is_refused_in_one_line(monkeypatch):
    """diffusers would only warn and drop FaceID's LoRA."""
    import diffusers.utils

    monkeypatch.setattr(diffusers.utils, "USE_PEFT_BACKEND", False)
    with pytest.raises(ConfigError, match="pip install peft"):
        faceid.require_peft()


def test_the_recogniser_gives_insightfaces_normed_embedding(prepared):
    """`FaceRecognizer.embed` is insightface's `Face.normed_embedding` of the same keypoints."""
    from insightface.app.common import Face

    from fewstep.core.images import load_rgb, rgb_to_bgr
    from fewstep.faces.models import load_faceid_encoder

    bgr = rgb_to_bgr(load_rgb("builtin:astronaut"))
    kps = np.array([[200, 180], [280, 180], [240, 230], [210, 280], [270, 280]], np.float32)
    recognizer = load_faceid_encoder(prepared)
    face = Face(kps=kps)
    recognizer.model.get(bgr, face)
    ours = recognizer.embed(bgr, kps)
    assert ours.shape == (512,) and np.isclose(np.linalg.norm(ours), 1.0)
    assert np.array_equal(ours, face.normed_embedding)


def test_the_identity_job_writes_the_faceid_embedding_of_the_chosen_face(prepared):
    """A FaceID sweep's identity file holds buffalo_l's embedding of the policy's face, once though
    SD1.5 and SDXL both write it (and no IR-SE50 one, which only InfuseNet reads); the face models
    are the embed_identity rule's inputs."""
    from fewstep.jobs.precompute import embed_identities, load_tensors

    (path,) = embed_identities(prepared)
    tensors, metadata = load_tensors(path)
    assert list(tensors) == [faceid.FACEID_EMBEDDING] and metadata["policy"] == "largest"
    assert np.array_equal(tensors[faceid.FACEID_EMBEDDING][0].numpy(), _face(prepared))
    assert Grid.of(prepared).identity_models() == ["arcface-w600k", "insightface"]


def test_faceid_cells_cross_identities_and_are_scored_like_infusenets(prepared):
    from fewstep.core.paths import Paths

    study = prepared
    grid = Grid.of(study)
    for cell in grid.cells:
        assert grid.cell_roles(cell) == ["identity"]
        assert [item.identity for item in grid.items_of(cell)] == ["astronaut"]
        assert grid.cell_metrics(cell) == list(study.scoring.metrics)
        assert grid.reference_file(cell) is None
        assert grid.identity_embeddings(Paths(study), cell) == [Paths(study).identity_embedding("astronaut")]
        assert {"ip-adapter-faceid", "arcface-w600k", "insightface"} <= set(grid.cell_models(cell))


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ({"kind": "ip_adapter", "role": "style", "file": "faceid"}, r"adapters\.a\.role: .*role identity"),
        ({"kind": "ip_adapter", "role": "identity", "file": "plain"}, r"adapters\.a\.file: .*file faceid"),
        ({"kind": "ip_adapter", "role": "identity"}, r"adapters\.a\.file: .*file faceid"),
    ],
)
def test_role_identity_and_file_faceid_go_together(adapter, message):
    with pytest.raises(ConfigError, match=message):
        FAMILIES["sdxl"].check_adapter("a", adapter)


def test_faceid_on_a_distilled_backbone_equals_diffusers_documented_order(prepared):
    """FaceID on SD1.5 + LCM-LoRA: the cell pipeline gives diffusers' image bit for bit when it is
    called as its IP-Adapter guide combines an IP-Adapter with LCM-LoRA (`load_ip_adapter`, then
    `load_lora_weights` + `fuse_lora`, LCMScheduler, the card's guidance) with FaceID's LoRA kept
    active beside LCM's (`set_adapters`, as its guide combines LoRAs: loading LCM's alone would
    deactivate FaceID's), and FaceID's LoRA counts: without it the image differs."""
    import diffusers

    from fewstep.families.base import ItemInputs
    from fewstep.families.sd.distillations import DISTILLATIONS
    from fewstep.registry.catalog import model_folder

    family, backbone, adapter = FAMILIES["sd15"], prepared.backbones["sd15-lcm"], prepared.adapters["face"]
    distillation = DISTILLATIONS["sd15"]["lcm-lora"]
    text, embedding = prepared.prompts[0].text, _face(prepared)
    prompt = family.prompt_encoder(prepared, "sd15", CPU, torch.float32).encode(text, backbone)
    eager = {"compile": "none", "fp8": "none", "cache": "none"}
    cell = family.cell_pipeline(prepared, backbone, adapter, eager, CPU, torch.float32)
    reference = {faceid.FACEID_EMBEDDING: torch.from_numpy(embedding)[None]}
    condition, _ = cell.condition(ItemInputs(prompt, "astronaut", reference))
    ours = cell.decode(cell.denoise(condition, [5], 2).latents)[0].numpy()
    assert ours.shape == (64, 64, 3) and ours.std() > 0 and distillation.guidance <= 1

    path = model_folder(prepared, faceid.FACEID_MODEL) / faceid.FACEID_FILES["sd15"].weight_name
    state = torch.load(path, map_location="cpu", weights_only=True)

    def theirs(ip_adapter: dict) -> np.ndarray:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            model_folder(prepared, "sd15"),
            variant="fp16",
            dtype=torch.float32,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        weights = {"image_proj": state["image_proj"], "ip_adapter": ip_adapter}
        pipe.load_ip_adapter(weights, subfolder=None, weight_name="faceid.bin", image_encoder_folder=None)
        folder = model_folder(prepared, distillation.publisher)
        pipe.load_lora_weights(
            str(folder), weight_name=distillation.file, adapter_name="lcm", local_files_only=True
        )
        loras = [*(["faceid_0"] if "faceid_0" in pipe.unet.peft_config else []), "lcm"]
        pipe.set_adapters(loras, adapter_weights=[1.0] * len(loras))
        pipe.fuse_lora()
        pipe.scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
        pipe.set_ip_adapter_scale(0.7)
        # no classifier-free guidance (the card's 1.0): diffusers takes the embeds without a negative
        face = torch.from_numpy(embedding).reshape(1, 1, 1, -1)
        with torch.no_grad():
            return pipe(
                prompt=text,
                ip_adapter_image_embeds=[face],
                num_inference_steps=2,
                guidance_scale=distillation.guidance,
                height=64,
                width=64,
                generator=torch.Generator("cpu").manual_seed(5),
                output_type="np",
            ).images[0]

    def uint8(image: np.ndarray) -> np.ndarray:
        return (image * 255).round().astype(np.uint8)

    assert np.array_equal(ours, uint8(theirs(state["ip_adapter"])))
    without_lora = {k: v for k, v in state["ip_adapter"].items() if "_lora." not in k}
    assert not np.array_equal(ours, uint8(theirs(without_lora)))
