"""Model registry: tiny models in the published layout, loaded by the real loading code."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from fewstep.faces.models import INSIGHTFACE_SUBDIR, face_analyzer
from fewstep.families.flux import models, pipeline
from fewstep.families.resampler import PUBLISHED, Resampler, infer_config, load_resampler
from fewstep.grid import Grid
from fewstep.jobs.prepare import prepare_model
from fewstep.registry import catalog
from fewstep.registry import prepare as preparing
from fewstep.registry.load import load_component
from tests.conftest import study_of

FIXTURES = Path(__file__).parent / "fixtures"


def test_tiny_backbones_are_saved_in_the_diffusers_layout(config):
    for name in ("flux-dev", "flux-schnell"):
        folder = catalog.model_folder(study_of(config), name)
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == "FluxPipeline"
        assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
        for sub in (
            "transformer",
            "vae",
            "text_encoder",
            "text_encoder_2",
            "tokenizer",
            "tokenizer_2",
            "scheduler",
        ):
            assert (folder / sub).is_dir(), sub
        assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").exists()


def test_tiny_round_trip_is_exact(config, tmp_path):
    """Weights written by the tiny builder come back unchanged through from_pretrained."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    folder = catalog.model_folder(study_of(config), "flux-dev") / "transformer"
    loaded = load_component(
        FluxTransformer2DModel, folder, "tiny", torch.device("cpu"), torch.float32, model="flux-dev"
    )
    on_disk = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    state = loaded.state_dict()
    assert set(state) == set(on_disk)
    assert all(torch.equal(state[k], on_disk[k]) for k in on_disk)


def test_dev_and_schnell_differ_as_the_real_ones(config):
    cpu = torch.device("cpu")
    adapter = config["adapters"]["infusenet-aes"]
    dev = pipeline.load_flux(study_of(config), "flux-dev", adapter, cpu, torch.float32)
    schnell = pipeline.load_flux(study_of(config), "flux-schnell", adapter, cpu, torch.float32)
    assert dev.transformer.config.guidance_embeds is True
    assert schnell.transformer.config.guidance_embeds is False
    assert dev.scheduler.config.shift == 3.0 and dev.scheduler.config.use_dynamic_shifting is True
    assert schnell.scheduler.config.shift == 1.0 and schnell.scheduler.config.use_dynamic_shifting is False
    assert pipeline.schedule(schnell.scheduler, 4, 16, cpu) == [1.0, 0.75, 0.5, 0.25]
    dev_sigmas = pipeline.schedule(dev.scheduler, 4, 16, cpu)
    assert dev_sigmas[0] == 1.0 and all(d > s for d, s in zip(dev_sigmas[1:], [0.75, 0.5, 0.25], strict=True))
    # text encoders and VAE are shared, as in the published repos
    for sub in ("vae", "text_encoder", "text_encoder_2"):
        dev_file = next((catalog.model_folder(study_of(config), "flux-dev") / sub).glob("*.safetensors"))
        schnell_file = next(
            (catalog.model_folder(study_of(config), "flux-schnell") / sub).glob("*.safetensors")
        )
        assert dev_file.read_bytes() == schnell_file.read_bytes(), sub


