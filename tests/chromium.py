"""Headless Chromium (Debian's `chromium`) for page tests: screenshots and an image-load probe.

No browser download and no driver: the command-line switches `--screenshot` and
`--dump-dom` do the work. A probe copies the page next to itself with one
script appended that, on the window's load event, writes the value of a
JavaScript expression as JSON into a <pre> (the state of every <img>; the
page's layout, tables, printed intervals and header counts); `--dump-dom`
prints the DOM after load, and the JSON is read back from it.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Without the background-networking switches Chromium keeps calling home on a closed network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
]

PROBE_ID = "fewstep-probe"
#: the state of every <img>: alt, complete, natural width and height
IMAGES = """Array.from(document.images).map((img) => ({
  alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
}))"""
#: the page's layout as a reader meets it: the viewport and page widths; per table its width, the
#: width its nearest horizontally scrolling ancestor shows (null: none) and its first header; every
#: printed interval (text and the range its span carries); text that prints "[a, b]" outside such a
#: span; the header's counts per family
LAYOUT = r"""(() => {
  const scroller = (el) => {
    for (let node = el.parentElement; node && node !== document.body; node = node.parentElement) {
      const overflow = getComputedStyle(node).overflowX;
      if (overflow === "auto" || overflow === "scroll") return node;
    }
    return null;
  };
  const tables = Array.from(document.querySelectorAll("table")).map((table) => {
    const box = scroller(table);
    return {
      head: (table.querySelector("th") || {}).textContent || "",
      width: table.getBoundingClientRect().width,
      right: table.getBoundingClientRect().right,
      shown: box ? box.getBoundingClientRect().width : null,
      shown_right: box ? box.getBoundingClientRect().right : null,
    };
  });
  const intervals = Array.from(document.querySelectorAll("span.ci")).map((span) => ({
    text: span.textContent, low: span.dataset.rangeLow, high: span.dataset.rangeHigh,
  }));
  const loose = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const pattern = /\[\s*[-+]?[0-9.]+[a-z%]*,\s*[-+]?[0-9.]+[a-z%]*\s*\]/;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (pattern.test(node.textContent) && !parent.closest("span.ci, pre, script, style")) {
      loose.push(node.textContent.slice(0, 120));
    }
  }
  const counts = Array.from(document.querySelectorAll("ul.counts li")).map((li) => ({
    family: li.dataset.family, cells: +li.dataset.cells, images: +li.dataset.images, text: li.textContent,
  }));
  const total = document.querySelector("p.counts");
  return {
    viewport: window.innerWidth, page: document.documentElement.scrollWidth, tables, intervals, loose,
    counts,
    total: total && { cells: +total.dataset.cells, images: +total.dataset.images, text: total.textContent },
  };
})()"""


def _probe(expression: str) -> str:
    return f"""
<script>
window.addEventListener("load", () => {{
  const pre = document.createElement("pre");
  pre.id = "{PROBE_ID}";
  pre.textContent = JSON.stringify({expression});
  document.body.appendChild(pre);
}});
</script>
"""


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="fewstep-chromium-") as profile:
        return subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 3000) -> Path:
    """A PNG of the top `height` pixels of the page rendered `width` wide."""
    _run([f"--window-size={width},{height}", f"--screenshot={out}", Path(page).resolve().as_uri()])
    return out


def evaluate(page: Path, expression: str, width: int = 1400) -> Any:
    """The JSON value of a JavaScript `expression` evaluated on `page` once it has loaded, in a
    window `width` pixels wide (a copy of the page with a probe script appended is loaded)."""
    page = Path(page).resolve()
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8") + _probe(expression), encoding="utf-8")
    try:
        args = [f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
        dom = _run(args).stdout
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', dom, re.S)
    if match is None:
        raise AssertionError(f"the probe did not run on {page}")
    return json.loads(html.unescape(match.group(1)))


def image_states(page: Path) -> list[dict]:
    """State of every <img> on `page` once it has loaded: alt, complete, width, height."""
    return evaluate(page, IMAGES)


def layout(page: Path, width: int = 1400) -> dict:
    """`LAYOUT` of `page` at `width` pixels."""
    return evaluate(page, LAYOUT, width)


def layout_defects(state: dict) -> list[str]:
    """What a reader of the page would see as wrong: the page wider than the window, a table wider
    than what shows it without a scrolling box of its own, a printed interval outside its range,
    an interval printed outside a range-carrying span."""
    defects = []
    if state["page"] > state["viewport"]:
        defects.append(f"the page is {state['page']} px wide in a {state['viewport']} px window")
    for table in state["tables"]:
        if table["shown"] is None and table["right"] > state["viewport"] + 1:
            defects.append(f"table {table['head']!r} reaches {table['right']:.0f} px without a scroll box")
        elif table["shown"] is not None and table["shown_right"] > state["viewport"] + 1:
            defects.append(f"the scroll box of table {table['head']!r} is wider than the window")
    for interval in state["intervals"]:
        numbers = [float(n) for n in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", interval["text"])]
        low, high = float(interval["low"]), float(interval["high"])
        outside = [n for n in numbers if not low <= n <= high]
        if outside or not numbers:
            defects.append(f"interval {interval['text']!r} outside its range [{low:g}, {high:g}]")
    defects += [f"an interval printed without its range: {text!r}" for text in state["loose"]]
    return defects


def broken(states: list[dict]) -> list[str]:
    """Alt texts of the images that did not load."""
    return [s["alt"] for s in states if not (s["complete"] and s["width"] > 0 and s["height"] > 0)]
