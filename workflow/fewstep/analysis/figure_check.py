"""What a reader would see as broken in a finished matplotlib figure, found when it is made.

`layout_problems` draws the figure and lists: axes with nothing drawn in them, text that reaches
outside the figure, text that overlaps other text (a y label running into the title, point labels
on top of each other), and drawn intervals (bands and error bars tagged with `range_gid`) that
leave the range of their quantity. The report runs it on every figure it writes and prints what it
finds; the tests require it to find nothing. `place_labels` puts point labels where they collide
with nothing already placed.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from fewstep.analysis.stats import Bounds

#: gid prefix of an artist that draws intervals: "range:<x|y>:<low>:<high>"
RANGE = "range"
#: pixels two text boxes may share before they count as overlapping (antialiasing, descenders)
SLACK = 1.0


def range_gid(axis: str, bounds: Bounds) -> str:
    """The gid that tells `layout_problems` which axis of an artist's data must stay in `bounds`."""
    return f"{RANGE}:{axis}:{bounds.low!r}:{bounds.high!r}"


def _drawn(ax) -> bool:
    return bool(ax.lines or ax.collections or ax.images or ax.patches or ax.containers)


def _texts(fig, renderer) -> list:
    """(text, window extent) of every non-empty visible text, tick labels only where their tick
    is in view (matplotlib keeps the labels of other ticks, unplaced)."""
    from matplotlib.text import Text

    ticks, shown = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks.update({id(tick.label1), id(tick.label2)})
                if low <= tick.get_loc() <= high:
                    shown += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    texts = [t for t in fig.findobj(Text) if id(t) not in ticks] + shown
    return [(t, t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return min(width, height)


def _interval_problems(fig) -> list[str]:
    problems = []
    for artist in fig.findobj(lambda a: str(a.get_gid() or "").startswith(RANGE + ":")):
        _, axis, low, high = artist.get_gid().split(":")
        if hasattr(artist, "get_segments"):
            points = [p for segment in artist.get_segments() for p in segment]
        else:
            points = [p for path in artist.get_paths() for p in path.vertices]
        values = np.asarray(points, dtype=float).reshape(-1, 2)[:, 0 if axis == "x" else 1]
        values = values[np.isfinite(values)]
        outside = values[(values < float(low) - 1e-9) | (values > float(high) + 1e-9)]
        if outside.size:
            where = artist.axes.get_title() if artist.axes is not None else ""
            problems.append(
                f"an interval drawn at {outside[0]:.4g} outside its range [{low}, {high}] ({where or axis})"
            )
    return problems


def layout_problems(fig) -> list[str]:
    """Every problem of `fig` as laid out now (before `bbox_inches="tight"` widens the canvas)."""
    fig.draw_without_rendering()  # lays out every artist; the pixels are not needed
    renderer = fig.canvas.get_renderer()
    problems = [f"empty axes {ax.get_title()!r}" for ax in fig.axes if ax.get_visible() and not _drawn(ax)]
    box = fig.bbox
    texts = _texts(fig, renderer)
    for text, extent in texts:
        if extent.x0 < box.x0 - SLACK or extent.x1 > box.x1 + SLACK or extent.y0 < box.y0 - SLACK:
            problems.append(f"text {text.get_text()!r} reaches outside the figure")
        elif extent.y1 > box.y1 + SLACK:
            problems.append(f"text {text.get_text()!r} reaches outside the figure")
    for (a, box_a), (b, box_b) in combinations(texts, 2):
        if _overlap(box_a, box_b) > SLACK:
            problems.append(f"text {a.get_text()!r} overlaps {b.get_text()!r}")
    return problems + _interval_problems(fig)


#: offsets (points) tried for a point label, nearest first
OFFSETS = [
    (dx * r, dy * r)
    for r in (5, 12, 20, 30)
    for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
]


def place_labels(ax, points: list[tuple[float, float, str]], fontsize: float = 8) -> None:
    """Annotate each (x, y, text) at the first offset where its label overlaps no label already
    placed, no other labelled point and stays inside the axes; where none is free, the nearest."""
    if not points:
        return
    fig = ax.figure
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    marks = [ax.transData.transform((x, y)) for x, y, _ in points]
    frame = ax.get_window_extent(renderer)
    placed = []
    for x, y, label in points:
        chosen = None
        for dx, dy in OFFSETS:
            note = ax.annotate(
                label,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                ha="left" if dx >= 0 else "right",
                va="bottom" if dy >= 0 else "top",
            )
            extent = note.get_window_extent(renderer).expanded(1.1, 1.1)
            inside = frame.contains(extent.x0, extent.y0) and frame.contains(extent.x1, extent.y1)
            clear = not any(_overlap(extent, other) > 0 for other in placed)
            clear = clear and not any(extent.contains(mx, my) for mx, my in marks)
            if inside and clear:
                chosen = note
                break
            note.remove()
        if chosen is None:
            dx, dy = OFFSETS[0]
            chosen = ax.annotate(
                label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize
            )
        placed.append(chosen.get_window_extent(renderer))
