"""The bitset chain cover (passes/chains.py) and the bounded reachability fusion uses (passes/reach.py)."""

from __future__ import annotations

import itertools
import random

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parallel import DAGS, brute_width, random_dags

from fusec.passes.chains import Closure, greedy_matching, minimum_chain_cover
from fusec.passes.parallel import WEIGHTED_PAIRS, _rank, _weighted_chain_cover, chain_cover, dag_width
from fusec.passes.reach import ContractedDag

PROPERTY = settings(max_examples=80, deadline=None)


def assert_cover(g: nx.DiGraph, chains: list[list]) -> None:
    flat = [v for c in chains for v in c]
    assert sorted(flat) == sorted(g) and len(flat) == len(set(flat))
    for c in chains:
        assert all(nx.has_path(g, a, b) for a, b in itertools.pairwise(c))


def layered(n: int, p: float, seed: int) -> nx.DiGraph:
    rng = random.Random(seed)
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from((i, j) for i in range(n) for j in range(i + 1, min(n, i + 40)) if rng.random() < p)
    return g


@PROPERTY
@given(DAGS)
def test_bitset_cover_is_a_minimum_chain_cover(g):
    chains = minimum_chain_cover(g, list(nx.topological_sort(g)))
    assert_cover(g, chains)
    # Never more chains than the exact weighted matching, and exactly the width it reaches.
    assert len(chains) == len(_weighted_chain_cover(g, _rank(g))) == brute_width(g)


@PROPERTY
@given(random_dags(max_nodes=12))
def test_greedy_start_is_a_cover_the_augmenting_paths_only_shorten(g):
    order = list(nx.topological_sort(g))
    succ = greedy_matching(Closure(g, order))
    greedy_chains = len(g) - sum(v is not None for v in succ)
    assert greedy_chains >= len(minimum_chain_cover(g, order)) == dag_width(g)


@settings(max_examples=10, deadline=None)
@given(st.integers(40, 120), st.integers(2, 30), st.integers(0, 10**6))
def test_bitset_cover_matches_the_weighted_matching_on_larger_graphs(n, density, seed):
    g = layered(n, density / 100, seed)
    chains = minimum_chain_cover(g, list(nx.topological_sort(g)))
    assert_cover(g, chains)
    assert len(chains) == len(_weighted_chain_cover(g, _rank(g)))


def test_large_graphs_take_the_bitset_cover_and_stay_exact():
    g = layered(600, 0.05, 1)
    pairs = sum(len(nx.descendants(g, v)) for v in g)
    assert pairs > WEIGHTED_PAIRS
    chains = chain_cover(g)
    assert_cover(g, chains)
    # Dilworth: a chain cover and an antichain of the same size are both optimal.
    antichain = max_antichain_size(g)
    assert len(chains) == antichain == dag_width(g)


def max_antichain_size(g: nx.DiGraph) -> int:
    """Width by networkx's Hopcroft-Karp on the explicit closure (an independent oracle)."""
    closure = nx.transitive_closure_dag(g)
    bip = nx.Graph()
    tops = [("out", v) for v in g]
    bip.add_nodes_from(tops)
    bip.add_nodes_from(("in", v) for v in g)
    bip.add_edges_from((("out", u), ("in", v)) for u, v in closure.edges)
    return len(g) - len(nx.bipartite.hopcroft_karp_matching(bip, top_nodes=tops)) // 2


@PROPERTY
@given(random_dags(max_nodes=12), st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=12))
def test_contracted_dag_refuses_exactly_the_merges_that_make_cycles(g, merges):
    order = {v: i for i, v in enumerate(nx.topological_sort(g))}
    state = ContractedDag(g.edges, dict(order))
    members = {v: {v} for v in g}
    names = sorted(g)
    for i, j in merges:
        if not names or i >= len(names) or j >= len(names):
            continue
        a, b = state_vertex(members, names[i]), state_vertex(members, names[j])
        if a == b:
            continue
        now = nx.DiGraph({v: list(succ) for v, succ in state.succ.items()})
        trial = nx.contracted_nodes(now, b, a, self_loops=False)
        assert (state.cycle_witness(a, b) is None) == nx.is_directed_acyclic_graph(trial)
        if state.cycle_witness(a, b) is None:
            state.merge(a, b)
            members[b] |= members.pop(a)
            assert all(state.order[u] < state.order[v] for u in state.succ for v in state.succ[u])
            assert all(u in state.pred[v] for u in state.succ for v in state.succ[u])
            assert sum(map(len, state.succ.values())) == sum(map(len, state.pred.values()))


def state_vertex(members: dict, name: str) -> str:
    return next(vertex for vertex, names in members.items() if name in names)
