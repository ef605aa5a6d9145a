"""Fusion under dynamic shapes: decisions compare sizes by their example values (hints).

A group is only as sound as those comparisons: two sizes equal in the example
must be equal as expressions over the size symbols too, or the group would be
right for this example only. `coincidence` finds such a pair; the fuse pass
refuses the merge with it as the reason.
"""

from __future__ import annotations

from fusec import sizes
from fusec.ir import Graph, Kind, Node, reduction_domain
from fusec.passes.refusal import Refusal


def _compared(graph: Graph, node: Node) -> list[tuple[object, object]]:
    """(hint, expression) of the sizes fusion compares for this node: its shape, its
    element count and, for a reduction, its rows and row length."""
    pairs: list[tuple[object, object]] = [(node.shape, node.symbolic_shape),
                                          (node.numel, sizes.prod(node.symbolic_shape))]
    if node.kind is Kind.REDUCTION:
        shape, dims = reduction_domain(node, graph)
        exact = graph[node.operands()[0]].symbolic_shape
        for keep in (False, True):
            picked = [d for d in range(len(shape)) if (d in dims) == keep]
            pairs.append((sizes.prod(shape[d] for d in picked), sizes.prod(exact[d] for d in picked)))
    return pairs


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(sizes.equal(x, y) for x, y in zip(a, b, strict=True))
    return sizes.equal(a, b)  # type: ignore[arg-type]


def coincidence(graph: Graph, members: list[Node]) -> Refusal | None:
    """Two sizes of the group and its operands equal in the example but not as expressions."""
    names = {m.name for m in members}
    nodes = members + [graph[op] for m in members for op in dict.fromkeys(m.operands()) if op not in names]
    seen: dict[object, object] = {}
    for node in nodes:
        for hint, exact in _compared(graph, node):
            first = seen.setdefault(hint, exact)
            if first is not exact and first != exact and not _same(first, exact):
                return Refusal("symbolic", f"sizes {_text(first)} and {_text(exact)} are equal in the example only "
                               "(dynamic shapes): fusing them would hold for this size alone")
    return None


def _text(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(sizes.text(v) for v in value) + "]"
    return sizes.text(value)  # type: ignore[arg-type]
