"""sort, argsort and topk on rows longer than 128 (packed keys, kernels/sort_keys.py): differential
tests against eager over every dtype (64-bit ones sort twice), lengths up to the longest row a kernel
holds, NaN / signed zeros / infinities / ties, 3-D inputs along each dim, a fused tail, what runs
through torch and why, and the GPU compile (sm_90, no spills)."""

import logging

import pytest
import torch

import fusec
from fusec.bench import static as bench_static
from fusec.bench.ptx import ptxas_usage
from fusec.kernels.sort_keys import MAX_KEYED_ROW, key_type
from tests.eager import assert_ran, check
from tests.test_gpu_codegen import GPUTarget

EXACT = {"rtol": 0, "atol": 0}
NAN, INF = float("nan"), float("inf")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]


def _ties(shape, dtype, low=0, high=40):
    """Values with many ties, so that eager's stable order is checked."""
    if dtype is torch.bool:
        return torch.rand(shape) > 0.5
    return torch.randint(low, high, shape).to(dtype)


def _distinct(shape, dtype=torch.float32):
    """No two values equal (a permutation of the positions): topk's order is eager's."""
    n = torch.Size(shape).numel()
    return ((torch.randperm(n) - n // 2).reshape(shape) / 4).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("descending", [False, True])
def test_every_dtype_sorts_long_rows_in_eagers_stable_order(dtype, descending):
    torch.manual_seed(0)
    x = _ties((2, 1000), dtype, low=-20 if dtype.is_signed else 0)
    check(lambda x: torch.sort(x, stable=True, descending=descending), x, kernels=1, externs=0, **EXACT)


@pytest.mark.parametrize("descending", [False, True])
def test_full_range_int64_sorts_by_both_halves(descending):
    """Values whose high 32 bits differ (and tie), with the extremes: the second pass decides."""
    torch.manual_seed(4)
    high = torch.randint(-3, 3, (2, 400), dtype=torch.int64) << 32
    x = high + torch.randint(-5, 5, (2, 400), dtype=torch.int64)
    x[0, :4] = torch.tensor([-(2**63), 2**63 - 1, 2**32, -(2**32)])
    check(lambda x: torch.sort(x, stable=True, descending=descending), x, kernels=1, externs=0, **EXACT)


@pytest.mark.parametrize("length", [129, 4096, MAX_KEYED_ROW])
def test_lengths_up_to_the_longest_row(length):
    torch.manual_seed(1)
    x = _ties((1, length), torch.float32, high=length // 3) / 8 - 3  # ties, and negative values
    for descending in (False, True):
        torch._dynamo.reset()
        check(lambda x, d=descending: torch.sort(x, stable=True, descending=d), x, kernels=1, externs=0, **EXACT)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_nan_infinities_and_signed_zeros_in_long_rows(dtype):
    torch.manual_seed(2)
    special = torch.tensor([NAN, -NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0])
    x = torch.cat([special.repeat(20), torch.randn(140)])[torch.randperm(300)].to(dtype).reshape(1, 300)
    for descending in (False, True):
        torch._dynamo.reset()
        check(lambda x, d=descending: torch.sort(x, stable=True, descending=d), x, kernels=1, **EXACT)
        got = fusec.compile(lambda x, d=descending: torch.sort(x, stable=True, descending=d)[0])(x)
        assert torch.equal(torch.signbit(got), torch.signbit(torch.sort(x, stable=True, descending=descending)[0]))


@pytest.mark.parametrize("k", [1, 8, 600])
@pytest.mark.parametrize("largest", [True, False])
def test_topk_of_long_rows(k, largest):
    torch.manual_seed(3)
    check(lambda x: torch.topk(x, k, largest=largest), _distinct((2, 600)), kernels=1, externs=0, **EXACT)


def test_topk_with_ties_and_unsorted_topk_pick_eagers_values():
    # eager promises neither the order of equal values nor, unsorted, any order: values and sets compared
    torch.manual_seed(4)
    x = _ties((2, 500), torch.float32, high=30)
    for sort in (True, False):
        torch._dynamo.reset()
        compiled = fusec.compile(lambda x, s=sort: torch.topk(x, 40, sorted=s))
        values, indices = compiled(x)
        expected = torch.topk(x, 40, sorted=sort)[0]
        assert torch.equal(values.sort(-1)[0], expected.sort(-1)[0]) and torch.equal(x.gather(1, indices), values)
        assert all(len(set(row.tolist())) == 40 for row in indices)
        assert_ran(compiled)


def test_an_unstable_sort_gives_eagers_values_and_a_permutation_that_holds_them():
    torch.manual_seed(5)
    x = _ties((3, 700), torch.int32, high=9)
    compiled = fusec.compile(lambda x: torch.sort(x, descending=True))
    values, indices = compiled(x)
    assert torch.equal(values, torch.sort(x, descending=True)[0]) and torch.equal(x.gather(1, indices), values)
    assert torch.equal(indices.sort(-1)[0], torch.arange(700).expand(3, 700))
    assert_ran(compiled)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_three_dims_sorted_along_each(dim):
    torch.manual_seed(6)
    x = _ties((200, 3, 2), torch.float32).movedim(0, dim)  # strided when the long dim is not the first
    check(lambda x: torch.sort(x, dim=dim, stable=True), x, kernels=1, externs=0, **EXACT)
    torch._dynamo.reset()
    check(lambda x: torch.argsort(x, dim=dim, stable=True, descending=True), x, kernels=1, externs=0, **EXACT)
    torch._dynamo.reset()
    check(lambda x: torch.topk(x.float() + torch.arange(x.numel()).reshape(x.shape) / 1e4, 5, dim=dim), x,
          kernels=2, externs=0, **EXACT)  # distinct values: the add is a kernel of its own before the sort


def test_topk_weights_normalised_behind_a_long_sort_are_one_kernel():
    torch.manual_seed(7)

    def normalised(x):
        weights, chosen = torch.topk(x, 8, dim=-1)
        return weights / weights.sum(-1, keepdim=True), chosen * 2

    report = check(normalised, torch.rand(3, 1000) + 0.5, kernels=1, externs=0)
    kernel = report.graphs[0].plan.kernels[0]
    assert kernel.kind == "sort" and len(kernel.outputs) == 2


@pytest.mark.fallback_expected
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_rows_past_what_a_kernel_holds_run_through_torch_and_say_why(caplog, dtype):
    x = _ties((2, MAX_KEYED_ROW + 1), dtype)
    with caplog.at_level(logging.WARNING, logger="fusec"):
        check(lambda x: torch.sort(x, stable=True), x, kernels=0, externs=1, **EXACT)
    assert "runs through torch: its rows of 8193 are longer than the 8192 a sort kernel holds" in caplog.text


def test_keys_are_32_bits_where_the_value_and_its_position_fit():
    assert key_type("bfloat16", 4096) == key_type("int8", MAX_KEYED_ROW) == "tl.int32"
    assert key_type("int16", (1 << 16) + 1) == key_type("float32", 129) == "tl.int64"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_longest_rows_compile_for_sm90_without_spills(tmp_path, dtype):
    """The longest row's int64 keys in 16 warps (64-bit values: sorted twice), no local memory."""
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    x = _ties((64, MAX_KEYED_ROW), dtype)
    (graph,) = fusec.inspect(lambda x: torch.topk(x, 4), x).graphs
    (kernel,) = graph.plan.kernels
    binary = bench_static.compile_sm90(graph.plan.graph, kernel, tmp_path)
    assert binary.metadata.num_warps == 16
    registers, spills = ptxas_usage(binary.asm["ptx"])
    assert registers is None or (registers <= 255 and spills == 0), (registers, spills)


def test_a_softmax_over_topk_values_is_one_kernel_with_the_sort():
    # a router that keeps the k largest logits and normalises them with a softmax
    torch.manual_seed(8)
    x = torch.randn(4, 300)
    x[0, 5] = NAN  # NaN is the largest: its row's weights are NaN, as eager's
    check(lambda x: torch.softmax(torch.topk(x, 8)[0], -1), x, kernels=1, externs=0)
    torch._dynamo.reset()
    check(lambda x: torch.topk(x, 8, largest=False)[0].amin(-1), x, kernels=1, externs=0)
    torch._dynamo.reset()
    check(lambda x: torch.topk(x, 5)[0].amax(-1), torch.randint(-9, 9, (3, 200), dtype=torch.int16), kernels=1,
          externs=0)


def test_a_mixture_of_experts_token_sort_at_real_size():
    # Mixtral's grouping of 2048 tokens' two experts each: a stable sort of 4096 int64 expert ids
    torch.manual_seed(9)
    experts = torch.topk(torch.randn(2048, 8), 2, dim=-1)[1]
    check(lambda e: torch.sort(e.reshape(-1), stable=True), experts, kernels=1, externs=0, **EXACT)
