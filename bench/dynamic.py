"""`fusec bench --dynamic`: a transformer block whose sequence length changes on every call.

What a language model serving requests sees. Each system is called on the same
sequence of lengths; the table gives how many graphs it compiled, the seconds
spent compiling, and the time per call once every graph is compiled (later
calls with lengths it has not seen). fusec's default (`dynamic=None`, as
torch.compile's) recompiles once with the length symbolic; `dynamic=False`
compiles every new length, until Dynamo's recompile limit turns it eager.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import fusec
from fusec.examples import TransformerBlock

# (batch, width, heads) and the sequence lengths, one per call: the first three calls
# compile; the timed calls then see lengths no earlier call had.
SIZES = {"tiny": (2, 64, 4), "quick": (8, 512, 8)}
LENGTHS = {"tiny": (16, 23, 31, 40, 17, 57, 29, 50, 37, 44), "quick": (128, 200, 317, 411, 173, 509, 290, 388)}
WARM_CALLS = 3


@dataclass
class DynamicRow:
    system: str
    calls: int
    graphs: int | None  # graphs compiled (None: not known for this system)
    compile_seconds: float | None
    ms_per_call: float  # mean over the calls after the first WARM_CALLS


def _timed(call: Callable[[Any], Any], inputs: list[torch.Tensor], device: str) -> tuple[float, float]:
    """(seconds of the first WARM_CALLS calls, mean seconds of the rest)."""
    times = []
    for x in inputs:
        start = time.perf_counter()
        call(x)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[:WARM_CALLS]), sum(times[WARM_CALLS:]) / max(len(times) - WARM_CALLS, 1)


def measure(device: str, quick: bool) -> list[DynamicRow]:
    tier = "tiny" if device == "cpu" or not quick else "quick"
    batch, width, heads = SIZES[tier]
    torch.manual_seed(0)
    model = TransformerBlock(width, heads).to(device).eval()
    inputs = [torch.randn(batch, n, width, device=device) for n in LENGTHS[tier]]
    rows = []
    with torch.no_grad():
        _, eager = _timed(model, inputs, device)
        rows.append(DynamicRow("eager", len(inputs), None, None, eager * 1e3))
        cpu = {"cpu": "interpret"} if device == "cpu" else {}
        for dynamic in (None, False):
            torch._dynamo.reset()
            compiled = fusec.compile(model, dynamic=dynamic, **cpu)
            _, per_call = _timed(compiled, inputs, device)
            graphs = fusec.report_of(compiled).graphs
            rows.append(DynamicRow(f"fusec dynamic={dynamic}", len(inputs), len(graphs),
                                   sum(g.compile_seconds for g in graphs), per_call * 1e3))
    return rows


def markdown(rows: list[DynamicRow], device: str) -> str:
    lines = [f"Transformer block, sequence length changing every call, on {device}: graphs compiled, "
             f"compile seconds, and ms per call after the first {WARM_CALLS} calls.", "",
             "| system | calls | graphs | compile s | ms/call |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        graphs = "" if r.graphs is None else str(r.graphs)
        seconds = "" if r.compile_seconds is None else f"{r.compile_seconds:.2f}"
        lines.append(f"| {r.system} | {r.calls} | {graphs} | {seconds} | {r.ms_per_call:.2f} |")
    return "\n".join(lines)
