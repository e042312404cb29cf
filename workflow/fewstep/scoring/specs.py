"""One spec per metric: the only place a metric is named.

A `MetricSpec` says how its scorer is built (a class in `fewstep.scoring`, imported only when a
score job builds it: the workflow's parse stays free of torch), the registry networks it loads,
the columns it writes with how tables and the report read each one, whether it compares an image
with the anchor cell's image, and the adapter roles whose cells it fits. Everything else is
derived from `SPECS`: the score job's registry (`fewstep.jobs.score.METRICS`), the networks a
cell's scoring waits for (`fewstep.scoring.networks.scoring_models`, `ANCHOR_METRICS`), the
analysis registry (`fewstep.analysis.metric_registry`), and config ``scoring.metrics``'s enum and
default, which `tests/test_metric_specs.py` holds equal to `SPECS`.

An adapter role is what an adapter is given and so what its images are compared with: a face
(``identity``, InfuseNet), a style or an object picture (``style``, ``object``, IP-Adapter). The
family says a cell's role (`Family.adapter_role`), the spec whether it fits (`cell_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Protocol

from fewstep.core.study import Study

INF = float("inf")
#: roles whose metrics config ``scoring.metrics`` picks (the face sweep's); a reference role is
#: scored by every metric that fits it
CONFIGURED_ROLES = frozenset({"identity"})
REFERENCE_ROLES = ("style", "object")


@dataclass(frozen=True)
class Column:
    """A column a metric writes, or one the tables derive from it, as tables and the report read it.

    `margin` is the default non-inferiority margin of a quality column (config ``report.margins``
    overrides it); `limits` the range its values can take (default: its unit's); an
    `anchor_relative` column is a distance to the anchor's own image (0 at the anchor). `headline`
    columns lead every table (the study's identity and reference-fidelity numbers).
    """

    name: str
    label: str
    unit: str = ""
    better: str | None = "higher"  # "higher", "lower" or None (no direction)
    kind: str = "quality"  # "quality", "cost", "diagnostic" or "probe"
    margin: float | None = None
    anchor_relative: bool = False
    limits: tuple[float, float] | None = None
    headline: bool = False


@dataclass(frozen=True)
class MetricSpec:
    """One metric of config ``scoring.metrics``."""

    name: str
    #: ``module:Class`` of its scorer, built with ``(config, JobModels)`` (`fewstep.scoring.base.Metric`)
    scorer: str
    #: registry networks it loads; ``{key}`` is filled from config ``scoring``
    networks: tuple[str, ...]
    columns: tuple[Column, ...]
    #: the adapter roles whose cells it fits
    roles: frozenset[str]
    #: what it compares each image with besides its anchor: "reference" (the picture the adapter
    #: is given) or "prompt"
    compares: str = "reference"
    #: also compares each image with the anchor cell's image of the same item (LPIPS)
    anchor_paired: bool = False
    #: reads config ``face`` and the identities' held-out photos (its scores depend on them)
    faces: bool = False
    #: in config ``scoring.metrics``'s default
    default: bool = False

    def models(self, config: Study) -> list[str]:
        """The registry networks it loads under `config`."""
        return [network.format(**config.scoring) for network in self.networks]

    def scorer_class(self) -> type:
        module, _, name = self.scorer.partition(":")
        return getattr(import_module(module), name)

    @property
    def column(self) -> str:
        """The one column of a single-column metric."""
        (column,) = self.columns
        return column.name


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "identity",
        "fewstep.scoring.identity:IdentitySimilarity",
        ("insightface",),
        (
            Column(
                "id_sim_zero",
                "ArcFace identity similarity, no face = 0",
                "cosine",
                margin=0.02,
                headline=True,
            ),
            Column("id_sim", "ArcFace identity similarity, faces only", "cosine", margin=0.02, headline=True),
            Column("face_detected", "face detection rate", "fraction", margin=0.05, headline=True),
            Column(
                "id_sim_heldout", "ArcFace similarity to held-out photos, faces only", "cosine", margin=0.02
            ),
            Column("det_score", "face detector confidence", "", "higher", "diagnostic", limits=(0.0, 1.0)),
            Column("n_faces", "faces found per image", "", None, "diagnostic", limits=(0.0, INF)),
            Column("copy_paste", "ArcFace copy-paste score (MultiID-Bench)", "", "lower", "diagnostic"),
        ),
        frozenset({"identity"}),
        faces=True,
        default=True,
    ),
    MetricSpec(
        "identity_dlib",
        "fewstep.scoring.identity:DlibIdentitySimilarity",
        ("dlib-face",),
        (
            Column("id_sim_dlib_zero", "dlib identity similarity, no face = 0", "cosine", margin=0.02),
            Column("id_sim_dlib", "dlib identity similarity, faces only", "cosine", margin=0.02),
            Column("face_detected_dlib", "dlib face detection rate", "fraction", margin=0.05),
            Column(
                "id_sim_heldout_dlib", "dlib similarity to held-out photos, faces only", "cosine", margin=0.02
            ),
            Column("copy_paste_dlib", "dlib copy-paste score (MultiID-Bench)", "", "lower", "diagnostic"),
            Column("det_score_dlib", "dlib HOG detector score", "", "higher", "diagnostic"),
            Column("n_faces_dlib", "faces dlib finds per image", "", None, "diagnostic", limits=(0.0, INF)),
        ),
        frozenset({"identity"}),
        faces=True,
        default=True,
    ),
    MetricSpec(
        "lpips",
        "fewstep.scoring.metrics:PerceptualDistance",
        ("lpips-{lpips_net}",),
        (
            Column(
                "lpips_ref",
                "LPIPS to the reference image",
                better="lower",
                margin=0.02,
                limits=(0.0, INF),
                headline=True,
            ),
            Column(
                "lpips_anchor",
                "LPIPS to the anchor cell's image",
                better="lower",
                margin=0.1,
                anchor_relative=True,
                limits=(0.0, INF),
            ),
        ),
        frozenset({"identity", *REFERENCE_ROLES}),
        anchor_paired=True,
        default=True,
    ),
    MetricSpec(
        "clip_score",
        "fewstep.scoring.metrics:CLIPScore",
        ("clip-vit-l14",),
        (Column("clip_score", "CLIPScore (image-prompt)", "100 x cosine", margin=0.5, limits=(0.0, 100.0)),),
        frozenset({"identity", *REFERENCE_ROLES}),
        compares="prompt",
        default=True,
    ),
    MetricSpec(
        "pick_score",
        "fewstep.scoring.metrics:PickScore",
        ("pickscore",),
        (Column("pick_score", "PickScore", margin=0.1, limits=(-100.0, 100.0)),),  # CLIP's logit scale <= 100
        frozenset({"identity"}),
        compares="prompt",
    ),
    MetricSpec(
        "clip_i",
        "fewstep.scoring.metrics:CLIPImageSimilarity",
        ("clip-vit-l14",),
        (Column("clip_i", "CLIP-I (image-reference)", "cosine", margin=0.01),),
        frozenset({"identity", *REFERENCE_ROLES}),
    ),
    MetricSpec(
        "dino",
        "fewstep.scoring.metrics:DINOSimilarity",
        ("dinov2-base",),
        (Column("dino", "DINO (image-reference)", "cosine", margin=0.01),),
        frozenset({"identity", "object"}),
    ),
    MetricSpec(
        "csd",
        "fewstep.scoring.metrics:CSDStyleSimilarity",
        ("csd-vit-l",),
        (Column("csd", "CSD style similarity", "cosine", margin=0.01),),
        frozenset({"identity", "style"}),
    ),
)
BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in SPECS}
IDENTITY, IDENTITY_DLIB, LPIPS, CLIP_SCORE, PICK_SCORE, CLIP_I, DINO, CSD = SPECS


def _role_order(spec: MetricSpec) -> tuple[bool, int, int]:
    """Within a reference role: metrics comparing with its picture before prompt alignment, the
    role's own (fitting fewer roles) before shared ones, then the table's order."""
    return (spec.compares == "prompt", len(spec.roles), SPECS.index(spec))


class RolePlayer(Protocol):
    """What `cell_metrics` asks of a family (`fewstep.families.base.Family`)."""

    adapter_roles: tuple[str, ...]

    def adapter_role(self, adapter: Mapping[str, Any]) -> str | None: ...


def cell_metrics(
    family: RolePlayer,
    adapter: Mapping[str, Any],
    configured: Iterable[str],
    bare_roles: Iterable[str] | None = None,
) -> list[str]:
    """The metrics that score a cell of `family` with `adapter`: those fitting the adapter's role
    (a bare backbone: every role it crosses, `bare_roles`, by default every role of its family's
    adapters). Config ``scoring.metrics``
    (`configured`) picks a configured role's metrics, in its order; a reference role takes every
    metric that fits it (`_role_order`), anchor-paired metrics after the others."""
    role = family.adapter_role(adapter)
    picked: list[MetricSpec] = []
    fitting: list[MetricSpec] = []
    for each in (role,) if role else (family.adapter_roles if bare_roles is None else tuple(bare_roles)):
        if each in CONFIGURED_ROLES:
            picked += [BY_NAME[name] for name in configured if each in BY_NAME[name].roles]
        else:
            fitting += sorted((s for s in SPECS if each in s.roles), key=_role_order)
    ordered = [
        *picked,
        *(s for s in fitting if not s.anchor_paired),
        *(s for s in fitting if s.anchor_paired),
    ]
    return list(dict.fromkeys(spec.name for spec in ordered))


def trajectory_metrics(
    family: RolePlayer, adapter: Mapping[str, Any], configured: Iterable[str]
) -> list[str]:
    """The cell's metrics (`cell_metrics`) that score its x0 at every step of a trajectory: those
    comparing with the adapter's picture (identity for identity cells, CSD and CLIP-I for style,
    DINO and CLIP-I for object), neither prompt alignment nor the anchor-paired ones (a trajectory
    job reads no other cell's images)."""
    return [
        name
        for name in cell_metrics(family, adapter, configured)
        if BY_NAME[name].compares == "reference" and not BY_NAME[name].anchor_paired
    ]


def anchor_metrics() -> tuple[str, ...]:
    """Metrics that compare each image with the anchor cell's image of the same item."""
    return tuple(spec.name for spec in SPECS if spec.anchor_paired)


def face_metrics() -> tuple[str, ...]:
    """Metrics whose scores depend on config ``face`` and the identities' held-out photos."""
    return tuple(spec.name for spec in SPECS if spec.faces)
