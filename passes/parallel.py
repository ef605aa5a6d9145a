"""Multi-stream scheduling of a fused-kernel DAG.

The input is a *kernel DAG*: a ``networkx.DiGraph`` whose nodes are hashable
kernel ids and whose edges are data dependencies producer -> consumer.  A node
may carry a float ``cost`` attribute (estimated seconds, default 1.0).

The pass answers three questions:

* How much parallelism is there?  ``dag_width`` is the size of the largest
  antichain (set of mutually independent kernels).  By Dilworth's theorem it
  equals the size of a minimum chain cover, which is ``n - |M|`` for a maximum
  matching ``M`` of the bipartite graph of the transitive closure.
* Which kernel goes on which stream?  Each chain of a minimum chain cover is a
  stream: kernels on a chain are totally ordered by reachability, so running
  them back-to-back on one FIFO stream never costs parallelism.  With a stream
  cap the chains are packed onto fewer streams.
* Which cross-stream events are needed?  ``minimal_waits`` keeps vector clocks
  per stream and emits a wait only when the dependency is not already implied
  by stream order plus earlier waits.

This module is deliberately torch-free so it can be tested on plain graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import networkx as nx

from fusec.passes.chains import Closure, minimum_chain_cover

Node = Any  # any hashable kernel id

__all__ = [
    "Schedule",
    "assign_streams",
    "chain_cover",
    "critical_path",
    "dag_width",
    "levels",
    "minimal_waits",
]


@dataclass(frozen=True)
class Schedule:
    """A launch order, a stream per kernel and the cross-stream waits it needs."""

    order: tuple  # topological launch order of all nodes
    stream_of: dict  # node -> stream index in 0..n_streams-1
    waits: tuple  # (producer, consumer): consumer's stream waits on an event after producer
    n_streams: int
    dag_width: int
    levels: tuple  # topological generations, each sorted
    critical_path: tuple  # nodes of the longest cost-weighted path
    critical_path_cost: float

    def streams(self) -> tuple[tuple, ...]:
        """Nodes of each stream in execution (= launch) order, indexed by stream."""
        seqs: list[list] = [[] for _ in range(self.n_streams)]
        for v in self.order:
            seqs[self.stream_of[v]].append(v)
        return tuple(tuple(s) for s in seqs)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _check_dag(g: nx.DiGraph) -> None:
    if not nx.is_directed_acyclic_graph(g):
        raise ValueError("kernel graph must be a DAG (found a cycle)")


def _rank(g: nx.DiGraph) -> dict:
    """Canonical index per node; every tie-break goes through it so results do
    not depend on node insertion order."""
    nodes = list(g.nodes)
    try:
        ordered = sorted(nodes)
    except TypeError:
        # Mixed, mutually incomparable ids: repr still gives a stable order.
        ordered = sorted(nodes, key=repr)
    return {v: i for i, v in enumerate(ordered)}


def _costs(g: nx.DiGraph) -> dict:
    costs = {}
    for v, data in g.nodes(data=True):
        c = float(data.get("cost", 1.0))
        if not math.isfinite(c) or c < 0:
            raise ValueError(f"node {v!r} has invalid cost {c!r}")
        costs[v] = c
    return costs


def _canonical_topo(g: nx.DiGraph, rank: dict) -> list:
    return list(nx.lexicographical_topological_sort(g, key=rank.__getitem__))


def _closure_pairs(g: nx.DiGraph, rank: dict) -> list[tuple]:
    """All comparable pairs (u, v, is_reduction_edge) with v reachable from u,
    in canonical order (the matchers below are insertion-order sensitive)."""
    reduction = nx.transitive_reduction(g)
    pairs = []
    for u in sorted(g, key=rank.__getitem__):
        for v in sorted(nx.descendants(g, u), key=rank.__getitem__):
            pairs.append((u, v, reduction.has_edge(u, v)))
    return pairs


def _out(v: Node) -> tuple:
    return ("out", v)


def _in(v: Node) -> tuple:
    return ("in", v)


# --------------------------------------------------------------------------
# DAG metrics
# --------------------------------------------------------------------------


def levels(g: nx.DiGraph) -> tuple[tuple, ...]:
    """Topological generations of ``g``: level k = nodes whose longest incoming path has k edges."""
    _check_dag(g)
    rank = _rank(g)
    return tuple(
        tuple(sorted(gen, key=rank.__getitem__))
        for gen in nx.topological_generations(g)
    )


def dag_width(g: nx.DiGraph) -> int:
    """Size of the largest antichain of ``g`` (= min chain cover, Dilworth)."""
    _check_dag(g)
    return len(minimum_chain_cover(g, _canonical_topo(g, _rank(g))))


def critical_path(g: nx.DiGraph) -> tuple[tuple, float]:
    """Longest path of ``g`` weighted by node ``cost``, and that cost (ties: canonical order)."""
    _check_dag(g)
    if g.number_of_nodes() == 0:
        return (), 0.0
    rank, cost = _rank(g), _costs(g)
    finish: dict = {}
    parent: dict = {}
    for v in _canonical_topo(g, rank):
        best = max(g.predecessors(v), key=lambda u: (finish[u], -rank[u]), default=None)
        parent[v] = best
        finish[v] = cost[v] + (finish[best] if best is not None else 0.0)
    end = max(g, key=lambda v: (finish[v], -rank[v]))
    path = [end]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return tuple(reversed(path)), finish[end]


def _tail_costs(g: nx.DiGraph, rank: dict, cost: dict) -> dict:
    """Longest cost from each node to a sink, the node itself included (bottom level)."""
    tail: dict = {}
    for v in reversed(_canonical_topo(g, rank)):
        tail[v] = cost[v] + max((tail[w] for w in g.successors(v)), default=0.0)
    return tail


# --------------------------------------------------------------------------
# chain cover
# --------------------------------------------------------------------------


# Up to this many comparable pairs the cover is a maximum-weight matching of the whole
# closure (0.1 s at 2,000 pairs, growing with its cube); beyond, the bitset cover.
WEIGHTED_PAIRS = 2000


def chain_cover(g: nx.DiGraph) -> list[list]:
    """A minimum chain cover (len == dag_width); on small graphs, the one using the most
    transitive-reduction links.

    Each chain lists nodes in reachability order; consecutive nodes need not
    be adjacent in ``g``. Small closures get a maximum-cardinality matching of
    the closure's bipartite graph (u_out, v_in) where matched reduction edges
    weigh 2 and the others 1, so weight = |M| + #reduction edges with |M|
    already maximal. Larger ones get passes/chains.py's cover: as few chains,
    preferring direct producers greedily rather than exactly.
    """
    _check_dag(g)
    rank = _rank(g)
    order = _canonical_topo(g, rank)
    closure = Closure(g, order)
    if sum(d.bit_count() for d in closure.descendants) > WEIGHTED_PAIRS:
        return minimum_chain_cover(g, order)
    return _weighted_chain_cover(g, rank)


def _weighted_chain_cover(g: nx.DiGraph, rank: dict) -> list[list]:
    bip = nx.Graph()
    for u, v, is_reduction in _closure_pairs(g, rank):
        bip.add_edge(_out(u), _in(v), weight=2 if is_reduction else 1)
    matching = nx.max_weight_matching(bip, maxcardinality=True)
    succ = {}
    for a, b in matching:
        (_, u), (_, v) = (a, b) if a[0] == "out" else (b, a)
        succ[u] = v
    # Every node has at most one matched successor and predecessor, and
    # matched pairs follow reachability, so the pairs form disjoint paths.
    has_pred = set(succ.values())
    chains = []
    for head in sorted(g, key=rank.__getitem__):
        if head in has_pred:
            continue
        chain = [head]
        while chain[-1] in succ:
            chain.append(succ[chain[-1]])
        chains.append(chain)
    return chains


# --------------------------------------------------------------------------
# vector clocks and waits
# --------------------------------------------------------------------------


class _StreamClocks:
    """Per-stream vector clocks: ``tail[s][t]`` is the last position on stream
    ``t`` known complete before the next kernel launched on ``s``."""

    def __init__(self, stream_of: dict, n_streams: int):
        self.stream_of = stream_of
        self.tail = [[-1] * n_streams for _ in range(n_streams)]
        self.length = [0] * n_streams
        self.pos: dict = {}  # node -> position within its stream
        self.done: dict = {}  # node -> clock that holds once the node has completed

    def knows(self, s: int, u: Node) -> bool:
        """Whether stream ``s`` already has ``u`` complete (stream FIFO + earlier waits)."""
        return self.tail[s][self.stream_of[u]] >= self.pos[u]

    def implies(self, w: Node, u: Node) -> bool:
        """Whether completion of launched node ``w`` implies completion of ``u``."""
        return self.done[w][self.stream_of[u]] >= self.pos[u]

    def wait(self, s: int, u: Node) -> None:
        """Stream ``s`` waits on the event recorded right after ``u``."""
        clock, seen = self.tail[s], self.done[u]
        for t, p in enumerate(seen):
            clock[t] = max(clock[t], p)

    def launch(self, v: Node) -> None:
        """Enqueue ``v`` at the tail of its stream and snapshot its completion clock."""
        s = self.stream_of[v]
        self.pos[v] = self.length[s]
        self.length[s] += 1
        self.tail[s][s] = self.pos[v]
        self.done[v] = tuple(self.tail[s])


def minimal_waits(g: nx.DiGraph, order: tuple | list, stream_of: dict) -> tuple:
    """Waits making every cross-stream edge safe, none implied by stream order plus the rest.

    Per consumer: at most one wait per source stream (on its latest unmet
    producer), and a wait is dropped if another chosen wait's producer already
    happened after it.  Every emitted wait is an edge of ``g``.  ``order``
    must be topological: it is the host launch order of kernels and events.
    """
    n_streams = max(stream_of.values(), default=-1) + 1
    clocks = _StreamClocks(stream_of, n_streams)
    waits = []
    for v in order:
        s = stream_of[v]
        latest: dict = {}  # source stream -> latest producer not yet known complete
        for u in g.predecessors(v):
            t = stream_of[u]
            if t == s or clocks.knows(s, u):
                continue
            if t not in latest or clocks.pos[u] > clocks.pos[latest[t]]:
                latest[t] = u
        candidates = [latest[t] for t in sorted(latest)]
        # Happens-before is a strict partial order, so keeping only the
        # candidates no other candidate implies leaves a set that still
        # covers all of them, and each kept wait is indispensable.
        needed = [
            u
            for u in candidates
            if not any(w != u and clocks.implies(w, u) for w in candidates)
        ]
        for u in needed:
            clocks.wait(s, u)
            waits.append((u, v))
        clocks.launch(v)
    return tuple(waits)


# --------------------------------------------------------------------------
# stream assignment
# --------------------------------------------------------------------------


def _launch_order(g: nx.DiGraph, rank: dict, cost: dict) -> tuple:
    """Priority topological sort: longest remaining path first (HLFET), then
    shallower level, then canonical order.  Feeding the critical path first
    keeps it from queueing behind side branches."""
    tail = _tail_costs(g, rank, cost)
    depth = {v: i for i, gen in enumerate(nx.topological_generations(g)) for v in gen}
    indegree = {v: g.in_degree(v) for v in g}
    ready = [v for v in g if indegree[v] == 0]
    order = []
    while ready:
        v = min(ready, key=lambda n: (-tail[n], depth[n], rank[n]))
        ready.remove(v)
        order.append(v)
        for w in g.successors(v):
            indegree[w] -= 1
            if indegree[w] == 0:
                ready.append(w)
    return tuple(order)


def _number_streams(groups: list, order: tuple) -> dict:
    """Stream ids by first launch: stream 0 holds the first kernel launched."""
    position = {v: i for i, v in enumerate(order)}
    ranked = sorted(
        (sorted(grp, key=position.__getitem__) for grp in groups),
        key=lambda seq: position[seq[0]],
    )
    stream = {v: s for s, seq in enumerate(ranked) for v in seq}
    return {v: stream[v] for v in order}


def _makespan(g: nx.DiGraph, order: tuple, stream_of: dict, cost: dict) -> float:
    """Simulated finish time: streams run their kernels in ``order``, each
    kernel starts once its stream is free and its producers are done."""
    free: dict = {}
    finish: dict = {}
    for v in order:
        s = stream_of[v]
        start = max([free.get(s, 0.0)] + [finish[u] for u in g.predecessors(v)])
        finish[v] = free[s] = start + cost[v]
    return max(finish.values(), default=0.0)


def _pack(
    g: nx.DiGraph, chains: list[list], order: tuple, cost: dict, cap: int
) -> list[set]:
    """Fold chains onto ``cap`` streams: repeatedly merge the lightest stream
    into the partner giving the smallest simulated makespan (then fewest
    waits, then earliest-launched partner).  O(width^2) simulations."""
    position = {v: i for i, v in enumerate(order)}
    groups = [set(c) for c in chains]

    def first(grp: set) -> int:
        return min(position[v] for v in grp)

    def score(merged: list[set], partner: set) -> tuple:
        stream_of = _number_streams(merged, order)
        n_waits = len(minimal_waits(g, order, stream_of))
        return (_makespan(g, order, stream_of, cost), n_waits, first(partner))

    while len(groups) > cap:
        victim = min(groups, key=lambda grp: (sum(cost[v] for v in grp), -first(grp)))
        others = [grp for grp in groups if grp is not victim]
        best = min(
            others,
            key=lambda p: score(
                [grp | victim if grp is p else grp for grp in others], p
            ),
        )
        groups = [grp | victim if grp is best else grp for grp in others]
    return groups


def assign_streams(g: nx.DiGraph, max_streams: int | None = None) -> Schedule:
    """A sound schedule: one stream per chain of a minimum chain cover, packed to max_streams."""
    _check_dag(g)
    if max_streams is not None and max_streams < 1:
        raise ValueError(f"max_streams must be >= 1, got {max_streams}")
    rank, cost = _rank(g), _costs(g)
    order = _launch_order(g, rank, cost)
    chains = chain_cover(g)
    width = len(chains)
    groups = chains
    if max_streams is not None and width > max_streams:
        groups = _pack(g, chains, order, cost, max_streams)
    stream_of = _number_streams(groups, order)
    path, path_cost = critical_path(g)
    return Schedule(
        order=order,
        stream_of=stream_of,
        waits=minimal_waits(g, order, stream_of),
        n_streams=len(groups),
        dag_width=width,
        levels=levels(g),
        critical_path=path,
        critical_path_cost=path_cost,
    )
