"""Scoring: every metric through its real loading code on tiny models, per cell, offline."""

from __future__ import annotations

import copy
import json
import os
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from fewstep import cli
from fewstep.analysis.metric_registry import METRICS as REGISTERED
from fewstep.analysis.metric_registry import metric_columns
from fewstep.core.errors import InputError, WeightsError
from fewstep.core.images import load_rgb
from fewstep.core.paths import Paths
from fewstep.faces import analyzer as faces
from fewstep.faces import models as face_models
from fewstep.grid import Grid, image_keys
from fewstep.jobs import score
from fewstep.jobs.prepare import prepare_model
from fewstep.registry import catalog, hub
from fewstep.scoring import networks as sm
from fewstep.scoring.base import JobModels
from fewstep.scoring.identity import IdentitySimilarity
from fewstep.scoring.metrics import CLIPScore, PerceptualDistance, PickScore, fit
from tests.conftest import study_of
from tests.test_models import _fake_hub_cache

ALL = ["identity", "lpips", "clip_score", "pick_score", "clip_i", "dino", "csd"]
COLUMNS = [
    "id_sim",
    "face_detected",
    "n_faces",
    "det_score",
    "face_bbox",
    "lpips_ref",
    "lpips_anchor",
    "clip_score",
    "pick_score",
    "clip_i",
    "dino",
    "csd",
]
ANCHOR, OTHER, CORRUPT = (
    "flux-dev/infusenet-aes/8",
    "flux-schnell/infusenet-aes/4",
    "flux-dev/infusenet-aes/1",
)
SIZE = 96  # the tiny detector finds the sample faces at this size


@pytest.fixture(scope="module")
def scoring_config(tiny_config, tmp_path_factory) -> dict:
    """The demo config with every metric on, its tiny scoring models prepared."""
    config = copy.deepcopy(tiny_config)
    config["results_dir"] = str(tmp_path_factory.mktemp("scoring") / "results")
    config["scoring"] = dict(config["scoring"], metrics=ALL, batch_size=3)  # batches of 3 and 1
    study = study_of(config)
    for name in sm.scoring_models(study, ALL):
        if not catalog.marker_path(study, name).exists():
            prepare_model(study, name)
    return config


def _reference(config: dict, identity: str) -> np.ndarray:
    image = load_rgb(Grid(study_of(config)).identity(identity)["image"])
    return np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def write_cell(config: dict, cell_id: str, image_for) -> pd.DataFrame:
    """A cell as the generate job leaves it: PNGs and a manifest (no generation needed)."""
    grid = Grid(study_of(config))
    paths = Paths(grid.study)
    cell = grid.cell(cell_id)
    rows = []
    for item in grid.items:
        path = paths.image(cell.id, item.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_for(item)).save(path)
        rows.append(
            {
                **image_keys(cell, item),
                "image": str(path.relative_to(paths.cell_dir(cell.id))),
                "weights": config["weights"],
            }
        )
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(paths.manifest(cell.id), index=False)
    return manifest


def _other_image(config: dict, item) -> np.ndarray:
    """Per item of the non-anchor cell: identical to the anchor, perturbed, no face, mirrored."""
    anchor = _reference(config, item.identity)
    if item.identity == "astronaut":
        if item.prompt == "portrait":
            return anchor
        noise = np.random.default_rng(0).integers(-40, 40, anchor.shape)
        return np.clip(anchor.astype(int) + noise, 0, 255).astype(np.uint8)
    if item.prompt == "portrait":
        return np.full_like(anchor, 128)  # a flat grey picture holds no face
    return np.ascontiguousarray(anchor[:, ::-1])


@pytest.fixture(scope="module")
def scored(scoring_config) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """(manifest, scores) of the anchor cell and of another cell, scored by `score.run`."""
    config = scoring_config
    out = {}
    out[ANCHOR] = write_cell(config, ANCHOR, lambda item: _reference(config, item.identity))
    out[OTHER] = write_cell(config, OTHER, lambda item: _other_image(config, item))
    for cell_id, manifest in out.items():
        out[cell_id] = (manifest, pd.read_parquet(score.run(study_of(config), cell_id, progress=False)))
    return out


def _by_item(frame: pd.DataFrame) -> dict[str, dict]:
    return {row["item_id"]: row for row in frame.to_dict("records")}


