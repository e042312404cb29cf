"""A trained face model in the suite: dlib's recogniser (face_recognition_models 0.3.0, dlib-bin)
on real photos that installed packages ship, through the project's own scoring path.

Measured on 2026-12-06 (CPU, dlib-bin 20.0.1.post1): the astronaut against her own crop, flip,
0.6x / 1.5x scale, brightness 0.75 / 1.25, saturation 0.5, contrast 1.3 and hue +10 keeps a cosine
of 0.992-1.000; against t1's six people it reaches 0.835-0.891 (a margin of 0.100). Each of t1's
people, flipped, keeps 0.983-0.994 with itself and at most 0.916 with anyone else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from insightface.data import get_image

from fewstep.core.study import Study, parse_config
from fewstep.faces import analyzer as insight
from fewstep.faces.analyzer import cosine, select
from fewstep.faces.augment import augmentations, suggested_margin
from fewstep.faces.dlib_encoder import DLIB_FILES, DlibFaceEncoder
from fewstep.faces.models import DLIB_FACE
from fewstep.registry.spec import Usage
from fewstep.scoring.base import JobModels, Sample
from fewstep.scoring.identity import DlibIdentitySimilarity
from tests.conftest import demo_yaml

#: dlib's boxes of t1's six faces at the project's detection setting (no upsampling at 886 px)
T1_FACES = 6
T1_LARGEST = [452, 300, 577, 424]
T1_MOST_CONFIDENT = [65, 284, 169, 388]


def _study() -> Study:
    """The demo study on the CPU with tiny weights, choosing the largest face."""
    raw = demo_yaml()
    return parse_config(
        dict(raw, device="cpu", weights="tiny", face=dict(raw.get("face", {}), policy="largest"))
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dlib's files as the registry recipe prepares them (copied from the installed package)."""
    folder = tmp_path_factory.mktemp("dlib")
    DLIB_FACE.recipe.tiny(_study(), DLIB_FACE, folder, Usage())
    return folder


@pytest.fixture(scope="module")
def metric(folder: Path) -> DlibIdentitySimilarity:
    study = _study()
    models = JobModels(study)
    models.get("dlib-face", lambda: DlibFaceEncoder(folder))
    return DlibIdentitySimilarity(study, models)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    return np.ascontiguousarray(get_image("t1")[:, :, ::-1])  # insightface gives BGR


def _person(t1: np.ndarray, box: list[float], pad: int = 60) -> np.ndarray:
    """t1 cut around one face, so that face is the only (largest) one the crop holds."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return np.ascontiguousarray(t1[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad])


def test_the_recipe_copies_the_pinned_trained_files(folder: Path) -> None:
    from fewstep.core.io import sha256_file

    assert {p.name: sha256_file(p) for p in folder.iterdir()} == DLIB_FILES
    assert (folder / "dlib_face_recognition_resnet_model_v1.dat").stat().st_size == 22_466_066


def test_detection_finds_the_faces(folder: Path, astronaut, t1) -> None:
    encoder = DlibFaceEncoder(folder)
    (face,) = encoder.detect(astronaut)
    x1, y1, x2, y2 = face.bbox
    assert 160 < (x1 + x2) / 2 < 240 and 100 < (y1 + y2) / 2 < 150  # her face, not the suit
    boxes = sorted(f.bbox.tolist() for f in encoder.detect(t1))
    assert len(boxes) == T1_FACES
    assert T1_LARGEST in boxes and T1_MOST_CONFIDENT in boxes


@pytest.mark.slow
def test_the_same_face_scores_clearly_above_t1s_other_people(metric, astronaut, t1) -> None:
    """The whole metric: detection, chosen face, landmarks, chip, embedding, cosine."""
    same = metric.score([Sample({}, image, astronaut) for image in augmentations(astronaut).values()])
    people = metric.score([Sample({}, _person(t1, box), astronaut) for box in _t1_boxes(metric)])
    same_sims = [row["id_sim_dlib"] for row in same]
    other_sims = [row["id_sim_dlib"] for row in people]
    assert all(row["face_detected_dlib"] for row in same + people)
    assert min(same_sims) > 0.99  # measured 0.992 (flip)
    assert max(other_sims) < 0.90  # measured 0.891
    assert min(same_sims) - max(other_sims) > 0.08  # measured 0.100
    assert suggested_margin([1 - v for v in same_sims]) == 0.01  # the astronaut alone: 0.008 rounded up


def _t1_boxes(metric: DlibIdentitySimilarity) -> list[list[float]]:
    return [f.bbox.tolist() for f in metric.encoder.detect(np.ascontiguousarray(get_image("t1")[:, :, ::-1]))]


def test_each_t1_person_flipped_is_recognised_among_the_others(metric, t1) -> None:
    boxes = _t1_boxes(metric)
    crops = [_person(t1, box) for box in boxes]
    embeddings = [metric.find(crop)[0].embedding for crop in crops]
    flipped = [metric.find(np.ascontiguousarray(crop[:, ::-1]))[0].embedding for crop in crops]
    sims = np.array([[cosine(f, e) for e in embeddings] for f in flipped])
    assert (sims.argmax(axis=1) == np.arange(len(boxes))).all()
    assert sims.diagonal().min() > 0.975  # measured 0.983
    assert (sims - np.eye(len(boxes)) * 2).max() < 0.93  # measured 0.916 at most


def test_the_face_choice_policy_applies_to_dlibs_detections(folder: Path, metric, astronaut, t1) -> None:
    encoder = DlibFaceEncoder(folder)
    faces = encoder.detect(t1)
    assert select(faces, "largest").bbox.tolist() == T1_LARGEST
    assert select(faces, "highest_score").bbox.tolist() == T1_MOST_CONFIDENT
    (row,) = metric.score([Sample({}, t1, astronaut)])
    assert row["n_faces_dlib"] == T1_FACES and json.loads(row["face_bbox_dlib"]) == T1_LARGEST


def test_dlib_and_the_insightface_path_put_the_astronauts_face_in_one_place(
    folder: Path, tmp_path, astronaut
):
    """The comparable part of the two paths here (insightface's packs are tiny hand-set graphs):
    dlib's box of the astronaut lies inside the one the project's insightface path chooses."""
    insight.build_tiny_face_pack(tmp_path)
    chosen = insight.FaceAnalyzer(tmp_path, gpu=False).analyze(np.ascontiguousarray(astronaut[:, :, ::-1]))
    (face,) = DlibFaceEncoder(folder).detect(astronaut)
    outer, inner = chosen.face.bbox, face.bbox
    assert outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]
    centres = [np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]) for b in (outer, inner)]
    assert np.linalg.norm(centres[0] - centres[1]) < 20  # measured 13 px


def test_held_out_photos_and_copy_paste_through_the_metric(metric, astronaut, t1) -> None:
    """A copy of the conditioning photo scores copy-paste +1; the held-out photo itself -1."""
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    copy, heldout = metric.score(
        [
            Sample({}, astronaut, astronaut, heldout=[mirrored]),
            Sample({}, mirrored, astronaut, heldout=[mirrored]),
        ]
    )
    assert copy["copy_paste_dlib"] == pytest.approx(1.0)
    assert heldout["copy_paste_dlib"] == pytest.approx(-1.0)
    assert copy["id_sim_dlib"] == pytest.approx(1.0) and copy["id_sim_heldout_dlib"] == pytest.approx(
        0.99, abs=0.01
    )
    (none,) = metric.score([Sample({}, astronaut, astronaut)])
    assert "id_sim_heldout_dlib" not in none and "copy_paste_dlib" not in none
