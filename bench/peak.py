"""Peak memory of one training step (forward + backward): measured on a GPU, modeled on a CPU.

On a GPU: `torch.cuda.max_memory_allocated` over one step, less what was
allocated before it (inputs, parameters, the caller's tensors). This code path
has not yet run on a GPU.

On a CPU, where torch keeps no allocator statistics, the peak is modeled from
what the step holds: the forward's peak, or the activations saved for the
backward plus the backward's own peak, whichever is larger,

    peak = max(forward peak, saved + backward peak)

where a graph's peak is the most bytes its buffers hold at once, inputs left
out (`fusec.launcher`): for fusec, its plans with the memory plan's take-overs
(`stats["peak_bytes"]` per graph); for eager, the same graphs op by op, each
result freed after its last reader (`stats["peak_bytes_unfused"]`); for
torch.compile, whose memory planning fusec cannot see, fusec's plans of the
same graphs (a fusing compiler's working set). "saved" is each system's own,
measured by `fusec.bench.memory.saved_storages`. The graphs for eager and
torch.compile are fusec's of the default partition (saving what the backward reads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from fusec.api import tensors_in
from fusec.launcher import unfused_peak
from fusec.report.data import peak_of

MEASURED = "measured: torch.cuda.max_memory_allocated (not yet run on a GPU)"
MODELED = "modeled: max(forward peak, saved + backward peak)"


def step(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """One training step: forward, then backward of the sum of every output that takes a gradient."""
    out = fn(*args)
    loss = sum(t.float().sum() for t in tensors_in(out) if t.requires_grad)
    if isinstance(loss, torch.Tensor):
        loss.backward()


def measured_peak(fn: Callable[..., Any], args: tuple[Any, ...], params: Sequence[torch.Tensor]) -> int:
    """Bytes a CUDA training step allocates at its peak, beyond what was allocated before it."""
    for p in params:
        p.grad = None  # every system allocates its gradients within the step
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step(fn, args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def modeled_peak(records: Sequence[Any], saved: int, fused: bool = True) -> int:
    """max(forward peak, saved + backward peak) over a backend's training graphs (`fused`: their
    plans with the memory plan; else op by op)."""
    planned = [r for r in records if r.plan is not None and r.fallback is None]

    def peak(kind: str) -> int:
        return max((peak_of(r) if fused else unfused_peak(r.graph)
                    for r in planned if r.name.startswith(kind)), default=0)

    return max(peak("forward"), saved + peak("backward"))
