"""`fusec bench --optimizer`: one AdamW step over a GPT-2-small-shaped parameter list.

Launches and time per step for eager PyTorch's foreach and fused implementations,
torch.compile of the foreach step and fusec's. Compiled steps take lr as a tensor
(PyTorch's compiled-optimizer recipe: a scheduler's new lr is new data, not a new
graph). On a CPU, "launches" are what would launch on a GPU: top-level ATen ops
(a `_foreach_*` op counts once, though a GPU runs it as a kernel per chunk of
tensors), Inductor's kernels, and fusec's kernels and torch calls from its report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import fusec
from fusec.bench.measure import count_launches_cpu, count_launches_cuda, synchronize, time_call
from fusec.bench.suite import inductor_kernel_profile

# (layers, width, vocabulary, positions) per size tier: GPT-2 small's 148 parameter tensors at
# every tier (the launch counts do not change), its widths at "full" (124M parameters).
SHAPES = {"tiny": (12, 32, 512, 64), "quick": (12, 256, 8192, 1024), "full": (12, 768, 50257, 1024)}
SYSTEMS = ("eager foreach", "eager fused", "torch.compile", "fusec")


def gpt2_shapes(layers: int, width: int, vocabulary: int, positions: int) -> list[tuple[int, ...]]:
    """The parameter shapes of GPT-2 (Hugging Face's layout): embeddings, blocks, final LayerNorm."""
    block = [(width,), (width,), (width, 3 * width), (3 * width,), (width, width), (width,),
             (width,), (width,), (width, 4 * width), (4 * width,), (4 * width, width), (width,)]
    return [(vocabulary, width), (positions, width), *block * layers, (width,), (width,)]


@dataclass(frozen=True)
class OptimizerRow:
    system: str
    tensors: int
    parameters: int
    launches_per_step: float
    time_median_us: float
    max_abs_error: float | None  # against eager foreach's parameters after the same steps


def _optimizer(system: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if system == "eager fused":
        return torch.optim.AdamW(params, lr=1e-3, fused=True)
    if system == "eager foreach":
        return torch.optim.AdamW(params, lr=1e-3, foreach=True)
    # capturable: a tensor lr with foreach (on a GPU Dynamo sets it itself); the lr on the parameters'
    # device, so the step's graph has one device.
    lr = torch.tensor(1e-3, device=params[0].device)
    return torch.optim.AdamW(params, lr=lr, foreach=True, capturable=True)


def _step(system: str, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    if system == "torch.compile":
        return torch.compile(optimizer.step)
    if system == "fusec":
        return fusec.compile(optimizer.step)
    return optimizer.step


def measure(device: str, tier: str = "tiny", systems: tuple[str, ...] | None = None,
            budget_s: float = 0.1) -> list[OptimizerRow]:
    """Each system's AdamW step over the same parameters and gradients; two steps before timing
    (the first compiles and creates the optimizer's state)."""
    shapes = gpt2_shapes(*SHAPES[tier])
    rows, reference = [], None
    for system in systems or SYSTEMS:
        torch._dynamo.reset()
        torch.manual_seed(0)
        params = [torch.randn(s, device=device, requires_grad=True) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer = _optimizer(system, params)
        step = _step(system, optimizer)
        with inductor_kernel_profile():  # Inductor compiles with its kernels named, for count_launches_cpu
            step()
        step()
        synchronize(device)
        after = [p.detach().clone() for p in params]
        error = None if reference is None else max((a - r).abs().max().item() for a, r in zip(after, reference))
        reference = after if reference is None else reference
        rows.append(OptimizerRow(system, len(shapes), sum(p.numel() for p in params),
                                 _launches(system, step, device), time_call(step, device, budget_s).median * 1e6,
                                 error))
    return rows


def _launches(system: str, step: Callable[[], None], device: str) -> float:
    if device == "cuda":
        return count_launches_cuda(step)
    if system == "fusec":
        stats = fusec.report_of(step).graphs[-1]
        return float(len(stats.plan.kernels) + sum(1 for e in stats.plan.externs if not e.is_view))
    return count_launches_cpu(step)


def markdown(rows: list[OptimizerRow], device: str) -> str:
    first = rows[0]
    lines = [f"AdamW, one step over {first.tensors} GPT-2-shaped parameter tensors "
             f"({first.parameters / 1e6:.2f}M parameters, {device}, fp32)", "",
             "| system | launches per step | time per step (µs) | max error vs eager foreach |",
             "|---|---:|---:|---:|"]
    for r in rows:
        error = "reference" if r.max_abs_error is None else f"{r.max_abs_error:.1e}"
        lines.append(f"| {r.system} | {r.launches_per_step:g} | {r.time_median_us:.0f} | {error} |")
    return "\n".join(lines) + "\n"
