"""Rerun triggers: a change reruns exactly the jobs whose outputs depend on it, and the
rerun outputs really change (issue 18: stale embeddings gave pixel-identical images).

Each test works on a copy of the session's finished demo (results, tiny models and
Snakemake's metadata, mtimes kept), asks `snakemake -n` which jobs a change brings, and
runs only the few jobs that show the outputs change where their conditioning changed.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fewstep.core.paths import Paths
from tests.conftest import REPO, snakemake, study_of

CELL = "flux-schnell/infusenet-aes/1"
#: what a change of the FLUX cells' conditioning reruns
FLUX_DOWNSTREAM = {
    "generate": 2,
    "score": 2,
    "trajectory": 2,
    "aggregate": 1,
    "report": 1,
    "wandb_aggregate": 1,
}


def _faceid_jobs() -> int:
    """The demo's SD FaceID generation jobs: they read the identity embedding files too."""
    from fewstep.core.config import validate
    from fewstep.grid import Grid

    grid = Grid(study_of(validate(yaml.safe_load((REPO / "config" / "demo.yaml").read_text()))))
    return len({c.job for c in grid.cells if grid.adapter(c).get("file") == "faceid"})


def _family_jobs(family: str) -> int:
    """The demo's generation jobs of one family."""
    from fewstep.core.config import validate
    from fewstep.grid import Grid

    grid = Grid(study_of(validate(yaml.safe_load((REPO / "config" / "demo.yaml").read_text()))))
    return len({c.job for c in grid.cells if grid.family(c).name == family})


FACEID_JOBS = _faceid_jobs()
#: Kontext's job reads the identity embedding file (the photo's pixels), klein's the photo itself
KONTEXT_JOBS, KLEIN_JOBS = _family_jobs("kontext"), _family_jobs("klein")
IDENTITY_JOBS = 2 + FACEID_JOBS + KONTEXT_JOBS + KLEIN_JOBS  # FLUX dev and schnell, then the others
#: what a change of an identity's photo reruns: every identity cell's jobs
DOWNSTREAM = FLUX_DOWNSTREAM | {"generate": IDENTITY_JOBS, "score": IDENTITY_JOBS}


@pytest.fixture
def demo(demo_run, tmp_path) -> Path:
    """A private copy of the finished demo workdir: what a test changes stays there."""
    work = tmp_path / "demo"
    shutil.copytree(demo_run, work, symlinks=True, ignore=shutil.ignore_patterns("home"))
    return work


def demo_config(**changes) -> dict:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config.update(changes)
    return config


def write_config(work: Path, config: dict) -> Path:
    path = work / "changed.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def planned(work: Path, configfile: Path, *targets: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job `snakemake -n` lists, `all` left out."""
    result = snakemake(work, "-n", *targets, configfile=configfile)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs: list[tuple[str, str]] = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", result.stdout):
        match = re.match(r"(?:local)?rule (\w+):\n", block)
        if match and match.group(1) != "all":
            found = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
            jobs.append((match.group(1), found.group(1) if found else ""))
    return sorted(jobs)


def counts(jobs: list[tuple[str, str]]) -> dict[str, int]:
    return dict(collections.Counter(rule for rule, _ in jobs))


def of(jobs: list[tuple[str, str]], rule: str) -> list[str]:
    return [wildcards for name, wildcards in jobs if name == rule]


