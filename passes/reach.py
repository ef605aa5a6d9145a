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

from collections.abc import Hashable, Iterable

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
    frees one. Adjacency is kept as insertion-ordered dicts (the order searches try
    successors in, as networkx would): fusion merges thousands of times, and plain
    dicts cost a fraction of a networkx graph's edge updates.
    """

    def __init__(self, edges: Iterable[tuple[Vertex, Vertex]], order: dict) -> None:
        self.order = order
        self.succ: dict[Vertex, dict] = {v: {} for v in order}
        self.pred: dict[Vertex, dict] = {v: {} for v in order}
        for u, v in edges:
            self.succ[u][v] = self.pred[v][u] = None

    def successors(self, v: Vertex) -> Iterable[Vertex]:
        return self.succ[v].keys()

    def predecessors(self, v: Vertex) -> Iterable[Vertex]:
        return self.pred[v].keys()

    def has_edge(self, u: Vertex, v: Vertex) -> bool:
        return v in self.succ[u]

    def cycle_witness(self, a: Vertex, b: Vertex) -> Vertex | None:
        """A vertex other than a and b on a path between them (merging them would make a
        cycle through it), or None. Successors are tried in adjacency order."""
        if self.order[a] > self.order[b]:
            a, b = b, a
        limit = self.order[b]
        dead: set = set()  # explored already: reaches b only through the direct edge if at all
        for succ in self.succ[a]:
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
        stack = list(self.succ[a])
        while stack:
            for succ in self.succ[stack.pop()]:
                if succ not in seen and self.order[succ] <= limit:
                    seen.add(succ)
                    stack.append(succ)
        return seen

    def _reaches_from(self, start: Vertex, b: Vertex, limit: int, seen: set) -> bool:
        stack = [start]
        while stack:
            for succ in self.succ[stack.pop()]:
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
        for pred in self.pred.pop(gone):
            del self.succ[pred][gone]
            if pred != kept:
                self.succ[pred][kept] = self.pred[kept][pred] = None
        for succ in self.succ.pop(gone):
            del self.pred[succ][gone]
            if succ != kept:
                self.succ[kept][succ] = self.pred[succ][kept] = None
        del self.order[gone]
        self.order[kept] = slot

    def _reorder(self, a: Vertex, b: Vertex) -> None:
        """Renumber the window between a and b so that b and everything before it that
        reaches b come first, then a and everything it reaches: b's new number is then a
        valid number for the merged vertex (Pearce-Kelly with the edge b -> a added)."""
        lo, hi = self.order[a], self.order[b]
        forward = {a} | self._window(a, self.succ, lambda o: o < hi)
        backward = {b} | self._window(b, self.pred, lambda o: o > lo)
        slots = sorted(self.order[v] for v in forward | backward)
        sequence = sorted(backward, key=self.order.__getitem__) + sorted(forward, key=self.order.__getitem__)
        for vertex, slot in zip(sequence, slots, strict=True):
            self.order[vertex] = slot

    def _window(self, start: Vertex, neighbours: dict, inside) -> set:
        seen: set = set()
        stack = [start]
        while stack:
            for v in neighbours[stack.pop()]:
                if v not in seen and inside(self.order[v]):
                    seen.add(v)
                    stack.append(v)
        return seen


class SetReach:
    """Which vertices of a set reach which others, kept exact while they merge with each
    other: one sweep of the DAG each way, then a few bit operations per merge (a path
    between two members only visits vertices numbered between theirs). Member i is bit
    i, in the order given."""

    def __init__(self, dags: ContractedDag, members: list) -> None:
        self.members = list(members)
        self.index = {v: i for i, v in enumerate(self.members)}
        self.live = (1 << len(self.members)) - 1
        lo, hi = min(dags.order[v] for v in members), max(dags.order[v] for v in members)
        window = sorted((v for v, o in dags.order.items() if lo <= o <= hi), key=dags.order.__getitem__)
        self.below = self._sweep(reversed(window), dags.successors)  # members each one reaches
        self.above = self._sweep(window, dags.predecessors)  # members that reach each one

    def _sweep(self, window, neighbours) -> dict:
        """For each member, the bits of the members it meets following `neighbours`
        (`window`: the vertices numbered between the members, neighbours first)."""
        met: dict = {}
        for v in window:
            bits = 0
            for u in neighbours(v):
                if u in met:
                    bits |= met[u] | self.bit(u)
            met[v] = bits
        return {v: met[v] for v in self.members}

    def bit(self, v: Vertex) -> int:
        return 1 << self.index[v] if v in self.index else 0

    def joined(self, a: Vertex, b: Vertex) -> bool:
        """Whether a path leads from a to b or from b to a."""
        return bool((self.below[a] | self.above[a]) & self.bit(b))

    def unjoined_after(self, a: Vertex, i: int) -> int:
        """The bits of live members after member i that no path joins to a."""
        return self.live & ~((2 << i) - 1) & ~(self.below[a] | self.above[a])

    def first_of(self, bits: int) -> Vertex:
        """The member of the lowest of `bits` (not 0)."""
        return self.members[(bits & -bits).bit_length() - 1]

    def merge(self, gone: Vertex, kept: Vertex) -> None:
        """Contract `gone` into `kept`: whatever reached either now reaches what either reached."""
        both, keep = self.bit(gone) | self.bit(kept), self.bit(kept)
        below = (self.below.pop(gone) | self.below[kept]) & ~both
        above = (self.above.pop(gone) | self.above[kept]) & ~both
        self.live &= ~self.bit(gone)
        del self.index[gone]
        for v, bits in self.below.items():
            if bits & both:
                self.below[v] = bits & ~both | keep | below
        for v, bits in self.above.items():
            if bits & both:
                self.above[v] = bits & ~both | keep | above
        self.below[kept], self.above[kept] = below, above
