"""Invariants every Graph keeps after every pass."""

from __future__ import annotations

import networkx as nx

from fusec.ir import ITEMSIZE, TUPLE_DTYPE, Graph, Kind


class InvariantError(AssertionError):
    """A pass broke an invariant of the IR: a compiler bug, never a user error."""


def verify(graph: Graph, after: str = "") -> None:
    """Raise InvariantError unless the graph is a DAG in insertion order, every
    node has shape and dtype, edges match operands, and every group is convex."""
    where = f" after {after}" if after else ""
    position = {name: i for i, name in enumerate(graph.nx.nodes)}
    for node in graph:
        if node.dtype not in ITEMSIZE and not (node.dtype == TUPLE_DTYPE and node.kind is Kind.OPAQUE):
            raise InvariantError(f"{node.name} has no usable dtype ({node.dtype!r}){where}")
        if not isinstance(node.shape, tuple) or any(not isinstance(s, int) or s < 0 for s in node.shape):
            raise InvariantError(f"{node.name} has no concrete shape ({node.shape!r}){where}")
        operands = set(node.operands())
        if operands != set(graph.producers(node.name)):
            raise InvariantError(f"{node.name}: edges {sorted(graph.producers(node.name))} "
                                 f"do not match operands {sorted(operands)}{where}")
        for operand in operands:
            if position[operand] >= position[node.name]:
                raise InvariantError(f"{node.name} reads {operand}, which comes after it{where}")
        if node.group is not None and node.kind in (Kind.INPUT, Kind.OUTPUT):
            raise InvariantError(f"{node.kind.value} node {node.name} is in group {node.group}{where}")
    cycle = group_cycle(graph)
    if cycle:
        raise InvariantError(f"groups are not convex{where}: cycle {' -> '.join(cycle)}")


def quotient(graph: Graph) -> nx.DiGraph:
    """The graph with every launch (group or combo) contracted to one vertex (ungrouped nodes stay)."""
    launch = graph.launch_of()
    rep = {n.name: (launch[n.group] if n.group else n.name) for n in graph}
    q = nx.DiGraph()
    q.add_nodes_from(dict.fromkeys(rep.values()))
    for src, dst in graph.nx.edges:
        if rep[src] != rep[dst]:
            q.add_edge(rep[src], rep[dst])
    return q


def group_cycle(graph: Graph) -> list[str]:
    """A cycle of the quotient graph, empty when every group is convex."""
    try:
        return [edge[0] for edge in nx.find_cycle(quotient(graph))]
    except nx.NetworkXNoCycle:
        return []
