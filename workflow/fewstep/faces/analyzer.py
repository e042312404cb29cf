"""Face detection, alignment and ArcFace (ONNX) embeddings through insightface.

Real runs read an insightface model pack (``antelopev2`` or ``buffalo_l``) that
the download rule fetched; the offline demo and the tests use a *tiny* pack
built here with the ``onnx`` helper API and stored under the real file names,
so both go through the very same ``insightface.app.FaceAnalysis`` code.

The tiny detector is a hand-set graph, not a trained network: it finds
skin-coloured blobs (see :func:`build_tiny_face_pack`). Its boxes and
keypoints are geometrically plausible, never a real face detector's output.
"""

# ruff: noqa: E402  (onnxruntime must be imported first, by _import_onnxruntime)
from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx


def _import_onnxruntime() -> ModuleType:
    """Import onnxruntime with its telemetry id kept in $FEWSTEP_CACHE_DIR (the sweep's cache).

    onnxruntime writes a device id to $XDG_CACHE_HOME/Microsoft (default ~/.cache), taking
    the folder from the environment when it is imported. XDG_CACHE_HOME is set only for that
    import: for the whole job it would also move the Hugging Face and torch caches.
    """
    cache, before = os.environ.get("FEWSTEP_CACHE_DIR"), os.environ.get("XDG_CACHE_HOME")
    if cache:
        os.environ["XDG_CACHE_HOME"] = cache
    try:
        return importlib.import_module("onnxruntime")
    finally:
        if before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = before


onnxruntime = _import_onnxruntime()

from insightface.app import FaceAnalysis  # after onnxruntime: it imports it
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.utils.face_align import arcface_dst, norm_crop
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf

from fewstep.core.errors import WeightsError
from fewstep.core.io import atomic_write_bytes

__all__ = [
    "DET_SIZES",
    "PACK_FILES",
    "DetectedFace",
    "FaceAnalyzer",
    "FaceBox",
    "FaceModelError",
    "FaceRecognizer",
    "FaceResult",
    "aligned_crop",
    "build_tiny_face_pack",
    "cosine",
    "normed_embedding",
    "select",
    "write_tiny_recognizer",
]

#: Detection file and recognition file of each supported insightface pack.
PACK_FILES: dict[str, tuple[str, str]] = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
}
#: Detector input sizes tried in order; the first that finds a face wins
#: (InfiniteYou's ``detect_face`` does the same with 640, 320 and 160).
DET_SIZES: tuple[int, ...] = (640, 320, 160)
POLICIES: tuple[str, ...] = ("largest", "highest_score")

_OPSET = 17
_IR_VERSION = 8  # the IR version that came with opset 17 (onnx 1.12)
_STRIDES = (8, 16, 32)
_WINDOWS = (7, 11)  # anchor 0 / anchor 1: square window, in feature cells
# YCbCr skin band (classic rule-of-thumb ranges, tightened on the sample images).
_CR_BAND = (143.0, 165.0)
_CB_BAND = (95.0, 125.0)
_BAND_SLOPE = 0.5  # sigmoid slope per Cr/Cb unit at the band edges
_SCORE_SLOPE = 12.0  # sigmoid slope per unit of skin fraction
_CENTER_MIN = 0.5  # skin fraction needed in the 3x3 cells at the anchor
_RING_MAX = 0.25  # skin fraction allowed on the window's border ring
_FACE_PER_SKIN = 0.72  # box half-size per sqrt(skin cells): skin ~ 0.48 of the box


class FaceModelError(WeightsError):
    """A face model pack is missing or unusable; the message says what to do."""


@dataclass(frozen=True)
class FaceBox:
    """One detected face in image pixel coordinates, not yet embedded."""

    bbox: np.ndarray  # (4,) float32: x1, y1, x2, y2
    kps: np.ndarray  # (5, 2) float32: eyes, nose, mouth corners
    det_score: float

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        x1, y1, x2, y2 = (float(v) for v in self.bbox)
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass(frozen=True)
class DetectedFace(FaceBox):
    """A detected face with its ArcFace embedding."""

    embedding: np.ndarray  # (512,) float32, L2-normalised ArcFace (ONNX) embedding


