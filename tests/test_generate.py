"""One generation job (a cell) in-process on tiny models."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fewstep.core.io import sha256_file
from fewstep.core.paths import Paths
from fewstep.grid import Grid
from fewstep.jobs import generate, precompute
from tests.conftest import study_of


def test_prompt_and_identity_embeddings_are_written_once_per_sweep(embedded):
    paths = Paths(study_of(embedded))
    for prompt in embedded["prompts"]:
        for length in (256, 512):
            path = paths.prompt_embedding("flux", prompt["id"], length)
            if prompt["role"] != "identity":  # FLUX's identity cells render no style or object prompt
                assert not path.exists()
                continue
            tensors, meta = precompute.load_tensors(path)
            assert tensors["prompt_embeds"].shape == (1, length, 32)
            assert meta["prompt"] == prompt["text"] and meta["text_encoders"] == "flux-schnell"
    tensors, meta = precompute.load_tensors(paths.identity_embedding("group-t1"))
    assert tensors["arcface_irse50"].shape == (1, 512)
    assert abs(float(tensors["arcface_irse50"].norm()) - 1.0) < 1e-5
    assert int(meta["n_faces"]) > 1  # the group photo: the largest face was kept


def test_generation_never_builds_a_text_encoder(embedded, monkeypatch, tmp_path):
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("a generation job instantiated a text encoder")

    monkeypatch.setattr(transformers.CLIPTextModel, "__init__", forbidden)
    monkeypatch.setattr(transformers.T5EncoderModel, "__init__", forbidden)
    generate.run(
        study_of(embedded), "flux-schnell/infusenet-aes/1", tmp_path / "manifest.parquet", progress=False
    )
    assert len(pd.read_parquet(tmp_path / "manifest.parquet")) == len(Grid(study_of(embedded)).items)


def test_manifest_lists_every_item_once_with_provenance(embedded):
    cell = "flux-dev/infusenet-aes/2"
    path = generate.run(study_of(embedded), cell, progress=False)
    manifest = pd.read_parquet(path)
    grid = Grid(study_of(embedded))
    paths = Paths(grid.study)
    assert list(manifest["item_id"]) == [i.id for i in grid.items]
    assert set(manifest["cell_id"]) == {cell} and set(manifest["steps"]) == {2}
    assert set(manifest["weights"]) == {"tiny"} and set(manifest["guidance"]) == {3.5}
    assert all(json.loads(s) == pytest.approx(json.loads(manifest["sigmas"][0])) for s in manifest["sigmas"])
    assert len(json.loads(manifest["sigmas"][0])) == 2
    assert (manifest["latency_s"] >= manifest["denoise_s"]).all() and (manifest["peak_mem_mb"] > 0).all()
    assert manifest["cell_hash"].nunique() == 1 and manifest["config_hash"].nunique() == 1
    for row in manifest.itertuples():
        assert (paths.cell_dir(cell) / row.image).exists()
    # the PNG carries its provenance too
    from PIL import Image

    with Image.open(paths.cell_dir(cell) / manifest["image"][0]) as image:
        meta = json.loads(image.text["fewstep"])
    assert meta["cell"] == cell and meta["item"] == manifest["item_id"][0] and meta["weights"] == "tiny"


def test_a_second_run_keeps_every_image(embedded):
    cell = "flux-dev/infusenet-aes/1"
    first = pd.read_parquet(generate.run(study_of(embedded), cell, progress=False))
    again = pd.read_parquet(generate.run(study_of(embedded), cell, progress=False))
    assert list(again["generated_at"]) == list(first["generated_at"])
    assert list(again["sha256"]) == list(first["sha256"])


@pytest.fixture
def own_results(embedded, tmp_path) -> dict:
    """The tiny config writing to its own results folder, with the session's embeddings copied in."""
    import copy
    import shutil

    config = copy.deepcopy(embedded)
    config["results_dir"] = str(tmp_path / "results")
    shutil.copytree(
        Paths(study_of(embedded)).root / "embeddings", Paths(study_of(config)).root / "embeddings"
    )
    return config


def test_manifest_times_each_image_end_to_end_and_marks_the_warmup_batch(own_results):
    from fewstep.families.flux.models import generation_weights
    from fewstep.registry.prepare import weights_digest

    cell = "flux-schnell/infusenet-aes/2"
    manifest = pd.read_parquet(generate.run(study_of(own_results), cell, progress=False, batch_size=3))
    assert list(manifest["warmup"]) == [True, True, True, False]  # 4 items, batches of 3 and 1
    assert list(manifest["batch_size"]) == [3, 3, 3, 1]
    assert (manifest["prompt_encode_s"] > 0).all() and (manifest["identity_embed_s"] > 0).all()
    assert (manifest["conditioning_s"] > 0).all()
    inputs = manifest[["prompt_encode_s", "identity_embed_s", "conditioning_s", "latency_s"]].sum(axis=1)
    assert manifest["end_to_end_s"].to_numpy() == pytest.approx(inputs.to_numpy(), rel=1e-12)
    # each prompt's encoding time is the one its embedding file records
    for row in manifest.itertuples():
        path = Paths(study_of(own_results)).prompt_embedding("flux", row.prompt_id, 256)
        assert row.prompt_encode_s == float(precompute.load_tensors(path)[1]["encode_s"])
    grid = Grid(study_of(own_results))
    c = grid.cell(cell)
    expected = weights_digest(study_of(own_results), generation_weights("flux-schnell", grid.adapter(c)))
    assert set(manifest["weights_digest"]) == {expected}
    assert set(manifest["dtype"]) == {"float32"} and manifest["device_name"].nunique() == 1