def test_every_metric_column_joins_the_manifest_keys(scored):
    for manifest, scores in scored.values():
        assert list(scores["item_id"]) == list(manifest["item_id"])
        for key in ("cell_id", "backbone", "adapter", "steps", "identity", "prompt_id", "seed", "image"):
            assert list(scores[key]) == list(manifest[key]), key
        assert set(COLUMNS) <= set(scores.columns)
        assert set(metric_columns(scores)) <= set(REGISTERED)  # every column a metric writes is in its spec
        numeric = scores[["lpips_ref", "clip_score", "pick_score", "clip_i", "dino", "csd"]]
        assert np.isfinite(numeric.to_numpy(dtype=float)).all()
        assert scores["clip_score"].between(0, 100).all()
        assert scores[["clip_i", "dino", "csd"]].abs().le(1 + 1e-5).all().all()
        assert (scores["lpips_ref"] >= 0).all()


def test_metric_versions_are_recorded(scored):
    _, scores = scored[OTHER]
    versions = json.loads(scores["metric_versions"].iloc[0])
    assert sorted(versions) == sorted(ALL)
    assert all(v.endswith("weights=tiny") for v in versions.values())
    assert versions["lpips"].startswith("lpips-0.1.4:alex:")
    assert versions["clip_score"].startswith("openai/clip-vit-large-patch14:transformers-")
    assert versions["identity"] == "insightface-2.1:antelopev2:weights=tiny"


def test_lpips_to_the_anchor_is_zero_for_the_anchor_and_matched_by_item(scored):
    _, anchor = scored[ANCHOR]
    assert (anchor["lpips_anchor"] == 0.0).all()
    other = _by_item(scored[OTHER][1])
    assert other["astronaut/portrait/s0"]["lpips_anchor"] == 0.0  # computed: the same picture
    for item in ("astronaut/astronaut-suit/s0", "group-t1/portrait/s0", "group-t1/astronaut-suit/s0"):
        assert other[item]["lpips_anchor"] > 0.01, item
    # the astronaut image is its reference at 96 px: at LPIPS's 256 px only resampling separates them
    # (group-t1's reference is cropped to a square on the way, its image was squashed instead)
    resampled = _by_item(anchor)["astronaut/portrait/s0"]["lpips_ref"]
    assert 0 < resampled < 0.5 * _by_item(anchor)["group-t1/portrait/s0"]["lpips_ref"]
    # the identical picture is as far from the (fitted) reference as the anchor's own
    assert other["astronaut/portrait/s0"]["lpips_ref"] == pytest.approx(
        _by_item(anchor)["astronaut/portrait/s0"]["lpips_ref"], abs=1e-6
    )


def test_no_face_is_missing_and_lowers_the_detection_rate(scored):
    _, anchor = scored[ANCHOR]
    _, other = scored[OTHER]
    assert anchor["face_detected"].all() and anchor["id_sim"].notna().all()
    grey = _by_item(other)["group-t1/portrait/s0"]
    assert not grey["face_detected"] and grey["n_faces"] == 0
    assert np.isnan(grey["id_sim"]) and np.isnan(grey["det_score"]) and pd.isna(grey["face_bbox"])
    assert other["face_detected"].mean() == 0.75 < anchor["face_detected"].mean() == 1.0
    assert other["id_sim"].isna().sum() == 1  # missing, not 0: the mean ignores it
    assert (other["id_sim"].dropna() != 0).all()


def test_identity_similarity_of_a_face_with_itself_is_one(scoring_config):
    study = study_of(scoring_config)
    metric = IdentitySimilarity(study, JobModels(study))
    picture = _reference(scoring_config, "astronaut")
    found = metric.analyzer.analyze(np.ascontiguousarray(picture[:, :, ::-1]))
    assert abs(faces.cosine(found.face.embedding, found.face.embedding) - 1.0) < 1e-5
    (row,) = metric.score([score.Sample({"identity": "astronaut"}, picture, picture)])
    assert row["face_detected"] and abs(row["id_sim"] - 1.0) < 1e-5


