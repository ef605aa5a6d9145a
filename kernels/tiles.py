"""2-D tiles for a pointwise kernel that reads an input along another dim than it writes.

`y + sigmoid(x.t())` over 1-D blocks reads x a row apart from one element to
the next: every thread loads scalars, each from its own memory sector. Over a
YBLOCK x XBLOCK tile both accesses are coalesced: the output's dims are split
in two flattened groups, the rows (y) ending with the dim the transposed input
is contiguous along, the columns (x) with the output's own contiguous dim.
Triton moves the tile between the two layouts through shared memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusec import sizes
from fusec.ir import Graph, Node, contiguous_strides
from fusec.kernels.indexed import Index, Value
from fusec.kernels.render import Renderer
from fusec.plan import Kernel
from fusec.sizes import Size


@dataclass(frozen=True)
class Tiles:
    """The output's dims in the tile's rows and in its columns (outermost first), and their sizes."""

    y_dims: tuple[int, ...]
    x_dims: tuple[int, ...]
    ynumel: Size
    xnumel: Size


def iteration_order(node: Node, hints: dict) -> list[int]:
    """The output's dims walked outermost first: by stride, largest first (stores coalesce)."""
    strides = [sizes.hint(s, hints) for s in node.strides or contiguous_strides(node.shape)]
    return sorted(range(len(node.shape)), key=lambda d: (-strides[d], d))


def tiling(graph: Graph, kernel: Kernel) -> Tiles | None:
    """The tile split for a standalone pointwise kernel whose inputs are read along
    another contiguous dim than its output is written; None when a 1-D block coalesces."""
    if kernel.kind != "pointwise" or not _may_transpose(graph, kernel):
        return None
    out = graph[kernel.outputs[0]]
    if any(graph[name].shape != out.shape for name in kernel.outputs):
        return None
    order = iteration_order(out, graph.hints)
    wide = [d for d in order if out.shape[d] != 1]
    if len(wide) < 2:
        return None
    votes: dict[int, int] = {}
    for dim, weight in _ReadProbe(graph, kernel).fastest_dims():
        if dim != wide[-1] and out.shape[dim] != 1:
            votes[dim] = votes.get(dim, 0) + weight
    if not votes:
        return None
    split = order.index(max(votes, key=lambda d: (votes[d], -d))) + 1
    y_dims, x_dims = tuple(order[:split]), tuple(order[split:])
    return Tiles(y_dims, x_dims, sizes.prod(out.shape[d] for d in y_dims), sizes.prod(out.shape[d] for d in x_dims))


def _may_transpose(graph: Graph, kernel: Kernel) -> bool:
    """Cheap test before the probe: a permute among the members, or a buffer not row-major.
    Static shapes only (a symbolic size keeps the 1-D block)."""
    buffers = [graph[n] for n in kernel.inputs + kernel.outputs]
    if not all(sizes.all_static(b.shape) and sizes.all_static(b.strides) for b in buffers):
        return False
    if any(graph[m].op == "permute" for m in kernel.members):
        return True
    return any(b.strides and tuple(b.strides) != contiguous_strides(b.shape) for b in buffers)


class _ReadProbe(Renderer):
    """Computes the outputs at an index whose every dim is its own root, so the roots an
    input's index depends on say which output dim each load walks along."""

    def __init__(self, graph: Graph, kernel: Kernel) -> None:
        rank = len(graph[kernel.outputs[0]].shape)
        super().__init__(graph, kernel, roots={f"d{i}": f"m{i}" for i in range(rank)})
        self.scalar_shape = "[1]"
        self.reads: list[tuple[int, int]] = []

    def fastest_dims(self) -> list[tuple[int, int]]:
        """(output dim, elements) for each load whose contiguous dim follows one output dim."""
        index = Index(tuple(f"d{i}" for i in range(len(self.graph[self.kernel.outputs[0]].shape))))
        for name in self.kernel.outputs:
            self.value(name, index)
        return self.reads

    def load(self, node: Node, idx: Index) -> Value:
        strides = node.strides or contiguous_strides(node.shape)
        walked = [d for d, (s, st) in enumerate(zip(node.shape, strides)) if s != 1 and st != 0]
        if walked:
            fastest = min(walked, key=lambda d: abs(strides[d]))
            roots = self.out.depends(idx.dims[fastest])
            if len(roots) == 1:
                self.reads.append((int(next(iter(roots))[1:]), node.numel))
        return super().load(node, idx)
