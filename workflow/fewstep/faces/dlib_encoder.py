"""dlib's face recogniser: HOG detection, 5-point alignment, 128-d ResNet embedding.

A second identity encoder of another lineage than insightface's ArcFace models (see
docs/scoring.md): dlib's own detector and landmark model, its own face-chip alignment and a
ResNet-34-like network trained with a metric (pairwise hinge) loss on its own face set. The
trained files ship on PyPI in `face_recognition_models`; `dlib` comes from `dlib-bin` wheels.
Every step is called here, one at a time (detect, `select`, landmarks, chip, descriptor), so
the project's face-choice policy applies to dlib's detections as it does to insightface's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fewstep.core.errors import WeightsError
from fewstep.faces.analyzer import DetectedFace, FaceBox, FaceResult, select

#: the two files the encoder reads, with the sha256 of face_recognition_models 0.3.0's copies
DLIB_FILES: dict[str, str] = {
    "shape_predictor_5_face_landmarks.dat": (
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
    ),
    "dlib_face_recognition_resnet_model_v1.dat": (
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
    ),
}
DLIB_URL = "http://dlib.net/files/{name}.bz2"
#: the face chip dlib's recogniser was trained on: 150 px, 25% padding around the landmarks
CHIP_SIZE, CHIP_PADDING = 150, 0.25
#: dlib's HOG detector finds faces of ~80 px and more; images whose shorter side is below this
#: are upsampled once (faces down to ~40 px, at 4x the detection time). Upsampling larger
#: images too turned a patch of the astronaut's suit into a second "face".
UPSAMPLE_BELOW = 512
#: the least HOG score a detection needs (dlib's own cut is 0): on the astronaut and t1 and their
#: augmentations, patches of suit and background scored 0.01-0.12, the faintest real face 0.21
DET_THRESHOLD = 0.15


def packaged_models() -> Path | None:
    """The models folder of the installed `face_recognition_models` (None when not installed).

    Found without importing the package: its `__init__` needs `pkg_resources`, which recent
    setuptools no longer ship.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _dlib():
    try:
        import dlib
    except ImportError:
        raise WeightsError(
            "the dlib identity encoder needs dlib: pip install dlib-bin (or drop identity_dlib "
            "from config scoring.metrics)"
        ) from None
    return dlib


def uses_cuda() -> bool:
    """Whether this dlib was built with CUDA (a source build finds the CUDA toolkit by itself):
    its ResNet then computes on a GPU card; dlib-bin's wheels compute on the CPU."""
    return bool(_dlib().DLIB_USE_CUDA)


class DlibFaceEncoder:
    """dlib detection + 128-d recognition over a folder holding `DLIB_FILES`."""

    name = "dlib"

    def __init__(self, folder: Path | str) -> None:
        folder = Path(folder)
        missing = [f for f in DLIB_FILES if not (folder / f).is_file()]
        if missing:
            raise WeightsError(
                f"dlib face models {folder} lack {', '.join(missing)}: run the workflow's download rule "
                "for dlib-face (it copies them from the face_recognition_models package)"
            )
        dlib = _dlib()
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
        self.recognizer = dlib.face_recognition_model_v1(
            str(folder / "dlib_face_recognition_resnet_model_v1.dat")
        )
        self._dlib = dlib
        self.version = dlib.__version__

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Every face dlib's HOG detector finds; `kps` holds dlib's 5 landmarks (two corners of
        each eye, then the base of the nose), not insightface's eyes-nose-mouth points."""
        rgb = np.ascontiguousarray(rgb)
        boxes, scores, _ = self.detector.run(rgb, int(min(rgb.shape[:2]) < UPSAMPLE_BELOW), DET_THRESHOLD)
        faces = []
        for box, score in zip(boxes, scores, strict=True):
            shape = self.landmarks(rgb, box)
            kps = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
            bbox = np.array([box.left(), box.top(), box.right(), box.bottom()], np.float32)
            faces.append(FaceBox(bbox, kps, float(score)))
        return faces

    def embed(self, rgb: np.ndarray, face: FaceBox) -> DetectedFace:
        """The L2-normalised 128-d descriptor of one face: dlib's aligned chip, then the ResNet."""
        dlib = self._dlib
        rect = dlib.rectangle(*(int(round(v)) for v in face.bbox))
        points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in face.kps])
        shape = dlib.full_object_detection(rect, points)
        chip = dlib.get_face_chip(np.ascontiguousarray(rgb), shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        feat = np.asarray(self.recognizer.compute_face_descriptor(chip), np.float32)
        return DetectedFace(face.bbox, face.kps, face.det_score, embedding=feat / np.linalg.norm(feat))

    def analyze_rgb(self, rgb: np.ndarray, policy: str = "largest") -> FaceResult | None:
        """Detect, keep one face by `policy`, embed it; None without a face."""
        faces = self.detect(rgb)
        if not faces:
            return None
        return FaceResult(face=self.embed(rgb, select(faces, policy)), n_faces=len(faces), det_size=0)
