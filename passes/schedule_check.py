"""Checks that a stream schedule is sound and wait-minimal (for tests and debugging)."""

from __future__ import annotations

import itertools

import networkx as nx

from fusec.passes.parallel import Schedule, _StreamClocks, dag_width


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)


def _uncovered(g: nx.DiGraph, s: Schedule, waits: tuple) -> list[tuple]:
    """Cross-stream edges of ``g`` not guaranteed by stream FIFO order plus ``waits``."""
    position = {v: i for i, v in enumerate(s.order)}
    by_consumer: dict = {}
    for u, v in waits:
        _require(
            u in position and v in position, f"wait {(u, v)!r} names an unknown node"
        )
        _require(
            s.stream_of[u] != s.stream_of[v],
            f"wait {(u, v)!r} is within stream {s.stream_of[u]}; FIFO order already covers it",
        )
        _require(
            position[u] < position[v],
            f"wait {(u, v)!r} waits on an event recorded after its consumer is launched",
        )
        by_consumer.setdefault(v, []).append(u)
    clocks = _StreamClocks(s.stream_of, s.n_streams)
    missing = []
    for v in s.order:
        stream = s.stream_of[v]
        for u in by_consumer.get(v, ()):
            clocks.wait(stream, u)
        missing.extend((u, v) for u in g.predecessors(v) if not clocks.knows(stream, u))
        clocks.launch(v)
    return missing


def verify_schedule(g: nx.DiGraph, s: Schedule) -> None:
    """Raise AssertionError unless ``s`` is a sound, wait-minimal schedule of ``g``."""
    nodes = set(g.nodes)
    _require(
        len(s.order) == len(nodes) and set(s.order) == nodes,
        f"order must list each of the {len(nodes)} nodes exactly once, got {s.order!r}",
    )
    position = {v: i for i, v in enumerate(s.order)}
    for u, v in g.edges:
        _require(
            position[u] < position[v],
            f"order is not topological: consumer {v!r} launched before producer {u!r}",
        )
    _require(set(s.stream_of) == nodes, "stream_of must map exactly the graph's nodes")
    used = set(s.stream_of.values())
    _require(
        used == set(range(s.n_streams)),
        f"streams used {sorted(used)} are not exactly 0..{s.n_streams - 1}",
    )
    width = dag_width(g)
    _require(
        s.dag_width == width, f"dag_width is {width}, schedule claims {s.dag_width}"
    )
    if s.n_streams >= width:
        # Uncapped: each stream must be a chain, or it would serialise
        # independent kernels and lose parallelism for nothing.
        for idx, seq in enumerate(s.streams()):
            for a, b in itertools.pairwise(seq):
                _require(
                    nx.has_path(g, a, b),
                    f"stream {idx} is not a chain: {b!r} is not reachable from {a!r}",
                )
    missing = _uncovered(g, s, s.waits)
    _require(
        not missing, f"cross-stream dependencies not covered by any wait: {missing!r}"
    )
    for i, w in enumerate(s.waits):
        rest = s.waits[:i] + s.waits[i + 1 :]
        _require(
            bool(_uncovered(g, s, rest)),
            f"wait {w!r} is redundant: the other waits plus stream order already imply it",
        )
