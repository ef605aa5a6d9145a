"""What a sort kernel may hold: one sort's values and the positions they came from, and behind
them pointwise work on its rows and sums, maxima and minima along the sorted dim (topk's
weights normalised, or a softmax over them)."""

from __future__ import annotations

from fusec.ir import POINTWISE_OPS, Kind, Node
from fusec.passes.refusal import Refusal

_ROW_REDUCTIONS = frozenset({"sum", "amax", "amin"})


def _behind(node: Node, sort: Node, names: set[str]) -> bool:
    """Whether the kernel computes `node` at the sorted row's output lanes: pointwise work of the
    sort's shape, or a sum, max or min along the sorted dim of such work in the kernel (`names`)."""
    if node.kind is Kind.SORT:
        return node.op == "sort_index" and node.args[0].name == sort.name
    if node.op in POINTWISE_OPS:
        return node.shape == sort.shape
    dim = sort.args[1]
    return node.op in _ROW_REDUCTIONS and tuple(node.args[1]) == (dim,) and node.args[0].name in names


def sort_refusal(members: list[Node]) -> Refusal | None:
    """Why `members` cannot be one sort kernel (None: they can, or hold no sort)."""
    sorts = [m for m in members if m.op == "sort"]
    if not sorts:
        return None
    if len(sorts) > 1:
        return Refusal("sort", f"sorts {sorts[0].name} and {sorts[1].name} would share a kernel")
    sort, names = sorts[0], {m.name for m in members}
    if sort.args[0].name in names:
        # The row is ranked whole from stored values: nothing is computed in front of it.
        return Refusal("sort", f"a sort ({sort.name}) and {sort.args[0].name}, which it reads, do not share a kernel")
    for node in members:
        if node is not sort and not _behind(node, sort, names):
            return Refusal("sort", f"a sort ({sort.name}) and {node.name} ({node.op}) do not share a kernel")
    return None
