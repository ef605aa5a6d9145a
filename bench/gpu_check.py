"""The GPU check: CUDA tests, `fusec bench --quick`, `--overhead` and `--optimizer`, all results in one JSON file.

    python bench/gpu_check.py OUTDIR

Run from a checkout on a machine with a CUDA GPU, torch and triton, and
nothing else: no network, fusec not installed, rich, hypothesis and other
dev tools possibly absent. Writes OUTDIR/gpu_check.json (plus the bench's
Markdown table and plot beside it) and finishes within about 5 minutes on an
H100: each part runs under a time limit, and the bench writes its JSON after
every workload, so a part cut short still reports what it measured.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTEST_LIMIT_S = 120
BENCH_LIMIT_S = 170
OVERHEAD_LIMIT_S = 60
OPTIMIZER_LIMIT_S = 90


def run(command: list[str], limit_s: int, **extra_env: str) -> dict[str, Any]:
    """Run `command` from the repo root with fusec importable from the checkout; keep the tail of its output."""
    env = {**os.environ, **extra_env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit_s)
        rc, output, timed_out = done.returncode, done.stdout + done.stderr, False
    except subprocess.TimeoutExpired as exc:
        rc, timed_out = None, True
        output = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                         for part in (exc.stdout, exc.stderr))
    return {"command": " ".join(command), "returncode": rc, "timed_out": timed_out,
            "seconds": round(time.perf_counter() - start, 1), "output_tail": output[-6000:]}


def pytest_results(junit: Path) -> dict[str, Any]:
    if not junit.exists():
        return {"junit": "missing: pytest wrote no report"}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in ET.parse(junit).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            for problem in (*case.iter("failure"), *case.iter("error")):
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                               "message": (problem.get("message") or "")[:500],
                               "detail": (problem.text or "")[-2000:]})
    return {**counts, "failed": failed}


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch
        import triton

        info.update(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                    cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info.update(gpu=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()))
    except Exception as exc:
        info["import_error"] = f"{type(exc).__name__}: {exc}"
    return info


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": device_info()}
    if not report["device"].get("cuda_available"):
        print("gpu_check: torch sees no CUDA GPU; the check still runs, and its CUDA tests will skip",
              file=sys.stderr)

    junit = out / "pytest.xml"
    # Test modules that need what this machine lacks (rich, hypothesis) fail to collect;
    # the CUDA tests in the others still run. The GPU fuzz programs spread over workers where xdist is there.
    workers = ["-n", str(min(8, os.cpu_count() or 1))] if importlib.util.find_spec("xdist") else []
    report["pytest"] = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests", "-p", "no:cacheprovider",
                            *workers, "--continue-on-collection-errors", f"--junitxml={junit}"], PYTEST_LIMIT_S)
    report["pytest"]["results"] = pytest_results(junit)
    print(f"gpu_check: pytest done in {report['pytest']['seconds']} s", file=sys.stderr)

    bench_json = out / "bench.json"
    # Strict: a kernel that fails on the GPU is an error in the table, not a quiet run through torch.
    report["bench"] = run([sys.executable, "-m", "fusec.cli.bench", "--quick", "--json", str(bench_json),
                           "--markdown", str(out / "bench.md"), "--plot", str(out / "bench.png")], BENCH_LIMIT_S,
                          FUSEC_STRICT="1")
    report["bench"]["results"] = json.loads(bench_json.read_text()) if bench_json.exists() else None
    print(f"gpu_check: bench done in {report['bench']['seconds']} s", file=sys.stderr)

    overhead_json = out / "overhead.json"
    report["overhead"] = run([sys.executable, "-m", "fusec.cli.bench", "--overhead", "--json", str(overhead_json)],
                             OVERHEAD_LIMIT_S, FUSEC_STRICT="1")
    report["overhead"]["results"] = json.loads(overhead_json.read_text()) if overhead_json.exists() else None
    print(f"gpu_check: overhead done in {report['overhead']['seconds']} s", file=sys.stderr)

    optimizer_json = out / "optimizer.json"
    report["optimizer"] = run([sys.executable, "-m", "fusec.cli.bench", "--optimizer", "--quick", "--json",
                               str(optimizer_json)], OPTIMIZER_LIMIT_S, FUSEC_STRICT="1")
    report["optimizer"]["results"] = json.loads(optimizer_json.read_text()) if optimizer_json.exists() else None
    print(f"gpu_check: optimizer done in {report['optimizer']['seconds']} s", file=sys.stderr)

    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: wrote {out / 'gpu_check.json'}", file=sys.stderr)
    ok = all(report[part]["returncode"] == 0 for part in ("pytest", "bench", "overhead", "optimizer"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
