"""Pass tests on hand-built graphs: no torch, groups named by node."""

import pickle

import networkx as nx
import pytest

from fusec.ir import Graph, Kind, Node, Ref, kind_of
from fusec.passes import grouping, reach, siblings
from fusec.passes.cleanup import cleanup
from fusec.passes.cost import bytes_fused, bytes_unfused
from fusec.passes.fuse import fuse
from fusec.passes.refusal import CODES, Refusal
from fusec.passes.verify import InvariantError, verify, verify_change
from tests.graphs import build
from tests.test_fuse_siblings import merging_members


def groups(graph: Graph) -> list[set[str]]:
    return [{m.name for m in members} for members in graph.groups().values()]


def reason(graph: Graph, src: str, dst: str) -> str:
    return graph.nx.edges[src, dst]["reason"]


def test_chain_of_ten_is_one_group():
    spec = [("x", "input", [])] + [(f"a{i}", "exp" if i % 2 else "neg", [f"a{i-1}" if i else "x"]) for i in range(10)]
    g = fuse(build(spec, ["a9"]))
    assert groups(g) == [{f"a{i}" for i in range(10)}]
    assert bytes_fused(g) == 2 * 4 * 8 * 4  # one read, one write
    assert bytes_unfused(g) == 10 * 2 * 4 * 8 * 4


def test_two_independent_chains_are_two_groups():
    g = fuse(build([("x", "input", []), ("y", "input", []), ("a", "exp", ["x"]), ("b", "neg", ["a"]),
                    ("c", "exp", ["y"]), ("d", "neg", ["c"])], ["b", "d"]))
    assert sorted(map(sorted, groups(g))) == [["a", "b"], ["c", "d"]]


def test_diamond_is_one_group():
    g = fuse(build([("x", "input", []), ("a", "exp", ["x"]), ("b", "neg", ["a"]), ("c", "tanh", ["a"]),
                    ("d", "add", ["b", "c"])], ["d"]))
    assert groups(g) == [{"a", "b", "c", "d"}]


def test_opaque_op_splits_chain_with_reason():
    g = fuse(build([("x", "input", []), ("a", "exp", ["x"]), ("b", "neg", ["a"]), ("s", "cumsum", ["b"]),
                    ("c", "exp", ["s"]), ("d", "neg", ["c"])], ["d"]))
    assert sorted(map(sorted, groups(g))) == [["a", "b"], ["c", "d"]]
    assert g["s"].group is None
    assert reason(g, "b", "s") == "s runs through torch (aten.cumsum.default)"
    assert reason(g, "s", "c") == "s runs through torch (aten.cumsum.default)"


def test_merge_that_would_create_cycle_is_refused():
    # a -> s(opaque) -> c and a -> c: fusing a with c would put s both before and after the group.
    g = fuse(build([("x", "input", []), ("a", "exp", ["x"]), ("s", "cumsum", ["a"]), ("c", "add", ["a", "s"])],
                   ["c"]))
    assert g["a"].group != g["c"].group
    assert reason(g, "a", "c") == "would create a cycle through s"
    verify(g)


def test_group_outputs_of_different_shapes_are_refused():
    # b (shape [8]) is needed outside the group, so it cannot be recomputed per row of c.
    g = fuse(build([("x", "input", [], (8,)), ("y", "input", []), ("b", "exp", ["x"], (8,)),
                    ("c", "add", ["y", "b"]), ("s", "cumsum", ["b"], (8,))], ["c", "s"]))
    assert g["b"].group != g["c"].group
    assert reason(g, "b", "c") == "shapes differ: [4,8] vs [8]"


def test_broadcast_producer_used_only_inside_is_fused():
    g = fuse(build([("x", "input", [], (8,)), ("y", "input", []), ("b", "exp", ["x"], (8,)),
                    ("c", "add", ["y", "b"])], ["c"]))
    assert groups(g) == [{"b", "c"}]


