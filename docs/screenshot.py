"""Remake docs/gpt2-report.png, the README's picture of the HTML report of a 12-layer GPT-2.

Needs the `models` extra (transformers), headless Chromium and Pillow (a matplotlib dependency):
    python docs/screenshot.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, TOP = 1200, 1500, 455  # TOP: where the graph's section starts, below the summary


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        page, shot = Path(tmp) / "gpt2.html", Path(tmp) / "shot.png"
        subprocess.run([sys.executable, "-m", "fusec", "inspect", "tests/hf_models.py:gpt2_12", "--html", str(page)],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        browser = shutil.which("chromium") or shutil.which("chromium-browser") or "google-chrome"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
                        page.as_uri()], check=True, capture_output=True)
        image = Image.open(shot).crop((0, TOP, WIDTH, HEIGHT)).convert("RGB")
        # 64 colours are plenty for boxes and text, and keep the file small.
        image.quantize(colors=64).save(REPO / "docs" / "gpt2-report.png", optimize=True)


if __name__ == "__main__":
    main()