@dataclass(frozen=True)
class FaceResult:
    """The face a policy selected, with how many faces were found and where."""

    face: DetectedFace
    n_faces: int
    det_size: int


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (any norm)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def select(faces: list[FaceBox], policy: str = "largest") -> FaceBox:
    """Pick one face: ``largest`` box area (InfiniteYou) or ``highest_score``."""
    if policy not in POLICIES:
        raise ValueError(f"face policy {policy!r} is unknown; use one of {list(POLICIES)}")
    if not faces:
        raise ValueError("select() needs at least one face")
    if policy == "largest":
        return max(faces, key=lambda face: face.area)
    return max(faces, key=lambda face: face.det_score)


def _pack_hint(folder: Path) -> str:
    from fewstep.registry.prepare import prepare_command

    return (  # "insightface": the pack's registry name (fewstep.faces.models, which imports this module)
        f"prepare it: `{prepare_command('insightface')}` (downloads it into {folder}; "
        "with tiny weights, builds the offline demo pack)"
    )


def _check_pack(folder: Path) -> None:
    """Fail with one line, before insightface would try a download or assert."""
    if not folder.is_dir():
        raise FaceModelError(f"face model pack {folder} does not exist: {_pack_hint(folder)}")
    if not any(folder.glob("*.onnx")):
        nested = folder / folder.name
        where = ""
        if any(nested.glob("*.onnx")):
            where = f" (its .onnx files sit one level down in {nested}: move them up)"
        raise FaceModelError(f"face model pack {folder} has no .onnx files{where}: {_pack_hint(folder)}")


def has_cuda_provider() -> bool:
    """Whether this onnxruntime build runs on CUDA (onnxruntime-gpu); asks CUDA nothing."""
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def session_options() -> onnxruntime.SessionOptions:
    """onnxruntime options with as many threads as the job has (OMP_NUM_THREADS: Snakemake sets
    it to the rule's `threads`; torch follows it too). Unset, onnxruntime takes every core."""
    options = onnxruntime.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    options.intra_op_num_threads = int(threads) if threads.isdigit() else 0
    return options


class FaceAnalyzer:
    """insightface detection + ArcFace recognition over one model pack.

    ``root`` is the insightface root: the pack is read from ``root/models/name``. With
    ``gpu`` (a job on a CUDA device) and an onnxruntime build with the CUDA provider
    (``onnxruntime-gpu``), detection and recognition run on the GPU; otherwise on the CPU.
    """

    def __init__(
        self,
        root: Path | str,
        name: str = "antelopev2",
        det_thresh: float = 0.5,
        det_sizes: tuple[int, ...] = DET_SIZES,
        gpu: bool = True,
    ) -> None:
        self.folder = Path(root).expanduser().resolve() / "models" / name
        _check_pack(self.folder)
        cuda = gpu and has_cuda_provider()
        providers = ["CUDAExecutionProvider"] if cuda else []
        providers.append("CPUExecutionProvider")
        try:
            # An absolute folder as ``name``: insightface 2.1 would otherwise prefer a
            # same-named folder in the working directory over ``root/models/name``.
            app = FaceAnalysis(
                name=str(self.folder),
                root=str(Path(root).expanduser()),
                allowed_modules=["detection", "recognition"],
                providers=providers,
                sess_options=session_options(),
            )
        except AssertionError as err:
            raise FaceModelError(
                f"face model pack {self.folder} has no usable detection model: " + _pack_hint(self.folder)
            ) from err
        except InvalidProtobuf as err:
            raise FaceModelError(
                f"face model pack {self.folder} holds an unreadable .onnx file (a partial "
                f"download?): {_pack_hint(self.folder)}"
            ) from err
        if "recognition" not in app.models:
            raise FaceModelError(
                f"face model pack {self.folder} has no recognition model: " + _pack_hint(self.folder)
            )
        app.prepare(ctx_id=0 if cuda else -1, det_thresh=det_thresh, det_size=(det_sizes[0],) * 2)
        self.det_sizes = tuple(det_sizes)
        self.detector = app.det_model
        self.recognizer = app.models["recognition"]
        meta = onnx.load(self.detector.model_file, load_external_data=False).metadata_props
        #: True for packs from :func:`build_tiny_face_pack`: outputs are demo numbers.
        self.is_tiny = any(p.key == "fewstep_tiny" and p.value == "1" for p in meta)

    def detect(self, image_bgr: np.ndarray) -> tuple[list[FaceBox], int]:
        """All faces at the first det size that finds any, and that size (0: none)."""
        for size in self.det_sizes:
            bboxes, kpss = self.detector.detect(image_bgr, input_size=(size, size))
            if len(bboxes):
                pairs = zip(bboxes, kpss, strict=True)
                return [
                    FaceBox(np.asarray(box[:4], np.float32), np.asarray(kps, np.float32), float(box[4]))
                    for box, kps in pairs
                ], size
        return [], 0

    def analyze(self, image_bgr: np.ndarray, policy: str = "largest") -> FaceResult | None:
        """Detect, keep one face by ``policy`` and embed only that one; None without a face.

        ArcFace runs once per image however many faces the picture holds (a crowd costs
        one detection pass, not one recognition pass per face).
        """
        faces, size = self.detect(image_bgr)
        if not faces:
            return None
        return FaceResult(
            face=self.embed(image_bgr, select(faces, policy)), n_faces=len(faces), det_size=size
        )

    def embed(self, image_bgr: np.ndarray, face: FaceBox) -> DetectedFace:
        """The ArcFace embedding of one detected face (aligned crop, L2-normalised)."""
        embedding = normed_embedding(self.recognizer, image_bgr, face.kps)
        return DetectedFace(face.bbox, face.kps, face.det_score, embedding=embedding)