def test_view_alone_is_not_a_kernel():
    g = fuse(build([("x", "input", []), ("v", "permute", ["x"], (8, 4)), ("s", "cumsum", ["v"], (8, 4))], ["s"]))
    assert groups(g) == []
    assert g["v"].group is None


def test_fuel_caps_merges():
    spec = [("x", "input", [])] + [(f"a{i}", "exp", [f"a{i-1}" if i else "x"]) for i in range(6)]
    g = fuse(build(spec, ["a5"]), fuel=2)
    assert len(groups(g)) == 4
    assert "out of fusion fuel" in reason(g, "a2", "a3")


def test_fuel_caps_sibling_merges_too():
    # Three independent readers of x would share one kernel as siblings: with fusion off
    # each stays its own kernel, and one merge of fuel makes one pair.
    g = build([("x", "input", []), ("a", "exp", ["x"]), ("b", "neg", ["x"]), ("c", "sin", ["x"])], ["a", "b", "c"])
    assert groups(fuse(g)) == [{"a", "b", "c"}]
    assert groups(fuse(g, fuel=0)) == [{"a"}, {"b"}, {"c"}]
    assert groups(fuse(g, fuel=1)) == [{"a", "b"}, {"c"}]


def test_a_refused_producer_joins_once_its_readers_share_a_group():
    # b ([8]) is read by c1 and c2 ([4,8]): each edge alone is refused (b would escape with
    # another shape); once d has taken c1 and c2, the retry finds b read inside the group only.
    g = fuse(build([("x", "input", [], (8,)), ("y", "input", []), ("b", "exp", ["x"], (8,)),
                    ("c1", "add", ["y", "b"]), ("c2", "mul", ["y", "b"]), ("d", "add", ["c1", "c2"])], ["d"]))
    assert groups(g) == [{"b", "c1", "c2", "d"}]


def test_a_refusal_is_not_asked_again_of_unchanged_groups(monkeypatch):
    asked = []
    refusal = grouping.Grouping.refusal

    def counted(state, gu, gv):
        asked.append((tuple(state.members[gu]), tuple(state.members[gv])))
        return refusal(state, gu, gv)
    monkeypatch.setattr(grouping.Grouping, "refusal", counted)
    spec = [("x", "input", [])] + [(f"e{i}", "neg", [f"e{i-1}" if i else "x"]) for i in range(4)]
    spec += [("a", "exp", ["e3"]), ("s", "cumsum", ["a"]), ("c", "add", ["a", "s"])]
    g = fuse(build(spec, ["c"]))
    assert reason(g, "a", "c") == "would create a cycle through s"
    # e0 -> e1 ... e3 -> a merged, a -> c refused: neither group grows after, so the
    # retry does not ask again.
    assert len(asked) == len(set(asked)) == 5


def test_fuse_does_not_mutate_its_input():
    g = build([("x", "input", []), ("a", "exp", ["x"]), ("b", "neg", ["a"])], ["b"])
    before = [n for n in g]
    fuse(g)
    assert [n for n in g] == before


def test_cleanup_removes_dead_and_duplicate_nodes():
    g = build([("x", "input", []), ("a", "exp", ["x"]), ("a2", "exp", ["x"]), ("dead", "neg", ["x"]),
               ("b", "add", ["a", "a2"])], ["b"])
    out = cleanup(g)
    assert [n.name for n in out] == ["x", "a", "b", "output"]
    assert out["b"].operands() == ["a", "a"]


def test_cleanup_keeps_opaque_duplicates():
    g = build([("x", "input", []), ("r1", "rand_like", ["x"]), ("r2", "rand_like", ["x"]),
               ("b", "add", ["r1", "r2"])], ["b"])
    assert {"r1", "r2"} <= {n.name for n in cleanup(g)}


