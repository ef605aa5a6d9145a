"""Index math computed from constants, and views read only by views, get one copy per
reader, so each fuses into its reader's kernel; a producer whose readers of another
shape end up in one kernel joins it."""

from fusec.ir import Graph, Kind, Node, Ref, contiguous_strides
from fusec.passes.constants import MAX_COPIES, derived_constants, private_constants
from fusec.passes.fuse import fuse
from fusec.passes.verify import verify


def node(name, op, kind, shape, args=(), dtype="float32"):
    return Node(name, op, kind, shape, dtype, strides=contiguous_strides(shape), args=args)


def positions_graph(readers: int = 2) -> Graph:
    """position = iota * 8 + 1 (a [4] constant) added to `readers` separate inputs [2, 4]."""
    g = Graph(name="test")
    g.add(node("iota", "iota", Kind.POINTWISE, (4,), (0, 1), "int64"))
    g.add(node("scaled", "mul", Kind.POINTWISE, (4,), (Ref("iota"), 8), "int64"))
    g.add(node("position", "add", Kind.POINTWISE, (4,), (Ref("scaled"), 1), "int64"))
    outs = []
    for i in range(readers):
        g.add(node(f"x{i}", "input", Kind.INPUT, (2, 4)))
        g.add(node(f"y{i}", "add", Kind.POINTWISE, (2, 4), (Ref(f"x{i}"), Ref("position"))))
        g.add(node(f"s{i}", "cumsum", Kind.OPAQUE, (2, 4), (Ref(f"y{i}"),)))
        outs.append(Ref(f"s{i}"))
    g.add(Node("output", "output", Kind.OUTPUT, (), "bool", args=tuple(outs)))
    return g


def test_each_reader_of_derived_index_math_gets_its_own_copy():
    g = positions_graph()
    assert derived_constants(g) == {"scaled", "position"}
    out = private_constants(g)
    verify(out)
    assert [u for n in derived_constants(out) for u in out.users(n)] and all(
        len(out.users(n)) == 1 for n in derived_constants(out))
    assert {"position", "position_copy1", "scaled_copy1"} <= set(out.nx.nodes)
    assert out["y1"].args[1] == Ref("position_copy1")
    assert len(g) + 2 == len(out)


def test_private_copies_fuse_into_their_readers_and_no_small_kernel_is_left():
    before = fuse(positions_graph())
    assert {"scaled", "position"} in [{n.name for n in m} for m in before.groups().values()]  # its own kernel
    after = fuse(private_constants(positions_graph()))
    assert sorted(sorted(n.name for n in m) for m in after.groups().values()) == [
        ["position", "scaled", "y0"], ["position_copy1", "scaled_copy1", "y1"]]


def test_views_read_only_by_views_are_copied_per_reader():
    g = Graph(name="test")
    g.add(node("x", "input", Kind.INPUT, (4, 16)))
    g.add(node("rows", "slice", Kind.VIEW, (2, 16), (Ref("x"), 0, 0, 2)))
    g.add(node("a", "slice", Kind.VIEW, (2, 8), (Ref("rows"), 1, 0, 2)))
    g.add(node("b", "slice", Kind.VIEW, (2, 8), (Ref("rows"), 1, 1, 2)))
    g.add(node("m", "maximum", Kind.POINTWISE, (2, 8), (Ref("a"), Ref("b"))))
    g.add(Node("output", "output", Kind.OUTPUT, (), "bool", args=(Ref("m"),)))
    out = private_constants(g)
    assert out.users("rows") == ["a"] and out.users("rows_copy1") == ["b"]
    assert len(fuse(out).groups()) == 1


def test_a_graph_with_nothing_shared_is_returned_as_is():
    g = positions_graph(readers=1)
    assert private_constants(g) is g


def test_too_many_copies_leave_the_graph_shared(monkeypatch):
    monkeypatch.setattr("fusec.passes.constants.MAX_COPIES", 1)
    g = positions_graph()
    assert private_constants(g) is g
    assert MAX_COPIES > 1


def test_producer_read_through_slices_of_another_shape_joins_their_kernel():
    # e -> two slices of half its width -> one add: once both slices are in the add's
    # kernel, e has no reader outside it and merges on the retry.
    g = Graph(name="test")
    g.add(node("x", "input", Kind.INPUT, (4, 16)))
    g.add(node("e", "exp", Kind.POINTWISE, (4, 16), (Ref("x"),)))
    g.add(node("lo", "slice", Kind.VIEW, (4, 8), (Ref("e"), 1, 0, 1)))
    g.add(node("hi", "slice", Kind.VIEW, (4, 8), (Ref("e"), 1, 8, 1)))
    g.add(node("sum", "add", Kind.POINTWISE, (4, 8), (Ref("lo"), Ref("hi"))))
    g.add(Node("output", "output", Kind.OUTPUT, (), "bool", args=(Ref("sum"),)))
    fused = fuse(g)
    assert [{n.name for n in m} for m in fused.groups().values()] == [{"e", "lo", "hi", "sum"}]
    assert all("reason" not in fused.nx.edges[e] for e in [("e", "lo"), ("e", "hi")])
