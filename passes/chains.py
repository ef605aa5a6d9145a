"""A minimum chain cover that fits the graph: reachability as bitsets, a greedy cover, then augmenting paths.

A minimum chain cover of a DAG is a maximum matching of the bipartite graph
(u_out, v_in) for every v reachable from u (Dilworth, Fulkerson). Built
explicitly that bipartite graph has up to n²/2 edges; here it stays implicit:
each vertex's descendants are one Python integer used as a bitset (n bits), so
a whole row of the closure is one machine-level AND. A greedy pass in
topological order matches most vertices (it extends the chain whose tail is a
direct producer when it can, the way a stream would run it); Kuhn's augmenting
paths over the same bitsets then make the matching maximum, so the cover is
exact. Each augmenting-path search touches each vertex at most once.
"""

from __future__ import annotations

from collections.abc import Hashable

import networkx as nx

Vertex = Hashable


class Closure:
    """Ancestors and descendants of every vertex of a DAG as bitsets over a topological order."""

    def __init__(self, g: nx.DiGraph, order: list) -> None:
        self.order = order
        self.index = {v: i for i, v in enumerate(order)}
        self.pred_bits = [0] * len(order)  # direct predecessors
        self.ancestors = [0] * len(order)
        for i, v in enumerate(order):
            for p in g.predecessors(v):
                j = self.index[p]
                self.pred_bits[i] |= 1 << j
                self.ancestors[i] |= self.ancestors[j] | (1 << j)
        self.descendants = [0] * len(order)
        for i in range(len(order) - 1, -1, -1):
            for s in g.successors(order[i]):
                j = self.index[s]
                self.descendants[i] |= self.descendants[j] | (1 << j)

    def comparable(self, v: Vertex) -> int:
        """Bits of the vertices that reach v or that v reaches, v included."""
        i = self.index[v]
        return self.ancestors[i] | self.descendants[i] | (1 << i)


def bits(mask: int):
    """Indices of the set bits of `mask`, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def greedy_matching(closure: Closure) -> list[int | None]:
    """For each vertex, the next vertex of its chain (None: a chain ends there), chains
    grown in topological order, each vertex extending a chain whose tail reaches it."""
    n = len(closure.order)
    succ: list[int | None] = [None] * n
    tails = 0  # chains' last vertices, still extensible
    for i in range(n):
        open_tails = tails & closure.ancestors[i]
        if open_tails:
            direct = open_tails & closure.pred_bits[i]
            tail = ((direct or open_tails).bit_length()) - 1  # the latest such tail
            succ[tail] = i
            tails ^= 1 << tail
        tails |= 1 << i
    return succ


def maximum_matching(closure: Closure, succ: list[int | None]) -> list[int | None]:
    """`succ` grown to a maximum matching of the closure's bipartite graph by augmenting paths."""
    n = len(succ)
    pred: list[int | None] = [None] * n
    for u, v in enumerate(succ):
        if v is not None:
            pred[v] = u
    visited = 0  # in-side vertices searched since the last augmentation
    for root in range(n):
        if succ[root] is not None:
            continue
        path, searched = _augmenting_path(closure, root, pred, visited)
        if path is None:
            # Nothing searched can lead to a free vertex until the matching changes.
            visited = searched
            continue
        for u, v in path:
            succ[u], pred[v] = v, u
        visited = 0
    return succ


def _augmenting_path(closure: Closure, root: int, pred: list[int | None], visited: int) -> tuple[list | None, int]:
    """Alternating (u, v) pairs from a free out-vertex to a free in-vertex (or None), and
    `visited` with every in-vertex tried added."""
    stack = [[root, closure.descendants[root] & ~visited]]
    path: list[tuple[int, int]] = []
    while stack:
        frame = stack[-1]
        candidates = frame[1] & ~visited
        if not candidates:
            stack.pop()
            if path:
                path.pop()
            continue
        low = candidates & -candidates
        v = low.bit_length() - 1
        frame[1] = candidates ^ low
        visited |= low
        path.append((frame[0], v))
        owner = pred[v]
        if owner is None:
            return path, visited
        stack.append([owner, closure.descendants[owner] & ~visited])
    return None, visited


def minimum_chain_cover(g: nx.DiGraph, order: list) -> list[list]:
    """Chains (each in reachability order) covering every vertex once, as few as the DAG is wide.
    `order` is a topological order of g; the result depends on nothing else."""
    closure = Closure(g, order)
    succ = maximum_matching(closure, greedy_matching(closure))
    has_pred = {v for v in succ if v is not None}
    chains = []
    for head in range(len(order)):
        if head in has_pred:
            continue
        chain = [head]
        while succ[chain[-1]] is not None:
            chain.append(succ[chain[-1]])
        chains.append([order[i] for i in chain])
    return chains
