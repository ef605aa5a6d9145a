"""Reductions and normalizations: one kernel each, against eager, through the interpreter."""

import re

import pytest
import torch
import torch.nn.functional as F

import fusec
from fusec.plan import LaunchExtra
from tests.eager import check

W, B = torch.randn(64), torch.randn(64)
PATTERNS = {
    "softmax": lambda x: torch.softmax(x, -1),
    "log_softmax": lambda x: torch.log_softmax(x, -1),
    "layer_norm": lambda x: F.layer_norm(x, (64,)),
    "layer_norm_affine": lambda x: F.layer_norm(x, (64,), W, B),
    "rms_norm": lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * W,
    "var_mean": lambda x: torch.var_mean(x, -1),
    "logsumexp": lambda x: torch.logsumexp(x, -1),
    "mul_sum": lambda x: (x * W).sum(-1),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_is_one_kernel(name):
    torch.manual_seed(0)
    check(PATTERNS[name], torch.randn(12, 64), kernels=1)


def test_residual_add_layer_norm():
    torch.manual_seed(0)
    x, r = torch.randn(12, 64), torch.randn(12, 64)
    check(lambda x, r: F.layer_norm(x + r, (64,), W, B), x, r, kernels=1)


def test_softmax_moves_each_element_once():
    x = torch.randn(16, 128)
    report = check(lambda x: torch.softmax(x, -1), x, kernels=1)
    assert report.stats["bytes_fused"] == 2 * x.numel() * 4


def test_layer_norm_mean_and_rstd_come_out_of_the_same_kernel():
    x = torch.randn(10, 64)
    fn = lambda x: torch.ops.aten.native_layer_norm(x, [64], W, B, 1e-5)
    report = check(fn, x, kernels=1)
    assert len(report.kernels[0].outputs) == 3


@pytest.mark.parametrize("op", ["sum", "mean", "amax", "amin", "prod", "argmax", "argmin", "any", "all", "var"])
@pytest.mark.parametrize("dims,keepdim", [((-1,), False), ((0,), True), ((0, 2), False), (None, False)],
                         ids=["last", "first-keep", "two", "all"])
def test_reduction_ops_over_dims(op, dims, keepdim):
    torch.manual_seed(1)
    x = torch.randn(6, 5, 7) * 0.8
    if op in ("any", "all"):
        x = x > 0.3 if op == "any" else x > -1.5
    if op in ("argmax", "argmin", "prod") and dims is not None and len(dims) > 1:
        dims = dims[:1]  # these take one dim
    if op in ("argmax", "argmin"):
        fn = lambda x: getattr(torch, op)(x, dim=None if dims is None else dims[0], keepdim=keepdim)
    elif op == "var":
        fn = lambda x: torch.var(x, dim=dims, keepdim=keepdim, correction=1)
    elif dims is None:
        fn = lambda x: getattr(torch, op)(x)
    elif op == "prod":
        fn = lambda x: torch.prod(x, dim=dims[0], keepdim=keepdim)
    else:
        fn = lambda x: getattr(torch, op)(x, dim=dims, keepdim=keepdim)
    check(fn, x, kernels=1)


def test_long_row_loops_and_stays_accurate():
    torch.manual_seed(2)
    x = torch.randn(3, 50257) * 4
    report = check(lambda x: torch.softmax(x, -1), x, kernels=1)
    assert not report.kernels[0].persistent
    check(lambda x: torch.var_mean(x + 1000.0, -1), x, kernels=1, rtol=1e-4, atol=1e-3)
    x[1, 40000] = 100.0
    x[2, 7] = float("nan")
    check(lambda x: (x.argmax(-1), x.amax(-1), x.argmin(-1)), x, kernels=1)


def test_reduction_over_batch_reads_coalesced():
    x = torch.randn(300, 48)
    report = check(lambda x: x.sum(0), x, kernels=1)
    kernel = report.kernels[0]
    assert not kernel.reduce_inner and "[None, :]" in kernel.source.split("xoffs =")[1].splitlines()[0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    torch.manual_seed(3)
    x = (torch.randn(8, 2000) + 3).to(dtype)
    # Both reductions read the same rows of x: one kernel.
    report = check(lambda x: (torch.softmax(x.float(), -1).to(dtype), x.sum(-1)), x, kernels=1,
                   rtol=2e-2, atol=2e-2 if dtype is torch.bfloat16 else 1e-2)
    assert all("tl.float32" in k.source for k in report.kernels)


def test_strided_input():
    x = torch.randn(40, 30).t()
    check(lambda x: torch.softmax(x, -1), x, kernels=1)


def test_cross_entropy_is_one_kernel():
    torch.manual_seed(4)
    logits, target = torch.randn(16, 100), torch.randint(0, 100, (16,))
    target[3] = -100  # ignore_index
    report = check(lambda x, t: F.cross_entropy(x, t), logits, target, kernels=1)
    assert report.kernels[0].finals  # the batch mean is finished by the last program


def test_totals_over_rows_across_many_programs():
    torch.manual_seed(5)
    # 6000 rows of 10: several programs each add their rows' partial; the last one adds those.
    logits, target = torch.randn(6000, 10), torch.randint(0, 10, (6000,))
    report = check(lambda x, t: F.cross_entropy(x, t), logits, target, kernels=1)
    assert report.graphs[0].runtime.launches[report.kernels[0].id].grid[0] > 1
    x = torch.randn(6000, 10)
    x[77, 3] = float("nan")
    check(lambda x: (torch.logsumexp(x, -1).sum(), x.amax(-1).amax()), x, kernels=1, rtol=1e-4, atol=1e-3)


def test_total_read_back_by_rows_is_refused():
    x = torch.randn(32, 8)
    report = check(lambda x: x.sum(-1) - x.sum(-1).mean(), x, kernels=2)
    assert any("total over all rows" in e["reason"] or "another shape" in e["reason"] for e in report.edges())


def test_cross_entropy_target_out_of_range_raises_eagers_error():
    logits, target = torch.randn(4, 10), torch.tensor([1, 2, 30, 4])
    fn = lambda x, t: F.cross_entropy(x, t)
    with pytest.raises(Exception) as eager:
        fn(logits, target)
    compiled = fusec.compile(fn)
    with pytest.raises(type(eager.value), match=re.escape(str(eager.value))):
        compiled(logits, target)
    # the bounds check is the generated kernel's: in-range targets then run it to the end
    torch.testing.assert_close(compiled(logits, target.clamp(0, 9)), fn(logits, target.clamp(0, 9)))
    assert fusec.report_of(compiled).stats["ran"] == {"kernels": 1, "extern_calls": 0, "through_torch": 0}


def test_reductions_over_zero_elements():
    x = torch.randn(4, 0)
    check(lambda x: x.sum(-1), x)
    check(lambda x: x.mean(-1), x)
    with pytest.raises(IndexError) as eager:
        x.amax(-1)
    with pytest.raises(IndexError) as compiled:
        fusec.compile(lambda x: x.amax(-1))(x)
    assert str(compiled.value) == str(eager.value)


def test_nan_propagates_through_max():
    x = torch.randn(4, 9)
    x[1, 4] = float("nan")
    check(lambda x: (x.amax(-1), x.argmax(-1), torch.softmax(x, -1)), x)


def test_reduction_feeding_reduction_of_another_shape_is_refused_with_reason():
    x = torch.randn(8, 16)
    report = check(lambda x: torch.softmax(x, -1).sum(0), x, kernels=2)
    assert any("reduction feeds a reduction of another shape" in e["reason"] for e in report.edges())


def test_random_numbers_inside_a_reduction_kernel():
    torch.manual_seed(6)
    x = torch.randn(4, 16)
    report = check(lambda x: ((torch.rand_like(x) + 0.5).prod(1) > 0), x, kernels=1)
    assert LaunchExtra.SEED in report.kernels[0].extras and "seed" in report.kernels[0].params


def test_per_channel_values_through_size_one_views_share_the_kernel():
    # BatchNorm's shape: per-channel sums over (N, H, W), viewed [C] -> [1,C] -> [1,C,1] -> [1,C,1,1]
    # and [C] -> [C,1,1] (which broadcasts to the channel dim too), read back over every element.
    torch.manual_seed(0)
    x, w = torch.randn(4, 6, 5, 3), torch.randn(6)

    def f(x, w):
        mean = x.mean((0, 2, 3))
        centered = x - mean[None][..., None][..., None]
        scale = (w * torch.rsqrt((centered * centered).mean((0, 2, 3)) + 1e-5))[:, None, None]
        return centered * scale, mean[:, None]

    report = check(f, x, w, kernels=1)
    assert not any("between the rows" in e["reason"] for e in report.edges())


@pytest.mark.parametrize("fn,shape", [
    (lambda x: x - x.sum(1).reshape(1, 6), (6, 6)),  # row i's sum read at column i
    (lambda x: x * x.amax(0).reshape(6, 1), (6, 6)),  # column j's max read at row j
    (lambda x: x - x.sum((0, 1)).reshape(6, 1, 1), (6, 6, 6)),  # per-W sums read along dim 0
], ids=["row_sums_as_a_row", "column_maxes_as_a_column", "sums_over_w_onto_dim_0"])
def test_size_one_views_that_land_on_another_row_are_refused(fn, shape):
    # Adding a size-1 dim keeps the values in order, but the broadcast after it puts
    # them on another row: two kernels, and eager's result.
    torch.manual_seed(0)
    report = check(fn, torch.randn(shape), kernels=2)
    assert any("another row" in e["reason"] for e in report.edges()), [e["reason"] for e in report.edges()]
