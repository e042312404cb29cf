"""One card's measured timings, read from the benchmark files in ``benchmarks/results/``.

The shared kinds, which name registry models and families as the workflow does: ``latency``
(per step and VAE decode of the FLUX backbones, with and without their adapter), ``acceleration``
(model load, compile and the switches' step times), ``sd_latency`` (SD per image against steps,
per family and adapter file) and ``workflow`` (whole-workflow runs, their job overheads). Beside
them each family lists the benchmark kinds that time its own backbones (`Family.figure_files`:
Kontext's, klein's, the distilled SD backbones'); their summaries name the benchmarks' own
backbone and adapter ids, which only the family reads: `Family.figure_cell` maps a row to the
config settings it ran, and the row is keyed by `Family.timing_name` and the adapter's
`adapter_role` (per step) or `reference_file` (per image), as a cell of the sweep is. A summary
with ``per_step_s`` and ``decode_s`` (``benchmarks/latency.py``'s form) gives per-step figures,
one with ``steps`` and ``latency_s`` a per-image fit. Only stdlib here, as in the estimate.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewstep.core.errors import ConfigError
from fewstep.families import FAMILIES
from fewstep.families.base import Family

ROOT = Path(__file__).resolve().parents[3]  # the repository
FIGURES = ROOT / "benchmarks" / "results"
SHARED = ("latency", "acceleration", "sd_latency", "workflow")
MEASURED_SIDE = 1024  # FLUX figures (and the families' per-step files unless their meta says): 1024x1024


def file_name(kinds: Iterable[str]) -> re.Pattern[str]:
    """``<kind>_<card>_<date>`` at the start of a file name, for the benchmark `kinds`."""
    alternatives = "|".join(sorted(map(re.escape, kinds), key=len, reverse=True))
    return re.compile(rf"^(?P<kind>{alternatives})_(?P<card>[a-z0-9]+)_(?P<date>\d{{4}}-\d{{2}}-\d{{2}})")


FILE_NAME = file_name(SHARED)


@dataclass
class Figures:
    """One card's timings, read from benchmarks/results."""

    card: str
    sources: list[str]
    step_s: dict[tuple[str, bool], float]  # (`Family.timing_name`, with its adapter) -> s per step at 1024²
    decode_s: float  # VAE decode of one image at 1024², of the shared latency file's models
    load_s: float  # model load of a job timed per step (eager acceleration rows)
    accelerations: dict[tuple[str, str], tuple[float, float]]  # (model, variant) -> (step factor, compile s)
    sd: dict[tuple[str, str], tuple[float, float]]  # (timing name, adapter file or none) -> (s, s per step)
    overheads: dict[str, float] = field(default_factory=dict)  # Job.key -> measured s (process + load)
    notes: list[str] = field(default_factory=list)
    decodes: dict[str, float] = field(default_factory=dict)  # timing name -> its own decode at 1024²
    sd_sides: dict[tuple[str, str], int] = field(default_factory=dict)  # a per-image fit's side, if given

    def decode(self, name: str) -> float:
        """Decode of one 1024² image of the backbone timed as `name`: its own, else the shared file's."""
        return self.decodes.get(name, self.decode_s)


def family_kinds(families: Mapping[str, Family]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(kind for family in families.values() for kind in family.figure_files))


def cards(folder: Path = FIGURES, extra: Iterable[str] = ()) -> dict[str, dict[str, list[Path]]]:
    """Card -> figure kind -> its files, oldest first (a later file's rows win); `extra`: the
    families' kinds, whose ``_summary.csv`` files count."""
    extra = tuple(extra)
    pattern = file_name((*SHARED, *extra))
    matched = [(match, path) for path in folder.glob("*") if (match := pattern.match(path.name))]
    found: dict[str, dict[str, list[Path]]] = {}
    for match, path in sorted(matched, key=lambda pair: (pair[0]["date"], pair[1].name)):
        kind = match["kind"]
        if kind in SHARED:
            wanted = path.suffix == (".json" if kind in ("acceleration", "workflow") else ".csv")
        else:
            wanted = path.name.endswith("_summary.csv")
        if wanted:
            found.setdefault(match["card"], {}).setdefault(kind, []).append(path)
    return found


def rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        return json.loads(path.read_text())["rows"]
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def owned(found: dict[str, dict[str, list[Path]]], card: str, kind: str) -> list[Path]:
    """Every `kind` file of `card`, oldest first, else of the first card that has one."""
    owners = [card] + sorted(c for c in found if c != card)
    return next((found[c][kind] for c in owners if kind in found[c]), [])


def fit(points: Mapping[int, float]) -> tuple[float, float]:
    """(seconds, seconds per step) of a line through the lowest and highest step counts measured;
    through the origin where one step count is (the steps dominate an image's time)."""
    low, high = min(points), max(points)
    if high == low:
        return 0.0, points[low] / low
    per_step = (points[high] - points[low]) / (high - low)
    return points[low] - per_step * low, per_step


