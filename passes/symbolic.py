"""Fusion under dynamic shapes: decisions compare sizes by their example values (hints).

A group is only as sound as those comparisons: two sizes equal in the example
must be equal as expressions over the size symbols too, or the group would be
right for this example only. `sizes_seen` and `coincidence` find such a pair;
the fuse pass refuses the merge with it as the reason.
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


Sizes = dict  # hint -> the first expression seen with that value


def sizes_seen(graph: Graph, group: list[Node]) -> tuple[Sizes, Refusal | None]:
    """The sizes fusion compares for a group (its members and their operands), each value
    with the first expression seen for it, and the refusal for two sizes equal in the
    example but not as expressions, if the group holds such a pair."""
    names = {m.name for m in group}
    nodes = group + [graph[op] for m in group for op in dict.fromkeys(m.operands()) if op not in names]
    seen: Sizes = {}
    for node in nodes:
        for hint, exact in _compared(graph, node):
            first = seen.setdefault(hint, exact)
            if _differ(first, exact):
                return seen, _refusal(first, exact)
    return seen, None


def coincidence(a: Sizes, b: Sizes) -> Refusal | None:
    """Two sizes, one of each group's (`sizes_seen`), equal in the example but not as
    expressions: the union of two groups without such a pair of their own has one exactly
    when their sizes clash (an equal pair's partner is equal to the first seen)."""
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    for hint, exact in small.items():
        first = large.get(hint, exact)
        if _differ(first, exact):
            return _refusal(first, exact)
    return None


def _differ(first: object, exact: object) -> bool:
    return first is not exact and first != exact and not _same(first, exact)


def _refusal(first: object, exact: object) -> Refusal:
    return Refusal("symbolic", f"sizes {_text(first)} and {_text(exact)} are equal in the example only "
                   "(dynamic shapes): fusing them would hold for this size alone")


def _text(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(sizes.text(v) for v in value) + "]"
    return sizes.text(value)  # type: ignore[arg-type]
