"""Headless Chromium (Debian's `chromium`) for page tests: screenshots and an image-load probe.

No browser download and no driver: the command-line switches `--screenshot` and
`--dump-dom` do the work. The probe copies the page next to itself with one
script appended that, on the window's load event, writes the state of every
<img> (complete, naturalWidth, naturalHeight) as JSON into a <pre>; `--dump-dom`
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

PROBE_ID = "fewstep-image-probe"
PROBE = f"""
<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images).map((img) => ({{
    alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
  }}));
  const pre = document.createElement("pre");
  pre.id = "{PROBE_ID}";
  pre.textContent = JSON.stringify(images);
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


def image_states(page: Path) -> list[dict]:
    """State of every <img> on `page` once it has loaded: alt, complete, width, height."""
    page = Path(page).resolve()
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    try:
        dom = _run(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]).stdout
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', dom, re.S)
    if match is None:
        raise AssertionError(f"the image probe did not run on {page}")
    return json.loads(html.unescape(match.group(1)))


def broken(states: list[dict]) -> list[str]:
    """Alt texts of the images that did not load."""
    return [s["alt"] for s in states if not (s["complete"] and s["width"] > 0 and s["height"] > 0)]
