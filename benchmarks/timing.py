"""What the latency benchmarks share: the GPU check, clean-up between cells, the warm-up rule
and the report (per-image and summary CSVs, a meta JSON, the table on stdout)."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pandas as pd
import torch


def require_device(device: str, script: str) -> None:
    """Exit with the smoke-run advice when `device` is cuda and no GPU is visible."""
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"{script} needs a CUDA GPU (or --weights tiny --device cpu for a smoke run)")


def card_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "CPU"


def free_memory() -> None:
    """Collect the last cell's modules and return CUDA's cached blocks before the next cell loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def warm_images(frame: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """Each cell's rows after its first image (which pays one-off CUDA/cuBLAS set-up); a
    one-image cell keeps its only row."""
    groups = frame.groupby(cell, sort=False)
    return frame[(groups.cumcount() > 0) | (groups[cell[0]].transform("size") == 1)]


def write_report(
    out: Path, prefix: str, per_image: pd.DataFrame, table: pd.DataFrame, meta: dict, header: str, digits: int
) -> None:
    """`<prefix>_per_image.csv`, `<prefix>_summary.csv` and `<prefix>_meta.json` under `out`;
    then `header` (the card, versions, weights) and the table with `digits` decimals on stdout."""
    per_image.to_csv(out / f"{prefix}_per_image.csv", index=False)
    table.to_csv(out / f"{prefix}_summary.csv", index=False)
    (out / f"{prefix}_meta.json").write_text(json.dumps(meta, indent=2))
    print(f"\n{header}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.{digits}f}"))
