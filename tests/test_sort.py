"""sort, argsort and topk as sort kernels on short rows (long ones: test_sort_long.py), and histc
as a reduction: differential tests against eager over dtypes, dims, k, ties and NaN, what runs
through torch, and a mixture-of-experts router's kernel counts."""

import pytest
import torch

import fusec
from fusec.kernels.sort import MAX_RANKED_ROW, sort_launch
from tests.eager import assert_ran, check
from tests.test_gpu_codegen import run, sm90  # noqa: F401 (a fixture)

EXACT = {"rtol": 0, "atol": 0}


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()


def _distinct(shape, dtype):
    """Values with no two equal in a row along any dim (a permutation of the positions)."""
    n = torch.Size(shape).numel()
    values = torch.randperm(n).reshape(shape) - n // 2
    return values.to(dtype) / (1 if not dtype.is_floating_point else 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_every_dim_and_dtype_keeps_eager_order(dtype, descending):
    torch.manual_seed(0)
    x = torch.randint(0, 5, (3, 9, 4)).to(dtype)  # many ties: the stable order is checked
    for dim in range(-3, 3):
        torch._dynamo.reset()
        check(lambda x, dim=dim: torch.sort(x, stable=True, dim=dim, descending=descending), x, kernels=1,
              externs=0, **EXACT)


def test_nan_sorts_after_every_number_and_signed_zeros_keep_their_bits():
    nan = float("nan")
    x = torch.tensor([[2.0, nan, 1.0, -0.0, 0.0, nan, 1.0, -float("inf"), float("inf")]] * 3)
    for descending in (False, True):
        torch._dynamo.reset()
        check(lambda x, d=descending: torch.sort(x, dim=-1, descending=d, stable=True), x, kernels=1, **EXACT)
    got = fusec.compile(lambda x: torch.sort(x, stable=True)[0])(x)
    assert torch.equal(torch.signbit(got), torch.signbit(torch.sort(x, stable=True)[0]))  # -0.0 before 0.0
    check(lambda x: torch.topk(x, 3), x, kernels=1, **EXACT)  # NaN first: the largest


@pytest.mark.parametrize("k", [1, 2, 3, 7])
@pytest.mark.parametrize("largest", [True, False])
def test_topk_values_and_indices(k, largest):
    torch.manual_seed(1)
    x = _distinct((5, 7, 6), torch.float32)
    check(lambda x: torch.topk(x, k, dim=1, largest=largest), x, kernels=1, **EXACT)
    torch._dynamo.reset()
    check(lambda x: torch.topk(x.transpose(0, 2), min(k, 5), largest=largest), x, kernels=1, **EXACT)


def test_topk_with_ties_picks_the_same_set():
    # eager does not promise which of equal values topk returns first: the set is compared.
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0]] * 4)
    values, indices = fusec.compile(lambda x: torch.topk(x, 3))(x)
    expected, chosen = torch.topk(x, 3)
    assert torch.equal(values, expected)
    assert all(set(r.tolist()) == set(c.tolist()) for r, c in zip(indices, chosen, strict=True))


def test_an_unstable_sort_of_ties_gives_eagers_values_and_a_permutation_that_holds_them():
    x = torch.randint(0, 4, (64,))
    values, indices = fusec.compile(lambda x: torch.sort(x))(x)
    assert torch.equal(values, torch.sort(x)[0]) and torch.equal(x[indices], values)
    assert torch.equal(indices.sort()[0], torch.arange(64))


@pytest.mark.parametrize("shape", [(0, 5), (3, 1), (4,)])
def test_no_rows_one_element_rows_and_a_single_row(shape):
    check(lambda x: torch.sort(x, stable=True, dim=-1), torch.randn(shape), kernels=1, **EXACT)


def test_topk_gradient_flows_to_the_chosen_positions():
    torch.manual_seed(8)
    x = torch.randn(4, 6, requires_grad=True)
    compiled = fusec.compile(lambda x: (torch.topk(x, 2)[0] * 3).sum())
    compiled(x).backward()
    got, x.grad = x.grad, None
    (torch.topk(x, 2)[0] * 3).sum().backward()
    assert torch.equal(got, x.grad)
    assert any(k.kind == "sort" for g in assert_ran(compiled).graphs for k in g.plan.kernels)


def test_argsort_stores_only_the_positions():
    torch.manual_seed(2)
    report = check(lambda x: torch.argsort(x, dim=0, stable=True), torch.randint(0, 3, (40, 6)), kernels=1)
    kernel = report.graphs[0].plan.kernels[0]
    assert kernel.kind == "sort" and len(kernel.outputs) == 1


@pytest.mark.fallback_expected
def test_symbolic_lengths_run_through_torch():
    compiled = fusec.compile(lambda x: torch.topk(x, 2), dynamic=True)
    for n in (5, 9):
        torch.testing.assert_close(compiled(torch.arange(float(n)).expand(3, n)),
                                   torch.topk(torch.arange(float(n)).expand(3, n), 2))