def normed_embedding(recognizer: ArcFaceONNX, image_bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """insightface's `Face.normed_embedding`: the recogniser on the keypoints' aligned crop, L2-normalised."""
    crop = aligned_crop(image_bgr, kps, size=recognizer.input_size[0])
    feat = np.asarray(recognizer.get_feat(crop), dtype=np.float32).ravel()
    return feat / np.linalg.norm(feat)


class FaceRecognizer:
    """One insightface ArcFace ONNX file without a detector: embeds faces another pack detected
    (IP-Adapter FaceID's `buffalo_l` `w600k_r50` on the face the identity's policy chose)."""

    def __init__(self, path: Path | str, gpu: bool = False) -> None:
        path = Path(path)
        if not path.is_file():
            raise FaceModelError(f"recognition model {path} does not exist: prepare it (fewstep prepare)")
        cuda = gpu and has_cuda_provider()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        try:
            model = get_model(str(path), providers=providers, sess_options=session_options())
        except InvalidProtobuf as err:
            message = f"{path} is unreadable (a partial download?): delete it and prepare again"
            raise FaceModelError(message) from err
        if not isinstance(model, ArcFaceONNX):
            raise FaceModelError(f"{path} is not an ArcFace recognition model ([1, 3, 112, 112] -> [1, 512])")
        model.prepare(ctx_id=0 if cuda else -1)
        self.model = model

    def embed(self, image_bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """The normed embedding of the face at `kps` (5 keypoints, image pixels)."""
        return normed_embedding(self.model, image_bgr, kps)


def aligned_crop(image_bgr: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """ArcFace-template similarity warp of the 5 keypoints to a size x size crop."""
    with warnings.catch_warnings():
        # insightface 2.1 calls SimilarityTransform.estimate, deprecated in scikit-image 0.26.
        warnings.filterwarnings("ignore", message=".*estimate.*deprecated", category=FutureWarning)
        return norm_crop(image_bgr, landmark=np.asarray(kps, dtype=np.float32), image_size=size)


# --------------------------------------------------------------------------- tiny pack


class _Graph:
    """Small helper that names nodes and initializers of an ONNX graph."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        """Add an initializer; return its name."""
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: object) -> str:
        """Add a node with one output named like the node; return that name."""
        return self.ops(op_type, inputs, [name], **attrs)[0]

    def ops(self, op_type: str, inputs: list[str], outputs: list[str], **attrs: object) -> list[str]:
        """Add a node with several outputs; the node takes the first output's name."""
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=outputs[0], **attrs))
        return outputs


def _model(
    graph: _Graph,
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    seed: int,
) -> onnx.ModelProto:
    """Wrap the graph in a checked opset-17 model tagged as a tiny fewstep model."""
    model = helper.make_model(
        helper.make_graph(graph.nodes, name, inputs, outputs, graph.inits),
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="fewstep",
        doc_string="fewstep TINY face model (seeded or hand-set weights): demo and tests only",
    )
    model.ir_version = _IR_VERSION
    helper.set_model_props(model, {"fewstep_tiny": "1", "seed": str(seed)})
    onnx.checker.check_model(model)
    return model


def _window_kernels() -> tuple[np.ndarray, np.ndarray]:
    """Conv kernels [5*A, 1, w, w] and biases, grouped by quantity, anchors innermost.

    Quantities: scaled centre excess, scaled ring deficit, skin cells, and the
    first moments in x and y (cell offsets from the anchor cell).
    """
    size = max(_WINDOWS)
    half = size // 2
    offs = np.arange(size, dtype=np.float32) - half
    dy, dx = np.meshgrid(offs, offs, indexing="ij")
    kernels = np.zeros((5, len(_WINDOWS), size, size), dtype=np.float32)
    for a, w in enumerate(_WINDOWS):
        inside = (np.abs(dx) <= w // 2) & (np.abs(dy) <= w // 2)
        ring = inside & ((np.abs(dx) == w // 2) | (np.abs(dy) == w // 2))
        centre = (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
        kernels[0, a] = _SCORE_SLOPE * centre / centre.sum()
        kernels[1, a] = -_SCORE_SLOPE * ring / ring.sum()
        kernels[2, a] = inside
        kernels[3, a] = inside * dx
        kernels[4, a] = inside * dy
    bias = np.zeros((5, len(_WINDOWS)), dtype=np.float32)
    bias[0] = -_SCORE_SLOPE * _CENTER_MIN
    bias[1] = _SCORE_SLOPE * _RING_MAX
    return kernels.reshape(-1, 1, size, size), bias.reshape(-1)


def _geometry_matrix() -> tuple[np.ndarray, np.ndarray]:
    """Linear map from (ox, oy, h) to SCRFD box distances and 5 keypoint offsets.

    Units are feature cells (= stride units). The anchor point is the cell's
    top-left corner, so the blob centre is at (0.5 + ox, 0.5 + oy); keypoints
    follow the ArcFace template with the aligned crop spanning the box.
    """
    unit = (arcface_dst - 56.0) / 56.0  # template in [-1, 1] of the 112 crop
    mat = np.zeros((3, 14), dtype=np.float32)
    bias = np.full(14, 0.5, dtype=np.float32)
    mat[:, 0:4] = [[-1, 0, 1, 0], [0, -1, 0, 1], [1, 1, 1, 1]]  # l, t, r, b
    bias[0:2] = -0.5
    mat[0, 4::2] = 1.0
    mat[1, 5::2] = 1.0
    mat[2, 4:] = unit.reshape(-1)
    return mat, bias


def _detector(seed: int) -> onnx.ModelProto:
    """SCRFD-shaped skin-blob detector with a dynamic spatial input.

    Pixels become a skin probability from a YCbCr band; per stride the map is
    average-pooled to cells, and each anchor (window 7 or 11 cells) scores
    sigmoid(centre skin - 0.5) * sigmoid(0.25 - ring skin): a compact skin blob
    that fits its window. The box is centred on the blob's skin centroid with a
    side proportional to the square root of its skin area.
    """
    g = _Graph()
    x = "input.1"
    # Input is RGB (insightface swaps BGR) as (pixel - 127.5) / 128.
    to_cr = np.array([0.5, -0.418688, -0.081312]) * 128.0
    to_cb = np.array([-0.168736, -0.331264, 0.5]) * 128.0
    rows = [to_cr, -to_cr, to_cb, -to_cb]
    offsets = [128.0 - _CR_BAND[0], _CR_BAND[1] - 128.0, 128.0 - _CB_BAND[0], _CB_BAND[1] - 128.0]
    band_w = (_BAND_SLOPE * np.array(rows)).reshape(4, 3, 1, 1).astype(np.float32)
    band_b = (_BAND_SLOPE * np.array(offsets)).astype(np.float32)
    band = g.op("Conv", [x, g.const("band_w", band_w), g.const("band_b", band_b)], "band")
    inband = g.op("Sigmoid", [band], "inband")
    skin = g.op("ReduceProd", [inband], "skin", axes=[1], keepdims=1)

    kernels, kbias = _window_kernels()
    size = kernels.shape[-1]
    n_anchor = len(_WINDOWS)
    g.const("win_w", kernels)
    g.const("win_b", kbias)
    geo_w, geo_b = _geometry_matrix()
    g.const("geo_w", geo_w)
    g.const("geo_b", geo_b)
    g.const("split5", np.full(5, n_anchor, dtype=np.int64))
    g.const("split_geo", np.array([4, 10], dtype=np.int64))
    g.const("eps", np.array(1e-6, dtype=np.float32))
    g.const("face_per_skin", np.array(_FACE_PER_SKIN, dtype=np.float32))
    g.const("last", np.array([-1], dtype=np.int64))
    g.const("rows1", np.array([-1, 1], dtype=np.int64))
    g.const("rows3", np.array([-1, 3], dtype=np.int64))

    scores, boxes, kps = [], [], []
    for s in _STRIDES:
        cells = g.op("AveragePool", [skin], f"cells{s}", kernel_shape=[s, s], strides=[s, s])
        stats = g.op("Conv", [cells, "win_w", "win_b"], f"win{s}", pads=[size // 2] * 4)
        names = [f"{q}{s}" for q in ("zc", "zr", "mass", "mx", "my")]
        z_centre, z_ring, mass, mx, my = g.ops("Split", [stats, "split5"], names, axis=1)
        score = g.op(
            "Mul",
            [g.op("Sigmoid", [z_centre], f"pc{s}"), g.op("Sigmoid", [z_ring], f"pr{s}")],
            f"score_map{s}",
        )
        denom = g.op("Add", [mass, "eps"], f"den{s}")
        ox = g.op("Div", [mx, denom], f"ox{s}")
        oy = g.op("Div", [my, denom], f"oy{s}")
        root = g.op("Sqrt", [g.op("Relu", [mass], f"mass_pos{s}")], f"root{s}")
        half = g.op("Mul", [root, "face_per_skin"], f"half{s}")
        parts = [g.op("Unsqueeze", [t, "last"], f"{t}_u") for t in (ox, oy, half)]
        basis = g.op("Concat", parts, f"basis{s}", axis=-1)  # [1, A, H, W, 3]
        basis = g.op("Transpose", [basis], f"basis_t{s}", perm=[0, 2, 3, 1, 4])
        basis = g.op("Reshape", [basis, "rows3"], f"basis_r{s}")  # row = (gy*W + gx)*A + a
        geo = g.op("Add", [g.op("MatMul", [basis, "geo_w"], f"geo_mm{s}"), "geo_b"], f"geo{s}")
        box, kp = g.ops("Split", [geo, "split_geo"], [f"bbox_{s}", f"kps_{s}"], axis=1)
        boxes.append(box)
        kps.append(kp)
        score = g.op("Transpose", [score], f"score_t{s}", perm=[0, 2, 3, 1])
        scores.append(g.op("Reshape", [score, "rows1"], f"score_{s}"))

    image = helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "height", "width"])
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{name.split('_')[1]}", width])
        for names, width in ((scores, 1), (boxes, 4), (kps, 10))
        for name in names
    ]
    return _model(g, "tiny_scrfd", [image], outputs, seed)


def _recognizer(seed: int) -> onnx.ModelProto:
    """Seeded conv/tanh net, 112x112 RGB in [-1, 1] -> 512-d (ArcFace-shaped)."""
    rng = np.random.default_rng(seed)
    g = _Graph()
    x = "input.1"
    h = x
    for i, (cin, cout) in enumerate(((3, 8), (8, 16), (16, 16))):
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        conv = g.op(
            "Conv",
            [h, g.const(f"conv{i}_w", w), g.const(f"conv{i}_b", b)],
            f"conv{i}",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        )
        h = g.op("Tanh", [conv], f"act{i}")
    h = g.op("AveragePool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2])  # 16 x 7 x 7
    h = g.op("Flatten", [h], "flat", axis=1)
    fc_w = (rng.standard_normal((16 * 7 * 7, 512)) / np.sqrt(16 * 7 * 7)).astype(np.float32)
    fc_b = np.zeros(512, np.float32)
    g.op("Gemm", [h, g.const("fc_w", fc_w), g.const("fc_b", fc_b)], "embedding")
    image = helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", 3, 112, 112])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 512])
    return _model(g, "tiny_arcface", [image], [out], seed)


def write_tiny_recognizer(path: Path, seed: int) -> Path:
    """A tiny ArcFace-shaped recognition ONNX file at `path` (bytes depend only on `seed`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _recognizer(seed).SerializeToString())
    return path


def build_tiny_face_pack(root: Path, name: str = "antelopev2", seed: int = 0) -> Path:
    """Write a tiny insightface pack to ``root/models/name`` and return that folder.

    Same file names as the real pack; bytes depend only on ``seed``. The
    recognition weights are drawn from ``seed``; the detector is hand-set and
    records the seed only in its metadata.
    """
    if name not in PACK_FILES:
        raise ValueError(f"face pack {name!r} is unknown; use one of {sorted(PACK_FILES)}")
    folder = Path(root) / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    det_file, rec_file = PACK_FILES[name]
    atomic_write_bytes(folder / det_file, _detector(seed).SerializeToString())
    atomic_write_bytes(folder / rec_file, _recognizer(seed).SerializeToString())
    return folder
