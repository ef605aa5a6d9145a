"""Tests for passes/parallel.py: chain cover, stream assignment and minimal waits."""

from __future__ import annotations

import dataclasses
import itertools

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusec.passes.parallel import (
    Schedule,
    assign_streams,
    chain_cover,
    critical_path,
    dag_width,
    levels,
    minimal_waits,
)
from fusec.passes.schedule_check import verify_schedule

PROPERTY = settings(max_examples=150, deadline=None)


# --------------------------------------------------------------------------
# graph builders and independent oracles
# --------------------------------------------------------------------------


def dag(edges, nodes=()):
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    return g


def brute_width(g) -> int:
    """Largest antichain by enumerating node subsets (bitmask DP, <= ~14 nodes)."""
    nodes = list(g)
    index = {v: i for i, v in enumerate(nodes)}
    comparable = [0] * len(nodes)
    for u in nodes:
        for v in nx.descendants(g, u):
            comparable[index[u]] |= 1 << index[v]
            comparable[index[v]] |= 1 << index[u]
    best = 0
    is_antichain = [True] * (1 << len(nodes))
    for mask in range(1, 1 << len(nodes)):
        low = (mask & -mask).bit_length() - 1
        rest = mask & (mask - 1)
        is_antichain[mask] = is_antichain[rest] and not comparable[low] & rest
        if is_antichain[mask]:
            best = max(best, mask.bit_count())
    return best


def happens_before(s: Schedule, waits=None) -> nx.DiGraph:
    """u -> v whenever u is guaranteed complete before v starts: stream FIFO
    successors plus explicit waits.  Independent of the module's clocks."""
    waits = s.waits if waits is None else waits
    h = nx.DiGraph()
    h.add_nodes_from(s.order)
    for seq in s.streams():
        h.add_edges_from(itertools.pairwise(seq))
    h.add_edges_from(waits)
    return h


def uncovered(g, s: Schedule, waits=None) -> list:
    h = happens_before(s, waits)
    return [(u, v) for u, v in g.edges if not nx.has_path(h, u, v)]


def assert_sound_and_minimal(g, s: Schedule) -> None:
    position = {v: i for i, v in enumerate(s.order)}
    assert sorted(position.values()) == list(range(g.number_of_nodes()))
    assert all(position[u] < position[v] for u, v in g.edges)
    assert uncovered(g, s) == []
    for i in range(len(s.waits)):
        rest = s.waits[:i] + s.waits[i + 1 :]
        assert uncovered(g, s, rest), f"wait {s.waits[i]} is redundant"
    verify_schedule(g, s)


def longest_cost(g) -> float:
    cost = {v: g.nodes[v].get("cost", 1.0) for v in g}
    best: dict = {}
    for v in nx.topological_sort(g):
        best[v] = cost[v] + max((best[u] for u in g.predecessors(v)), default=0.0)
    return max(best.values(), default=0.0)


def reduction_links(g, chains) -> int:
    red = nx.transitive_reduction(g)
    return sum(red.has_edge(a, b) for c in chains for a, b in itertools.pairwise(c))


def max_reduction_links(g) -> int:
    """Most reduction edges a minimum chain cover can use, by min-cost max-flow
    (a different solver from the module's weighted blossom matching)."""
    red = nx.transitive_reduction(g)
    f = nx.DiGraph()
    for v in g:
        f.add_edge("src", ("o", v), capacity=1, weight=0)
        f.add_edge(("i", v), "snk", capacity=1, weight=0)
        for w in nx.descendants(g, v):
            f.add_edge(
                ("o", v), ("i", w), capacity=1, weight=-1 if red.has_edge(v, w) else 0
            )
    if not g:
        return 0
    return -nx.cost_of_flow(f, nx.max_flow_min_cost(f, "src", "snk"))


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------

COSTS = st.sampled_from([None, 0.0, 0.5, 1.0, 2.0, 5.0])


def _named(n, edges, names, costs):
    g = nx.DiGraph()
    for i in range(n):
        g.add_node(names[i], **({} if costs[i] is None else {"cost": costs[i]}))
    g.add_edges_from((names[i], names[j]) for i, j in edges)
    return g


@st.composite
def random_dags(draw, max_nodes=12):
    """Edges i -> j (i < j) kept with a drawn density; names are shuffled so
    name order and topological order disagree."""
    n = draw(st.integers(0, max_nodes))
    density = draw(st.integers(5, 95))
    pairs = list(itertools.combinations(range(n), 2))
    rolls = draw(st.lists(st.integers(0, 99), min_size=len(pairs), max_size=len(pairs)))
    names = draw(st.permutations([f"k{i}" for i in range(n)]))
    costs = draw(st.lists(COSTS, min_size=n, max_size=n))
    return _named(
        n, [p for p, r in zip(pairs, rolls, strict=True) if r < density], names, costs
    )


