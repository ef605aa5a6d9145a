"""A reduction's per-element results read through a permute stay in its kernel: the permute
relabels the dims of each element (its row is unchanged), and the kernel stores and reads the
permuted value at the element's own index. ConvNeXt's channels-last LayerNorm (NCHW in,
permute to NHWC, LayerNorm over C, permute back) is one kernel whose row walks C with stride
H*W. Where values would really change rows, fusion still refuses, with the reason."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
from fusec.bench.cnn_zoo import ConvNeXtBlock, example
from fusec.ir import Kind, Node, Ref
from fusec.passes.refusal import Refusal
from fusec.passes.rows import computed_from_rows, element_frames
from tests.eager import check
from tests.test_training import check_training


def _affine(channels: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return (torch.rand(channels) + 0.5).to(dtype), torch.randn(channels).to(dtype)


def _refusals(report: fusec.Report, code: str) -> list[str]:
    return [e["reason"] for e in report.edges() if e["code"] == code]


def _node(name, op, kind, shape, *operands, extra=()):
    return Node(name, op, kind, shape, "float32", args=(*(Ref(o) for o in operands), *extra))


def _frames(*nodes, domain):
    ordered = list(nodes)
    return element_frames(ordered, computed_from_rows(ordered), domain, {n.name: n for n in ordered})


def test_frames_follow_permutes_through_pointwise_ops():
    """Rows of (2,3) over a dim of 4: x - sum(x) permuted to (4,2,3) and scaled keeps the frame (2,0,1)."""
    total = _node("s", "sum", Kind.REDUCTION, (2, 3, 1), "x")
    centred = _node("d", "sub", Kind.POINTWISE, (2, 3, 4), "x", "s")
    turned = _node("p", "permute", Kind.VIEW, (4, 2, 3), "d", extra=((2, 0, 1),))
    scaled = _node("q", "mul", Kind.POINTWISE, (4, 2, 3), "p", "y")
    back = _node("b", "permute", Kind.VIEW, (2, 3, 4), "q", extra=((1, 2, 0),))
    frames = _frames(total, centred, turned, scaled, back, domain=((2, 3, 4), (2,)))
    assert frames == {"d": (0, 1, 2), "p": (2, 0, 1), "q": (2, 0, 1), "b": (0, 1, 2)}


def test_frames_refuse_a_reduction_or_a_per_row_value_read_permuted():
    total = _node("s", "sum", Kind.REDUCTION, (3, 3, 1), "x")
    centred = _node("d", "sub", Kind.POINTWISE, (3, 3, 3), "x", "s")
    turned = _node("p", "permute", Kind.VIEW, (3, 3, 3), "d", extra=((0, 2, 1),))
    domain = ((3, 3, 3), (2,))
    again = _node("s2", "sum", Kind.REDUCTION, (3, 3, 1), "p")
    found = _frames(total, centred, turned, again, domain=domain)
    assert isinstance(found, Refusal) and found.code == "row-read", found
    shifted = _node("e", "sub", Kind.POINTWISE, (3, 3, 3), "p", "s")
    found = _frames(total, centred, turned, shifted, domain=domain)
    assert found == "e would read the per-row value s in a permuted order of the rows"


def test_a_permute_moving_only_size_one_dims_keeps_the_rows_order():
    total = _node("s", "amax", Kind.REDUCTION, (1, 5, 1), "x")
    centred = _node("d", "sub", Kind.POINTWISE, (1, 5, 6), "x", "s")
    turned = _node("p", "permute", Kind.VIEW, (5, 1, 6), "d", extra=((1, 0, 2),))
    viewed = _node("v", "reshape", Kind.VIEW, (5, 1, 6), "d")
    mixed = _node("m", "add", Kind.POINTWISE, (5, 1, 6), "p", "v")
    frames = _frames(total, centred, turned, viewed, mixed, domain=((1, 5, 6), (2,)))
    assert frames["m"] == (1, 0, 2) and frames["v"] == (0, 1, 2)


@pytest.mark.parametrize("shape", [(2, 40, 5, 7), (1, 3, 1, 9), (3, 17, 4, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_layer_norm_with_residual_is_one_kernel(shape, dtype):
    w, b = _affine(shape[1], dtype)

    def ln2d(x):
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps=1e-6)
        return x + y.permute(0, 3, 1, 2).relu()

    report = check(ln2d, torch.randn(shape, dtype=dtype), kernels=1, externs=0)
    assert not _refusals(report, "row-move")


def test_layer_norm_2d_output_keeps_eager_strides():
    """The permuted output is stored at its own (channels-last) strides: the row is contiguous there."""
    w, b = _affine(24)
    x = torch.randn(2, 24, 6, 5)
    report = check(lambda x: F.layer_norm(x.permute(0, 2, 3, 1), (24,), w, b).permute(0, 3, 1, 2), x,
                   kernels=1, externs=0)
    assert not report.edges()


@pytest.mark.parametrize("shape", [(3, 9, 6), (2, 5, 5), (4, 1, 33)])
def test_softmax_over_a_transposed_axis_then_back(shape):
    x, y = torch.randn(shape), torch.randn(shape)
    check(lambda x, y: torch.softmax(x.transpose(1, 2), -1).transpose(1, 2) * y, x, y, kernels=1, externs=0)


def test_softmax_transposed_on_a_square_tensor():
    """Same shape before and after the transpose: only the frame says which dim is the row."""
    x, y = torch.randn(3, 6, 6), torch.randn(3, 6, 6)
    check(lambda x, y: torch.softmax(x, -1).transpose(1, 2) * y + 1, x, y, kernels=1, externs=0)


@pytest.mark.parametrize("op", ["sum", "mean", "var", "amax"])
@pytest.mark.parametrize("perm, dims", [((0, 2, 3, 1), (-1,)), ((0, 2, 1, 3), (-2, -1)), ((1, 0, 2), (-1,))])
def test_reductions_over_permuted_dims_with_the_result_permuted_back(op, perm, dims):
    x = torch.randn((2, 7, 5, 3)[:len(perm)])
    inverse = [perm.index(d) for d in range(len(perm))]

    def fn(x):
        p = x.permute(perm)
        reduced = getattr(torch, op)(p, dims, keepdim=True) if op != "amax" else p.amax(dims, keepdim=True)
        return (p - reduced).exp().permute(inverse) * x

    check(fn, x, kernels=1, externs=0)


def test_permuted_then_reshaped_values_stay_in_the_kernel():
    check(lambda x: torch.softmax(x, -1).permute(1, 0, 2).reshape(6, -1) + 1, torch.randn(4, 6, 5),
          kernels=1, externs=0)


def test_per_row_results_reshaped_stay_in_the_kernel():
    """Mixtral's expert outputs summed over the chosen experts, (tokens, hidden) viewed as (batch,
    sequence, hidden), then the residual: rows keep their row-major positions through a reshape."""
    check(lambda x, r: (x * 2).sum(1).reshape(2, 16, 64) + r, torch.randn(32, 2, 64), torch.randn(2, 16, 64),
          kernels=1, externs=0)
    check(lambda x, r: x.amax(-1).reshape(4, 8, 2) * r + x.mean(-1).reshape(4, 8, 2),
          torch.randn(8, 8, 5), torch.randn(4, 8, 2), kernels=1, externs=0)


def test_permute_of_a_permute_composes():
    x = torch.randn(2, 3, 4, 5)
    check(lambda x: (torch.log_softmax(x, 1).permute(0, 2, 3, 1).permute(0, 3, 2, 1) * 2).sin(), x,
          kernels=1, externs=0)


def test_a_looped_row_stores_the_permuted_value():
    """Rows too long for registers: the per-element pass stores through the permute too."""
    x = torch.randn(3, 4100, 2)
    check(lambda x: torch.softmax(x.transpose(1, 2), -1).transpose(1, 2) - x, x, kernels=1, externs=0)


def test_dynamic_sizes_keep_the_permuted_store():
    w, b = _affine(24)

    def fn(x):
        return x + F.layer_norm(x.permute(0, 2, 3, 1), (24,), w, b).permute(0, 3, 1, 2)

    compiled = fusec.compile(fn, dynamic=True)
    for shape in [(2, 24, 5, 7), (3, 24, 4, 6), (1, 24, 9, 2)]:
        x = torch.randn(shape)
        torch.testing.assert_close(compiled(x), fn(x), rtol=1e-5, atol=1e-5)
    report = fusec.report_of(compiled)
    assert all(len(g.plan.kernels) == 1 and g.fallback is None for g in report.graphs), report.summary()


def test_layer_norm_2d_backward_equals_eager():
    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            return x * super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    torch.manual_seed(0)
    model = LayerNorm2d(12)
    with torch.no_grad():
        model.weight.uniform_(0.5, 1.5)
        model.bias.uniform_(-0.5, 0.5)
    report = check_training(model, torch.randn(2, 12, 5, 3), rtol=1e-4, atol=1e-4)
    assert len(report.graphs[0].plan.kernels) == 1
    assert not _refusals(report, "row-move")


def test_convnext_block_matches_eager_and_counts_its_kernels():
    torch.manual_seed(0)
    block = ConvNeXtBlock(16).eval()
    with torch.no_grad():
        block.gamma.fill_(0.5)
    # dwconv (torch), LayerNorm over C read through the permute (1), fc1 + GELU (1), fc2 + layer
    # scale (1), the residual add over the permuted product (1): fc2's tile cannot be read permuted.
    report = check(block, torch.randn(2, 16, 7, 5), kernels=4, externs=1, rtol=1e-4, atol=1e-4)
    assert not _refusals(report, "row-move")


def test_convnext_block_training_matches_eager():
    torch.manual_seed(0)
    block = ConvNeXtBlock(8)
    with torch.no_grad():
        block.gamma.fill_(0.5)
    report = check_training(block, torch.randn(2, 8, 5, 4), rtol=1e-4, atol=1e-4)
    assert not _refusals(report, "row-move")


# Values that do change rows: still refused, with the reason -------------------------------

def test_reducing_a_transposed_result_again_is_refused():
    report = check(lambda x: torch.softmax(x, -1).transpose(1, 2).sum(-1), torch.randn(3, 6, 6), kernels=2)
    assert _refusals(report, "row-read") == ["sum_2 would reduce permute in a permuted order of its rows"]


def test_two_frames_of_one_square_tensor_are_refused():
    """softmax(x) + softmax(x).T: each element reads another row's value."""
    def fn(x):
        s = torch.softmax(x, -1)
        return s + s.transpose(1, 2)

    report = check(fn, torch.randn(2, 5, 5), kernels=2)
    assert set(_refusals(report, "row-read")) == {"add would read div and permute in different orders of the rows"}


