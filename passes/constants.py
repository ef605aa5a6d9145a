"""private_constants: index math computed from constants alone is recomputed by each reader.

An arange or a filled tensor is computed inline by every kernel that reads it
(`ir.is_constant`). What is computed from them alone (positions `arange * W + c`,
masks `arange >= 0`, pooling windows' indices) is as cheap to recompute, but a
node read by several kernels would be its own small kernel, and its output of
another shape would keep its readers apart. This pass gives each reader a
private copy, so each copy fuses into the one kernel that reads it.
"""

from __future__ import annotations

from fusec.ir import Graph, Kind, Node, Ref, is_constant

# Copies made for one graph at most: index math is small; past this, readers share a kernel.
MAX_COPIES = 4096


def derived_constants(graph: Graph) -> set[str]:
    """Pointwise and view nodes whose every operand is a constant or derived from constants,
    and views read only by views (a pooling window's row slice, sliced again per column)."""
    derived: set[str] = set()
    for node in graph:
        operands = node.operands()
        if node.kind in (Kind.POINTWISE, Kind.VIEW) and operands and all(
                op in derived or is_constant(graph[op]) for op in operands):
            derived.add(node.name)
    views = {n.name for n in graph if n.kind is Kind.VIEW and n.name not in derived and graph.users(n.name)
             and all(graph[u].kind is Kind.VIEW for u in graph.users(n.name))}
    return derived | views


def private_constants(graph: Graph) -> Graph:
    """Every node derived from constants alone has at most one reader; values are unchanged."""
    derived = derived_constants(graph)
    shared = [n for n in derived if len(graph.users(n)) > 1]
    if not shared or _copies_needed(graph, derived) > MAX_COPIES:
        return graph
    copier = _Copier(graph, derived)
    for node in graph:
        if node.name not in derived:
            copier.emit(node)
    out = Graph(copier.nodes, name=graph.name)
    out.horizontal, out.hints = graph.horizontal, graph.hints
    return out


def _copies_needed(graph: Graph, derived: set[str]) -> int:
    """How many nodes the derived constants become once each reader has its own copy."""
    copies: dict[str, int] = {}
    for name in reversed(list(graph.nx.nodes)):
        if name in derived:
            copies[name] = sum(copies[u] if u in derived else 1 for u in graph.users(name))
    return sum(copies.values())


class _Copier:
    """Emits nodes in a topological order, each derived constant just before its reader."""

    def __init__(self, graph: Graph, derived: set[str]) -> None:
        self.graph = graph
        self.derived = derived
        self.nodes: list[Node] = []
        self.names = set(graph.nx.nodes)
        self.claimed: set[str] = set()  # derived nodes whose first reader took the original

    def emit(self, node: Node, name: str | None = None) -> str:
        copies = {op: self.copy(op) for op in dict.fromkeys(node.operands()) if op in self.derived}
        renamed = node.rename_operands(lambda ref: Ref(copies.get(ref.name, ref.name)))
        self.nodes.append(renamed if name is None else renamed.replace(name=name))
        return name or node.name

    def copy(self, name: str) -> str:
        if name not in self.claimed:
            self.claimed.add(name)
            return self.emit(self.graph[name])
        return self.emit(self.graph[name], self._fresh(name))

    def _fresh(self, name: str) -> str:
        k = 1
        while f"{name}_copy{k}" in self.names:
            k += 1
        self.names.add(f"{name}_copy{k}")
        return f"{name}_copy{k}"
