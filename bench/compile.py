"""`fusec bench --compile`: how compile time grows with the graph.

For each workload of the zoo and for synthetic graphs of a given number of ops,
it measures capture (Dynamo + AOTAutograd: what every torch.compile backend
pays), fusec's planning per stage (capture excluded), and torch.compile's total
compile time with Inductor (in a child process, cold caches, capped).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._dynamo.backends.common import aot_autograd

from fusec.bench.workloads import WORKLOADS
from fusec.compiler import boxed, plan_graph
from fusec.decompositions import DECOMPOSITIONS
from fusec.options import Options

SYNTHETIC_SIZES = (1000, 2000, 5000, 10000)
OPS_PER_BLOCK = 19.6  # ATen ops one synthetic block lowers to (measured)


def _block(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A matmul with its epilogue, two branches, a softmax and a mean feeding the residual."""
    h = torch.relu(x @ w + b)
    p = torch.sigmoid(h) * 2.0
    q = torch.tanh(h) - 1.0
    e = torch.exp(q - q.amax(-1, keepdim=True))
    s = e / e.sum(-1, keepdim=True)
    r = (p * s).mean(-1, keepdim=True)
    return x + p * s - r * 0.5


def synthetic(n_ops: int, lanes: int = 4) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """A program of about `n_ops` ops: `lanes` independent chains of blocks, mixed every
    fourth block (chains, branches, reductions and matmuls), and its inputs."""
    rounds = max(1, round(n_ops / OPS_PER_BLOCK / lanes))

    def program(x: torch.Tensor, ws: list[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        xs = [x * (i + 1) for i in range(lanes)]
        for i in range(rounds):
            xs = [_block(xs[j], ws[(i + j) % len(ws)], b) for j in range(lanes)]
            if i % 4 == 3:
                mix = sum(xs) * 0.25
                xs = [xi + mix for xi in xs]
        return sum(xs)

    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(8, 32, generator=gen), [torch.randn(32, 32, generator=gen) / 6 for _ in range(4)],
            torch.randn(32, generator=gen))
    return program, args


def case(name: str) -> tuple[Callable[..., Any], tuple[Any, ...], tuple[torch.Tensor, ...] | None]:
    """(function, inputs, gradient of its outputs or None) for `synthetic-N` or a zoo workload."""
    if name.startswith("synthetic-"):
        return (*synthetic(int(name.split("-", 1)[1])), None)
    built = WORKLOADS[name].case("tiny", torch.device("cpu"), torch.float32)
    return built.fn, built.args, built.grad_outputs


def _run(fn: Callable[..., Any], args: tuple[Any, ...], grads: tuple[torch.Tensor, ...] | None) -> None:
    out = fn(*args)
    if grads is not None:
        outs = out if isinstance(out, (tuple, list)) else (out,)
        torch.autograd.backward(list(outs), list(grads))


class _Recorder:
    """A Dynamo backend that keeps the ATen graphs AOTAutograd hands over and runs them as they are."""

    def __init__(self) -> None:
        self.graphs: list[tuple[torch.fx.GraphModule, str]] = []

    def _keep(self, kind: str) -> Callable:
        def compile_fn(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
            self.graphs.append((gm, f"{kind}_{len(self.graphs)}"))
            return boxed(gm)
        return compile_fn

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        backend = aot_autograd(fw_compiler=self._keep("forward"), bw_compiler=self._keep("backward"),
                               inference_compiler=self._keep("inference"), decompositions=DECOMPOSITIONS)
        return backend(gm, example_inputs)


def capture(name: str) -> tuple[list[tuple[torch.fx.GraphModule, str]], float]:
    """The ATen graphs of one workload and the seconds Dynamo + AOTAutograd took to make them."""
    fn, args, grads = case(name)
    torch._dynamo.reset()
    recorder = _Recorder()
    start = time.perf_counter()
    _run(torch.compile(fn, backend=recorder, dynamic=False), args, grads)
    return recorder.graphs, time.perf_counter() - start


@dataclass
class CompileRow:
    """Compile-time figures of one workload (seconds)."""

    name: str
    ops: int = 0
    kernels: int = 0
    capture: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # fusec's planning, per stage
    cpu: float = 0.0  # the processor time of fusec's planning (what other work on the machine adds least to)
    inductor: float | None = None  # torch.compile's total; None when it ran past the cap
    note: str = ""

    @property
    def fusec(self) -> float:
        return sum(self.stages.values())


def measure(name: str, options: Options, inductor_cap: float, repeat: int = 1) -> CompileRow:
    """Capture once, plan every captured graph with fusec `repeat` times (keeping the fastest
    run: other work on the machine only ever adds time), and time torch.compile apart."""
    graphs, seconds = capture(name)
    row = CompileRow(name=name, capture=seconds)
    for gm, graph_name in graphs:
        runs = [_planned(gm, graph_name, options) for _ in range(max(1, repeat))]
        record = min((r for r, _ in runs), key=lambda r: sum(s for _, s in r.pass_seconds))
        row.cpu += min(cpu for _, cpu in runs)
        if record.plan is None:
            row.note = f"{graph_name} runs through torch: {record.fallback}"
            continue
        row.ops += len(record.graph.op_nodes())
        row.kernels += len(record.plan.kernels)
        for stage, spent in record.pass_seconds:
            row.stages[stage] = row.stages.get(stage, 0.0) + spent
    if inductor_cap > 0:
        row.inductor = inductor_seconds(name, inductor_cap)
        if row.inductor is None:
            row.note = (row.note + "; " if row.note else "") + f"torch.compile stopped after {inductor_cap:.0f} s"
    return row


def _planned(gm: torch.fx.GraphModule, name: str, options: Options) -> tuple[Any, float]:
    """The plan's record and the processor seconds planning took."""
    start = time.process_time()
    record, _ = plan_graph(gm, name, options)
    return record, time.process_time() - start


def inductor_seconds(name: str, cap: float) -> float | None:
    """torch.compile's (Inductor's) first-call time in a fresh process with cold caches, or
    None when it takes longer than `cap` seconds."""
    with tempfile.TemporaryDirectory(prefix="fusec-inductor-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
                   TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
        try:
            done = subprocess.run([sys.executable, "-m", "fusec.bench.compile", name], env=env, timeout=cap,
                                  capture_output=True, text=True, check=True)
        except subprocess.TimeoutExpired:
            return None
        return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def _inductor_child(name: str) -> None:
    fn, args, grads = case(name)
    _run(fn, args, grads)  # eager once, so torch's own first-call costs are not counted
    start = time.perf_counter()
    _run(torch.compile(fn, dynamic=False), args, grads)
    print(json.dumps({"seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    _inductor_child(sys.argv[1])


def run(args: Any) -> int:
    """`fusec bench --compile`: the table on stdout, and --json/--markdown/--plot files."""
    names = list(dict.fromkeys(args.workloads or WORKLOADS)) + [f"synthetic-{n}" for n in args.sizes]
    options = Options.from_user(strict=False)
    rows = []
    for name in names:
        print(f"fusec bench --compile: {name}", file=sys.stderr, flush=True)
        rows.append(measure(name, options, args.inductor_cap, args.repeat))
        if args.json:
            args.json.write_text(json.dumps([{**row.__dict__, "fusec": row.fusec} for row in rows], indent=1))
    print(markdown(rows, args.inductor_cap))
    if args.markdown:
        args.markdown.write_text(markdown(rows, args.inductor_cap))
    if args.plot:
        plot(args.plot, rows)
    return 0


def markdown(rows: list[CompileRow], cap: float) -> str:
    """One line per workload: sizes, capture, fusec's total and slowest stages, torch.compile."""
    lines = ["| workload | ops | kernels | capture s | fusec s | fusec CPU s | fusec / capture | slowest stages | "
             "torch.compile s |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        top = sorted(r.stages.items(), key=lambda kv: -kv[1])[:3]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in top)
        inductor = "—" if cap <= 0 else (f"{r.inductor:.1f}" if r.inductor is not None else f"> {cap:.0f}")
        ratio = r.fusec / r.capture if r.capture else 0.0
        lines.append(f"| {r.name} | {r.ops} | {r.kernels} | {r.capture:.2f} | {r.fusec:.2f} | {r.cpu:.2f} | "
                     f"{ratio:.2f} | {stages} | {inductor} |")
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def plot(path: Any, rows: list[CompileRow]) -> None:
    """Seconds against ops, log-log: capture, fusec's planning, torch.compile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((r for r in rows if r.ops), key=lambda r: r.ops)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r.ops for r in rows], [r.capture for r in rows], "o-", label="Dynamo + AOTAutograd capture")
    ax.plot([r.ops for r in rows], [max(r.fusec, 1e-3) for r in rows], "s-", label="fusec planning")
    ax.plot([r.ops for r in rows], [max(r.cpu, 1e-3) for r in rows], "s--", label="fusec planning, CPU time")
    timed = [r for r in rows if r.inductor is not None]
    if timed:
        ax.plot([r.ops for r in timed], [r.inductor for r in timed], "^-", label="torch.compile (Inductor) total")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ops in the captured graphs")
    ax.set_ylabel("seconds")
    ax.set_title("compile time against graph size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
