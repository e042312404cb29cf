"""W&B artifacts built from the files they name: same files, same digest (no network, no run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewstep.core.config import validate
from fewstep.core.paths import Paths
from fewstep.families.flux.models import BACKBONES
from fewstep.tracking import lineage
from tests.conftest import study_of

COMMIT = "c" * 40


@pytest.fixture
def real(raw_demo, tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # where drafts stage files
    return validate(dict(raw_demo, weights="real", models_dir=str(tmp_path / "models")))


def _marker(config: dict, sha: str) -> dict:
    info = {
        "model": "flux-dev",
        "weights": "real",
        "folder": "/somewhere/else",  # where and when it was prepared is not part of the artifact
        "prepared_at": "2026-12-01T00:00:00+0000",
        "repo_id": "black-forest-labs/FLUX.1-dev",
        "revision": BACKBONES["flux-dev"].revision,
        "commit": COMMIT,
        "commits": {"black-forest-labs/FLUX.1-dev": COMMIT},
        "files": [
            {"path": "model_index.json", "bytes": 10, "sha256": "1" * 64, "sha256_from": "hashed"},
            {
                "path": "vae/diffusion_pytorch_model.safetensors",
                "bytes": 9,
                "sha256": sha,
                "sha256_from": "hub blob name",
            },
        ],
    }
    marker = Paths(study_of(config)).model_marker("flux-dev")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(info))
    return info


def test_weights_artifact_names_repo_commit_and_file_hashes(real, tmp_path) -> None:
    info = _marker(real, "2" * 64)
    artifact = lineage.weights(study_of(real), "flux-dev", tmp_path / "staging")
    assert (artifact.name, artifact.type) == ("weights-real-flux-dev", "model")
    assert artifact.metadata == {
        "model": "flux-dev",
        "weights": "real",
        "repo_id": "black-forest-labs/FLUX.1-dev",
        "revision": BACKBONES["flux-dev"].revision,
        "commit": COMMIT,
    }
    entries = artifact.manifest.entries
    assert entries["hub/vae/diffusion_pytorch_model.safetensors"].ref == (
        f"https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/{COMMIT}/vae/diffusion_pytorch_model.safetensors"
    )
    described = json.loads(Path(entries["weights.json"].local_path).read_text())
    assert (
        described["files"] == info["files"] and "folder" not in described and "prepared_at" not in described
    )
    # prepared again elsewhere or later: the same version; another file content: another one
    again = dict(info, folder="/other", prepared_at="2027-01-01T00:00:00+0000")
    Paths(study_of(real)).model_marker("flux-dev").write_text(json.dumps(again))
    assert lineage.weights(study_of(real), "flux-dev", tmp_path / "staging2").digest == artifact.digest
    _marker(real, "3" * 64)
    assert lineage.weights(study_of(real), "flux-dev", tmp_path / "staging3").digest != artifact.digest


def test_tiny_weights_reference_no_hub_file(raw_demo, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    tiny = validate(dict(raw_demo, models_dir=str(tmp_path / "models")))
    info = _marker(tiny, "2" * 64) | {"weights": "tiny", "commit": None, "commits": {}}
    Paths(study_of(tiny)).model_marker("flux-dev").write_text(json.dumps(info))
    artifact = lineage.weights(study_of(tiny), "flux-dev", tmp_path / "staging")
    assert artifact.name == "weights-tiny-flux-dev" and list(artifact.manifest.entries) == ["weights.json"]


def test_artifact_names_are_wandb_safe() -> None:
    assert lineage.artifact_name("images", "my sweep", "flux-dev/infusenet-aes/8") == (
        "images-my_sweep-flux-dev__infusenet-aes__8"
    )
