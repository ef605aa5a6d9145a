"""A kernel stores no view of what is in memory anyway: torch (or the launcher) makes the view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import fusec
from fusec.examples import TransformerBlock
from fusec.ir import Graph, Kind, Node, Ref
from fusec.passes.view_outputs import view_outputs
from tests.eager import check
from tests.test_training import check_training


def _root(graph: Graph, name: str) -> str:
    """The value a chain of views starts at."""
    while graph[name].kind is Kind.VIEW and len(set(graph[name].operands())) == 1:
        name = graph[name].operands()[0]
    return name


def _copied_views(report: fusec.Report) -> list[tuple[str, str]]:
    """(kernel, output) for every stored view of a graph input, of another output of its kernel,
    or one of two or more stored views of the same value."""
    found = []
    for g in report.graphs:
        graph = g.plan.graph
        for kernel in g.plan.kernels:
            roots = [_root(graph, o) for o in kernel.outputs]
            for out, root in zip(kernel.outputs, roots, strict=True):
                if out != root and (graph[root].kind is Kind.INPUT or root in kernel.outputs or roots.count(root) > 1):
                    found.append((kernel.id, out))
    return found


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def qkv_attention(x, w, b):
    y = F.linear(x, w, b).view(2, 16, 3, 2, 16)
    q, k, v = (y[:, :, i].transpose(1, 2) for i in range(3))
    return F.scaled_dot_product_attention(q, k, v)


def test_three_views_of_a_fused_qkv_product_are_one_stored_buffer():
    args = (torch.randn(2, 16, 64), torch.randn(96, 64), torch.randn(96))
    report = check(qkv_attention, *args, kernels=1, externs=1)
    (kernel,) = report.graphs[0].plan.kernels
    graph = report.graphs[0].plan.graph
    assert [graph[o].kind for o in kernel.outputs] == [Kind.POINTWISE], kernel.outputs  # the biased product
    assert kernel.bytes == _nbytes(*args) + 2 * 16 * 96 * 4  # inputs once, the product once


def linear_and_its_heads(x, w, b):
    y = F.linear(x, w, b)
    return y, y.view(2, 8, 2, 8).transpose(1, 2)


def test_a_returned_view_of_a_stored_output_is_a_view_of_it_as_in_eager():
    args = (torch.randn(16, 16), torch.randn(16, 16), torch.randn(16))
    report = check(linear_and_its_heads, *args, kernels=1, externs=0)
    (kernel,) = report.graphs[0].plan.kernels
    assert len(kernel.outputs) == 1 and kernel.bytes == _nbytes(*args) + 16 * 16 * 4
    y, heads = fusec.compile(linear_and_its_heads)(*args)
    # eager returns the heads as a view of y: the same memory, not a copy
    assert heads.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()
    assert heads.stride() == linear_and_its_heads(*args)[1].stride()


def bias_and_weight_gradients(g, a):
    g2 = g.reshape(-1, 32)
    return g2.sum(0), g2.t() @ a


def test_a_view_of_an_input_read_by_a_kernel_and_a_matmul_is_not_copied():
    args = (torch.randn(4, 8, 32), torch.randn(32, 24))
    report = check(bias_and_weight_gradients, *args, kernels=1, externs=1)
    (kernel,) = report.graphs[0].plan.kernels
    assert not _copied_views(report)
    assert kernel.bytes == _nbytes(args[0]) + 32 * 4  # reads g once, writes the sum


def test_linear_backward_reads_the_incoming_gradient_once():
    report = check_training(nn.Linear(32, 24), torch.randn(4, 8, 32))
    assert not _copied_views(report), _copied_views(report)
    backward = report.graphs[1].plan
    tangent = next(n for n in backward.graph if n.kind is Kind.INPUT and n.name.startswith("tangents"))
    for kernel in backward.kernels:  # no kernel writes a copy of the incoming gradient
        assert all(_root(backward.graph, o) != tangent.name for o in kernel.outputs), kernel


def test_transformer_block_stores_no_view_copies_forward_and_backward():
    torch.manual_seed(0)
    report = check_training(TransformerBlock(32, 2), torch.randn(2, 8, 32), rtol=1e-3, atol=1e-4)
    assert not _copied_views(report), _copied_views(report)
    model = TransformerBlock(32, 2).eval()
    with torch.no_grad():
        report = check(model, torch.randn(2, 8, 32), rtol=1e-4, atol=1e-5)
    assert not _copied_views(report), _copied_views(report)


def scaled_and_its_transpose(x, b):
    y = x * 2 + b
    t = y.t()
    return y, t, (t + 1) * t


def test_a_moved_view_read_inside_its_kernel_and_outside_it():
    args = (torch.randn(8, 8), torch.randn(8))
    report = check(scaled_and_its_transpose, *args, kernels=1, externs=0)
    (kernel,) = report.graphs[0].plan.kernels
    graph = report.graphs[0].plan.graph
    # The kernel reads the transpose as index math and stores y and the product only.
    assert any(graph[m].op == "permute" for m in kernel.members)
    assert len(kernel.outputs) == 2 and kernel.bytes == _nbytes(*args) + 2 * 8 * 8 * 4
    y, t, _ = fusec.compile(scaled_and_its_transpose)(*args)
    assert t.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()  # a view of y, as eager's


def bits_and_halves(x):
    y = x * 2  # exact: its bits are eager's
    return y.view(torch.int32), y[:4], y[4:]


def test_a_view_reading_a_value_as_another_dtype_beside_moved_views():
    args = (torch.randn(8, 16),)
    report = check(bits_and_halves, *args, kernels=1, externs=0)
    assert not _copied_views(report), _copied_views(report)
    (kernel,) = report.graphs[0].plan.kernels
    assert kernel.bytes == _nbytes(*args) + 2 * 8 * 16 * 4  # y once, its bits once


def _grouped(graph: Graph, names: set[str], group: str) -> Graph:
    return Graph([n.replace(group=group) if n.name in names else n for n in graph], name=graph.name)


def test_views_cover_their_root_by_bytes_not_elements():
    # Two 16-element views reading a float32 [4, 8] value as bytes cover 32 of its 128 bytes:
    # the kernel stores them (32 bytes) rather than the whole value.
    x = Node("x", "input", Kind.INPUT, (4, 8), "float32", strides=(8, 1))
    y = Node("y", "exp", Kind.POINTWISE, (4, 8), "float32", strides=(8, 1), args=(Ref("x"),))
    views = [Node(name, "reshape", Kind.VIEW, (16,), "int8", strides=(1,), args=(Ref("y"),)) for name in "ab"]
    out = Node("output", "output", Kind.OUTPUT, (), "bool", args=(Ref("a"), Ref("b")))
    graph = _grouped(Graph([x, y, *views, out]), {"y", "a", "b"}, "k")
    assert view_outputs(graph) is graph
    wide = [n.replace(dtype="float32") if n.name in "ab" else n for n in graph]  # 128 bytes: covered
    moved = view_outputs(Graph(wide))
    assert moved["a"].group is None and moved["b"].group is None and moved["y"].group == "k"
