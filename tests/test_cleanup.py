"""cleanup folds a permute that undoes the permute it reads (x.t().t()) into the value itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import fusec
from fusec.ir import Graph, Kind, Node, Ref
from fusec.passes.cleanup import cleanup
from tests.eager import check
from tests.test_training import check_training


def _permute(name: str, src: Node, dims: tuple[int, ...], strides: tuple[int, ...] | None = None) -> Node:
    shape = tuple(src.shape[d] for d in dims)
    strides = strides or tuple(src.strides[d] for d in dims)
    return Node(name, "permute", Kind.VIEW, shape, "float32", strides, args=(Ref(src.name), dims))


def _graph(*nodes: Node, outputs: tuple[str, ...]) -> Graph:
    return Graph([*nodes, Node("output", "output", Kind.OUTPUT, (), "bool", args=tuple(map(Ref, outputs)))])


def _pairs(graph: Graph) -> int:
    """Permutes of a permute."""
    return sum(n.op == "permute" and graph[n.operands()[0]].op == "permute" for n in graph)


X = Node("x", "input", Kind.INPUT, (2, 3, 4), "float32", (12, 4, 1))


def test_a_permute_undoing_the_one_it_reads_is_the_value_itself():
    first = _permute("p", X, (1, 2, 0))
    undo = _permute("q", first, (2, 0, 1))
    exp = Node("e", "exp", Kind.POINTWISE, (2, 3, 4), "float32", (12, 4, 1), args=(Ref("q"),))
    out = cleanup(_graph(X, first, undo, exp, outputs=("e", "q")))
    assert [n.name for n in out] == ["x", "e", "output"]
    assert out["e"].operands() == ["x"] and out.output.operands() == ["e", "x"]


def test_permutes_that_do_not_undo_each_other_are_kept():
    first = _permute("p", X, (1, 2, 0))
    again = _permute("q", first, (1, 2, 0))  # (2, 0, 1) of x: not its order
    assert [n.name for n in cleanup(_graph(X, first, again, outputs=("q",)))] == ["x", "p", "q", "output"]


def test_an_undone_permute_with_another_layout_than_the_value_is_kept():
    first = _permute("p", X, (1, 2, 0))
    undo = _permute("q", first, (2, 0, 1), strides=(1, 2, 6))  # what a caller would see differs
    assert [n.name for n in cleanup(_graph(X, first, undo, outputs=("q",)))] == ["x", "p", "q", "output"]


def product_plus_bias(x, w, b):
    return (x @ w).t().t() + b


def normed_product(x, w, b):
    return F.layer_norm(F.linear(x, w, b), (16,)).t().t() * 2


def relu_twice_transposed(x):
    y = torch.relu(x)
    return y.t().t(), x.t().t()


def test_forward_undone_permutes_fold_into_the_matmul_epilogue():
    args = (torch.randn(8, 16), torch.randn(16, 16), torch.randn(16))
    # Read through the two permutes, the product was torch's matmul + an add kernel, and the
    # normed product two kernels (a tile does not read its product through a permute).
    for fn in (product_plus_bias, normed_product):
        report = check(fn, *args, kernels=1, externs=0, rtol=1e-4, atol=1e-4)
        capture, cleaned = (dict(report.passes(report.graphs[0].name))[p] for p in ("capture", "cleanup"))
        assert (_pairs(capture), _pairs(cleaned)) == (1, 0)


def test_an_output_that_is_an_undone_permute_keeps_its_layout_and_aliasing():
    x = torch.randn(8, 4)
    report = check(relu_twice_transposed, x, kernels=1, externs=0)
    graph = report.graphs[0].plan.graph
    assert not any(n.op == "permute" for n in graph)
    y, same = fusec.compile(relu_twice_transposed)(x)
    assert y.stride() == (4, 1) and same.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def test_training_step_weight_gradients_read_without_undone_permutes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 32))
    report = check_training(model, torch.randn(8, 32), kernels=[2, 3], rtol=1e-4, atol=1e-5)
    backward = report.graphs[1]
    history = dict(report.passes(backward.name))
    # Per Linear: its weight transposed back for the input gradient's matmul, its weight
    # gradient (mm -> t -> t) for the output: views the launcher made per call.
    assert (_pairs(history["capture"]), _pairs(history["cleanup"])) == (4, 0)
    assert len(history["capture"].op_nodes()) - len(history["cleanup"].op_nodes()) == 8
    ops = [row["ops"] for row in report.to_dict()["graphs"][1]["history"]]
    assert ops[0] - ops[1] == 8  # the report's pass history counts them
    assert report.stats["extern_calls"] == 3  # the matmuls torch runs: views never were launches
