"""One generation job (a cell) in-process on tiny models."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fewstep import generate, precompute
from fewstep.grid import Grid
from fewstep.paths import Paths


def test_prompt_and_identity_embeddings_are_written_once_per_sweep(embedded):
    paths = Paths(embedded)
    for prompt in embedded["prompts"]:
        for length in (256, 512):
            tensors, meta = precompute.load_tensors(paths.prompt_embedding("flux", prompt["id"], length))
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
    generate.run(embedded, "flux-schnell/infusenet-aes/1", tmp_path / "manifest.parquet", progress=False)
    assert len(pd.read_parquet(tmp_path / "manifest.parquet")) == len(Grid(embedded).items)


def test_manifest_lists_every_item_once_with_provenance(embedded):
    cell = "flux-dev/infusenet-aes/2"
    path = generate.run(embedded, cell, progress=False)
    manifest = pd.read_parquet(path)
    grid, paths = Grid(embedded), Paths(embedded)
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
    first = pd.read_parquet(generate.run(embedded, cell, progress=False))
    again = pd.read_parquet(generate.run(embedded, cell, progress=False))
    assert list(again["generated_at"]) == list(first["generated_at"])
    assert list(again["sha256"]) == list(first["sha256"])
