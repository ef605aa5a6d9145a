"""classify: give every node its kind from its op."""

from __future__ import annotations

from fusec.ir import INDEXING_OPS, MATMUL_OPS, POINTWISE_OPS, REDUCTION_OPS, VIEW_OPS, Graph, Kind

_FIXED = (Kind.INPUT, Kind.OUTPUT)


def kind_of(op: str) -> Kind:
    if op in POINTWISE_OPS or op in INDEXING_OPS:
        return Kind.POINTWISE
    if op in REDUCTION_OPS:
        return Kind.REDUCTION
    if op in MATMUL_OPS:
        return Kind.MATMUL
    if op in VIEW_OPS:
        return Kind.VIEW
    return Kind.OPAQUE


def classify(graph: Graph) -> Graph:
    """Every node's kind follows from its op; inputs and the output keep theirs."""
    out = graph.copy()
    for node in graph:
        if node.kind in _FIXED:
            continue
        kind = kind_of(node.op)
        if kind is not node.kind:
            out.update(node.replace(kind=kind))
    return out