def pixels(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.tobytes()


def images(work: Path, cell: str = CELL) -> dict[str, bytes]:
    from fewstep.core.config import validate

    paths = Paths(
        study_of(validate(demo_config(results_dir=str(work / "results"), reports_dir=str(work / "reports"))))
    )
    manifest = pd.read_parquet(paths.manifest(cell))
    return {row.item_id: pixels(paths.cell_dir(cell) / row.image) for row in manifest.itertuples()}


def run_cell(work: Path, configfile: Path, cell: str = CELL) -> None:
    """Run the generation job that renders `cell` (every step count of its backbone x adapter)."""
    target = f"results/demo/cells/{cell.rsplit('/', 1)[0]}/generation.json"
    result = snakemake(work, target, "--cores", "2", configfile=configfile)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_the_demo_copy_is_up_to_date(demo):
    assert planned(demo, REPO / "config" / "demo.yaml") == []


def test_a_prompt_text_change_reembeds_that_prompt_and_changes_its_images(demo):
    config = demo_config()
    config["prompts"][0]["text"] = "An oil painting of the person in a garden, impressionist style"
    configfile = write_config(demo, config)
    jobs = planned(demo, configfile)
    # an identity prompt: its group at both T5 lengths (dev 512, schnell 256) and for both SD
    # families' FaceID cells (one job per negative variant), no identity, the identity cells
    # downstream; the SD style and object cells render their own prompts and stay
    embedded = of(jobs, "embed_prompt_identity")
    assert [w for w in embedded if w.startswith("family=flux")] == [
        "family=flux, variant=L256",
        "family=flux, variant=L512",
    ]
    families = sorted({w.split(",")[0] for w in embedded})
    assert families == ["family=flux", "family=klein", "family=kontext", "family=sd15", "family=sdxl"]
    assert counts(jobs) == {"embed_prompt_identity": 6, **DOWNSTREAM}
    before = images(demo)
    run_cell(demo, configfile)
    after = images(demo)
    assert before.keys() == after.keys()
    for item in before:  # only the changed prompt's images differ
        assert (before[item] != after[item]) == item.split("/")[1].startswith("portrait"), item


def test_face_policy_change_reembeds_identities_and_changes_the_group_picture_images(demo):
    config = demo_config(face={"policy": "highest_score"})
    configfile = write_config(demo, config)
    jobs = planned(demo, configfile)
    assert of(jobs, "embed_identity") == ["identity=astronaut", "identity=group-t1"]
    # klein reads the photo, not a face, so its images stay; its score job (the identity metrics
    # take the face the policy picks) reruns; the trajectory rule's face settings cover every
    # trajectory cell, the SD one too
    expected = DOWNSTREAM | {"generate": IDENTITY_JOBS - KLEIN_JOBS, "trajectory": 3}
    assert counts(jobs) == {"embed_identity": 2, **expected}
    before = images(demo)
    run_cell(demo, configfile)
    after = images(demo)
    # the group picture has several faces: the other face conditions its images now;
    # the astronaut has one, so its embedding and images stay what they were
    for item in before:
        assert (before[item] != after[item]) == item.startswith("group-t1/"), item


def test_a_picture_replaced_in_place_reembeds_that_identity_only(demo):
    from PIL import Image

    from fewstep.core.images import load_rgb

    picture = demo / "my pictures" / "astronaut.png"
    picture.parent.mkdir()
    Image.fromarray(load_rgb("builtin:astronaut")).save(picture)
    config = demo_config()
    config["identities"][0]["image"] = str(picture)
    configfile = write_config(demo, config)
    target = "results/demo/embeddings/identities/astronaut.safetensors"
    result = snakemake(demo, target, "--cores", "1", configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned(demo, configfile, target) == []
    # new content, an old modification time: only the content digest can tell
    Image.fromarray(load_rgb("builtin:astronaut")[:, ::-1]).save(picture)
    os.utime(picture, (946684800, 946684800))
    jobs = planned(demo, configfile)
    assert of(jobs, "embed_identity") == ["identity=astronaut"]
    assert "embed_prompt" not in counts(jobs) and counts(jobs)["generate"] == IDENTITY_JOBS


def test_a_builtin_name_change_reembeds_that_identity_only(demo):
    config = demo_config()
    config["identities"][1]["image"] = "builtin:insightface/Tom_Hanks_54745"
    jobs = planned(demo, write_config(demo, config))
    assert of(jobs, "embed_identity") == ["identity=group-t1"]
    assert counts(jobs) == {"embed_identity": 1, **DOWNSTREAM}


def test_a_model_prepared_again_reruns_what_it_feeds(demo):
    """A rewritten ready marker reruns its consumers; a touch alone does not (same checksum)."""
    from fewstep.core.config import validate
    from fewstep.registry.catalog import marker_path

    config = validate(demo_config(models_dir=str(demo / "resources" / "models"), weights="tiny"))
    marker = marker_path(study_of(config), "arcface-irse50")
    os.utime(marker)  # touched, same bytes: Snakemake compares the checksum, nothing reruns
    assert planned(demo, REPO / "config" / "demo.yaml") == []
    record = json.loads(marker.read_text())  # as prepare_model rewrites it: a new preparation time
    record["prepared_at"] = "2030-01-01T00:00:00+0000"
    marker.write_text(json.dumps(record, indent=2, sort_keys=True))
    jobs = planned(demo, REPO / "config" / "demo.yaml")
    assert of(jobs, "embed_identity") == ["identity=astronaut", "identity=group-t1"]
    # the identity files hold FaceID's embedding and Kontext's photo too, so their jobs rerun with
    # InfuseNet's (klein reads the photo itself)
    assert "embed_prompt" not in counts(jobs) and counts(jobs)["generate"] == IDENTITY_JOBS - KLEIN_JOBS


def test_a_bad_picture_for_one_identity_stops_before_any_job_and_loses_nothing(demo):
    """A picture no job could read is refused with the config, before the DAG: no job starts,
    so nothing is retried, and every finished embedding stays as it was."""
    broken = demo / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    config = demo_config(face={"policy": "highest_score"})  # every identity would be embedded again
    config["identities"].append({"id": "broken", "image": str(broken)})
    configfile = write_config(demo, config)
    folder = demo / "results" / "demo" / "embeddings" / "identities"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    targets = [f"results/demo/embeddings/identities/{i['id']}.safetensors" for i in config["identities"]]
    result = snakemake(demo, *targets, "--cores", "2", configfile=configfile)
    assert result.returncode != 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(before) == ["astronaut.safetensors", "group-t1.safetensors"]
    lines = [line for line in result.stderr.splitlines() if line.startswith("fewstep:")]
    assert len(lines) == 1 and re.fullmatch(
        rf"fewstep: config identities\[2\]\.image: {re.escape(str(broken))} cannot be read as a picture "
        r"\(\w+\); replace or remove it",
        lines[0],
    ), result.stderr[-2000:]
    assert "rule embed_identity" not in result.stdout + result.stderr  # no job was started


def test_score_reruns_when_a_reference_picture_changes_for_a_cell_without_adapter(tmp_path):
    """A backbone-only cell does not regenerate for a new picture, but its identity score must."""
    from fewstep.core.config import validate
    from fewstep.grid import Grid

    raw = demo_config()
    raw["adapters"]["none"] = {"kind": "none"}
    raw["cells"][0]["adapters"].append("none")
    changed = copy.deepcopy(raw)
    changed["identities"][0]["image"] = "builtin:coffee"
    grids = [Grid(study_of(validate(c))) for c in (raw, changed)]
    none, aes = grids[0].cell("flux-dev/none/1"), grids[0].cell("flux-dev/infusenet-aes/1")
    assert grids[0].cell_hash(none) == grids[1].cell_hash(none)
    assert grids[0].cell_hash(aes) != grids[1].cell_hash(aes)
    assert grids[0].pictures != grids[1].pictures  # the score rule's `pictures` param


def test_a_corrupt_generated_image_is_made_again_as_the_message_says(demo):
    """Deleting a cell's manifest would not do: Snakemake skips a missing intermediate file
    while everything after it is up to date. The message names the command that works."""
    demo_file = REPO / "config" / "demo.yaml"
    cell_dir = Path("results/demo/cells") / CELL
    manifest = pd.read_parquet(demo / cell_dir / "manifest.parquet")
    image = cell_dir / manifest["image"].iloc[0]
    kept = dict(zip(manifest["item_id"], manifest["generated_at"], strict=True))
    original = pixels(demo / image)
    (demo / image).write_bytes((demo / image).read_bytes()[:200])  # torn by a failing disk
    scoring = f"results/demo/scores/{CELL.rsplit('/', 1)[0]}/scoring.json"  # the cell's score job
    failed = snakemake(demo, "--cores", "2", "--forcerun", scoring, configfile=demo_file)
    assert failed.returncode != 0
    record = cell_dir.parent / "generation.json"  # the record of the job that rendered the cell
    advice = (
        f"generated image {image} is corrupt; rerun with `--forcerun "
        f"{record}` added to your snakemake command"
    )
    assert advice in failed.stdout + failed.stderr  # on the console (show-failed-logs)
    (demo / image).unlink()
    rerun = snakemake(demo, "--cores", "2", "--forcerun", str(record), configfile=demo_file)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert pixels(demo / image) == original
    again = pd.read_parquet(demo / cell_dir / "manifest.parquet")
    remade = {
        item for item, at in zip(again["item_id"], again["generated_at"], strict=True) if kept[item] != at
    }
    assert remade == {manifest["item_id"].iloc[0]}  # the others were kept
    assert planned(demo, demo_file) == []


def test_deleted_images_and_manifests_are_named_and_the_named_command_makes_exactly_those(demo):
    """A plain rerun would do nothing (Snakemake checks a generation job's record only): it names
    the gone files in one line with a command; that command makes exactly them again."""
    demo_file = REPO / "config" / "demo.yaml"
    cells = Path("results/demo/cells") / CELL.rsplit("/", 1)[0]
    before = {
        cell: pd.read_parquet(demo / cells / cell / "manifest.parquet").set_index("item_id")
        for cell in ("1", "2", "4")
    }
    image = cells / "1" / before["1"]["image"].iloc[1]
    original = pixels(demo / image)
    (demo / image).unlink()
    (demo / cells / "4" / "manifest.parquet").unlink()
    plain = snakemake(demo, "-n", configfile=demo_file)
    (hint,) = [line for line in plain.stderr.splitlines() if line.startswith("fewstep:")]
    assert hint.startswith(
        f"fewstep: 2 generated file(s) of finished jobs are gone ({cells / '4' / 'manifest.parquet'}"
    )
    (command,) = re.findall(r"`([^`]+)`", hint)
    words = shlex.split(command)
    assert words[:2] == ["snakemake", "--forcerun"]
    rerun = snakemake(demo, "--cores", "2", *words[1:])
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert pixels(demo / image) == original  # the same image (its provenance names the code's commit)
    for cell, manifest in before.items():
        again = pd.read_parquet(demo / cells / cell / "manifest.parquet").set_index("item_id")
        remade = {
            item
            for item in manifest.index
            if again.loc[item, "generated_at"] != manifest.loc[item, "generated_at"]
        }
        assert remade == ({manifest.index[1]} if cell == "1" else set()), cell
    quiet = snakemake(demo, "-n", configfile=demo_file)
    assert "fewstep:" not in quiet.stderr and planned(demo, demo_file) == []


SD_DOWNSTREAM = {"aggregate": 1, "report": 1, "wandb_aggregate": 1}


def test_an_sd_negative_prompt_change_reembeds_that_backbones_prompts_only(demo):
    config = demo_config()
    config["backbones"]["sd15"]["negative_prompt"] = "lowres, watermark"
    configfile = write_config(demo, config)
    jobs = planned(demo, configfile)
    # sd15's prompts of every role with the new negative (part of their embedding), sd15's jobs
    # downstream
    for rule in ("embed_prompt_identity", "embed_prompt_style", "embed_prompt_object"):
        assert [w.split(", variant=N")[0] for w in of(jobs, rule)] == ["family=sd15"]
    assert of(jobs, "generate") == [
        "backbone=sd15, adapter=sd-faceid",
        "backbone=sd15, adapter=sd-object",
        "backbone=sd15, adapter=sd-style",
    ]
    prompt_jobs = {"embed_prompt_identity": 1, "embed_prompt_style": 1, "embed_prompt_object": 1}
    assert counts(jobs) == {**prompt_jobs, "generate": 3, "score": 3, **SD_DOWNSTREAM}
    cell = "sd15/sd-style/1"
    before = images(demo, cell)
    run_cell(demo, configfile, cell)
    after = images(demo, cell)
    assert before.keys() == after.keys() and all(before[i] != after[i] for i in before)


def test_a_style_prompt_change_reruns_the_style_cells_only(demo):
    config = demo_config()
    next(p for p in config["prompts"] if p["id"] == "lighthouse")["text"] = "A windmill in a tulip field"
    jobs = planned(demo, write_config(demo, config))
    families = [w.split(", variant=N")[0] for w in of(jobs, "embed_prompt_style")]
    assert families == ["family=sd15", "family=sdxl"]
    assert of(jobs, "generate") == [  # the base and the distilled style cells
        "backbone=sd15, adapter=sd-style",
        "backbone=sd15-lcm, adapter=sd-style",
        "backbone=sdxl, adapter=sd-style",
        "backbone=sdxl-lightning2, adapter=sd-style",
    ]
    assert counts(jobs) == {"embed_prompt_style": 2, "generate": 4, "score": 4, **SD_DOWNSTREAM}


def test_an_sd_reference_picture_change_reembeds_that_reference_only(demo):
    config = demo_config()
    config["references"][1]["image"] = "builtin:rocket"  # the object reference
    configfile = write_config(demo, config)
    jobs = planned(demo, configfile)
    assert of(jobs, "embed_reference") == [
        "family=sd15, file=plus, reference=coffee",
        "family=sdxl, file=plus, reference=coffee",
    ]
    assert of(jobs, "generate") == ["backbone=sd15, adapter=sd-object", "backbone=sdxl, adapter=sd-object"]
    # and the demo's SD trajectory, an object cell
    assert counts(jobs) == {"embed_reference": 2, "generate": 2, "score": 2, "trajectory": 1, **SD_DOWNSTREAM}
    cell = "sdxl/sd-object/2"
    before = images(demo, cell)
    run_cell(demo, configfile, cell)
    after = images(demo, cell)
    assert before.keys() == after.keys() and all(before[i] != after[i] for i in before)