def test_lpips_loads_our_trunk_through_torch_home(scoring_config):
    before = os.environ.get("TORCH_HOME")
    study = study_of(scoring_config)
    metric = PerceptualDistance(study, JobModels(study))
    assert os.environ.get("TORCH_HOME") == before  # restored after loading
    trunk = catalog.model_folder(study, "lpips-alex") / sm.CHECKPOINTS / "alexnet-owt-7be5be79.pth"
    on_disk = torch.load(trunk, weights_only=True)
    assert torch.equal(metric.model.net.slice1[0].weight.cpu(), on_disk["features.0.weight"])
    image = _reference(scoring_config, "astronaut")
    other = _reference(scoring_config, "group-t1")
    assert metric.distances([(image, image), (image, other)])[0] == 0.0
    assert metric.distances([(image, other)])[0] > 0.05


def test_lpips_compares_both_images_at_the_configured_size(scoring_config, monkeypatch):
    """Whatever the sizes of generated and reference image, LPIPS sees both at lpips_size square."""
    import lpips

    config = copy.deepcopy(scoring_config)
    config["scoring"]["lpips_size"] = 128
    study = study_of(config)
    metric = PerceptualDistance(study, JobModels(study))
    assert metric.version.endswith(":128px:weights=tiny")
    seen = []
    forward = lpips.LPIPS.forward
    monkeypatch.setattr(
        lpips.LPIPS, "forward", lambda self, a, b: seen.append((a.shape, b.shape)) or forward(self, a, b)
    )
    portrait = load_rgb(Grid(study_of(config)).identity("astronaut")["image"])[
        :, 64:448
    ]  # 512 x 384, 4:3 tall
    small = np.asarray(Image.fromarray(portrait).resize((48, 64), Image.Resampling.BICUBIC))
    reference = load_rgb(Grid(study_of(config)).identity("group-t1")["image"])
    values = metric.distances([(portrait, reference), (small, reference)])
    assert seen == [((2, 3, 128, 128), (2, 3, 128, 128))]  # one forward pass, both at 128 x 128
    # the same as the lpips package on the fitted images, bit for bit (one batch of the same
    # shape: a batch of one may take other convolution kernels, which round differently)
    generated = metric._tensor([fit(portrait, 128, 128), fit(small, 128, 128)])
    references = metric._tensor([fit(reference, 128, 128)] * 2)
    expected = [float(v) for v in metric.model(generated, references).flatten()]
    assert values == expected
    # the two sizes of one picture land near one value: the distance no longer follows the output size
    assert abs(values[0] - values[1]) < 0.25 * values[0]


def test_fit_crops_to_the_aspect_then_resizes():
    wide = np.zeros((10, 40, 3), np.uint8)
    wide[:, 15:25] = 255  # a white centre band: survives the centre crop
    fitted = fit(wide, 20, 20)
    assert fitted.shape == (20, 20, 3) and fitted.mean() > 200
    assert fit(wide, 10, 40) is wide


def test_clip_score_runs_the_real_clip_model_code(scoring_config):
    from transformers import CLIPModel

    study = study_of(scoring_config)

    metric = CLIPScore(study, JobModels(study))
    assert type(metric.model) is CLIPModel
    image = _reference(scoring_config, "astronaut")
    prompts = [Grid(study_of(scoring_config)).prompt("astronaut-suit")["text"], "zebra quartz violin 42"]
    batch = [score.Sample({"identity": "astronaut"}, image, image, prompt=p) for p in prompts]
    cosines = metric.cosines(batch)
    values = [row["clip_score"] for row in metric.score(batch)]
    # independently: normalised projections of get_image_features / get_text_features
    with torch.inference_mode():
        pixels = metric.processor(images=[Image.fromarray(image)], return_tensors="pt")["pixel_values"]
        text = metric.processor(text=prompts, padding=True, return_tensors="pt")
        img = metric.model.get_image_features(pixel_values=pixels).pooler_output
        txt = metric.model.get_text_features(**text).pooler_output
        expected = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert torch.allclose(cosines, expected, atol=1e-5)
    assert cosines[0] != cosines[1]  # the prompt changes the score
    assert values == pytest.approx([max(100 * float(c), 0.0) for c in cosines], abs=1e-4)
    assert all(np.isfinite(v) and 0 <= v <= 100 for v in values)


def test_pick_score_scales_the_cosine_by_the_learned_temperature(scoring_config):
    study = study_of(scoring_config)
    metric = PickScore(study, JobModels(study))
    image = _reference(scoring_config, "group-t1")
    batch = [score.Sample({"identity": "group-t1"}, image, image, prompt="a portrait")]
    scale = float(metric.model.logit_scale.detach().exp())
    assert metric.score(batch)[0]["pick_score"] == pytest.approx(scale * float(metric.cosines(batch)[0]))


