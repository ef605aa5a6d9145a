"""Invariants every Graph keeps after every pass.

`verify` checks the whole graph (tests and `strict=True` run it after every
pass); `verify_change` checks only what a pass changed — the nodes it added or
rewrote, and the convexity of the groups whose members changed — so a normal
compile pays for what a pass did, not for the size of the graph.
"""

from __future__ import annotations

import dataclasses

import networkx as nx

from fusec.ir import ITEMSIZE, SIZE_DTYPE, TUPLE_DTYPE, Graph, Kind, Node, kind_of


class InvariantError(AssertionError):
    """A pass broke an invariant of the IR: a compiler bug, never a user error."""


def verify(graph: Graph, after: str = "") -> None:
    """Raise InvariantError unless the graph is a DAG in insertion order, every
    node has shape and dtype and the kind its op gives it, edges match operands,
    and every group is convex."""
    where = f" after {after}" if after else ""
    position = graph_positions(graph)
    for node in graph:
        _check_node(graph, node, position, where)
    # Without groups or combos the quotient is the graph, a DAG by the position checks.
    grouped = graph.horizontal or any(n.group is not None for n in graph)
    cycle = group_cycle(graph) if grouped else []
    if cycle:
        raise InvariantError(f"groups are not convex{where}: cycle {' -> '.join(cycle)}")


def verify_change(before: Graph, graph: Graph, after: str = "") -> None:
    """`verify` limited to what changed since `before`: nodes added or rewritten, and
    every group that gained or lost a member (it must stay convex)."""
    where = f" after {after}" if after else ""
    position = graph_positions(graph)
    members: dict[str, list[str]] = {}
    changed: set[str] = set()
    for node in graph:
        if node.group is not None:
            members.setdefault(node.group, []).append(node.name)
        old = before[node.name] if node.name in before.nx else None
        if old is node:
            continue
        if old is not None and _regrouped(old, node):
            _check_group(node, where)  # nothing else changed: what was checked holds
        else:
            _check_node(graph, node, position, where)
        if old is None or old.group != node.group:
            changed.update(g for g in (node.group, old and old.group) if g is not None)
    for group in sorted(changed & members.keys()):
        outside = convexity_witness(graph, members[group], position)
        if outside:
            raise InvariantError(f"groups are not convex{where}: {group} leaves through {outside} and comes back")
    if graph.horizontal != before.horizontal and group_cycle(graph):
        raise InvariantError(f"combo launches make a cycle{where}: {' -> '.join(group_cycle(graph))}")


def _check_node(graph: Graph, node: Node, position: dict[str, int], where: str) -> None:
    if node.dtype not in ITEMSIZE and not (node.dtype == TUPLE_DTYPE and node.kind is Kind.OPAQUE) \
            and not (node.dtype == SIZE_DTYPE and node.kind is Kind.INPUT):
        raise InvariantError(f"{node.name} has no usable dtype ({node.dtype!r}){where}")
    if not isinstance(node.shape, tuple) or any(not isinstance(s, int) or s < 0 for s in node.shape):
        raise InvariantError(f"{node.name} has no concrete shape ({node.shape!r}){where}")
    if node.kind not in (Kind.INPUT, Kind.OUTPUT) and node.kind is not kind_of(node.op):
        raise InvariantError(f"{node.name} ({node.op}) is {node.kind.value}, but its op makes it "
                             f"{kind_of(node.op).value}{where}")
    if node.sizes is not None and (len(node.sizes[0]) != len(node.shape) or not graph.hints):
        raise InvariantError(f"{node.name}'s sizes {node.sizes[0]} do not match its shape {node.shape}{where}")
    operands = set(node.operands())
    if operands != set(graph.producers(node.name)):
        raise InvariantError(f"{node.name}: edges {sorted(graph.producers(node.name))} "
                             f"do not match operands {sorted(operands)}{where}")
    for operand in operands:
        if position[operand] >= position[node.name]:
            raise InvariantError(f"{node.name} reads {operand}, which comes after it{where}")
    _check_group(node, where)


def _check_group(node: Node, where: str) -> None:
    if node.group is not None and node.kind in (Kind.INPUT, Kind.OUTPUT):
        raise InvariantError(f"{node.kind.value} node {node.name} is in group {node.group}{where}")


# Every field of a node but its group.
_UNGROUPED = tuple(f.name for f in dataclasses.fields(Node) if f.name != "group")


def _regrouped(old: Node, node: Node) -> bool:
    """Whether `node` is `old` put in a group (`Node.replace(group=...)` keeps every other
    field's object): fusion regroups thousands of nodes, and nothing else of them needs
    checking again."""
    return all(getattr(old, f) is getattr(node, f) for f in _UNGROUPED)


def graph_positions(graph: Graph) -> dict[str, int]:
    """Each node's index in insertion order (a topological order of a valid graph)."""
    return {name: i for i, name in enumerate(graph.nx.nodes)}


def convexity_witness(graph: Graph, names: list[str], position: dict[str, int]) -> str | None:
    """A node outside `names` on a path between two of them (None: the set is convex).
    Such a path ends before the last member, so the search stops there."""
    inside = set(names)
    last = max(position[n] for n in names)
    seen: set[str] = set()  # outside nodes already searched: none of them leads back in
    for name in names:
        for start in graph.nx.successors(name):
            if start in inside or start in seen or position[start] >= last:
                continue
            seen.add(start)
            stack = [start]
            while stack:
                for succ in graph.nx.successors(stack.pop()):
                    if succ in inside:
                        return start
                    if succ not in seen and position[succ] < last:
                        seen.add(succ)
                        stack.append(succ)
    return None


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
    q = quotient(graph)
    # The topological sort is far cheaper than a cycle search; search only to name the cycle.
    if nx.is_directed_acyclic_graph(q):
        return []
    return [edge[0] for edge in nx.find_cycle(q)]