def test_a_producer_is_a_kernel_of_its_own_and_a_consumer_fuses():
    # the sort ranks stored values; what reads its rows is computed at the output lanes
    torch.manual_seed(4)
    x = torch.randn(8, 16)
    check(lambda x: torch.sort(torch.sigmoid(x) * 2, -1)[0] + 1, x, kernels=2, externs=0)


def test_pointwise_work_and_sums_along_the_sorted_dim_fuse_behind_the_sort():
    torch.manual_seed(4)

    def normalised(x):
        weights, chosen = torch.topk(x, 3, dim=0)
        return weights / weights.sum(0, keepdim=True) * 2, weights.sum(0), chosen + 1

    check(normalised, torch.randn(9, 5), kernels=1, externs=0)
    torch._dynamo.reset()
    # a sum over another dim is a reduction of another shape: a kernel of its own
    check(lambda x: torch.sort(x, -1)[0].sum(0), torch.randn(6, 7), kernels=2, externs=0)


def test_launch_keeps_a_block_of_rows_pairs_within_the_budget():
    launch = sort_launch(rows=1000, length=100, interpret=False, by_key=False)
    assert launch.constants["RBLOCK"] == 128
    assert launch.constants["XBLOCK"] * 128 * 128 <= 1 << 14


@pytest.mark.parametrize("bins,low,high", [(4, 0, 3), (7, -0.1, 2.9), (100, 0, 1)])
def test_histc_bins_as_eager_edges_and_nan_included(bins, low, high):
    torch.manual_seed(5)
    edges = torch.linspace(low, high, bins + 1)
    x = torch.cat([torch.rand(397 - 3 * (bins + 1)) * 3.2 - 0.1, edges, torch.nextafter(edges, edges + 1),
                   torch.nextafter(edges, edges - 1), torch.tensor([float("nan"), float("inf"), -float("inf")])])
    check(lambda x: torch.histc(x, bins=bins, min=low, max=high), x.reshape(4, 100), kernels=1, externs=0, **EXACT)


@pytest.mark.fallback_expected
def test_histc_without_a_range_runs_through_torch():
    report = check(lambda x: torch.histc(x, bins=5), torch.randn(50))  # the range comes from the data
    assert report.stats["kernels"] == 0


def _route(hidden, gate, top_k):
    """Mixtral's router and token grouping (transformers' grouped_mm experts, up to the matmuls);
    a stable sort, so that the grouped tokens' order is eager's (Mixtral's output does not depend on it)."""
    probs = torch.softmax(hidden @ gate.t(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    expert_ids, perm = torch.sort(experts.reshape(-1), stable=True)
    tokens = hidden[perm // top_k]
    counts = torch.histc(expert_ids.float(), bins=gate.shape[0], min=0, max=gate.shape[0] - 1)
    return tokens * weights.reshape(-1)[perm].unsqueeze(-1), torch.cumsum(counts, 0, dtype=torch.int32)


def test_mixture_of_experts_router_in_kernels():
    torch.manual_seed(6)
    hidden, gate = torch.randn(32, 64), torch.randn(4, 64)
    # the gate's matmul with the softmax in its epilogue; topk with its weights normalised; the sort
    # with the tokens' positions (perm // top_k) and the ids as floats; the tokens' gather with
    # their weights; the histogram; its running sum
    report = check(_route, hidden, gate, 2, kernels=6, externs=0)
    ops = [{report.graphs[0].graph[m].op for m in k.members} for k in report.graphs[0].plan.kernels]
    assert {"sort", "sort_index", "sum", "div"} in ops and {"sort", "sort_index", "floor_divide", "cast"} in ops


def test_sort_kernels_compile_for_sm90(sm90):  # noqa: F811 (the fixture imported above)
    torch.manual_seed(7)
    x = torch.randn(6, 37)
    run(lambda x: torch.sort(x, stable=True, dim=0, descending=True), x)
    run(lambda x: torch.topk(x, 4), x)
    run(lambda x: torch.softmax(torch.topk(x, 4)[0], -1), x)  # a max and a sum behind the sort
    run(lambda x: (lambda w: (w / w.sum(-1, keepdim=True), w.sum(-1)))(torch.topk(x, 4, dim=0)[0]), x)
    run(lambda x: torch.argsort(x.to(torch.int64), stable=True, dim=-1), x)
    run(lambda x: torch.sort(x.to(torch.float64), -1)[0], torch.randn(3, MAX_RANKED_ROW))  # ranked
    run(lambda x: torch.sort(x.to(torch.bfloat16), -1)[0], torch.randn(3, 500))  # int32 keys
    run(lambda x: torch.histc(x, bins=4, min=-1, max=1), x)
    assert len(sm90) >= 6
