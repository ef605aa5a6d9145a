"""Where a reduction kernel's members sit in its iteration space: the index of the current
rows, of the current elements in them, and each member's index from those (a value in a
permuted frame, passes/rows.py's `element_frames`, at the element's index permuted so)."""

from __future__ import annotations

from fusec.ir import Graph, Node
from fusec.kernels.indexed import Index
from fusec.passes.refusal import Refusal
from fusec.passes.rows import Frame, computed_from_rows, element_frames, in_order
from fusec.plan import Kernel


def kernel_frames(graph: Graph, kernel: Kernel, domain: tuple[tuple[int, ...], tuple[int, ...]]) -> dict[str, Frame]:
    """The frames of the kernel's per-element values that are not in the domain's order."""
    ordered = [graph[m] for m in kernel.members]
    frames = element_frames(ordered, computed_from_rows(ordered), domain, graph)
    if isinstance(frames, Refusal):  # fusion refuses such a group: reaching here is a compiler bug
        raise ValueError(f"kernel {kernel.id} cannot be rendered as one reduction: {frames}")
    return {name: frame for name, frame in frames.items() if not in_order(frame, domain[0])}


class RowIndex:
    """The index math of ReductionRenderer (which provides the rest: unravel, linearize, broadcast)."""

    graph: Graph
    kernel: Kernel
    shape: tuple[int, ...]
    dims: tuple[int, ...]
    outer: list[int]
    frames: dict[str, Frame]

    def x_index(self) -> Index:
        """Index into the reduced input of the current rows, the reduced dims at 0."""
        split = self.unravel("xoffs", tuple(self.shape[d] for d in self.outer))
        dims = ["0"] * len(self.shape)
        for d, expr in zip(self.outer, split.dims):
            dims[d] = expr
        return Index(tuple(dims))

    def row_index(self) -> Index:
        """Index into the reduced input of the current rows at the current row offsets."""
        split = self.unravel("roffs", tuple(self.shape[d] for d in self.dims))
        dims = list(self.x_index().dims)
        for d, expr in zip(self.dims, split.dims):
            dims[d] = expr
        return Index(tuple(dims), None)

    def index_for(self, node: Node, idx: Index) -> Index:
        """`idx` (over the reduced input's shape) re-expressed over `node`'s shape."""
        frame = self.frames.get(node.name)
        if frame is not None:  # the element's own index, its dims in the frame's order
            permuted = Index(tuple(idx.dims[d] for d in frame))
            shape = tuple(self.shape[d] for d in frame)
            return permuted if node.shape == shape else self.reshape_index(permuted, shape, node.shape)
        if node.shape == self.shape:
            return idx
        keep = tuple(1 if d in self.dims else s for d, s in enumerate(self.shape))
        if node.shape == keep:
            return self.broadcast(idx, keep, self.shape)
        if node.shape == tuple(self.shape[d] for d in self.outer):
            return Index(tuple(idx.dims[d] for d in self.outer))
        if node.numel == self.kernel.numel:  # per row, another shape: rows in row-major order
            return self.unravel("xoffs", node.shape)
        return self.reshape_index(idx, self.shape, node.shape)