def test_kinds_follow_from_ops_and_verify_rejects_another():
    assert [kind_of(op) for op in ("exp", "permute", "sum", "matmul", "take", "aten.cumsum.default")] == \
        [Kind.POINTWISE, Kind.VIEW, Kind.REDUCTION, Kind.MATMUL, Kind.POINTWISE, Kind.OPAQUE]
    g = Graph()
    g.add(Node("x", "input", Kind.INPUT, (4,), "float32", (1,)))
    g.add(Node("a", "exp", Kind.POINTWISE, (4,), "float32", (1,), args=(Ref("x"),)))
    g.add(Node("output", "output", Kind.OUTPUT, (), "bool", args=(Ref("a"),)))
    verify(g)
    wrong = g.copy()
    wrong.update(g["a"].replace(kind=Kind.OPAQUE))
    with pytest.raises(InvariantError, match=r"a \(exp\) is opaque, but its op makes it pointwise"):
        verify(wrong)


def test_verify_rejects_non_convex_groups():
    g = build([("x", "input", []), ("a", "exp", ["x"]), ("s", "cumsum", ["a"]), ("c", "add", ["a", "s"])], ["c"])
    g.update(g["a"].replace(group="k0"))
    g.update(g["c"].replace(group="k0"))
    with pytest.raises(InvariantError, match="not convex"):
        verify(g)


def test_verify_rejects_missing_dtype():
    g = build([("x", "input", []), ("a", "exp", ["x"])], ["a"])
    g.update(g["a"].replace(dtype="mystery"))
    with pytest.raises(InvariantError, match="dtype"):
        verify(g)


def test_graph_rejects_use_before_definition():
    g = Graph()
    with pytest.raises(ValueError, match="not defined"):
        g.add(Node("a", "exp", Kind.POINTWISE, (4,), "float32", args=(Ref("x"),)))


def test_incremental_verify_checks_the_groups_a_pass_changed():
    g = build([("x", "input", []), ("a", "exp", ["x"]), ("s", "cumsum", ["a"]), ("c", "add", ["a", "s"]),
               ("d", "neg", ["x"])], ["c", "d"])
    convex = g.copy()
    convex.update(g["d"].replace(group="k1"))
    verify_change(g, convex, after="test")  # a new convex group is fine
    broken = convex.copy()
    broken.update(g["a"].replace(group="k0"))
    broken.update(g["c"].replace(group="k0"))
    with pytest.raises(InvariantError, match="k0 leaves through s"):
        verify_change(convex, broken, after="test")
    # A group the pass did not touch is not searched again: the check costs what the pass changed.
    renamed = broken.copy()
    renamed.update(broken["d"].replace(group="k2"))
    verify_change(broken, renamed, after="test")
    with pytest.raises(InvariantError, match="not convex"):
        verify(renamed)


def test_incremental_verify_checks_rewritten_nodes():
    g = build([("x", "input", []), ("a", "exp", ["x"])], ["a"])
    bad = g.copy()
    bad.update(g["a"].replace(dtype="mystery"))
    with pytest.raises(InvariantError, match="dtype"):
        verify_change(g, bad)
    # A node only put in a group is checked for that alone; any other change, even with
    # equal values in new objects, is checked in full.
    grouped = g.copy()
    grouped.update(g["a"].replace(group="k0"))
    verify_change(g, grouped)
    inputs = g.copy()
    inputs.update(g["x"].replace(group="k0"))
    with pytest.raises(InvariantError, match="input node x is in group k0"):
        verify_change(g, inputs)
    misread = g.copy()
    misread.update(g["a"].replace(group="k0", args=(Ref("a"),)))
    with pytest.raises(InvariantError, match="do not match operands"):
        verify_change(g, misread)


def test_fusion_refuses_a_merge_through_an_outside_path_in_a_long_graph():
    # x -> a -> (200 ops of a chain run by torch) -> t -> b, and a -> b: a and b must not fuse.
    spec = [("x", "input", []), ("a", "exp", ["x"])]
    prev = "a"
    for i in range(200):
        spec.append((f"t{i}", "cumsum", [prev]))
        prev = f"t{i}"
    spec.append(("b", "add", ["a", prev]))
    out = fuse(build(spec, ["b"]))
    assert out.nx.edges["a", "b"]["reason"] == "would create a cycle through t0"
    verify(out)


