"""Face pipeline: tiny insightface packs through the real FaceAnalysis, and IR-SE50."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import insightface
import numpy as np
import pytest
import skimage.data
import torch
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils.face_align import arcface_dst, estimate_norm

from fewstep.core.errors import WeightsError
from fewstep.faces import analyzer as faces
from fewstep.faces import arcface_irse

FIXTURE = Path(__file__).parent / "fixtures" / "irse50_state_dict.json"
SKIN_BGR = (150, 180, 220)  # a flat skin tone inside the tiny detector's YCbCr band


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insightface")
    faces.build_tiny_face_pack(root)
    return root


@pytest.fixture(scope="module")
def analyzer(pack_root: Path) -> faces.FaceAnalyzer:
    return faces.FaceAnalyzer(pack_root)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1])  # RGB -> BGR


@pytest.fixture(scope="module")
def two_faces(astronaut: np.ndarray) -> np.ndarray:
    """Grey canvas with the astronaut's head pasted at 200 px (right) and 100 px (left)."""
    head = astronaut[30:200, 135:305]
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[140:340, 380:580] = cv2.resize(head, (200, 200))
    canvas[40:140, 60:160] = cv2.resize(head, (100, 100))
    return canvas


def _square(side: int) -> np.ndarray:
    canvas = np.full((512, 512, 3), 128, np.uint8)
    start = (512 - side) // 2
    canvas[start : start + side, start : start + side] = SKIN_BGR
    return canvas


def _one_line_error(excinfo: pytest.ExceptionInfo, folder: Path) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, WeightsError)
    assert "\n" not in message
    assert str(folder) in message
    assert "prepare it: `fewstep prepare-model --config " in message and "--model insightface`" in message
    return message


def test_tiny_pack_uses_real_file_names(tmp_path: Path) -> None:
    for name, files in faces.PACK_FILES.items():
        folder = faces.build_tiny_face_pack(tmp_path, name=name)
        assert folder == tmp_path / "models" / name
        assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    with pytest.raises(ValueError, match="'retinaface'"):
        faces.build_tiny_face_pack(tmp_path, name="retinaface")


def test_tiny_pack_routes_through_face_analysis(analyzer: faces.FaceAnalyzer) -> None:
    det, rec = analyzer.detector, analyzer.recognizer
    assert type(det) is SCRFD and type(rec) is ArcFaceONNX
    assert det.use_kps and det.fmc == 3 and det._num_anchors == 2
    assert det.static_input_size is None  # dynamic input: 640, 320 and 160 all run
    assert (rec.input_mean, rec.input_std, rec.input_size) == (127.5, 127.5, (112, 112))
    assert analyzer.is_tiny