def test_infusenet_layout_matches_the_published_folders(config):
    variant = catalog.model_folder(study_of(config), "infiniteyou") / "infu_flux_v1.0" / "aes_stage2"
    shards = sorted(p.name for p in (variant / "InfuseNetModel").glob("*.safetensors"))
    assert shards == [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
    assert (variant / "InfuseNetModel" / "diffusion_pytorch_model.safetensors.index.json").exists()
    state = torch.load(variant / "image_proj_model.bin", weights_only=True)
    assert list(state) == ["image_proj"]
    infusenet, resampler = pipeline.load_infiniteyou(
        study_of(config), "aes_stage2", torch.device("cpu"), torch.float32
    )
    assert (infusenet.config.num_layers, infusenet.config.num_single_layers) == (2, 2)
    assert infusenet.config.guidance_embeds is True
    tokens = resampler(torch.randn(1, 1, 512))
    assert tokens.shape == (1, 8, infusenet.config.joint_attention_dim)


def test_resampler_keys_match_the_published_checkpoint():
    published = json.loads((FIXTURES / "infu_resampler_state_dict.json").read_text())
    model = Resampler(PUBLISHED)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == published["state_dict_shapes"]
    assert sum(v.numel() for v in model.state_dict().values()) == published["n_params"] == 84_595_968
    assert model(torch.randn(2, 1, 512)).shape == (2, 8, 4096)


def test_published_resampler_file_layout_loads_strictly(tmp_path):
    """A checkpoint written in the published format (state dict under image_proj) loads back."""
    from fewstep.families.resampler import ResamplerConfig, save_resampler

    small = ResamplerConfig(dim=64, depth=2, dim_head=64, heads=2, num_queries=8, output_dim=48, ff_mult=4)
    torch.manual_seed(0)
    original = Resampler(small)
    path = tmp_path / "infu_flux_v1.0" / "sim_stage1" / "image_proj_model.bin"
    save_resampler(original, path)
    assert infer_config(path) == small
    loaded = load_resampler(path, infer_config(path))
    x = torch.randn(1, 1, 512)
    assert torch.equal(original.eval()(x), loaded(x))


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


#: what the hub stores with git LFS (the cache names those blobs by their sha256)
LFS_SUFFIXES = {".safetensors", ".bin", ".onnx", ".pth"}


def pinned_revision(repo_id: str) -> str:
    """The revision the registry fetches `repo_id` at."""
    specs = list(catalog.MODELS.values())
    pins = {s.repo_id: s.revision for s in specs if s.repo_id}
    pins |= {
        s.extra["processor_repo"]: s.extra["processor_revision"] for s in specs if "processor_repo" in s.extra
    }
    return pins[repo_id]


def _fake_hub_cache(cache: Path, repo_id: str, source: Path, prefix: str = "") -> str:
    """Lay `source` out as the Hugging Face cache does; return the snapshot's commit.

    Files become `blobs/<sha256>` (LFS files) or `blobs/<git blob id>` (the rest),
    linked from `snapshots/<commit>/`, the commit being the registry's pin
    (`refs/main` points at it when the pin is `main`).
    """
    pin = pinned_revision(repo_id)
    commit = pin if len(pin) == 40 else hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    if pin == "main":
        (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit / prefix
    for file in sorted(p for p in Path(source).rglob("*") if p.is_file()):
        data = file.read_bytes()
        if file.suffix in LFS_SUFFIXES:
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    return commit


def test_real_mode_reads_the_hub_cache_offline(config, tmp_path, monkeypatch):
    """The real download path, offline: snapshot_download finds a cached snapshot, the
    model folder becomes a link to it, and the real loaders read it."""
    cache = tmp_path / "hub"
    commits = {}
    for name in ("flux-dev", "flux-schnell"):
        commits[name] = _fake_hub_cache(
            cache, models.BACKBONES[name].repo_id, catalog.model_folder(study_of(config), name)
        )
    commits["infiniteyou"] = _fake_hub_cache(
        cache, "ByteDance/InfiniteYou", catalog.model_folder(study_of(config), "infiniteyou")
    )
    commits["insightface"] = _fake_hub_cache(
        cache,
        "ByteDance/InfiniteYou",
        catalog.model_folder(study_of(config), "insightface"),
        INSIGHTFACE_SUBDIR,
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    hashed = []
    monkeypatch.setattr(preparing, "sha256_file", lambda p: hashed.append(Path(p)) or _sha256(p))
    real = dict(config, weights="real", models_dir=str(tmp_path / "models"))
    for name in ("flux-dev", "flux-schnell", "infiniteyou", "insightface"):
        marker = json.loads(prepare_model(study_of(real), name).read_text())
        spec = catalog.MODELS[name]
        assert marker["weights"] == "real" and marker["files"]
        assert (marker["repo_id"], marker["revision"]) == (spec.repo_id, spec.revision)
        assert marker["commit"] == commits[name] and marker["commits"] == {spec.repo_id: commits[name]}
        folder = catalog.model_folder(study_of(real), name)
        for entry in marker["files"]:  # right whichever way it was found
            assert entry["sha256"] == _sha256(folder / entry["path"])
            lfs = Path(entry["path"]).suffix in LFS_SUFFIXES
            assert entry["sha256_from"] == ("hub blob name" if lfs else "hashed"), entry
    # only the small files were read: the large ones are named by their blobs
    assert hashed and not [p for p in hashed if p.suffix in LFS_SUFFIXES]
    assert len(models.BACKBONES["flux-dev"].revision) == 40  # a pinned commit, not a branch
    assert catalog.model_folder(study_of(real), "flux-dev").is_symlink()
    parts = pipeline.load_flux(
        study_of(real), "flux-dev", real["adapters"]["infusenet-aes"], torch.device("cpu"), torch.float32
    )
    assert parts.transformer.config.guidance_embeds is True and parts.infusenet is not None
    assert face_analyzer(study_of(real)).recognizer is not None


def test_offline_without_cache_is_one_clear_line(config, tmp_path, monkeypatch):
    from fewstep.core.errors import WeightsError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    real = dict(config, weights="real", models_dir=str(tmp_path / "models"))
    with pytest.raises(WeightsError) as excinfo:
        prepare_model(study_of(real), "flux-dev")
    assert str(excinfo.value) == (
        f"black-forest-labs/FLUX.1-dev@{models.BACKBONES['flux-dev'].revision}: HF_HUB_OFFLINE is set "
        "and the files are not in the Hugging Face cache; unset HF_HUB_OFFLINE, fill the cache, "
        "or point config revisions.<model> at the cached commit"
    )
    with pytest.raises(
        WeightsError, match=r"recognition_arcface_ir_se50.pth is missing and HF_HUB_OFFLINE is set"
    ):
        prepare_model(study_of(real), "arcface-irse50")


def test_gated_repo_without_token_is_one_clear_line(monkeypatch):
    import httpx2
    from huggingface_hub.errors import GatedRepoError

    from fewstep.registry import hub

    def refuse(*args, **kwargs):
        response = httpx2.Response(401, request=httpx2.Request("GET", "https://huggingface.co/api"))
        raise GatedRepoError("gated", response=response)

    monkeypatch.setattr("huggingface_hub.snapshot_download", refuse)
    monkeypatch.setattr(hub, "_check_space", lambda *a: None)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(Exception) as excinfo:
        hub.snapshot("black-forest-labs/FLUX.1-dev", ["vae/*"], "main", gated=True)
    assert "accept its licence at https://huggingface.co/black-forest-labs/FLUX.1-dev" in str(excinfo.value)
    assert "HF_TOKEN" in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_missing_weights_folder_names_it(config, tmp_path):
    from diffusers import FluxTransformer2DModel

    from fewstep.core.errors import WeightsError

    hint = r"prepare it: `fewstep prepare-model --config .* --model flux-dev`"
    with pytest.raises(WeightsError, match=rf"missing .*nowhere; {hint}"):
        load_component(
            FluxTransformer2DModel,
            tmp_path / "nowhere",
            "real",
            torch.device("cpu"),
            torch.float32,
            model="flux-dev",
        )


def test_downloads_only_what_the_study_uses():
    from fewstep.core.config import load
    from fewstep.registry import hub
    from tests.conftest import REPO

    study = load([REPO / "config.yaml"])

    # dev and schnell ship the same text encoders: fetched once, from the ungated schnell
    def allow_patterns(config, name):
        return hub.allow_patterns(study_of(config), name, Grid(study_of(config)).model_usage(name))

    assert allow_patterns(study, "flux-dev") == ["model_index.json", "scheduler/*", "transformer/*", "vae/*"]
    assert "text_encoder_2/*" in allow_patterns(study, "flux-schnell")
    assert allow_patterns(study, "infiniteyou") == [
        "infu_flux_v1.0/aes_stage2/*",
        "infu_flux_v1.0/sim_stage1/*",
    ]
    assert allow_patterns(study, "insightface") == [
        "supports/insightface/models/antelopev2/scrfd_10g_bnkps.onnx",
        "supports/insightface/models/antelopev2/glintr100.onnx",
    ]
    study["cells"] = [{"backbones": ["flux-dev"], "adapters": ["infusenet-aes"], "accelerations": ["eager"]}]
    del study["comparison"]
    study["trajectory"]["cells"] = []
    assert allow_patterns(study, "infiniteyou") == ["infu_flux_v1.0/aes_stage2/*"]
    assert "text_encoder_2/*" in allow_patterns(study, "flux-dev")  # now dev embeds the prompts


def test_config_revision_overrides_the_pin_and_is_checked(config, raw_demo, tmp_path, monkeypatch):
    from fewstep.core.config import validate
    from fewstep.core.errors import ConfigError, WeightsError

    raw = dict(raw_demo, revisions={"flux-schnell": "b" * 40})
    assert catalog.model_revision(study_of(validate(raw)), "flux-schnell") == "b" * 40
    assert (
        catalog.model_revision(study_of(validate(raw)), "flux-dev") == models.BACKBONES["flux-dev"].revision
    )
    assert catalog.model_revision(study_of(validate(raw)), "arcface-irse50") is None  # a plain URL, no hub
    with pytest.raises(ConfigError, match=r"^config revisions\.arcface-irse50: not a Hugging Face model"):
        Grid(study_of(validate(dict(raw_demo, revisions={"arcface-irse50": "main"}))))
    # offline, the pinned snapshot in the cache is not the one asked for
    cache = tmp_path / "hub"
    _fake_hub_cache(
        cache, "black-forest-labs/FLUX.1-schnell", catalog.model_folder(study_of(config), "flux-schnell")
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    real = dict(
        config, weights="real", models_dir=str(tmp_path / "models"), revisions={"flux-schnell": "b" * 40}
    )
    with pytest.raises(WeightsError, match=r"^black-forest-labs/FLUX\.1-schnell@b{40}: HF_HUB_OFFLINE"):
        prepare_model(study_of(real), "flux-schnell")
