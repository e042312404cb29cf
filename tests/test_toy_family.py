"""A third model family written only here: "a family is one folder" as an acceptance test.

`ToyFamily` is everything a family gives the workflow (`fewstep.families.base.Family`): a
registry spec with a tiny recipe, a prompt encoder, and a `CellPipeline` whose images are a
deterministic function of the prompt embedding, the seed, the step count and the tiny weights.
Added to `fewstep.families.FAMILIES` and its model to the registry at run time, with no edit
anywhere else, it runs grid -> prepare -> embed prompts -> generate -> score -> aggregate ->
report in-process on the CPU, each stage through the entry point its rule's CLI command calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fewstep.core.config import validate
from fewstep.core.errors import ConfigError, WeightsError
from fewstep.core.paths import Paths
from fewstep.core.study import Study
from fewstep.families import FAMILIES
from fewstep.families.base import Denoised, IdentityEmbedding, ItemInputs, Step, StepTimer
from fewstep.families.report_kit import ReportKit, ReportParts
from fewstep.grid import Grid
from fewstep.registry import catalog
from fewstep.registry.catalog import model_folder
from fewstep.registry.spec import ModelSpec, Recipe, Usage
from tests.conftest import demo_yaml, study_of

WEIGHTS_FILE = "palette.pt"
EMBEDDING_WIDTH = 8


def _no_real_weights(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    raise WeightsError(f"{spec.name} exists only as tiny seeded weights; set weights: tiny")


def _build_tiny(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """Seeded tiny weights: a [EMBEDDING_WIDTH, 3] projection from prompt embedding to colour."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(24)
    torch.save({"palette": torch.randn(EMBEDDING_WIDTH, 3, generator=generator)}, folder / WEIGHTS_FILE)


TOY_PIXELS = ModelSpec(
    "toy-pixels",
    "toy-pixels",
    recipe=Recipe(
        fetch=_no_real_weights, tiny=_build_tiny, required=lambda config, spec, usage: [WEIGHTS_FILE]
    ),
)