def measured_figures(
    card: str, folder: Path = FIGURES, families: Mapping[str, Family] | None = None
) -> Figures:
    """The benchmark figures of `card` (as file names spell it, e.g. h200), without the workflow
    run's overheads; an unknown card is one line. `families`: whose own files are read
    (`fewstep.families.FAMILIES`)."""
    families = FAMILIES if families is None else families
    found = cards(folder, family_kinds(families))
    any_latency = any("latency" in kinds for kinds in found.values())
    complete = sorted(c for c, kinds in found.items() if "acceleration" in kinds and any_latency)
    if card not in complete:
        raise ConfigError(
            f"no timing figures for card {card!r} in {folder}; cards with figures: "
            f"{', '.join(complete) or 'none'} (run benchmarks/latency.py and acceleration.py on it)"
        )
    kinds, notes = found[card], []
    latency_path = owned(found, card, "latency")[-1]  # newest (some card has one: checked above)
    latency_step, decode = {}, []
    for row in rows(latency_path):
        if row["variant"] == "base":
            backbone, adapter, _ = row["cell"].split("/")
            latency_step[(backbone, adapter != "none")] = float(row["per_step_s"])
            decode.append(float(row["decode_s"]))
    accelerations: dict[tuple[str, str], tuple[float, float]] = {}
    eager: dict[str, dict[str, Any]] = {}
    for path in kinds["acceleration"]:  # each variant against the eager job of its own run
        accelerated = rows(path)
        eager_here = {row["backbone"]: row for row in accelerated if row["variant"] == "eager"}
        eager.update(eager_here)
        for row in accelerated:
            base = eager_here.get(row["backbone"])
            if row["variant"] != "eager" and base is not None:
                factor = row["per_step_s"] / base["per_step_s"]
                compiled = row.get("switches", {}).get("compile", "none") != "none"
                accelerations[(row["backbone"], row["variant"])] = (
                    factor,
                    max(row["compile_s"], 0.0) * compiled,
                )
    loads = [r["job_s"] - r["images"] * r["per_image_s"] - r["compile_s"] for r in eager.values()]
    step_s = dict(latency_step)
    if "latency" not in kinds:  # its own eager steps (with InfuseNet), the other card's ratio without
        for (model, adapter), step in latency_step.items():
            if model in eager and (model, True) in latency_step:
                step_s[(model, adapter)] = eager[model]["per_step_s"] * step / latency_step[(model, True)]
        notes.append(
            f"no latency file for {card}: FLUX per step from its eager acceleration rows (with InfuseNet; "
            f"without it at {relative(latency_path)}'s ratio), VAE decode from that file"
        )
    sd = {}
    sd_path = next(reversed(owned(found, card, "sd_latency")), None)
    if sd_path is not None:
        if "sd_latency" not in kinds:
            notes.append(f"no sd_latency file for {card}: SD per image from {relative(sd_path)}")
        by_key: dict[tuple[str, str], dict[int, float]] = {}
        for row in rows(sd_path):
            points = by_key.setdefault((row["family"], row["adapter"]), {})
            points[int(row["steps"])] = float(row["latency_s"])
        sd = {key: fit(points) for key, points in by_key.items()}
    used = [latency_path, *kinds["acceleration"], *([sd_path] if sd_path else [])]
    figures = Figures(
        card=card,
        sources=[relative(p) for p in used],
        step_s=step_s,
        decode_s=statistics.mean(decode),
        load_s=statistics.mean(loads),
        accelerations=accelerations,
        sd=sd,
        notes=notes,
    )
    add_family_figures(figures, found, families)
    return figures


def add_family_figures(
    figures: Figures, found: dict[str, dict[str, list[Path]]], families: Mapping[str, Family]
) -> None:
    """The families' own files (`Family.figure_files`, the card's else another card's) into
    `figures`, where the shared files have no figures of that key; later files' keys win."""
    card, used = figures.card, []
    step_s: dict[tuple[str, bool], float] = {}
    decodes: dict[str, float] = {}
    sd: dict[tuple[str, str], tuple[float, float]] = {}
    sides: dict[tuple[str, str], int] = {}
    for kind in family_kinds(families):
        paths = owned(found, card, kind)
        readers = [family for family in families.values() if kind in family.figure_files]
        if paths and kind not in found[card]:
            borrowed = ", ".join(map(relative, paths))
            figures.notes.append(f"no {kind} file for {card}: the backbones it times timed by {borrowed}")
        for path in paths:
            side = _measured_side(path)
            per_step: dict[tuple[str, bool], list[tuple[float, float]]] = {}
            per_image: dict[tuple[str, str], dict[int, float]] = {}
            for row in rows(path):
                for family in readers:
                    if (cell := family.figure_cell(row)) is None:
                        continue
                    backbone, adapter = cell
                    name = family.timing_name(backbone)
                    if "per_step_s" in row:
                        key = (name, family.adapter_role(adapter) is not None)
                        timed = (float(row["per_step_s"]), float(row["decode_s"]))
                        per_step.setdefault(key, []).append(timed)
                    else:
                        image_key = (name, family.reference_file(adapter) or "none")
                        per_image.setdefault(image_key, {})[int(row["steps"])] = float(row["latency_s"])
                        if row.get("size"):
                            sides[image_key] = int(row["size"])
            scale = (MEASURED_SIDE / side) ** 2  # per-step figures at 1024², as the shared file's
            for key, measured in per_step.items():
                step_s[key] = statistics.mean(step for step, _ in measured) * scale
                decodes[key[0]] = statistics.mean(decode for _, decode in measured) * scale
            sd.update({key: fit(points) for key, points in per_image.items()})
            if per_step or per_image:
                used.append(path)
    figures.sd_sides = {key: side for key, side in sides.items() if key not in figures.sd}
    figures.step_s = {**step_s, **figures.step_s}
    figures.decodes = {**decodes, **figures.decodes}
    figures.sd = {**sd, **figures.sd}
    figures.sources += [relative(path) for path in dict.fromkeys(used)]


def _measured_side(summary: Path) -> int:
    """The side a per-step summary's images had: its ``_meta.json``'s ``size``, else 1024."""
    meta = summary.with_name(summary.name.removesuffix("_summary.csv") + "_meta.json")
    if not meta.exists():
        return MEASURED_SIDE
    return int(json.loads(meta.read_text()).get("size", MEASURED_SIDE))
