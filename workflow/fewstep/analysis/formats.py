"""How the report prints numbers and tables: one digits policy, intervals that carry their range.

The policy: a lone number has 3 significant digits, in positional notation from 1e-8 to a
million; an interval prints its estimate and both bounds to the same decimal place, the one that
gives the interval's half width 2 significant digits (a positive quantity's numbers keep at least 2
significant digits each: "1.9x [0.14x, 28x]", not "2x [0x, 28x]"). A zero is "0", never "+0". An interval
whose bounds are equal prints its value alone; one that could not be estimated says "too few
items to estimate". Every printed interval is a `<span class="ci">` carrying the range its
quantity can take (`data-range-low`, `data-range-high`), which the page test checks in the browser.
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd

from fewstep.analysis.stats import UNBOUNDED, Bounds

#: what an interval the design cannot support reads
TOO_FEW = "too few items to estimate"
DIGITS = 3


class Html(str):
    """Markup already escaped: `html_table` puts it in as it is."""


def _finite(value: Any) -> bool:
    return (
        value is not None and isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value)
    )


def _number(value: float, decimals: int, signed: bool) -> str:
    text = f"{value:.{decimals}f}"
    if float(text) == 0:
        return text.lstrip("-")
    return f"+{text}" if signed and value > 0 else text


def fmt(value: Any, signed: bool = False) -> str:
    """A number with 3 significant digits (an integer as it is); NaN/None as an em dash."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"+{value}" if signed and value > 0 else str(value)
    if not _finite(value):
        return "—"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if not -8 <= magnitude < 6:
        return f"{value:+.{DIGITS - 1}e}" if signed else f"{value:.{DIGITS - 1}e}"
    return _number(value, max(DIGITS - 1 - magnitude, 0), signed)


def decimals_of(low: float, high: float) -> int:
    """Decimal places that give the half width (high - low) / 2 two significant digits (0 to 8)."""
    half = (high - low) / 2
    return min(max(1 - math.floor(math.log10(half)), 0), 8)


def fmt_ci(
    mean: float,
    low: float,
    high: float,
    signed: bool = False,
    suffix: str = "",
    bounds: Bounds = UNBOUNDED,
) -> Html:
    """`mean [low, high]` by the policy above, as a span that carries `bounds` (the range of the
    quantity: a metric's, its difference's, a ratio's (0, inf))."""
    if not _finite(mean):
        return Html("—")
    if not (_finite(low) and _finite(high)):
        text = f"{fmt(mean, signed)}{suffix} ({TOO_FEW})"
    elif high - low <= 0:
        text = f"{fmt(mean, signed)}{suffix}"
    else:
        places = decimals_of(low, high)
        positive = bounds.low == 0 and np.isinf(bounds.high)  # a ratio or a time: never "0x"

        def number(value: float) -> str:
            own = max(1 - math.floor(math.log10(abs(value))), 0) if positive and value else 0
            return _number(value, max(places, min(own, 8)), signed) + suffix

        text = f"{number(mean)} [{number(low)}, {number(high)}]"
    attributes = f'data-range-low="{bounds.low:g}" data-range-high="{bounds.high:g}"'
    return Html(f'<span class="ci" {attributes}>{html.escape(text)}</span>')


def html_table(frame: pd.DataFrame, css: str = "") -> Html:
    """A table of preformatted cells (`Html` as it is, anything else escaped) in its own
    horizontally scrolling box, so a wide table never widens the page. A frame holding `Html`
    must be made with ``dtype=object``: pandas' string inference would turn it into plain text."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)

    def cell(value: Any) -> str:
        return value if isinstance(value, Html) else html.escape(str(value))

    body = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    table = f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return Html(f'<div class="scroll">{table}</div>')


def note_html(text: str) -> Html:
    return Html(f'<p class="note">{html.escape(text)}</p>')


def pairs(n: int, of: int) -> str:
    return f"{int(n)} of {int(of)}"


def steps_label(steps: int) -> str:
    return f"{steps} step" + ("" if steps == 1 else "s")


def wide(frame: pd.DataFrame, index: list[str], value: str, cell) -> pd.DataFrame:
    """One row per `index` key, one column per metric holding `cell(row)` (a formatted string)."""
    rows = []
    for keys, group in frame.groupby(index, sort=False):
        entry = dict(zip(index, keys if isinstance(keys, tuple) else (keys,), strict=True))
        for r in group.itertuples(index=False):
            entry[f"{r.metric} {value}"] = cell(r)
        rows.append(entry)
    return pd.DataFrame(rows, dtype=object).fillna("—")


def knee_text(row) -> Html:
    """ "knee at k steps [low, high]" (the interval a span within the series' steps), else the verdict."""
    if not np.isfinite(row.knee_steps):
        return Html(
            html.escape(str(row.knee_verdict) if isinstance(row.knee_verdict, str) else "no knee found")
        )
    text = f"knee at {steps_label(int(row.knee_steps))}"
    if not np.isfinite(row.knee_ci_low):
        return Html(html.escape(text))
    steps = [int(s) for s in str(row.steps).split()]
    attributes = f'data-range-low="{min(steps)}" data-range-high="{max(steps)}"'
    interval = f"[{int(row.knee_ci_low)}, {int(row.knee_ci_high)}]"
    return Html(f'{html.escape(text)} <span class="ci" {attributes}>{interval}</span>')


def effective_text(row) -> str:
    if np.isfinite(row.effective_steps):
        return steps_label(int(row.effective_steps))
    return "no anchor" if row.effective_rule == "no anchor" else "never (in these steps)"


def missing_text(count: int) -> str:
    return f", {count} missing" if count else ""
