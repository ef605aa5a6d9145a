"""Reachability that stays cheap as a graph grows: searches bounded by topological position.

In a DAG with a topological numbering, a path from u to v only visits vertices
numbered between u's and v's, so a search can stop at v's number. `ContractedDag`
keeps such a numbering valid while vertices are merged (fusion contracts groups),
with Pearce and Kelly's dynamic topological order (JEA 2006): a merge reorders
only the vertices between the two merged ones that the merge constrains. The
cost of a query or a merge is the size of that window, not of the graph — the
pruning Inductor's scheduler does with its nodes' min/max order.
"""

from __future__ import annotations

from collections.abc import Hashable

import networkx as nx

Vertex = Hashable


def reaches(g: nx.DiGraph, position: dict, src: Vertex, dst: Vertex) -> bool:
    """Whether a path leads from src to dst, where `position` numbers g topologically."""
    return dst in bounded_descendants(g, position, src, position[dst])


def bounded_descendants(g: nx.DiGraph, position: dict, src: Vertex, limit: int) -> set:
    """Vertices reachable from src (src excluded) numbered at most `limit`."""
    seen: set = set()
    stack = [src]
    while stack:
        for succ in g.successors(stack.pop()):
            if succ not in seen and position[succ] <= limit:
                seen.add(succ)
                stack.append(succ)
    return seen


class ContractedDag:
    """A DAG whose vertices can be merged, with a topological numbering kept valid.

    `order[v]` increases along every edge. Numbers are not contiguous: a merge
    frees one.
    """

    def __init__(self, dag: nx.DiGraph, order: dict) -> None:
        self.dag = dag
        self.order = order

    def cycle_witness(self, a: Vertex, b: Vertex) -> Vertex | None:
        """A vertex other than a and b on a path between them (merging them would make a
        cycle through it), or None. Successors are tried in adjacency order."""
        if self.order[a] > self.order[b]:
            a, b = b, a
        limit = self.order[b]
        dead: set = set()  # explored already: reaches b only through the direct edge if at all
        for succ in self.dag.successors(a):
            if succ == b or succ in dead or self.order[succ] > limit:
                continue
            dead.add(succ)
            if self._reaches_from(succ, b, limit, dead):
                return succ
        return None

    def beyond_successors(self, a: Vertex, limit: int) -> set:
        """Vertices numbered at most `limit` that a reaches by a path of two edges or more:
        merging a with any of them would make a cycle."""
        seen: set = set()
        stack = list(self.dag.successors(a))
        while stack:
            for succ in self.dag.successors(stack.pop()):
                if succ not in seen and self.order[succ] <= limit:
                    seen.add(succ)
                    stack.append(succ)
        return seen

    def _reaches_from(self, start: Vertex, b: Vertex, limit: int, seen: set) -> bool:
        stack = [start]
        while stack:
            for succ in self.dag.successors(stack.pop()):
                if succ == b:
                    return True
                if succ not in seen and self.order[succ] < limit:
                    seen.add(succ)
                    stack.append(succ)
        return False

    def merge(self, gone: Vertex, kept: Vertex) -> None:
        """Contract `gone` into `kept` (which must not make a cycle: see cycle_witness)."""
        a, b = (gone, kept) if self.order[gone] < self.order[kept] else (kept, gone)
        self._reorder(a, b)
        slot = self.order[b]
        for pred in self.dag.predecessors(gone):
            if pred != kept:
                self.dag.add_edge(pred, kept)
        for succ in self.dag.successors(gone):
            if succ != kept:
                self.dag.add_edge(kept, succ)
        self.dag.remove_node(gone)
        del self.order[gone]
        self.order[kept] = slot

    def _reorder(self, a: Vertex, b: Vertex) -> None:
        """Renumber the window between a and b so that b and everything before it that
        reaches b come first, then a and everything it reaches: b's new number is then a
        valid number for the merged vertex (Pearce-Kelly with the edge b -> a added)."""
        lo, hi = self.order[a], self.order[b]
        forward = {a} | self._window(a, self.dag.successors, lambda o: o < hi)
        backward = {b} | self._window(b, self.dag.predecessors, lambda o: o > lo)
        slots = sorted(self.order[v] for v in forward | backward)
        sequence = sorted(backward, key=self.order.__getitem__) + sorted(forward, key=self.order.__getitem__)
        for vertex, slot in zip(sequence, slots, strict=True):
            self.order[vertex] = slot

    def _window(self, start: Vertex, neighbours, inside) -> set:
        seen: set = set()
        stack = [start]
        while stack:
            for v in neighbours(stack.pop()):
                if v not in seen and inside(self.order[v]):
                    seen.add(v)
                    stack.append(v)
        return seen

