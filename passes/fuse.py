"""fuse: vertical fusion of pointwise and view ops into kernel groups.

Merges are proposed along data edges in topological order, validated
(convexity, one iteration shape), and applied; every edge that still joins two
different groups, or a group and an extern call, keeps the reason on the edge
(`graph.nx.edges[u, v]["reason"]`).
"""

from __future__ import annotations

import networkx as nx

from fusec.ir import Graph, Kind, Node

FUSIBLE = (Kind.POINTWISE, Kind.VIEW)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


class _Grouping:
    """Mutable state of one fuse run: group membership and the group DAG."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.position = {name: i for i, name in enumerate(graph.nx.nodes)}
        self.group_of = {n.name: n.name for n in graph if n.kind in FUSIBLE}
        self.members = {name: [name] for name in self.group_of}
        self.dag = nx.DiGraph()
        self.dag.add_nodes_from(self.vertex(n.name) for n in graph)
        for src, dst in graph.nx.edges:
            self.dag.add_edge(self.vertex(src), self.vertex(dst))

    def vertex(self, name: str) -> str:
        return self.group_of.get(name, name)

    def outputs(self, members: set[str]) -> list[Node]:
        return [self.graph[m] for m in sorted(members, key=self.position.__getitem__)
                if any(user not in members for user in self.graph.users(m))]

    def refusal(self, gu: str, gv: str) -> str | None:
        """Why the groups gu -> gv cannot merge, or None when they can."""
        for succ in self.dag.successors(gu):
            if succ != gv and nx.has_path(self.dag, succ, gv):
                return f"would create a cycle through {self._first_member(succ)}"
        members = set(self.members[gu]) | set(self.members[gv])
        shapes = {o.shape for o in self.outputs(members)}
        if len(shapes) > 1:
            a, b = sorted(shapes, key=lambda s: (len(s), s))[:2]
            return f"shapes differ: {_shape(b)} vs {_shape(a)}"
        return None

    def _first_member(self, vertex: str) -> str:
        return self.members.get(vertex, [vertex])[0]

    def merge(self, gu: str, gv: str) -> None:
        for name in self.members.pop(gu):
            self.group_of[name] = gv
            self.members[gv].append(name)
        for pred in self.dag.predecessors(gu):
            if pred != gv:
                self.dag.add_edge(pred, gv)
        for succ in self.dag.successors(gu):
            if succ != gv:
                self.dag.add_edge(gv, succ)
        self.dag.remove_node(gu)


def _boundary_reason(src: Node, dst: Node) -> str:
    for node in (src, dst):
        if node.kind is Kind.OPAQUE:
            return f"{node.name} runs through torch ({node.target or node.op})"
        if node.kind is Kind.OUTPUT:
            return "graph output"
        if node.kind is Kind.INPUT:
            return "graph input"
    return "not fused"


def fuse(graph: Graph, fuel: int | None = None) -> Graph:
    """Each group is convex, holds only pointwise/view nodes, and all its outputs
    share one shape; values are unchanged. `fuel` caps the number of merges
    (0: every op is its own kernel)."""
    state = _Grouping(graph)
    refused: dict[tuple[str, str], str] = {}
    merges = 0
    for dst in graph:
        if dst.kind not in FUSIBLE:
            continue
        for src in dict.fromkeys(dst.operands()):
            gu, gv = state.vertex(src), state.vertex(dst.name)
            if src not in state.group_of or gu == gv:
                continue
            if fuel is not None and merges >= fuel:
                refused[src, dst.name] = f"out of fusion fuel ({fuel} merges)" if fuel else "fusion is off"
                continue
            reason = state.refusal(gu, gv)
            if reason:
                refused[src, dst.name] = reason
            else:
                state.merge(gu, gv)
                merges += 1
    return _apply(graph, state, refused)


def _apply(graph: Graph, state: _Grouping, refused: dict[tuple[str, str], str]) -> Graph:
    """Name the groups k0, k1, ... in topological order and label boundary edges."""
    out = graph.copy()
    names: dict[str, str] = {}
    for node in graph:
        vertex = state.group_of.get(node.name)
        if vertex is None:
            continue
        members = state.members[vertex]
        if all(graph[m].kind is Kind.VIEW for m in members):
            continue  # nothing to compute: the views run as torch aliases
        if vertex not in names:
            names[vertex] = f"k{len(names)}"
        out.update(node.replace(group=names[vertex]))
    for src, dst in graph.nx.edges:
        a, b = out[src], out[dst]
        data = out.nx.edges[src, dst]
        if a.group is not None and a.group == b.group:
            data.pop("reason", None)
            continue
        data["reason"] = refused.get((src, dst)) or _boundary_reason(a, b)
    return out