@pytest.mark.parametrize("name", ["clip_i", "dino", "csd"])
def test_reference_similarity_of_the_reference_itself_is_one(scoring_config, name):
    study = study_of(scoring_config)
    metric = score.METRICS[name](study, JobModels(study))
    image, other = _reference(scoring_config, "astronaut"), _reference(scoring_config, "group-t1")
    same, different = metric.score(
        [
            score.Sample({"identity": "astronaut"}, image, image),
            score.Sample({"identity": "astronaut"}, other, image),
        ]
    )
    assert abs(same[name] - 1.0) < 1e-5 and different[name] < 1.0 - 1e-4


def _openai_visual(state: dict, pixels: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's VisionTransformer forward (fused attention as torch's MultiheadAttention)."""
    F = torch.nn.functional
    width, _, patch, _ = state["conv1.weight"].shape
    x = F.conv2d(pixels, state["conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = state["class_embedding"].expand(x.shape[0], 1, width)
    x = torch.cat([cls, x], dim=1) + state["positional_embedding"]
    x = F.layer_norm(x, (width,), state["ln_pre.weight"], state["ln_pre.bias"])
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        attention = torch.nn.MultiheadAttention(width, width // 64, batch_first=True)
        attention.load_state_dict(
            {k.removeprefix(p + "attn."): v for k, v in state.items() if "attn." in k and k.startswith(p)}
        )
        h = F.layer_norm(x, (width,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
        x = x + attention(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, (width,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
        h = F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
    return F.layer_norm(x[:, 0], (width,), state["ln_post.weight"], state["ln_post.bias"])


def test_csd_matches_an_independent_openai_clip_forward(scoring_config):
    path = catalog.model_folder(study_of(scoring_config), "csd-vit-l") / "pytorch_model.bin"
    state = sm.read_csd_checkpoint(path)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    encoder, processor = sm.load_csd(study_of(scoring_config), torch.device("cpu"))
    assert processor.crop_size["height"] == 32 and encoder.vision.config.num_attention_heads == 2
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(_openai_visual(backbone, pixels) @ state["last_layer_style"])
        assert torch.allclose(encoder(pixels), expected, atol=1e-5)
    assert sm.hf_to_openai_visual(sm.openai_to_hf_visual(backbone)).keys() == backbone.keys()


def test_csd_checkpoint_unpickling_stays_restricted(tmp_path):
    import argparse

    path = tmp_path / "pytorch_model.bin"
    torch.save(
        {"model_state_dict": {"module.last_layer_style": torch.ones(2)}, "args": argparse.Namespace()}, path
    )
    with pytest.raises(WeightsError) as excinfo:
        sm.read_csd_checkpoint(path)
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)
    torch.save({"model_state_dict": {"module.x": torch.ones(2)}, "epoch": np.int64(3)}, path)
    with pytest.raises(WeightsError, match="not a CSD checkpoint"):
        sm.read_csd_checkpoint(path)


def test_a_corrupt_png_stops_the_job_with_one_line_naming_it(scoring_config, tmp_path, capsys):
    config = copy.deepcopy(scoring_config)
    config["scoring"]["metrics"] = ["identity"]
    manifest = write_cell(config, CORRUPT, lambda item: _reference(config, item.identity))
    broken = Paths(study_of(config)).cell_dir(CORRUPT) / manifest["image"].iloc[2]
    broken.write_bytes(broken.read_bytes()[:60])  # truncated mid-file
    with pytest.raises(InputError) as excinfo:
        score.run(study_of(config), CORRUPT, progress=False)
    assert str(broken) in str(excinfo.value) and "corrupt" in str(excinfo.value)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert cli.main(["score", "--config", str(config_file), "--cell", CORRUPT]) == 1
    lines = capsys.readouterr().err.strip().splitlines()  # the progress bar, then the error
    errors = [line for line in lines if "error" in line]
    assert errors == [lines[-1]] and lines[-1].startswith("fewstep score: error: generated image ")
    assert str(broken) in lines[-1]
    assert not Paths(study_of(config)).scores(CORRUPT).exists()


def score_anchor(config: dict, cell_id: str) -> str | None:
    grid = Grid(study_of(config))
    anchor = grid.score_anchor(grid.cell(cell_id))
    return None if anchor is None else anchor.id


def test_score_rule_inputs_order_the_anchor_first(scoring_config):
    assert score_anchor(scoring_config, OTHER) == ANCHOR
    assert score_anchor(scoring_config, ANCHOR) is None
    no_lpips = dict(scoring_config, scoring=dict(scoring_config["scoring"], metrics=["identity"]))
    assert score_anchor(no_lpips, OTHER) is None
    assert score_anchor({k: v for k, v in scoring_config.items() if k != "anchor"}, OTHER) is None
    assert sm.scoring_models(study_of(scoring_config), scoring_config["scoring"]["metrics"]) == [
        "clip-vit-l14",
        "csd-vit-l",
        "dinov2-base",
        "insightface",
        "lpips-alex",
        "pickscore",
    ]
    assert (
        "lpips-vgg"
        in Grid(
            study_of(dict(scoring_config, scoring=dict(scoring_config["scoring"], lpips_net="vgg")))
        ).models
    )


# --------------------------------------------------------------------------- real recipes, offline


def test_real_scoring_models_read_the_hub_cache_offline(scoring_config, tmp_path, monkeypatch):
    """The download recipes of the hub-hosted scoring models, offline, then scoring with them."""
    cache = tmp_path / "hub"
    tiny = lambda name: catalog.model_folder(study_of(scoring_config), name)  # noqa: E731
    _fake_hub_cache(cache, "openai/clip-vit-large-patch14", tiny("clip-vit-l14"))
    _fake_hub_cache(cache, "yuvalkirstain/PickScore_v1", tiny("pickscore") / "model")
    _fake_hub_cache(cache, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", tiny("pickscore") / "processor")
    _fake_hub_cache(cache, "facebook/dinov2-base", tiny("dinov2-base"))
    _fake_hub_cache(cache, "tomg-group-umd/CSD-ViT-L", tiny("csd-vit-l"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    real = dict(scoring_config, weights="real", models_dir=str(tmp_path / "models"))
    real["scoring"] = dict(real["scoring"], metrics=["clip_score", "pick_score", "clip_i", "dino", "csd"])
    for name in ("clip-vit-l14", "pickscore", "dinov2-base", "csd-vit-l"):
        marker = json.loads(prepare_model(study_of(real), name).read_text())
        assert marker["weights"] == "real" and all(len(f["sha256"]) == 64 for f in marker["files"])
    assert catalog.model_folder(study_of(real), "clip-vit-l14").is_symlink()
    assert (catalog.model_folder(study_of(real), "pickscore") / "processor").is_symlink()
    image = _reference(real, "astronaut")
    sample = score.Sample({"identity": "astronaut"}, image, image, prompt="a portrait")
    row = {}
    for metric in score.build_metrics(study_of(real), real["scoring"]["metrics"]):
        assert metric.version.endswith("weights=real")
        row.update(metric.score([sample])[0])
    assert set(row) == {"clip_score", "pick_score", "clip_i", "dino", "csd"}
    assert all(np.isfinite(v) for v in row.values())
    assert row["csd"] == pytest.approx(1.0, abs=1e-5)


def test_lpips_trunk_download_is_checked_against_its_name(scoring_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = dict(scoring_config, weights="real", models_dir=str(tmp_path / "models"))
    trunk = catalog.model_folder(study_of(real), "lpips-alex") / sm.CHECKPOINTS / "alexnet-owt-7be5be79.pth"
    with pytest.raises(WeightsError, match=r"alexnet-owt-7be5be79.pth is missing and HF_HUB_OFFLINE"):
        prepare_model(study_of(real), "lpips-alex")
    trunk.parent.mkdir(parents=True)
    trunk.write_bytes(b"not the published alexnet")
    with pytest.raises(WeightsError) as excinfo:
        prepare_model(study_of(real), "lpips-alex")
    assert "not the 7be5be79 its name promises" in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert not trunk.exists()  # a rerun downloads it again
    content = b"published bytes"
    import hashlib

    good = tmp_path / f"trunk-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    good.write_bytes(content)
    sm.verify_name_hash(good)
    assert good.exists()


def _zip_tiny_pack(tmp_path: Path, pack: str) -> Path:
    """A release-style zip of a tiny pack, its files one folder down (as some packs ship)."""
    folder = faces.build_tiny_face_pack(tmp_path / "build", pack)
    archive = tmp_path / f"{pack}.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in folder.iterdir():
            zipped.write(file, f"{pack}/{file.name}")
    return archive


def test_buffalo_l_comes_from_its_release_zip(scoring_config, tmp_path, monkeypatch):
    from fewstep.core.io import sha256_file

    cache = tmp_path / "hub"
    tiny_faces = catalog.model_folder(study_of(scoring_config), "insightface")
    _fake_hub_cache(cache, "ByteDance/InfiniteYou", tiny_faces, face_models.INSIGHTFACE_SUBDIR)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    real = dict(scoring_config, weights="real", models_dir=str(tmp_path / "models"))
    real["face"] = dict(real["face"], pack="buffalo_l")
    usage = Grid(study_of(real)).model_usage("insightface")
    assert hub.allow_patterns(study_of(real), "insightface", usage) == [  # buffalo_l is not among them
        "supports/insightface/models/antelopev2/scrfd_10g_bnkps.onnx",
        "supports/insightface/models/antelopev2/glintr100.onnx",
    ]
    archive = _zip_tiny_pack(tmp_path, "buffalo_l")
    url, _ = face_models.FACE_PACK_ZIPS["buffalo_l"]
    assert url == "https://github.com/deepinsight/insightface/releases/download/model-zoo/buffalo_l.zip"
    placed = catalog.model_folder(study_of(real), "insightface") / "models" / "buffalo_l.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(archive.read_bytes())  # as if fetch_url had downloaded it
    with pytest.raises(WeightsError, match=r"buffalo_l.zip has sha256 .* not the published"):
        prepare_model(study_of(real), "insightface")
    assert not placed.exists()
    placed.write_bytes(archive.read_bytes())
    monkeypatch.setitem(face_models.FACE_PACK_ZIPS, "buffalo_l", (url, sha256_file(archive)))
    prepare_model(study_of(real), "insightface")
    pack = catalog.model_folder(study_of(real), "insightface") / "models" / "buffalo_l"
    assert sorted(p.name for p in pack.iterdir()) == sorted(faces.PACK_FILES["buffalo_l"])
    assert not placed.exists() and not pack.is_symlink()
    analyzer = face_models.face_analyzer(study_of(real))
    assert analyzer.folder == pack.resolve() and analyzer.is_tiny
    assert face_models.face_analyzer(study_of(real), "antelopev2").folder.name == "antelopev2"


def test_the_next_batch_is_decoded_while_this_one_is_scored():
    """decoded_ahead keeps order, decodes batch k+1 while the caller holds batch k, and raises
    a decoding error only at its own batch (the batches before it are scored)."""
    import threading

    started = {i: threading.Event() for i in range(4)}

    def decode(batch):
        started[batch].set()
        if batch == 3:
            raise InputError("generated image 3.png is corrupt")
        return f"pixels {batch}"

    got = []
    with pytest.raises(InputError, match="3.png"):
        for batch, pixels in zip(range(4), score.decoded_ahead(range(4), decode), strict=True):
            assert started[batch + 1].wait(timeout=10), f"batch {batch + 1} was not decoded ahead"
            got.append(pixels)
    assert got == ["pixels 0", "pixels 1", "pixels 2"]
    assert list(score.decoded_ahead([], decode)) == []


# ------------------------------------------------------------------ one job, every cell


@pytest.fixture
def job_config(scoring_config, tmp_path) -> dict:
    """The dev job's 4 cells and the schnell job's 3 on disk (as their generate jobs leave
    them), the dev-8 anchor among them; only the metrics that load fast."""
    config = copy.deepcopy(scoring_config)
    config["results_dir"] = str(tmp_path / "results")
    config["scoring"]["metrics"] = ["lpips", "clip_score"]
    for cell in Grid(study_of(config)).cells:
        if cell.backbone.startswith("flux"):
            write_cell(
                config, cell.id, lambda item, s=cell.steps: _reference(config, item.identity)[:, :: (-1) ** s]
            )
    return config


def _tables(config: dict, job: str) -> dict[str, bytes]:
    return {
        cell.id: Paths(study_of(config)).scores(cell.id).read_bytes()
        for cell in Grid(study_of(config)).job(job)
    }


@pytest.mark.slow
def test_a_score_job_writes_what_scoring_each_cell_alone_writes(job_config, tmp_path):
    alone = copy.deepcopy(job_config)
    alone["results_dir"] = str(tmp_path / "alone")
    for job in ("flux-dev/infusenet-aes", "flux-schnell/infusenet-aes"):
        record = json.loads(score.run_job(study_of(job_config), job, progress=False).read_text())
        assert record["score_hash"] == Grid(study_of(job_config)).job_score_hash(job)
        cells = Grid(study_of(job_config)).job(job)
        assert list(record["cells"]) == [cell.id for cell in cells]
        assert all(entry["rescored"] for entry in record["cells"].values())
        for cell in cells:
            shutil.copytree(
                Paths(study_of(job_config)).cell_dir(cell.id), Paths(study_of(alone)).cell_dir(cell.id)
            )
    for cell in Grid(study_of(alone)).cells:
        if cell.backbone.startswith("flux"):
            score.run(study_of(alone), cell.id, progress=False)
            together = pd.read_parquet(Paths(study_of(job_config)).scores(cell.id))
            separate = pd.read_parquet(Paths(study_of(alone)).scores(cell.id))
            pd.testing.assert_frame_equal(together, separate, check_exact=True)  # bit for bit


@pytest.mark.slow
def test_a_score_job_rescores_only_the_cells_whose_inputs_changed(job_config):
    dev, schnell = "flux-dev/infusenet-aes", "flux-schnell/infusenet-aes"
    for job in (dev, schnell):
        score.run_job(study_of(job_config), job, progress=False)
    before = {job: _tables(job_config, job) for job in (dev, schnell)}
    record = json.loads(score.run_job(study_of(job_config), schnell, progress=False).read_text())
    assert not any(entry["rescored"] for entry in record["cells"].values())
    assert _tables(job_config, schnell) == before[schnell]  # kept byte for byte
    # one image of schnell-2 rewritten (other pixels): only that cell is scored again
    paths = Paths(study_of(job_config))
    image = paths.image("flux-schnell/infusenet-aes/2", Grid(study_of(job_config)).items[0].id)
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(image)
    record = json.loads(score.run_job(study_of(job_config), schnell, progress=False).read_text())
    assert {c: e["rescored"] for c, e in record["cells"].items()} == {
        "flux-schnell/infusenet-aes/1": False,
        "flux-schnell/infusenet-aes/2": True,
        "flux-schnell/infusenet-aes/4": False,
    }
    after = _tables(job_config, schnell)
    assert after["flux-schnell/infusenet-aes/1"] == before[schnell]["flux-schnell/infusenet-aes/1"]
    assert after["flux-schnell/infusenet-aes/2"] != before[schnell]["flux-schnell/infusenet-aes/2"]
    # new anchor images (dev-8): every cell paired with it is scored again, the anchor too
    anchor = paths.image(ANCHOR, Grid(study_of(job_config)).items[1].id)
    Image.fromarray(np.full((SIZE, SIZE, 3), 200, np.uint8)).save(anchor)
    for job in (dev, schnell):
        record = json.loads(score.run_job(study_of(job_config), job, progress=False).read_text())
        assert all(entry["rescored"] for entry in record["cells"].values()), job
    # a scoring setting of these cells changed: every table is computed again
    changed = copy.deepcopy(job_config)
    changed["scoring"]["lpips_size"] = 128
    record = json.loads(score.run_job(study_of(changed), schnell, progress=False).read_text())
    assert all(entry["rescored"] for entry in record["cells"].values())


def test_a_table_without_its_inputs_digest_is_not_current(job_config):
    cell = Grid(study_of(job_config)).cell(OTHER)
    paths = Paths(study_of(job_config))
    score.run(study_of(job_config), OTHER, progress=False)
    digest = score.scored_inputs(Grid(study_of(job_config)), paths, cell)
    assert score.is_current(paths.scores(OTHER), digest)
    frame = pd.read_parquet(paths.scores(OTHER)).drop(columns="scored_inputs")
    frame.to_parquet(paths.scores(OTHER), index=False)  # a table of an earlier fewstep
    assert not score.is_current(paths.scores(OTHER), digest)
    assert not score.is_current(paths.scores(ANCHOR).with_name("missing.parquet"), digest)


def _watched(events: list[str]) -> dict[str, type]:
    """Every metric class, each `score` call logged in `events` by its metric's name."""

    def watched(cls: type) -> type:
        def score_batch(self, batch):
            events.append(self.name)
            return cls.score(self, batch)

        return type(cls.__name__, (cls,), {"score": score_batch})

    return {name: watched(cls) for name, cls in score.METRICS.items()}


