"""Fusion under dynamic shapes: a group's sizes kept per group and compared pairwise give
the answer a walk over the whole union gives (passes/symbolic.py)."""

from __future__ import annotations

import random

import pytest
import sympy

from fusec.ir import Graph, Kind, Node, Ref
from fusec.passes.symbolic import coincidence, sizes_seen

S0, S1 = sympy.Symbol("s0", positive=True, integer=True), sympy.Symbol("s1", positive=True, integer=True)
HINTS = {"s0": 4, "s1": 4}
# Dims whose example values coincide (4 and 8) while their expressions differ, and others.
CLASHING = [4, S0, S1, 2 * S0, 8, 2 * S1]
PLAIN = [2, 3, 5, 3 * S0 + 1]


def _value(dim) -> int:
    return int(dim.subs({S0: 4, S1: 4})) if isinstance(dim, sympy.Expr) else dim


def random_nodes(seed: int, count: int = 12) -> tuple[Graph, list[Node]]:
    rng = random.Random(seed)
    g = Graph(name=f"dynamic{seed}")
    g.hints = dict(HINTS)
    made = []
    for i in range(count):
        exprs = tuple(rng.choice(CLASHING if rng.random() < 0.3 else PLAIN) for _ in range(rng.choice([1, 2])))
        shape = tuple(_value(d) for d in exprs)
        symbolic = any(isinstance(d, sympy.Expr) for d in exprs)
        reads = rng.sample(made, min(len(made), rng.choice([0, 1, 2])))
        node = Node(f"n{i}", "add" if reads else "input", Kind.POINTWISE if reads else Kind.INPUT, shape,
                    "float32", args=tuple(Ref(n.name) for n in reads), sizes=(exprs, None) if symbolic else None)
        g.add(node)
        made.append(node)
    return g, made


@pytest.mark.parametrize("seed", range(60))
def test_two_groups_sizes_clash_exactly_when_their_union_has_a_coincidence(seed):
    g, nodes = random_nodes(seed)
    rng = random.Random(seed)
    computing = [n for n in nodes if n.kind is Kind.POINTWISE]
    rng.shuffle(computing)
    cut = rng.randrange(1, len(computing))
    u, v = computing[:cut], computing[cut:]
    (su, clash_u), (sv, clash_v) = sizes_seen(g, u), sizes_seen(g, v)
    merged = clash_u or clash_v or coincidence(su, sv)
    _, whole = sizes_seen(g, u + v)
    assert bool(merged) == bool(whole)
    if merged:
        assert merged.code == "symbolic" and "equal in the example only" in merged


def test_groups_of_one_size_each_clash_only_together():
    g = Graph(name="dynamic")
    g.hints = dict(HINTS)
    g.add(Node("x", "input", Kind.INPUT, (4,), "float32", sizes=((S0,), None)))
    g.add(Node("a", "exp", Kind.POINTWISE, (4,), "float32", args=(Ref("x"),), sizes=((S0,), None)))
    g.add(Node("y", "input", Kind.INPUT, (4,), "float32", sizes=((S1,), None)))
    g.add(Node("b", "neg", Kind.POINTWISE, (4,), "float32", args=(Ref("y"),), sizes=((S1,), None)))
    (sa, clash_a), (sb, clash_b) = sizes_seen(g, [g["a"]]), sizes_seen(g, [g["b"]])
    assert clash_a is None and clash_b is None
    assert "s0" in coincidence(sa, sb) and "s1" in coincidence(sa, sb)
    assert sizes_seen(g, [g["a"], g["b"]])[1] is not None
    assert coincidence(sa, sizes_seen(g, [g["x"]])[0]) is None