def test_reembedding_the_same_inputs_keeps_their_digests(own_results):
    """Embedding files carry their timing, which must not count as content (or every image would rerun)."""
    paths = Paths(study_of(own_results))
    path = paths.identity_embedding("astronaut")
    before, meta_before = precompute.content_digest(path), precompute.load_tensors(path)[1]
    precompute.embed_identities(study_of(own_results))
    assert precompute.load_tensors(path)[1]["encode_s"] != meta_before["encode_s"]
    assert precompute.content_digest(path) == before


def _reseeded_backbone(source, target, seed: int):
    """A copy of a tiny FLUX.1-schnell folder whose transformer is drawn from another seed."""
    import shutil

    import torch
    from diffusers import FluxTransformer2DModel

    from fewstep.families.flux.tiny import TINY_TRANSFORMER

    shutil.copytree(source, target)
    torch.manual_seed(seed)
    FluxTransformer2DModel(**TINY_TRANSFORMER, guidance_embeds=False).save_pretrained(target / "transformer")
    return target


def test_other_weights_folder_regenerates_every_image(own_results, tmp_path):
    """local_weights pointed at another folder (as another hub revision would): no image is reused."""
    from fewstep.jobs.prepare import prepare_model
    from fewstep.registry.catalog import model_folder

    config = dict(own_results, weights="real", models_dir=str(tmp_path / "models"))
    tiny_backbone = model_folder(study_of(own_results), "flux-schnell")
    folders = [_reseeded_backbone(tiny_backbone, tmp_path / f"schnell-{s}", s) for s in (1, 2)]
    config["local_weights"] = {
        "flux-schnell": str(folders[0]),
        "infiniteyou": str(model_folder(study_of(own_results), "infiniteyou")),
    }
    for name in config["local_weights"]:
        prepare_model(study_of(config), name)
    cell = "flux-schnell/infusenet-aes/1"
    first = pd.read_parquet(generate.run(study_of(config), cell, progress=False))
    again = pd.read_parquet(generate.run(study_of(config), cell, progress=False))
    assert list(again["generated_at"]) == list(first["generated_at"])  # same weights: all kept

    config["local_weights"]["flux-schnell"] = str(folders[1])
    prepare_model(study_of(config), "flux-schnell")
    other = pd.read_parquet(generate.run(study_of(config), cell, progress=False))
    assert other["weights_digest"].iloc[0] != first["weights_digest"].iloc[0]
    assert not set(other["item_key"]) & set(first["item_key"])
    assert not set(other["sha256"]) & set(first["sha256"])  # regenerated with the new weights


@pytest.mark.parametrize("change", ["batch_size", "device_name"])
def test_batch_size_or_device_change_regenerates(own_results, monkeypatch, capsys, change):
    cell = "flux-dev/infusenet-aes/1"
    first = pd.read_parquet(generate.run(study_of(own_results), cell, progress=False))
    generate.run(study_of(own_results), cell, progress=False)
    assert "(4 kept from an earlier run)" in capsys.readouterr().out
    if change == "batch_size":
        own_results["generation"]["batch_size"] = 2
    else:
        from fewstep.core import provenance

        monkeypatch.setattr(provenance, "device_name", lambda device: "another card")
    other = pd.read_parquet(generate.run(study_of(own_results), cell, progress=False))
    assert not set(other["item_key"]) & set(first["item_key"])
    assert "(0 kept from an earlier run)" in capsys.readouterr().out


TIMING = ["generated_at", "warmup", "denoise_s", "decode_s", "latency_s", "end_to_end_s", "step_s_median"]
TIMING += ["peak_mem_mb", "conditioning_s"]


def test_one_job_for_all_step_counts_writes_what_separate_cells_write(embedded, tmp_path):
    """The generate rule runs a backbone x adapter as one job: outputs equal one job per cell."""
    import shutil

    from PIL import Image

    job = "flux-schnell/infusenet-aes"
    separate, joint = (dict(embedded, results_dir=str(tmp_path / name)) for name in ("separate", "joint"))
    for config in (separate, joint):
        shutil.copytree(
            Paths(study_of(embedded)).root / "embeddings", Paths(study_of(config)).root / "embeddings"
        )
    cells = Grid(study_of(embedded)).job(job)
    assert [c.steps for c in cells] == [1, 2, 4]
    for cell in cells:
        generate.run(study_of(separate), cell.id, progress=False)
    record = json.loads(generate.run_job(study_of(joint), job, progress=False).read_text())
    assert list(record["cells"]) == [c.id for c in cells]
    for cell in cells:
        one, many = (pd.read_parquet(Paths(study_of(c)).manifest(cell.id)) for c in (separate, joint))
        pd.testing.assert_frame_equal(one.drop(columns=TIMING), many.drop(columns=TIMING))
        assert record["cells"][cell.id]["sha256"] == sha256_file(Paths(study_of(joint)).manifest(cell.id))
        for item in Grid(study_of(embedded)).items:
            images = [Paths(study_of(c)).image(cell.id, item.id).read_bytes() for c in (separate, joint)]
            assert images[0] == images[1]  # same pixels and the same provenance chunk
            with Image.open(Paths(study_of(joint)).image(cell.id, item.id)) as image:
                assert json.loads(image.text["fewstep"])["cell"] == cell.id
