"""`fusec bench --export`: a fresh process's first answer from a package vs from compiling.

Per workload, the model is exported once; then two fresh processes, each with
empty kernel caches (fusec's and Triton's), time from after `import fusec` to
the first call's output: one runs `fusec.compile(model)(*args)`, the other
`fusec.load(package)(*args)`. Both build the same model (same seed) and check
their output against eager.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import fusec
from fusec.bench.suite import DTYPES, default_dtype
from fusec.bench.workloads import WORKLOADS, tier_for

# Inference workloads with tensor inputs (the training step, the in-place optimizer and the
# random dropout are not what a package serves).
DEFAULT = ("softmax", "layer_norm", "linear_gelu", "attention", "transformer_block", "inception")
SEED = 0

_CHILD = """
import json, sys, time
import torch, fusec
from torch.utils._pytree import tree_leaves
from fusec.bench.export import build
how, name, tier, device, dtype, cpu, path = sys.argv[1:]
model, args = build(name, tier, device, dtype)
start = time.perf_counter()
if how == "compile":
    run = fusec.compile(model, cpu=cpu)
else:
    run = fusec.load(path, cpu=cpu)
prepared = time.perf_counter() - start  # compile is lazy: 0 here; load has done its work
out = run(*args)
if device == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
expected = model(*args)
pairs = zip(tree_leaves(out), tree_leaves(expected), strict=True)
error = max(float((o.double() - e.double()).abs().max()) for o, e in pairs)
# A loading process imports no Dynamo (nothing to count); importing it here would be timed as the process's.
dynamo = sys.modules.get("torch._dynamo")
frames = sum(dynamo.utils.counters["frames"].values()) if dynamo else 0
print(json.dumps({"seconds": seconds, "prepared": prepared, "error": error, "dynamo_frames": frames}))
"""


@dataclass
class ExportRow:
    workload: str
    device: str
    execution: str  # how the generated code ran: "triton", "interpreter" or "torch"
    export_seconds: float
    package_bytes: int
    compile_first_call: float  # fresh process: fusec.compile + first call (seconds)
    load_first_call: float  # fresh process: fusec.load + first call (seconds)
    load_alone: float  # of which fusec.load (reading, checking, loading kernels)
    compile_process: float  # the whole child process, imports included
    load_process: float
    error: float  # the loaded runner's output against eager (max abs)
    load_dynamo_frames: int  # frames Dynamo compiled in the loading process (0: none)

    @property
    def ratio(self) -> float:
        return self.load_first_call / self.compile_first_call


def build(name: str, tier: str, device: str, dtype: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The workload's model and inputs, the same in every process."""
    torch.manual_seed(SEED)
    case = WORKLOADS[name].case(tier, torch.device(device), DTYPES[dtype])
    model = case.fn if isinstance(case.fn, torch.nn.Module) else _Wrapped(case.fn)
    return model.eval(), case.args


class _Wrapped(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _child(how: str, name: str, tier: str, device: str, dtype: str, cpu: str, path: Path) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as caches:
        # The child imports the fusec this process runs (a checkout too), with empty kernel caches.
        here = str(Path(fusec.__file__).resolve().parent.parent)
        env = {**os.environ, "FUSEC_CACHE_DIR": str(Path(caches) / "fusec"),
               "TRITON_CACHE_DIR": str(Path(caches) / "triton"),
               "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _CHILD, how, name, tier, device, dtype, cpu, str(path)],
                              env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"fusec bench --export: the {how} process for {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def measure(name: str, device: str, quick: bool, cpu: str = "interpret") -> ExportRow:
    tier, dtype = tier_for(device, quick), default_dtype(device)
    model, args = build(name, tier, device, dtype)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.fusec"
        start = time.perf_counter()
        exported = fusec.export(model, *args, path=path, cpu=cpu)
        export_seconds = time.perf_counter() - start
        compiled, compile_wall = _child("compile", name, tier, device, dtype, cpu, path)
        loaded, load_wall = _child("load", name, tier, device, dtype, cpu, path)
        size = path.stat().st_size
    return ExportRow(name, device, exported.record.execution, export_seconds, size, compiled["seconds"],
                     loaded["seconds"], loaded["prepared"], compile_wall, load_wall, loaded["error"],
                     loaded["dynamo_frames"])


def markdown(rows: list[ExportRow], device: str) -> str:
    lines = [f"fusec bench --export on {device}: a fresh process's first answer (seconds, after `import fusec`; "
             "empty kernel caches)", "",
             "| workload | runs | export | package | compile + 1st call | load + 1st call | of which load "
             "| load / compile | processes (compile, load) | error | Dynamo frames at load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.workload} | {r.execution} | {r.export_seconds:.2f} | {r.package_bytes / 1024:.0f} KiB "
                     f"| {r.compile_first_call:.3f} | {r.load_first_call:.3f} | {r.load_alone:.3f} | {r.ratio:.1%} "
                     f"| {r.compile_process:.1f}, {r.load_process:.1f} | {r.error:.1e} | {r.load_dynamo_frames} |")
    return "\n".join(lines)
