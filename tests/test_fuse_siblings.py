"""Sibling merges (passes/siblings.py): the bit-kept cycle test merges exactly what the
searches merge, on random graphs of sibling reductions."""

from __future__ import annotations

import random
from collections.abc import Iterator

import networkx as nx
import pytest

from fusec.ir import Graph, Kind, Node, Ref, kind_of
from fusec.passes import siblings
from fusec.passes.fuse import fuse
from fusec.passes.reach import ContractedDag, SetReach
from fusec.passes.verify import verify


def _node(name: str, op: str, operands: list[str], shape: tuple[int, ...]) -> Node:
    args: tuple = tuple(Ref(o) for o in operands)
    if op == "sum":
        args = (*args, (1,), True)
    strides = (shape[1], 1) if shape[1] > 1 else (1, 1)
    return Node(name, op, kind_of(f"aten.{op}.default") if op == "cumsum" else
                Kind.REDUCTION if op == "sum" else Kind.POINTWISE, shape, "float32", strides=strides,
                args=args, target=f"aten.{op}.default")


def random_graph(seed: int, size: int = 160, lanes: int = 4) -> Graph:
    """Lanes of pointwise ops, each taking row sums of its values and reading them back,
    cut into groups by cumsums run by torch, and mixed now and then (paths between lanes)."""
    rng = random.Random(seed)
    g = Graph(name=f"random{seed}")
    g.add(Node("x", "input", Kind.INPUT, (4, 8), "float32", strides=(8, 1)))
    current = ["x"] * lanes
    for i in range(size):
        lane, pick, name = rng.randrange(lanes), rng.random(), f"n{i}"
        if pick < 0.3:
            g.add(_node(f"s{i}", "sum", [current[lane]], (4, 1)))
            g.add(_node(name, "sub", [current[lane], f"s{i}"], (4, 8)))
        elif pick < 0.5:
            g.add(_node(name, "cumsum", [current[lane]], (4, 8)))
        elif pick < 0.6:
            g.add(_node(name, "add", [current[lane], rng.choice(current)], (4, 8)))
        else:
            g.add(_node(name, rng.choice(["mul", "add"]), [current[lane], "x"], (4, 8)))
        current[lane] = name
    g.add(Node("output", "output", Kind.OUTPUT, (), "bool", args=tuple(Ref(n) for n in dict.fromkeys(current))))
    return g


def _plan(graph: Graph) -> tuple[list[list[str]], dict]:
    out = fuse(graph)
    verify(out)
    groups = [sorted(m.name for m in members) for members in out.groups().values()]
    return groups, {(u, v): str(d.get("reason")) for u, v, d in out.nx.edges(data=True)}


@pytest.mark.parametrize("seed", range(30))
def test_bits_merge_what_the_searches_merge(seed, monkeypatch):
    graph = random_graph(seed)
    monkeypatch.setattr(siblings, "_BITS_BUCKET", 10**9)
    searched = _plan(graph)
    buckets = []
    bits = siblings._Bits

    def counted(state, groups):
        buckets.append(len(groups))
        return bits(state, groups)
    monkeypatch.setattr(siblings, "_BITS_BUCKET", 2)
    monkeypatch.setattr(siblings, "_Bits", counted)
    assert _plan(graph) == searched
    assert max(buckets) >= 8  # a bucket of many sibling reductions went through the bits


def test_random_graphs_merge_some_siblings_and_refuse_others():
    out = fuse(random_graph(0))
    sums = [n for n in out if n.op == "sum"]
    assert len(sums) >= 15
    assert 1 < len({n.group for n in sums}) < len(sums)


def merging_members(seed: int, density: float, count: int) -> Iterator[tuple[SetReach, list[int], nx.DiGraph]]:
    """SetReach over `count` nodes of a random 40-node DAG while random pairs of them merge (where
    no cycle forms): (its bits, the members still apart, the contracted DAG) before each merge."""
    rng = random.Random(seed)
    dag = nx.DiGraph()
    dag.add_nodes_from(range(40))
    dag.add_edges_from((u, v) for u in range(40) for v in range(u + 1, 40) if rng.random() < density)
    members = sorted(rng.sample(range(40), count))
    dags = ContractedDag(dag.edges, {v: v for v in dag})
    bits = SetReach(dags, members)
    for _ in range(30):
        live = [v for v in members if v in bits.index]
        yield bits, live, nx.DiGraph({v: list(succ) for v, succ in dags.succ.items()})
        if len(live) < 2:
            return
        gone, kept = rng.sample(live, 2)
        if dags.cycle_witness(gone, kept) is None:
            dags.merge(gone, kept)
            bits.merge(gone, kept)


@pytest.mark.parametrize("seed", range(20))
def test_set_reach_lists_the_members_no_path_joins(seed):
    for bits, live, now in merging_members(seed, 0.06, 14):
        for a in live:
            free = {v for v in live if bits.index[v] > bits.index[a] and
                    not (nx.has_path(now, a, v) or nx.has_path(now, v, a))}
            found, mask = set(), bits.unjoined_after(a, bits.index[a])
            while mask:
                found.add(bits.first_of(mask))
                mask &= mask - 1
            assert found == free
