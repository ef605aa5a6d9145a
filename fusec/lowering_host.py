"""Host scalars: the 0-dim CPU tensors a GPU graph may hold.

Eager PyTorch lets a 0-dim CPU tensor meet CUDA tensors as a scalar: an
optimizer's step counters (`state["step"]`, on the CPU unless
`capturable=True`) and a CPU `lr` tensor beside CUDA parameters. A GPU graph
keeps them on the host, as TorchInductor does: torch computes every value made
from them alone (`step + 1`, `1 - beta1 ** step`) on the CPU, no launch, and
kernels read them as scalar arguments (`.item()`, which waits for nothing).
A CPU value computed from a GPU tensor is another mix of devices: refused.
"""

from __future__ import annotations

import torch
import torch.fx

from fusec.lowering_sizes import Unsupported

# Tests set this to run a CPU graph's 0-dim tensors down the same path (elsewhere a CPU graph's
# 0-dim tensors are ordinary tensors its kernels load).
ON_CPU = False


def is_scalar_on_host(value: object) -> bool:
    """A 0-dim CPU tensor: what eager treats as a scalar beside GPU tensors."""
    return isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dim() == 0


def host_scalars(gm: torch.fx.GraphModule, device: str) -> frozenset[str]:
    """The nodes of a graph on `device` whose values are host scalars: 0-dim CPU inputs and
    constants, and 0-dim CPU values computed from host scalars alone."""
    if device != "cuda" and not (device == "cpu" and ON_CPU):
        return frozenset()
    host: set[str] = set()
    for node in gm.graph.nodes:
        if not is_scalar_on_host(node.meta.get("val")):
            continue
        operand = next((o for o in node.all_input_nodes if _on_device(o, host)), None)
        if operand is None:
            host.add(node.name)
        elif device == "cuda":
            raise Unsupported(f"tensors on several devices (cpu, cuda): {node.name} ({node.target}) "
                              f"computes a CPU value from {operand.name}, a cuda tensor")
        # else a CPU graph's 0-dim value computed from its other tensors (a sum): one of them
    return frozenset(host)


def _on_device(node: torch.fx.Node, host: set[str]) -> bool:
    """Whether `node` holds a tensor of the graph's device (a host scalar is none)."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return node.name not in host
    return isinstance(val, tuple | list) and any(isinstance(v, torch.Tensor) and not is_scalar_on_host(v)
                                                 for v in val)