@st.composite
def randwire_dags(draw, max_nodes=12):
    """RandWire-style: a Watts-Strogatz graph with edges oriented low -> high index."""
    n = draw(st.integers(5, max_nodes))
    k = draw(st.sampled_from([2, 4]))
    p = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
    seed = draw(st.integers(0, 2**16))
    ws = nx.watts_strogatz_graph(n, k, p, seed=seed)
    names = draw(st.permutations([f"w{i}" for i in range(n)]))
    costs = draw(st.lists(COSTS, min_size=n, max_size=n))
    return _named(n, [(min(e), max(e)) for e in ws.edges], names, costs)


DAGS = st.one_of(random_dags(), randwire_dags())


# --------------------------------------------------------------------------
# hand examples
# --------------------------------------------------------------------------


def test_empty_graph():
    g = nx.DiGraph()
    s = assign_streams(g)
    assert (s.order, s.waits, s.n_streams, s.dag_width) == ((), (), 0, 0)
    assert (s.critical_path, s.critical_path_cost) == ((), 0.0)
    assert chain_cover(g) == [] and levels(g) == ()
    verify_schedule(g, s)
    assert assign_streams(g, max_streams=2).n_streams == 0


def test_single_node():
    g = dag([], nodes=["k"])
    s = assign_streams(g)
    assert (s.order, s.stream_of, s.waits, s.n_streams) == (("k",), {"k": 0}, (), 1)
    assert (s.critical_path, s.critical_path_cost) == (("k",), 1.0)
    verify_schedule(g, s)


