"""The HTML report in a real browser (headless Chromium): the page draws its graphs and its script runs
without an error, on a bundled example and on a 12-layer GPT-2."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fusec
from fusec.examples import build
from fusec.report.data import collect
from fusec.report.html import to_html
from fusec.report.overview import launched

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def browser() -> str:
    """Chromium is optional for users, not for CI: .ci/run installs it, so there a missing browser fails."""
    if CHROMIUM:
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail("Chromium is missing in CI; .ci/run installs it")
    pytest.skip("no Chromium to open the HTML report in (apt-get install chromium)")


def chromium(tmp_path: Path, url: str, *flags: str) -> str:
    """Run headless Chromium on `url` and return what it prints (the DOM with --dump-dom)."""
    done = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", *flags, url],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def body_attrs(dom: str) -> dict[str, str]:
    tag = re.search(r"<body[^>]*>", dom)
    assert tag, dom[:500]
    return dict(re.findall(r'(data-fusec-[a-z]+)="([^"]*)"', tag.group(0)))


def launches(data: dict) -> int:
    return sum(len(launched(data, g["name"])) for g in data["graphs"] if g.get("ops") is not None)


def test_example_report_renders_and_its_script_runs(tmp_path: Path) -> None:
    browser()
    model, args = build("transformer")
    data = collect(fusec.inspect(model, *args), "example transformer", False, [], {})
    page = tmp_path / "report.html"
    page.write_text(to_html(data))
    attrs = body_attrs(chromium(tmp_path, page.as_uri(), "--dump-dom"))
    assert "data-fusec-errors" not in attrs, attrs
    assert attrs["data-fusec-ready"] == str(launches(data)) != "0"
    searched = body_attrs(chromium(tmp_path, page.as_uri() + "#search=qkv", "--dump-dom"))
    assert "data-fusec-errors" not in searched, searched
    assert int(searched["data-fusec-hits"]) >= 2  # the kernel's box and its table row at least
    kernel = data["kernels"][-1]["id"]
    dom = chromium(tmp_path, f"{page.as_uri()}#inference_0:kernel:{kernel}", "--dump-dom")
    drill = re.search(rf'<details class="kernel-source drill[^"]*" id="inference_0:kernel:{kernel}"[^>]*>', dom)
    assert drill and " open" in drill.group(0), "the kernel's drill-down opens"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="Hugging Face transformers is not installed (pip install -e '.[models]')")
def test_gpt2_12_layers_through_the_cli_and_in_the_browser(tmp_path: Path) -> None:
    """`fusec inspect` writes every view of a 12-layer GPT-2; the page loads, draws and takes a screenshot."""
    outputs = {ext: tmp_path / f"gpt2.{ext}" for ext in ("json", "html", "svg", "dot")}
    done = subprocess.run([sys.executable, "-m", "fusec", "inspect", "tests/hf_models.py:gpt2_12",
                           *(arg for ext, path in outputs.items() for arg in (f"--{ext}", str(path)))],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert all(path.stat().st_size > 0 for path in outputs.values())
    data = json.loads(outputs["json"].read_text())
    assert {f"h.{i}" for i in range(12)} <= {".".join(k["module"].split(".")[:2]) for k in data["kernels"]
                                            if k["module"]}
    start = time.perf_counter()
    attrs = body_attrs(chromium(tmp_path, outputs["html"].as_uri(), "--dump-dom"))
    loaded = time.perf_counter() - start
    assert "data-fusec-errors" not in attrs, attrs
    assert attrs["data-fusec-ready"] == str(launches(data))
    assert loaded < 60, f"the page took {loaded:.0f} s to load in a headless browser"
    shot = tmp_path / "shot.png"
    chromium(tmp_path, outputs["html"].as_uri() + "#search=h.3.", f"--screenshot={shot}", "--window-size=1200,900",
             "--hide-scrollbars")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