def test_every_refused_edge_has_a_code_tests_and_reports_group_by():
    g = fuse(build([("x", "input", []), ("a", "exp", ["x"]), ("s", "cumsum", ["a"]), ("c", "add", ["a", "s"])],
                   ["c"]))
    reasons = {(u, v): d["reason"] for u, v, d in g.nx.edges(data=True) if "reason" in d}
    assert reasons and all(isinstance(r, Refusal) and r.code in CODES for r in reasons.values())
    assert reasons["a", "s"].code == "extern" and reasons["a", "s"] == "s runs through torch (aten.cumsum.default)"
    assert pickle.loads(pickle.dumps(reasons["a", "s"])).code == "extern"  # plans in packages keep it
    with pytest.raises(ValueError, match="unknown refusal code 'nope'"):
        Refusal("nope", "text")


def _sum_rows(name: str, src: str) -> Node:
    return Node(name, "sum", Kind.REDUCTION, (4, 1), "float32", strides=(1, 1), args=(Ref(src), (1,), True),
                target="aten.sum.dim_IntList")


def test_sibling_reductions_merge_by_bits_and_an_edge_asks_the_exact_search(monkeypatch):
    # Nine sums of x's rows share a kernel: no path joins them, so no search runs. The sum r
    # reads s0's group by an edge (m -> u) and through cumsum t too: the bits say "joined",
    # only the exact search can say the edge is not the only path, and it refuses the cycle.
    g = Graph(name="test")
    g.add(Node("x", "input", Kind.INPUT, (4, 8), "float32", strides=(8, 1)))
    for i in range(9):
        g.add(_sum_rows(f"s{i}", "x"))
    g.add(Node("m", "mul", Kind.POINTWISE, (4, 8), "float32", strides=(8, 1), args=(Ref("x"), Ref("s0")),
               target="aten.mul.Tensor"))
    g.add(Node("t", "cumsum", kind_of("aten.cumsum.default"), (4, 1), "float32", strides=(1, 1),
               args=(Ref("s0"), 0), target="aten.cumsum.default"))
    g.add(Node("u", "add", Kind.POINTWISE, (4, 8), "float32", strides=(8, 1), args=(Ref("m"), Ref("t")),
               target="aten.add.Tensor"))
    g.add(_sum_rows("r", "u"))
    g.add(Node("output", "output", Kind.OUTPUT, (), "bool", args=tuple(Ref(n) for n in ["r", "m"] +
                                                                        [f"s{i}" for i in range(9)])))
    searched = []
    witness = reach.ContractedDag.cycle_witness

    def counted(dag, a, b):
        searched.append({a, b})
        return witness(dag, a, b)
    monkeypatch.setattr(reach.ContractedDag, "cycle_witness", counted)
    monkeypatch.setattr(siblings, "_merge_bucket", _traced(siblings._merge_bucket, searched))
    out = fuse(g)
    verify(out)
    assert {f"s{i}" for i in range(9)} | {"m"} in groups(out)
    assert out["r"].group != out["s0"].group and out["r"].group == out["u"].group
    start = searched.index("siblings") + 1
    bucket = searched[start:[*searched, "siblings"].index("siblings", start)]  # the reductions' bucket
    assert bucket == [{"m", "r"}]  # a group's vertex is named by the member it merged into last


def _traced(fn, log):
    def traced(*args):
        log.append("siblings")
        return fn(*args)
    return traced


@pytest.mark.parametrize("seed", range(20))
def test_set_reach_stays_exact_as_members_merge(seed):
    for bits, live, now in merging_members(seed, 0.08, 12):
        for a in live:
            for b in live:
                if a != b:
                    assert bits.joined(a, b) == (nx.has_path(now, a, b) or nx.has_path(now, b, a))