@pytest.mark.parametrize("which", ["astronaut", "t1"])
def test_sample_portraits_have_a_face(analyzer: faces.FaceAnalyzer, astronaut, which) -> None:
    image = astronaut if which == "astronaut" else insightface.data.get_image("t1")
    result = analyzer.analyze(image)
    assert result is not None and result.n_faces >= 1 and result.det_size == 640
    face = result.face
    height, width = image.shape[:2]
    assert face.kps.shape == (5, 2) and face.det_score >= 0.5
    assert np.all((face.kps >= 0) & (face.kps < [width, height]))
    left_eye, right_eye, nose, mouth_left, mouth_right = face.kps
    assert left_eye[0] < nose[0] < right_eye[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert abs(np.linalg.norm(face.embedding) - 1.0) < 1e-5


def test_astronaut_box_is_on_her_face(analyzer: faces.FaceAnalyzer, astronaut) -> None:
    x1, y1, x2, y2 = analyzer.analyze(astronaut).face.bbox
    assert x1 < 222 < x2 and y1 < 125 < y2  # between her eyes, in the 512 px image
    assert 90 < x2 - x1 < 220 and 90 < y2 - y1 < 220


@pytest.mark.parametrize("bgr", [(128, 128, 128), (255, 0, 0)], ids=["grey", "blue"])
def test_flat_images_have_no_face(analyzer: faces.FaceAnalyzer, bgr) -> None:
    image = np.full((480, 640, 3), bgr, np.uint8)
    assert analyzer.detect(image) == ([], 0)
    assert analyzer.analyze(image) is None


def test_det_sizes_fall_back_from_640(pack_root: Path, analyzer: faces.FaceAnalyzer) -> None:
    big = _square(300)  # wider than every 640-input window, fits the 320 ones
    assert faces.FaceAnalyzer(pack_root, det_sizes=(640,)).detect(big) == ([], 0)
    result = analyzer.analyze(big)
    assert result is not None and result.det_size == 320 and result.n_faces == 1
    assert np.allclose(result.face.bbox[:2] + result.face.bbox[2:], 512, atol=4)  # centred
    assert analyzer.analyze(_square(40)).det_size == 640


def test_largest_policy_keeps_the_larger_face(analyzer: faces.FaceAnalyzer, two_faces) -> None:
    detected, _ = analyzer.detect(two_faces)
    assert len(detected) == 2
    large = faces.select(detected, "largest")
    small = min(detected, key=lambda f: f.area)
    assert 380 < large.bbox[[0, 2]].mean() < 580 and 140 < large.bbox[[1, 3]].mean() < 340
    assert 3.0 < large.area / small.area < 5.0  # pasted at 2x the side
    assert np.array_equal(analyzer.analyze(two_faces).face.bbox, large.bbox)
    top = faces.select(detected, "highest_score")
    assert top.det_score == max(f.det_score for f in detected)
    with pytest.raises(ValueError, match="'biggest'"):
        faces.select(detected, "biggest")
    with pytest.raises(ValueError, match="'biggest'"):
        analyzer.analyze(two_faces, policy="biggest")


def test_only_the_chosen_face_is_embedded(analyzer: faces.FaceAnalyzer, two_faces, monkeypatch) -> None:
    """Two faces found, one ArcFace pass: the policy's face, with the embedding it has alone."""
    detected, _ = analyzer.detect(two_faces)
    assert len(detected) == 2
    calls = []
    get_feat = analyzer.recognizer.get_feat
    monkeypatch.setattr(analyzer.recognizer, "get_feat", lambda crop: calls.append(crop) or get_feat(crop))
    for policy in faces.POLICIES:
        calls.clear()
        result = analyzer.analyze(two_faces, policy)
        assert len(calls) == 1 and result.n_faces == 2
        chosen = faces.select(detected, policy)
        assert np.array_equal(result.face.bbox, chosen.bbox)
        assert np.array_equal(result.face.embedding, analyzer.embed(two_faces, chosen).embedding)


def test_embeddings_match_self_and_differ_across_faces(
    analyzer: faces.FaceAnalyzer, pack_root: Path, astronaut, tmp_path: Path
) -> None:
    first = analyzer.analyze(astronaut).face.embedding
    again = analyzer.analyze(astronaut.copy()).face.embedding
    other = analyzer.analyze(insightface.data.get_image("t1")).face.embedding
    assert abs(faces.cosine(first, again) - 1.0) < 1e-5
    assert faces.cosine(first, other) < 0.999
    faces.build_tiny_face_pack(tmp_path, seed=1)
    reseeded = faces.FaceAnalyzer(tmp_path).analyze(astronaut).face.embedding
    assert faces.cosine(first, reseeded) < 0.999


def test_cosine_values() -> None:
    assert faces.cosine(np.array([3.0, 0.0]), np.array([2.0, 2.0])) == pytest.approx(2**-0.5)
    assert faces.cosine(np.array([1.0, 2.0]), np.array([-2.0, -4.0])) == pytest.approx(-1.0)


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")
def test_aligned_crop_is_a_112_face(analyzer: faces.FaceAnalyzer, astronaut) -> None:
    face = analyzer.analyze(astronaut).face
    crop = faces.aligned_crop(astronaut, face.kps)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    # The keypoints are a scaled ArcFace template, so alignment maps them onto it exactly.
    matrix = estimate_norm(face.kps)
    warped = face.kps @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(warped - arcface_dst).max() < 0.05
    centre = crop[40:72, 40:72].reshape(-1, 3).mean(axis=0)
    assert centre[2] > centre[0] + 30  # skin: red well above blue (BGR)


def test_missing_pack_is_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("insightface tried to download")

    monkeypatch.setattr(insightface.utils.storage, "download_file", no_download)
    folder = tmp_path / "models" / "antelopev2"
    with pytest.raises(faces.FaceModelError) as excinfo:
        faces.FaceAnalyzer(tmp_path)
    assert "does not exist" in _one_line_error(excinfo, folder)


def test_empty_pack_is_one_clear_line(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "antelopev2"
    folder.mkdir(parents=True)
    with pytest.raises(faces.FaceModelError) as excinfo:
        faces.FaceAnalyzer(tmp_path)
    assert "no .onnx files" in _one_line_error(excinfo, folder)
    # antelopev2.zip unpacks into models/antelopev2/antelopev2/*.onnx
    shutil.copytree(faces.build_tiny_face_pack(tmp_path / "src"), folder / "antelopev2")
    with pytest.raises(faces.FaceModelError, match="one level down"):
        faces.FaceAnalyzer(tmp_path)


def test_pack_without_detector_or_readable_file_is_one_clear_line(tmp_path: Path) -> None:
    folder = faces.build_tiny_face_pack(tmp_path)
    (folder / "scrfd_10g_bnkps.onnx").unlink()
    with pytest.raises(faces.FaceModelError) as excinfo:
        faces.FaceAnalyzer(tmp_path)
    assert "no usable detection model" in _one_line_error(excinfo, folder)
    (folder / "scrfd_10g_bnkps.onnx").write_bytes(b"truncated")
    with pytest.raises(faces.FaceModelError) as excinfo:
        faces.FaceAnalyzer(tmp_path)
    assert "unreadable" in _one_line_error(excinfo, folder)


def test_pack_bytes_depend_only_on_seed(tmp_path: Path) -> None:
    def files(root: Path, seed: int) -> list[bytes]:
        folder = faces.build_tiny_face_pack(root, seed=seed)
        return [(folder / name).read_bytes() for name in faces.PACK_FILES["antelopev2"]]

    det_a, rec_a = files(tmp_path / "a", 0)
    det_b, rec_b = files(tmp_path / "b", 0)
    det_c, rec_c = files(tmp_path / "c", 7)
    assert det_a == det_b and rec_a == rec_b
    assert det_a != det_c and rec_a != rec_c
    assert not list((tmp_path / "a" / "models" / "antelopev2").glob(".*tmp"))


# ----------------------------------------------------------------------------- IR-SE50


def test_irse50_state_dict_matches_facexlib() -> None:
    fixture = json.loads(FIXTURE.read_text())
    model = arcface_irse.IRSEArcFace(arcface_irse.CONFIGS["real"])
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert shapes == list(fixture["state_dict_shapes"].items())  # keys, shapes and order
    assert len(shapes) == fixture["n_tensors"] == 397
    assert sum(p.numel() for p in model.parameters()) == fixture["n_params"] == 43_797_696
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    embedding = arcface_irse.embed_aligned_bgr(model.eval(), crop)
    assert embedding.shape == (512,) and abs(np.linalg.norm(embedding) - 1.0) < 1e-5


def test_tiny_irse_round_trips(tmp_path: Path, analyzer: faces.FaceAnalyzer, astronaut) -> None:
    path = arcface_irse.save_tiny_irse(tmp_path / "recognition_arcface_ir_se50.pth", seed=3)
    loaded = arcface_irse.load_irse50(path, config="tiny")
    crop = faces.aligned_crop(astronaut, analyzer.analyze(astronaut).face.kps)
    embedding = arcface_irse.embed_aligned_bgr(loaded, crop)
    fresh = arcface_irse.embed_aligned_bgr(arcface_irse.tiny_irse(3), crop)
    assert np.array_equal(embedding, fresh)
    assert embedding.shape == (512,) and embedding.dtype == np.float32
    assert abs(np.linalg.norm(embedding) - 1.0) < 1e-5
    other = arcface_irse.embed_aligned_bgr(arcface_irse.tiny_irse(4), crop)
    assert faces.cosine(embedding, other) < 0.99
    # InfiniteYou feeds BGR: swapping channels must change the embedding.
    swapped = arcface_irse.embed_aligned_bgr(loaded, np.ascontiguousarray(crop[:, :, ::-1]))
    assert faces.cosine(embedding, swapped) < 0.9999
    state = torch.load(path, weights_only=True)
    assert set(state) == set(loaded.state_dict())


def test_irse_load_errors_are_one_line(tmp_path: Path) -> None:
    path = arcface_irse.save_tiny_irse(tmp_path / "tiny.pth")
    with pytest.raises(faces.FaceModelError) as excinfo:
        arcface_irse.load_irse50(path, config="real")
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert "mis-shaped" in str(excinfo.value)
    with pytest.raises(faces.FaceModelError, match="does not exist"):
        arcface_irse.load_irse50(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(faces.FaceModelError, match="not a readable state dict"):
        arcface_irse.load_irse50(tmp_path / "junk.pth", config="tiny")
    with pytest.raises(ValueError, match="'huge'"):
        arcface_irse.load_irse50(path, config="huge")
    with pytest.raises(ValueError, match="112x112x3 uint8"):
        arcface_irse.embed_aligned_bgr(arcface_irse.tiny_irse(), np.zeros((64, 64, 3), np.uint8))


def test_onnxruntime_keeps_its_device_id_in_the_sweep_cache(tmp_path):
    """onnxruntime writes ~/.cache/Microsoft unless told otherwise; jobs point it at the sweep."""
    import subprocess
    import sys

    from tests.conftest import REPO

    probe = (
        "import os; import fewstep.faces.analyzer as f; from onnx import helper, TensorProto as T\n"
        "assert 'XDG_CACHE_HOME' not in os.environ\n"
        "v = lambda n: helper.make_tensor_value_info(n, T.FLOAT, [1])\n"
        "g = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'g', [v('x')], [v('y')])\n"
        "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)], ir_version=9)\n"
        "f.onnxruntime.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])\n"
    )
    env = {
        "HOME": str(tmp_path / "home"),
        "FEWSTEP_CACHE_DIR": str(tmp_path / "cache"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO / "workflow"),
    }
    (tmp_path / "home").mkdir()
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "home").rglob("*")) == []
    assert (tmp_path / "cache" / "Microsoft" / "DeveloperTools" / ".onnxruntime" / "deviceid").is_file()


def test_onnxruntime_sessions_use_the_job_threads(pack_root: Path, monkeypatch) -> None:
    """Snakemake sets OMP_NUM_THREADS to the rule's threads; both face sessions follow it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    analyzer = faces.FaceAnalyzer(pack_root)
    for model in (analyzer.detector, analyzer.recognizer):
        assert model.session.get_session_options().intra_op_num_threads == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert faces.session_options().intra_op_num_threads == 0  # onnxruntime's default: every core


@pytest.mark.parametrize("gpu", [True, False])
def test_face_sessions_take_the_cuda_provider_only_for_a_gpu_job(pack_root: Path, monkeypatch, gpu) -> None:
    """With onnxruntime-gpu a GPU job detects and embeds on CUDA; a CPU job never asks for it."""
    from fewstep.faces import analyzer as module

    asked = []
    real = module.FaceAnalysis

    def recording(*args, providers, **kwargs):
        asked.append(providers)
        return real(*args, providers=["CPUExecutionProvider"], **kwargs)  # this build has no CUDA

    monkeypatch.setattr(
        module.onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(module, "FaceAnalysis", recording)
    faces.FaceAnalyzer(pack_root, gpu=gpu)
    expected = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
    assert asked == [expected]
