"""Several identity encoders, held-out photos and copy-paste: config, triggers, tables, report."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fewstep.analysis import identity_encoders as ie
from fewstep.analysis.aggregate import with_zero_identity
from fewstep.core.config import validate
from fewstep.core.errors import ConfigError
from fewstep.core.images import load_rgb
from fewstep.grid import Grid
from fewstep.scoring.identity import copy_paste
from tests.conftest import demo_yaml, study_of


def _unit(*values: float) -> np.ndarray:
    v = np.array(values, float)
    return v / np.linalg.norm(v)


def test_copy_paste_is_plus_one_at_the_reference_minus_one_at_the_held_out_photo():
    reference, target = _unit(1, 0, 0), _unit(0, 1, 0)
    assert copy_paste(reference, reference, target) == pytest.approx(1.0)
    assert copy_paste(target, reference, target) == pytest.approx(-1.0)
    assert copy_paste(_unit(1, 1, 0), reference, target) == pytest.approx(0.0)  # halfway
    assert copy_paste(_unit(0, 0, 1), reference, target) == pytest.approx(0.0)  # far from both
    assert copy_paste(_unit(3, 1, 0), reference, target) == pytest.approx(
        (np.arctan2(3, 1) - np.arctan2(1, 3)) / (np.pi / 2)
    )


def test_an_identity_with_several_photos_conditions_on_one_and_holds_out_the_rest(raw_demo):
    raw = copy.deepcopy(raw_demo)
    raw["identities"] = [
        {"id": "a", "images": ["builtin:astronaut", "builtin:astronaut~mirrored", "builtin:coffee"]},
        {"id": "b", "images": ["builtin:astronaut", "builtin:astronaut~mirrored"], "condition": 1},
    ]
    a, b = validate(raw)["identities"]
    assert a == {
        "id": "a",
        "image": "builtin:astronaut",
        "heldout": ["builtin:astronaut~mirrored", "builtin:coffee"],
    }
    assert b == {"id": "b", "image": "builtin:astronaut~mirrored", "heldout": ["builtin:astronaut"]}
    assert validate(validate(raw))["identities"] == [a, b]  # the validated config validates as it is
    assert (load_rgb("builtin:astronaut~mirrored") == load_rgb("builtin:astronaut")[:, ::-1]).all()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "a", "images": ["builtin:astronaut"], "condition": 1}, "'a' has condition: 1 but 1 images"),
        ({"id": "a", "image": "builtin:astronaut", "images": ["builtin:astronaut"]}, "either image"),
        ({"id": "a"}, "either image"),
    ],
)
def test_bad_photo_lists_are_one_line(raw_demo, entry, message):
    raw = copy.deepcopy(raw_demo)
    raw["identities"] = [entry]
    with pytest.raises(ConfigError, match=message) as err:
        validate(raw)
    assert "\n" not in str(err.value)


def test_a_folder_of_folders_is_one_identity_per_person(raw_demo, tmp_path):
    for person, names in {"ada": ["2.png", "1.png"], "bob": ["x.jpg"]}.items():
        (tmp_path / person).mkdir()
        for name in names:
            Image.new("RGB", (8, 8)).save(tmp_path / person / name)
    raw = copy.deepcopy(raw_demo)
    raw["identities"] = str(tmp_path)
    ada, bob = validate(raw)["identities"]
    assert ada == {
        "id": "ada",
        "image": str(tmp_path / "ada/1.png"),
        "heldout": [str(tmp_path / "ada/2.png")],
    }
    assert bob == {"id": "bob", "image": str(tmp_path / "bob/x.jpg"), "heldout": []}


def test_held_out_photos_rescore_but_never_regenerate_or_re_embed(raw_demo):
    before = Grid(study_of(validate(raw_demo)))
    raw = copy.deepcopy(raw_demo)
    raw["identities"][0]["heldout"] = ["builtin:coffee"]
    after = Grid(study_of(validate(raw)))
    cell = after.cell("flux-schnell/infusenet-aes/4")
    assert after.pictures == before.pictures  # the embedding job reads the conditioning photo only
    assert after.cell_hash(cell) == before.cell_hash(cell)
    assert after.score_hash(cell) != before.score_hash(cell)
    sd = next(c for c in after.cells if c.backbone == "sd15")
    assert after.score_hash(sd) == before.score_hash(sd)  # SD cells score no identity


def test_every_encoder_gets_its_no_face_as_zero_twin():
    frame = pd.DataFrame(
        {
            "id_sim": [0.5, np.nan],
            "face_detected": [True, False],
            "id_sim_dlib": [np.nan, 0.9],
            "face_detected_dlib": [False, True],
        }
    )
    out = with_zero_identity(frame)
    assert out["id_sim_zero"].tolist() == [0.5, 0.0]
    assert out["id_sim_dlib_zero"].tolist() == [0.0, 0.9]


def _summary(rows: list[tuple[str, str, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["cell_id", "metric", "diff_vs_anchor", "diff_ci_low", "diff_ci_high"])


def test_cells_where_the_encoders_disagree_on_the_sign_are_flagged():
    summary = _summary(
        [
            ("c/4", "id_sim_zero", 0.03, 0.01, 0.05),
            ("c/4", "id_sim_dlib_zero", -0.02, -0.03, -0.01),  # opposite, both clear of 0
            ("c/2", "id_sim_zero", 0.03, -0.01, 0.07),
            ("c/2", "id_sim_dlib_zero", -0.01, -0.04, 0.02),  # opposite, within noise
            ("c/1", "id_sim_zero", -0.1, -0.2, -0.05),
            ("c/1", "id_sim_dlib_zero", -0.05, -0.1, -0.01),  # agree
        ]
    )
    flags = ie.disagreements(summary, list(ie.ENCODERS)).set_index("cell_id")
    assert flags["signs differ"].to_dict() == {"c/4": True, "c/2": True, "c/1": False}
    assert flags["strong"].to_dict() == {"c/4": True, "c/2": False, "c/1": False}
    # printed by the report's digits policy, in a span that carries a cosine difference's range
    assert flags.loc["c/4", ie.ENCODERS[1].name] == (
        '<span class="ci" data-range-low="-2" data-range-high="2">-0.020 [-0.030, -0.010]</span>'
    )


def test_the_report_section_names_the_conditioning_encoder_and_each_margin_basis(raw_demo):
    config = validate(raw_demo)
    summary = _summary(
        [("c/4", "id_sim_zero", 0.03, 0.01, 0.05), ("c/4", "id_sim_dlib_zero", -0.02, -0.03, -0.01)]
    )
    key, title, body = ie.section(study_of(config), summary)
    assert key == "identity-encoders" and "IR-SE50" in body
    assert body.count("margin basis") == 1 and "0.017" in body and "70% of the study" in body
    assert "disagree on the sign in <b>1</b> of 1" in body
    assert "1 held-out photos over 2 identities" in body  # the demo's mirrored stand-in
    comparison = pd.DataFrame(
        {
            "metric": ["id_sim_zero", "id_sim_dlib_zero", "lpips_ref"],
            "estimate": [0.028, -0.004, -0.016],
            "ci_low": [0.01, -0.01, -0.03],
            "ci_high": [0.04, 0.002, 0.0],
        }
    )
    body = ie.section(study_of(config), summary, comparison)[2]
    assert 'data-range-low="-2" data-range-high="2">+0.028 [+0.010, +0.040]</span>' in body
    assert "<b>disagree on its sign</b>" in body
    comparison.loc[1, "estimate"] = 0.01
    assert "agree on its sign" in ie.section(study_of(config), summary, comparison)[2]
    config["scoring"]["metrics"] = ["identity", "lpips"]
    assert "One encoder only" in ie.section(study_of(config), summary)[2]


def test_dlib_files_without_the_package_come_from_dlib_net_checked(tmp_path, monkeypatch):
    """The fallback download (dlib.net's .dat.bz2): the pinned digest decides, a wrong file is one
    line and leaves nothing behind. Small stand-in files with their own digests keep it fast."""
    import bz2
    import hashlib

    from fewstep.core.errors import WeightsError
    from fewstep.faces import dlib_encoder, models
    from fewstep.registry.spec import Usage

    contents = {"landmarks.dat": b"five points", "resnet.dat": b"128 numbers"}
    monkeypatch.setattr(
        dlib_encoder, "DLIB_FILES", {n: hashlib.sha256(c).hexdigest() for n, c in contents.items()}
    )
    monkeypatch.setattr(dlib_encoder, "packaged_models", lambda: None)
    urls = []

    def fetch(url, path, wrong=False):
        urls.append(url)
        path.write_bytes(
            bz2.compress(b"junk" if wrong else contents[url.rsplit("/", 1)[1].removesuffix(".bz2")])
        )
        return path

    monkeypatch.setattr(models, "fetch_url", fetch)
    study = study_of(validate(demo_yaml()))
    models.DLIB_FACE.recipe.fetch(study, models.DLIB_FACE, tmp_path / "ok", Usage())
    assert {p.name: p.read_bytes() for p in (tmp_path / "ok").iterdir()} == contents
    assert urls == ["http://dlib.net/files/landmarks.dat.bz2", "http://dlib.net/files/resnet.dat.bz2"]
    monkeypatch.setattr(models, "fetch_url", lambda url, path: fetch(url, path, wrong=True))
    with pytest.raises(WeightsError, match="landmarks.dat has sha256 .* not the pinned") as err:
        models.DLIB_FACE.recipe.fetch(study, models.DLIB_FACE, tmp_path / "bad", Usage())
    assert "\n" not in str(err.value)
    assert not any((tmp_path / "bad").glob("*.dat"))