def test_permuting_a_reshape_that_merges_rows_is_refused():
    """(4,6,5) viewed as (4,30) then transposed: a reshape mixes the row dim with an outer one."""
    report = check(lambda x: torch.softmax(x, -1).reshape(4, 30).t() * 2, torch.randn(4, 6, 5), kernels=2)
    assert _refusals(report, "row-move") == [
        "permute (permute) would move values between the rows of a reduction: it permutes view, "
        "a reshape of the rows"], report.edges()


def test_a_per_row_value_permuted_is_still_refused():
    """The mean over C of NHWC, permuted to N1HW and broadcast over NCHW: the kernel's rows are NHW."""
    def fn(x):
        p = x.permute(0, 2, 3, 1)
        return x - p.mean(-1, keepdim=True).permute(0, 3, 1, 2)

    report = check(fn, torch.randn(2, 4, 3, 5), kernels=2)
    assert _refusals(report, "row-move") == [
        "permute_1 (permute) would move values between the rows of a reduction: div holds one value per row"]


def test_convnext_atto_has_no_permute_left_between_its_layer_norms_and_their_rows():
    """The zoo's ConvNeXt-atto (bench/cnn_zoo.py): every LayerNorm over channels-last C keeps its
    permutes; the forward launches no more than the zoo table's 68."""
    model, x = example("convnext_atto")
    with torch.no_grad():
        report = fusec.inspect(model, x)
    assert not _refusals(report, "row-move"), _refusals(report, "row-move")
    assert report.stats["kernels"] + report.stats["extern_calls"] <= 68, report.summary()