class ToyPromptEncoder:
    """A prompt's sha256 bytes scaled to [-1, 1): the same text, the same embedding."""

    def encode(self, text: str, backbone: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        digest = hashlib.sha256(text.encode()).digest()[:EMBEDDING_WIDTH]
        return {"prompt_embeds": torch.tensor(list(digest), dtype=torch.float32)[None] / 128 - 1}


class ToyCellPipeline:
    """Halves the distance from seeded noise to the prompt's colour at every step; no adapter."""

    def __init__(self, config: Mapping[str, Any], size: Mapping[str, int], device: torch.device):
        weights = torch.load(Path(model_folder(config, TOY_PIXELS.name)) / WEIGHTS_FILE)
        self.palette = weights["palette"]
        self.width, self.height = size["width"], size["height"]
        self.device, self.dtype = device, torch.float32

    def condition(self, inputs: ItemInputs) -> tuple[torch.Tensor, float]:
        return torch.tanh(inputs.prompt["prompt_embeds"].float() @ self.palette), 0.0

    def stack(self, conditions: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(conditions))

    def denoise(
        self,
        condition: torch.Tensor,
        seeds: Sequence[int],
        steps: int,
        on_step: Callable[[Step], None] | None = None,
    ) -> Denoised:
        shape = (3, self.height, self.width)
        latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        target = condition[:, :, None, None].expand_as(latents)
        sigmas = [0.5**i for i in range(steps)]
        timer = StepTimer(self.device)
        timer.mark()
        for index, sigma in enumerate(sigmas):
            sigma_next = sigma / 2
            latents = target + (latents - target) / 2
            timer.mark()
            if on_step is not None:
                on_step(Step(index, sigma, sigma_next, target - latents, latents, False))
        return Denoised(latents, sigmas, [False] * steps, timer)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = ((latents.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1)


class ToyFamily:
    """One bare backbone on config ``resolution``; its items cross the identities, unconditioned."""

    name = "toy"
    backbones = {TOY_PIXELS.name: TOY_PIXELS}
    adapter_kinds = frozenset({"none"})
    backbone_keys = frozenset()
    adapter_keys = {"none": frozenset()}
    config_values: Mapping[str, tuple[str, ...]] = {}
    max_side = 128
    adapter_roles = ("identity",)
    acceleration_switches: frozenset[str] = frozenset()
    comparable = False
    anchors_to_highest_step = True  # LPIPS to its own job's highest-step cell

    def check_backbone(self, key: str, backbone: Mapping[str, Any]) -> None:
        if backbone.get("guidance") is not None:
            raise ConfigError(f"config backbones.{key}.guidance: the toy takes no guidance; remove it")

    def check_adapter(self, key: str, adapter: Mapping[str, Any]) -> None:
        """Only kind none reaches here (`adapter_kinds`), and it has no settings."""

    def guidance(self, backbone: Mapping[str, Any]) -> None:
        return None

    def adapter_role(self, adapter: Mapping[str, Any]) -> None:
        return None

    def settings(self, backbone: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def image_size(self, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> dict[str, Any]:
        return {"width": resolution["width"], "height": resolution["height"]}

    def check_size(self, key: str, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> None:
        if max(resolution["width"], resolution["height"]) > self.max_side:
            raise ConfigError(f"config resolution: the toy draws at most {self.max_side} px; lower it")

    def prompt_variants(self, backbones: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        return {"T": backbones[0]}

    def prompt_variant(self, backbone: Mapping[str, Any]) -> str:
        return "T"

    def prompt_metadata(self, backbone: Mapping[str, Any]) -> dict[str, str]:
        return {}

    def reference_file(self, adapter: Mapping[str, Any]) -> None:
        return None

    def cell_weights(self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> dict[str, tuple]:
        return {TOY_PIXELS.name: (WEIGHTS_FILE,)}

    def cell_models(self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> list[str]:
        return list(self.cell_weights(backbone, adapter))

    def needs_identity_embeddings(self, adapter: Mapping[str, Any]) -> bool:
        return False

    def identity_models(self, adapter: Mapping[str, Any]) -> list[str]:
        return []

    prompt_job_mem_mb = 2000
    prompt_timing_key = "embed_prompt/toy"
    figure_files: tuple[str, ...] = ()  # no benchmark times it: the estimate counts its jobs' starts

    def timing_name(self, backbone: Mapping[str, Any]) -> str:
        return backbone["model"]

    def figure_cell(self, row: Mapping[str, str]) -> None:
        return None

    def prompt_embedding_floats(self, backbone: Mapping[str, Any]) -> int:
        return EMBEDDING_WIDTH

    def reference_embedding_floats(self, adapter: Mapping[str, Any]) -> int:
        return 0

    def prompt_model(self, models: Sequence[str]) -> str:
        return models[0]

    def prompt_encoder(self, config: Any, model: str, device: Any, dtype: Any) -> ToyPromptEncoder:
        return ToyPromptEncoder()

    def cell_pipeline(
        self, config, backbone, adapter, acceleration, device, dtype, components=None
    ) -> ToyCellPipeline:
        return ToyCellPipeline(config, self.image_size(backbone, config["resolution"]), device)

    label = "Toy"
    report_folders: tuple[str, ...] = ()

    def report_parts(self, kit: ReportKit) -> ReportParts:
        """One section of its own: its cells' mean LPIPS to the four-step image, as a table."""
        summary = kit.tables["summary"]
        rows = summary[summary["metric"] == "lpips_anchor"][["cell_id", "mean"]]
        body = kit.html_table(rows.rename(columns={"cell_id": "cell", "mean": "LPIPS to 4 steps"}))
        return ReportParts(sections=[("toy", "The toy family", kit.html(f"<p>{kit.banner}</p>{body}"))])


TOY = ToyFamily()
CELLS = ["toy/bare/1", "toy/bare/2", "toy/bare/4"]


@pytest.fixture
def toy_config(tmp_path, monkeypatch) -> dict[str, Any]:
    """A sweep of toy cells only, with the toy in the family list and its model in the registry
    for this test (the registry has no removal: the test puts it back as it was)."""
    monkeypatch.setitem(FAMILIES, TOY.name, TOY)
    monkeypatch.setitem(catalog._MODELS, TOY_PIXELS.name, TOY_PIXELS)
    raw = demo_yaml()
    for key in ("anchor", "comparison"):
        raw.pop(key)
    raw.update(
        results_dir=str(tmp_path / "results"),
        models_dir=str(tmp_path / "models"),
        reports_dir=str(tmp_path / "reports"),
        resolution={"width": 32, "height": 32},
        backbones={"toy": {"family": "toy", "model": TOY_PIXELS.name, "steps": [1, 2, 4]}},
        adapters={"bare": {"kind": "none"}},
        cells=[{"backbones": ["toy"], "adapters": ["bare"]}],
        trajectory={"cells": []},
        scoring={"metrics": ["lpips"], "batch_size": 4},
        wandb={"mode": "disabled"},
    )
    return validate(raw)


@pytest.mark.slow
def test_a_family_defined_in_a_test_runs_from_grid_to_report(toy_config):
    from fewstep.analysis import aggregate, report
    from fewstep.jobs import generate, precompute, score
    from fewstep.jobs.prepare import prepare_model

    grid = Grid(study_of(toy_config))

    paths = Paths(grid.study)
    assert [c.id for c in grid.cells] == CELLS and list(grid.jobs) == ["toy/bare"]
    assert grid.models == ["lpips-alex", "toy-pixels"]
    assert [i.id for i in grid.items_of(grid.cell(CELLS[0]))] == [i.id for i in grid.items]
    assert len(grid.items) == 4  # 2 identities x 2 prompts x 1 seed
    for name in grid.models:
        prepare_model(study_of(toy_config), name)
    written = precompute.embed_prompts(study_of(toy_config))
    assert sorted(written) == sorted(grid.prompt_embeddings(paths, grid.cell(CELLS[0])))
    assert [p.name for p in written] == ["portrait.T.safetensors", "astronaut-suit.T.safetensors"]

    generate.run_job(study_of(toy_config), "toy/bare", progress=False)
    score.run_job(study_of(toy_config), "toy/bare", progress=False)
    for cell_id in CELLS:
        manifest = pd.read_parquet(paths.manifest(cell_id))
        assert sorted(manifest["item_id"]) == sorted(i.id for i in grid.items)
        assert set(manifest["cell_id"]) == {cell_id}
        scores = pd.read_parquet(paths.scores(cell_id))
        assert sorted(scores["item_id"]) == sorted(manifest["item_id"])
    first = pd.read_parquet(paths.manifest(CELLS[0])).iloc[0]
    pixels = np.asarray(Image.open(paths.cell_dir(CELLS[0]) / first["image"]))
    assert pixels.shape == (32, 32, 3)
    # LPIPS to the job's highest-step cell (the toy anchors to it): each step halves the noise
    # left, so one step lies farther from the four-step image than two steps, and four at 0
    lpips = {c: pd.read_parquet(paths.scores(c)).set_index("item_id")["lpips_anchor"] for c in CELLS}
    assert (lpips[CELLS[2]] == 0).all()
    assert (lpips[CELLS[0]] > lpips[CELLS[1]]).all() and (lpips[CELLS[1]] > 0).all()

    summary = aggregate.run(study_of(toy_config))
    table = pd.read_csv(summary)
    assert sorted(set(table["cell_id"])) == CELLS and set(table["backbone"]) == {"toy"}
    means = table[table["metric"] == "lpips_anchor"].set_index("cell_id")["mean"]
    assert means.to_dict() == pytest.approx({c: lpips[c].mean() for c in CELLS})
    per_image = pd.read_parquet(paths.per_image)
    assert sorted(set(per_image["cell_id"])) == CELLS and len(per_image) == 12

    page = report.run(study_of(toy_config), summary)
    text = Path(page).read_text()
    assert 'data-family="toy"' in text and 'data-cells="3"' in text and 'data-images="12"' in text
    # its own section, drawn by its report_parts with the injected tools, with its rows only
    assert 'id="toy"' in text and "The toy family" in text
    assert "LPIPS to 4 steps" in text and "Toy: 3 cells" in text


def test_the_toy_has_its_prompt_rule_and_an_estimate_without_figures(toy_config):
    """The embed_prompt rule's variant constraint takes the toy's label; `fewstep estimate` times
    the toy by the jobs' starts (no benchmark figures name it) and says so."""
    import re

    from snakemake.io import regex_from_filepattern

    from fewstep.analysis import estimate
    from fewstep.core.paths import one_of

    grid = Grid(study_of(toy_config))

    paths = Paths(grid.study)
    assert grid.prompt_variant_labels == ["T"] and grid.reference_files == []
    pattern = paths.prompt_variant_embedding("{family}", "portrait", f"{{variant,{one_of(['T'])}}}")
    wanted = paths.prompt_variant_embedding("toy", "portrait", "T")
    match = re.match(regex_from_filepattern(str(pattern)), str(wanted))
    assert match and match.groupdict() == {"family": "toy", "variant": "T"}
    assert not re.match(regex_from_filepattern(str(pattern)), str(wanted).replace(".T.", ".L512."))

    result = estimate.estimate(study_of(toy_config), "h200")
    jobs = {(job.rule, job.name): job for job in result.jobs}
    assert jobs["embed_prompt", "toy/T"].key == "embed_prompt/toy"
    assert jobs["generate", "toy/bare"].work == 0.0
    assert "no toy figures for h200: toy/bare counts its start only" in result.notes


class ToyFaceEncoder:
    """The toy's face pipeline: a picture's mean colour, and no face in a picture of one colour."""

    device = torch.device("cpu")

    def encode(self, rgb: np.ndarray) -> IdentityEmbedding | None:
        if rgb.min() == rgb.max():
            return None
        return IdentityEmbedding(
            {"mean_rgb": torch.from_numpy(rgb.reshape(-1, 3).mean(axis=0).astype(np.float32))},
            {"toy_face": "mean colour"},
        )


class FaceReadingToy(ToyFamily):
    """The toy whose bare backbone reads identity embeddings through its own encoder."""

    def needs_identity_embeddings(self, adapter: Mapping[str, Any]) -> bool:
        return True

    def identity_models(self, adapter: Mapping[str, Any]) -> list[str]:
        return [TOY_PIXELS.name]

    def identity_encoder(self, config: Any, adapters: Sequence[Any], device: Any) -> ToyFaceEncoder:
        assert [a.id for a in adapters] == ["bare"]
        return ToyFaceEncoder()


def test_the_identity_job_writes_what_the_family_encoder_gives(toy_config, monkeypatch, tmp_path):
    """The embed_identity job knows no face code: each identity's file holds the tensors and
    metadata of the family's `identity_encoder`, and a picture it finds no face in is one line."""
    from fewstep.core.errors import InputError
    from fewstep.core.images import load_rgb
    from fewstep.core.provenance import device_name
    from fewstep.jobs import precompute

    monkeypatch.setitem(FAMILIES, TOY.name, FaceReadingToy())
    grid = Grid(study_of(toy_config))
    paths = Paths(grid.study)
    assert grid.identity_models() == ["toy-pixels"]
    assert grid.cell_models(grid.cell(CELLS[0])) == ["toy-pixels"]
    written = precompute.embed_identities(study_of(toy_config))
    assert written == [paths.identity_embedding(i["id"]) for i in toy_config["identities"]]
    tensors, metadata = precompute.load_tensors(written[0])
    first = toy_config["identities"][0]
    expected = load_rgb(first["image"]).reshape(-1, 3).mean(axis=0)
    assert list(tensors) == ["mean_rgb"] and np.allclose(tensors["mean_rgb"].numpy(), expected)
    assert metadata["toy_face"] == "mean colour" and metadata["identity"] == first["id"]
    assert metadata["encode_device_name"] == device_name(torch.device("cpu"))

    blank = tmp_path / "blank.png"
    Image.new("RGB", (16, 16), (90, 90, 90)).save(blank)
    toy_config["identities"] = [{"id": "blank", "image": str(blank)}]
    with pytest.raises(InputError, match=rf"^identities\[blank\]: no face found in {blank}; "):
        precompute.embed_identities(study_of(toy_config))


class BrighterFaceEncoder(ToyFaceEncoder):
    """Another family's face pipeline that writes a different `mean_rgb`."""

    def encode(self, rgb: np.ndarray) -> IdentityEmbedding | None:
        found = super().encode(rgb)
        return IdentityEmbedding({"mean_rgb": found.tensors["mean_rgb"] + 1.0}, found.metadata)


class BrighterToy(FaceReadingToy):
    name = "toy2"

    def identity_encoder(self, config: Any, adapters: Sequence[Any], device: Any) -> ToyFaceEncoder:
        return BrighterFaceEncoder()


def _two_toy_families(toy_config, monkeypatch, second: FaceReadingToy):
    monkeypatch.setitem(FAMILIES, TOY.name, FaceReadingToy())
    monkeypatch.setitem(FAMILIES, second.name, second)
    raw = dict(toy_config)
    raw["backbones"] = dict(raw["backbones"], toy2={**raw["backbones"]["toy"], "family": "toy2"})
    raw["cells"] = [{"backbones": ["toy", "toy2"], "adapters": ["bare"]}]
    return study_of(validate(raw))


def test_two_families_writing_different_tensors_under_one_name_are_refused(toy_config, monkeypatch):
    """Each family's identity tensors join one file per identity, so two that write different
    tensors under one name would silently overwrite each other's input: the job refuses it."""
    from fewstep.jobs import precompute

    study = _two_toy_families(toy_config, monkeypatch, BrighterToy())
    with pytest.raises(ValueError, match=r"identity encoders write different tensors under \['mean_rgb'\]"):
        precompute.embed_identities(study)


def test_two_families_writing_the_same_tensor_share_it(toy_config, monkeypatch):
    """Two families reading one embedding (SD1.5's and SDXL's FaceID) write equal tensors under one
    name: the file holds it once."""
    from fewstep.core.images import load_rgb
    from fewstep.jobs import precompute

    second = FaceReadingToy()
    second.name = "toy2"
    written = precompute.embed_identities(_two_toy_families(toy_config, monkeypatch, second))
    tensors, _ = precompute.load_tensors(written[0])
    expected = load_rgb(toy_config["identities"][0]["image"]).reshape(-1, 3).mean(axis=0)
    assert list(tensors) == ["mean_rgb"] and np.allclose(tensors["mean_rgb"].numpy(), expected)