@pytest.mark.slow
def test_a_score_job_takes_its_card_after_the_metrics_that_need_none(job_config, tmp_path, monkeypatch):
    """On a GPU job (device auto) the face metrics, on the CPU here (onnxruntime without its CUDA
    provider, dlib), score every cell before the card is taken, the torch metrics after; the
    tables are those of a job whose metrics all run in one pass (device cpu)."""
    events: list[str] = []
    monkeypatch.setattr(score, "METRICS", _watched(events))
    on_gpu = copy.deepcopy(job_config)
    on_gpu.update(device="auto")
    on_gpu["scoring"]["metrics"] = ["identity", "identity_dlib", "lpips", "clip_score"]
    on_cpu = copy.deepcopy(on_gpu)
    on_cpu.update(device="cpu", results_dir=str(tmp_path / "cpu"))
    job = "flux-schnell/infusenet-aes"
    cells = Grid(study_of(on_gpu)).job(job)
    cells_dir = "cells"  # every cell of the sweep: the anchor's images too
    shutil.copytree(Paths(study_of(on_gpu)).root / cells_dir, Paths(study_of(on_cpu)).root / cells_dir)
    assert not faces.has_cuda_provider()  # this machine's onnxruntime is the CPU build

    def cuda_after_the_card() -> bool:  # device auto asks CUDA: only once the card is taken
        assert "card" in events, "CUDA was asked before the score job took its card"
        return False

    monkeypatch.setattr(torch.cuda, "is_available", cuda_after_the_card)
    for loader in ("load_lpips", "load_clip"):  # each network read from disk: logged with its device
        real = getattr(sm, loader)
        monkeypatch.setattr(sm, loader, lambda *a, real=real, name=loader: events.append(name) or real(*a))
    score.run_job(study_of(on_gpu), job, progress=False, take_card=lambda: events.append("card"))
    card = events.index("card")
    assert events.count("card") == 1
    scored_before = [event for event in events[:card] if not event.startswith("load_")]
    assert set(scored_before) == {"identity", "identity_dlib"} and len(scored_before) == 2 * len(cells) * 2
    assert sorted(set(events[:card]) - set(scored_before)) == ["load_clip", "load_lpips"]  # once each
    assert set(events[card + 1 :]) == {"lpips", "clip_score"}  # 2 batches of each, per cell

    events.clear()
    score.run_job(study_of(on_cpu), job, progress=False, take_card=lambda: events.append("card"))
    assert events[-1] == "card"  # the CPU takes no card: every metric before the (no-op) claim
    for cell in cells:
        tables = [pd.read_parquet(Paths(study_of(c)).scores(cell.id)) for c in (on_gpu, on_cpu)]
        assert list(tables[0].columns) == list(tables[1].columns)
        kept = [c for c in tables[0].columns if c not in ("config_hash", "scored_inputs", "device")]
        pd.testing.assert_frame_equal(tables[0][kept], tables[1][kept], check_exact=True)

    events.clear()  # every table current: nothing scored, no card taken
    score.run_job(study_of(on_gpu), job, progress=False, take_card=lambda: events.append("card"))
    assert events == []


def test_networks_loaded_before_the_card_move_to_it_after():
    """A staged `JobModels` loads on the CPU; `to_card` moves every torch module it holds (alone or
    beside a processor) to the job's device (here the meta device stands in for the card)."""
    models = JobModels(SimpleNamespace(device="meta"), staged=True)
    assert models.device == torch.device("cpu")
    alone = models.get("lpips", lambda: torch.nn.Linear(2, 2, device=models.device))
    paired, processor = models.get("clip", lambda: (torch.nn.Linear(2, 2, device=models.device), "processor"))
    assert alone.weight.device.type == paired.weight.device.type == "cpu"
    models.to_card()
    assert models.device == torch.device("meta") and not models.staged
    assert alone.weight.device.type == paired.weight.device.type == "meta" and processor == "processor"