def test_diamond():
    g = dag([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    s = assign_streams(g)
    assert s.dag_width == s.n_streams == 2
    assert s.levels == (("a",), ("b", "c"), ("d",))
    main = s.stream_of["a"]
    side = "b" if s.stream_of["b"] != main else "c"
    assert s.stream_of["d"] == main
    # The side kernel waits for the fork, the join waits for the side kernel.
    assert sorted(s.waits) == sorted([("a", side), (side, "d")])
    assert_sound_and_minimal(g, s)


def test_fan_in_fan_out_needs_closure_cover():
    # Reduction path cover needs 3 paths (a-c-d, b, e); on the closure b
    # chains to e through c, so 2 streams suffice.
    g = dag([("a", "c"), ("b", "c"), ("c", "d"), ("c", "e")])
    assert dag_width(g) == 2
    chains = chain_cover(g)
    assert len(chains) == 2
    assert sorted(map(len, chains)) == [2, 3]
    s = assign_streams(g)
    assert s.n_streams == 2
    assert len(s.waits) == 2
    assert_sound_and_minimal(g, s)


def test_chain():
    g = nx.path_graph([f"k{i}" for i in range(6)], create_using=nx.DiGraph)
    s = assign_streams(g)
    assert (s.dag_width, s.n_streams, s.waits) == (1, 1, ())
    assert s.order == tuple(f"k{i}" for i in range(6))
    assert s.critical_path == s.order and s.critical_path_cost == 6.0
    verify_schedule(g, s)


def test_independent_nodes():
    g = dag([], nodes=[f"k{i}" for i in range(5)])
    s = assign_streams(g)
    assert (s.dag_width, s.n_streams, s.waits) == (5, 5, ())
    assert sorted(s.stream_of.values()) == list(range(5))
    verify_schedule(g, s)
    capped = assign_streams(g, max_streams=2)
    assert capped.n_streams == 2 and capped.waits == ()
    verify_schedule(g, capped)


def inception():
    edges = []
    for b in range(4):
        edges += [("src", f"b{b}_0"), (f"b{b}_0", f"b{b}_1"), (f"b{b}_1", "concat")]
    return dag(edges)


def test_inception_block():
    g = inception()
    s = assign_streams(g)
    assert dag_width(g) == s.dag_width == s.n_streams == 4
    # 3 side branches: each waits on src once, and concat waits on each once.
    assert len(s.waits) == 6
    assert_sound_and_minimal(g, s)


def test_inception_capped():
    g = inception()
    uncapped = assign_streams(g)
    assert assign_streams(g, max_streams=4) == uncapped
    assert assign_streams(g, max_streams=10) == uncapped
    two = assign_streams(g, max_streams=2)
    assert two.n_streams == 2 and two.dag_width == 4
    assert_sound_and_minimal(g, two)
    one = assign_streams(g, max_streams=1)
    assert one.n_streams == 1 and one.waits == ()
    assert set(one.stream_of.values()) == {0}
    verify_schedule(g, one)


def test_critical_path_uses_node_costs():
    g = dag([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    g.nodes["c"]["cost"] = 5.0
    assert critical_path(g) == (("a", "c", "d"), 7.0)
    s = assign_streams(g)
    # The heavy branch is launched first.
    assert s.order[:2] == ("a", "c")


def test_minimal_waits_uses_transitivity():
    # c needs a and b; b already waited for a, so waiting for b implies a.
    g = dag([("a", "b"), ("b", "c"), ("a", "c")])
    waits = minimal_waits(g, ("a", "b", "c"), {"a": 0, "b": 1, "c": 2})
    assert waits == (("a", "b"), ("b", "c"))


def test_minimal_waits_one_per_source_stream():
    # x0, x1 run in order on stream 0; y needs both: only the later is waited on.
    g = dag([("x0", "x1"), ("x0", "y"), ("x1", "y")])
    assert minimal_waits(g, ("x0", "x1", "y"), {"x0": 0, "x1": 0, "y": 1}) == (
        ("x1", "y"),
    )


def test_verify_schedule_rejects_bad_schedules():
    g = dag([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    s = assign_streams(g)
    verify_schedule(g, s)
    with pytest.raises(AssertionError, match="not covered"):
        verify_schedule(g, dataclasses.replace(s, waits=s.waits[1:]))
    side = next(v for v in "bc" if s.stream_of[v] != s.stream_of["a"])
    with pytest.raises(AssertionError, match="redundant"):
        verify_schedule(g, dataclasses.replace(s, waits=(*s.waits, s.waits[0])))
    with pytest.raises(AssertionError, match="topological"):
        verify_schedule(g, dataclasses.replace(s, order=tuple(reversed(s.order))))
    broken = {**s.stream_of, side: s.stream_of["a"], "d": 1 - s.stream_of["a"]}
    with pytest.raises(AssertionError, match="not a chain"):
        verify_schedule(g, dataclasses.replace(s, stream_of=broken))


def test_verify_schedule_rejects_wait_implied_by_stream_order():
    g = inception()
    s = assign_streams(g)
    side = next(b for b in range(4) if s.stream_of[f"b{b}_0"] != s.stream_of["src"])
    # b_0 already waited on src, and b_1 follows b_0 on the same stream.
    extra = dataclasses.replace(s, waits=(*s.waits, ("src", f"b{side}_1")))
    with pytest.raises(AssertionError, match="redundant"):
        verify_schedule(g, extra)


def test_rejects_cycles_and_bad_caps():
    with pytest.raises(ValueError):
        assign_streams(dag([("a", "b"), ("b", "a")]))
    with pytest.raises(ValueError):
        assign_streams(dag([("a", "b")]), max_streams=0)


# --------------------------------------------------------------------------
# properties on random DAGs
# --------------------------------------------------------------------------


@PROPERTY
@given(DAGS)
def test_chain_cover_is_minimum_partition_into_chains(g):
    chains = chain_cover(g)
    flat = [v for c in chains for v in c]
    assert sorted(flat) == sorted(g) and len(flat) == len(set(flat))
    for c in chains:
        assert all(nx.has_path(g, a, b) for a, b in itertools.pairwise(c))
    assert len(chains) == dag_width(g) == brute_width(g)


@PROPERTY
@given(random_dags(max_nodes=9))
def test_chain_cover_prefers_reduction_edges(g):
    assert reduction_links(g, chain_cover(g)) == max_reduction_links(g)


@PROPERTY
@given(DAGS)
def test_uncapped_schedule_is_sound_and_minimal(g):
    s = assign_streams(g)
    assert s.n_streams == s.dag_width == brute_width(g)
    assert all(g.has_edge(u, v) for u, v in s.waits)
    waits_per_source = {(v, s.stream_of[u]) for u, v in s.waits}
    assert len(waits_per_source) == len(s.waits), "two waits on one source stream"
    assert_sound_and_minimal(g, s)


@PROPERTY
@given(DAGS, st.integers(1, 3))
def test_capped_schedule_respects_dependencies(g, cap):
    s = assign_streams(g, max_streams=cap)
    assert s.n_streams == min(cap, dag_width(g))
    assert set(s.stream_of.values()) == set(range(s.n_streams))
    assert_sound_and_minimal(g, s)
    if cap == 1:
        assert s.waits == ()


@PROPERTY
@given(DAGS)
def test_cap_at_or_above_width_changes_nothing(g):
    s = assign_streams(g)
    assert assign_streams(g, max_streams=max(1, s.dag_width)) == s
    assert assign_streams(g, max_streams=s.dag_width + 3) == s


@PROPERTY
@given(DAGS)
def test_metrics_and_determinism(g):
    s = assign_streams(g)
    assert [set(level) for level in s.levels] == [
        set(x) for x in nx.topological_generations(g)
    ]
    path, cost = s.critical_path, s.critical_path_cost
    assert all(g.has_edge(a, b) for a, b in itertools.pairwise(path))
    assert cost == pytest.approx(sum(g.nodes[v].get("cost", 1.0) for v in path))
    assert cost == pytest.approx(longest_cost(g))
    # Same graph, opposite insertion order: identical schedule.
    mirror = nx.DiGraph()
    mirror.add_nodes_from(reversed(list(g.nodes(data=True))))
    mirror.add_edges_from(reversed(list(g.edges)))
    assert assign_streams(mirror) == s
    assert chain_cover(mirror) == chain_cover(g)
    assert assign_streams(mirror, max_streams=2) == assign_streams(g, max_streams=2)
