"""Stores at computed positions (index_put with index tensors, index_add, index_copy, scatter,
scatter_add, put): one scatter kernel that computes its positions and values, fused with their
producers, and stores into (or atomically adds to) a clone of the base made by the base's own
kernel. Differential tests against eager, kernel counts, eager's errors past the ends."""

import pytest
import torch

import fusec
from fusec.launcher_text import launcher_source
from tests.eager import assert_raises_as_eager, assert_ran, check
from tests.test_gpu_codegen import run, sm90  # noqa: F401 (a fixture)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()


def _kinds(report) -> list[str]:
    return [str(k.kind) for g in report.graphs for k in g.plan.kernels]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool])
def test_store_of_a_value_per_element_on_the_first_dim(dtype):
    def f(x, i, v):
        y = x.clone()
        y[i] = v
        return y

    torch.manual_seed(0)
    x, v = (torch.randn(9, 5) * 5).to(dtype), (torch.randn(3, 5) * 5).to(dtype)
    report = check(f, x, torch.tensor([4, -1, 0]), v, kernels=2, externs=0)
    assert _kinds(report) == ["pointwise", "scatter"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int32, torch.int64])
def test_accumulate_adds_every_duplicate(dtype):
    def f(x, i, v):
        return (x * 2).index_put((i,), v * 3, accumulate=True)

    torch.manual_seed(1)
    x, v = (torch.randn(6, 4) * 4).to(dtype), (torch.randn(7, 4) * 4).to(dtype)
    i = torch.tensor([5, 1, 1, -6, 5, 5, 2])
    report = check(f, x, i, v, kernels=2, externs=0)
    scatter = next(k for g in report.graphs for k in g.plan.kernels if k.kind == "scatter")
    assert {"mul_1", "put"} <= set(scatter.members)  # the values' producer is in the scatter kernel
    size = x.element_size()
    # x read and its clone written; v and i read, and each of v's elements added (read, then written)
    assert report.stats["bytes_fused"] == 2 * x.numel() * size + v.numel() * size + i.numel() * 8 + 2 * v.numel() * size


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_index_add_on_every_dim_with_alpha(dim):
    torch.manual_seed(2)
    x = torch.randn(4, 5, 6)
    size = x.shape[dim]
    i = torch.randint(0, size, (7,))
    shape = list(x.shape)
    shape[dim] = 7
    check(lambda x, i, v: torch.sigmoid(x).index_add(dim, i, v.exp(), alpha=0.5), x, i, torch.randn(shape),
          kernels=2, externs=0)


@pytest.mark.parametrize("dim", [0, 1])
def test_index_copy_with_unique_indices(dim):
    torch.manual_seed(3)
    x = torch.randn(6, 8)
    i = torch.randperm(x.shape[dim])[:3]
    shape = [3, 8] if dim == 0 else [6, 3]
    check(lambda x, i, v: (x + 1).index_copy(dim, i, v * 2), x, i, torch.randn(shape), kernels=2, externs=0)


def test_kv_cache_write_at_positions():
    def f(cache, pos, k):
        cache = cache.clone()
        cache[:, :, pos] = k
        return cache

    torch.manual_seed(4)
    cache, k = torch.randn(2, 3, 10, 4), torch.randn(2, 3, 2, 4)
    check(f, cache, torch.tensor([7, 8]), k, kernels=2, externs=0)


@pytest.mark.parametrize("value_shape", [(), (5,), (3, 1), (1, 5)])
def test_values_broadcast_over_the_indexed_shape(value_shape):
    def f(x, i, j, v):
        y = x.clone()
        y[i, :, j] = v  # indices apart: their dims go first
        return y

    torch.manual_seed(5)
    x = torch.randn(4, 5, 6)
    check(f, x, torch.tensor([0, 3, -1]), torch.tensor([[5], [0], [2]]).reshape(3, 1)[:, 0], torch.randn(value_shape),
          kernels=2, externs=0)


def test_adjacent_index_tensors_broadcast_together():
    def f(x, i, j, v):
        return torch.ops.aten.index_put(x, [None, i, j], v, True)

    torch.manual_seed(6)
    x = torch.randn(2, 4, 5, 3)
    i, j = torch.tensor([[0], [3], [3]]), torch.tensor([1, 4])
    check(f, x, i, j, torch.randn(2, 3, 2, 3), kernels=2, externs=0)


@pytest.mark.parametrize("op", ["scatter", "scatter_add", "scatter_value", "scatter_reduce_sum"])
@pytest.mark.parametrize("dim", [0, 1])
def test_scatter_family(op, dim):
    torch.manual_seed(7)
    x, src = torch.randn(5, 6), torch.randn(6, 7)
    if op == "scatter":  # one value per position: unique indices along dim
        index = torch.stack([torch.randperm(x.shape[dim])[:3] for _ in range(4)], 1 - dim)
    else:
        index = torch.randint(0, x.shape[dim], (3, 4) if dim == 0 else (4, 3))
    fns = {"scatter": lambda x, i, s: (x * 2).scatter(dim, i, s + 1),
           "scatter_add": lambda x, i, s: (x * 2).scatter_add(dim, i, s + 1),
           "scatter_value": lambda x, i, s: (x * 2).scatter(dim, i, 0.25),
           "scatter_reduce_sum": lambda x, i, s: (x * 2).scatter_reduce(dim, i, s + 1, "sum")}
    check(fns[op], x, index, src, kernels=2, externs=0)


def test_put_counts_positions_over_the_flattened_tensor():
    check(lambda x, i, v: (x - 1).put(i, v.sin(), accumulate=True), torch.randn(3, 4),
          torch.tensor([[0, 11], [-1, 5]]), torch.randn(2, 2), kernels=2, externs=0)


def test_strided_base_and_values():
    def f(x, i, v):
        return x.index_add(0, i, v)

    torch.manual_seed(8)
    x, v = torch.randn(5, 6).t(), torch.randn(5, 3).t()  # transposed: (6, 5) and (3, 5)
    check(f, x, torch.tensor([1, 1, 4]), v, kernels=2, externs=0)


@pytest.mark.parametrize("transposed", [True, False])
def test_the_decomposed_store_makes_no_copy_it_does_not_use(transposed):
    """A base not laid out row-major is copied into one (index_add's result is): no clone beside the copy."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from fusec.decompositions_scatter import DECOMPOSITIONS

    def f(x, i, v):
        return x.index_add(0, i, v)

    torch.manual_seed(8)
    x, v = torch.randn(5, 6).t(), torch.randn(5, 3).t()
    if not transposed:
        x = x.contiguous()
    i = torch.tensor([1, 1, 4])
    gm = make_fx(f, decomposition_table=DECOMPOSITIONS)(x, i, v)
    unused = [n.name for n in gm.graph.nodes if n.op == "call_function" and not n.users]
    copying = (torch.ops.aten.clone.default, torch.ops.aten.copy.default)
    copies = [n.target for n in gm.graph.nodes if n.target in copying]
    assert unused == [] and len(copies) == 1
    torch.testing.assert_close(gm(x, i, v), f(x, i, v))


def test_nothing_to_store():
    check(lambda x, i, v: (x * 2).index_add(0, i, v), torch.randn(4, 3), torch.zeros(0, dtype=torch.int64),
          torch.randn(0, 3), externs=0)


@pytest.mark.parametrize("bad", [9, -10])
def test_index_past_either_end_raises_eagers_error(bad):
    def f(x, i, v):
        return x.index_put((i,), v, accumulate=True)

    assert_raises_as_eager(f, torch.randn(9, 2), torch.tensor([1, bad]), torch.randn(2, 2))


def test_scatter_with_a_negative_index_raises_eagers_error():
    assert_raises_as_eager(lambda x, i, s: x.scatter_add(1, i, s), torch.randn(3, 4), torch.tensor([[0, -1]]),
                           torch.randn(1, 2), error=RuntimeError)


def test_bfloat16_accumulation_runs_through_torch():
    # Triton's interpreter has no atomic add of bfloat16: the add stays in torch, correct.
    x = torch.randn(5, 3, dtype=torch.bfloat16)
    report = check(lambda x, i, v: x.index_add(0, i, v), x, torch.tensor([1, 1]), torch.randn(2, 3).bfloat16())
    assert report.stats["extern_calls"] >= 1


def test_slice_scatter_is_one_concatenation():
    check(lambda x, s: torch.slice_scatter(x * 2, s.exp(), 1, 2, 5), torch.randn(4, 7), torch.randn(4, 3),
          kernels=1, externs=0)


def test_two_scatters_into_one_base_each_get_their_own_buffer():
    def f(x, i, v):
        return x.index_add(0, i, v), x.index_add(0, i + 1, v * 2)

    report = check(f, torch.randn(6, 3), torch.tensor([0, 2, 2]), torch.randn(3, 3), externs=0)
    # the two clones of x are one value, which neither scatter may write: each stores into a copy
    assert launcher_source(report.graphs[0].plan).count(".copy_(") == 2


def test_the_stored_result_is_read_by_the_next_kernel():
    report = check(lambda x, i, v: x.index_put((i,), v.exp(), accumulate=True).sigmoid(), torch.randn(5, 2),
                   torch.tensor([4, 4, 0]), torch.randn(3, 2), kernels=3, externs=0)
    codes = {e["code"] for e in report.edges()}
    assert "scatter" in codes, report.summary()  # the base before it and the reader after it


def test_scatter_kernels_compile_for_sm90(sm90):  # noqa: F811 (the fixture imported above)
    torch.manual_seed(9)
    x, i = torch.randn(16, 8), torch.randint(0, 16, (5,))
    run(lambda x, i, v: x.index_add(0, i, v * 2), x, i, torch.randn(5, 8))
    run(lambda x, i, v: x.index_add(0, i, v), x.half(), i, torch.randn(5, 8).half())
    run(lambda x, i, v: x.index_copy(1, i[:3] % 8, v), x.bfloat16(), i, torch.randn(16, 3).bfloat16())
    run(lambda x, i, s: x.scatter_add(1, i, s), x, torch.randint(0, 8, (4, 3)), torch.randn(4, 3))
    mask = torch.arange(16) % 3 == 0
    run(lambda x, m, v: x.index_put((m,), v), x, mask, torch.randn(int(mask.sum()), 8))  # a scan, then a lookup
    assert len(sm90) >= 10


def _in_place(fn, *args, kernels: int, in_place: int):
    """fn mutates its first argument: compiled, it leaves the same values there as eager."""
    eager_args, args = [a.clone() for a in args], [a.clone() for a in args]
    expected = fn(*eager_args)
    compiled = fusec.compile(fn)
    torch.testing.assert_close(compiled(*args), expected)
    torch.testing.assert_close(args[0], eager_args[0])
    report = assert_ran(compiled)
    assert (report.stats["kernels"], report.stats["stores_in_place"]) == (kernels, in_place), report.summary()
    return report


def test_kv_cache_write_into_an_input_stores_in_place():
    def f(cache, pos, k):
        cache[:, :, pos] = k * 2
        return k.sum()

    torch.manual_seed(12)
    # no clone of the cache and no copy back: the scatter writes the two new positions only
    _in_place(f, torch.randn(2, 3, 10, 4), torch.tensor([7, 8]), torch.randn(2, 3, 2, 4), kernels=2, in_place=1)


def test_index_add_into_an_input_accumulates_in_place():
    def f(out, i, v):
        out.index_add_(0, i, torch.relu(v))
        return i.sum()

    i = torch.tensor([3, 0, 3, 3, 1])
    _in_place(f, torch.randn(4, 6), i, torch.randn(5, 6), kernels=2, in_place=1)


def test_a_write_whose_values_read_the_input_goes_through_a_copy():
    def f(cache, pos):
        cache[:, pos] = cache[:, pos - 1] * 2  # other programs may already have written what one reads
        return pos.sum()

    torch.manual_seed(13)
    report = _in_place(f, torch.randn(3, 9), torch.tensor([4, 2]), kernels=2, in_place=0)
    assert report.stats["stores_copied"] == 1


def test_index_fill_int32_indices_and_a_one_element_index():
    check(lambda x, i: (x * 2).index_fill(1, i, 3.0), torch.randn(4, 6), torch.tensor([1, 3]), kernels=2, externs=0)
    torch._dynamo.reset()
    check(lambda x, i, v: x.index_put((i,), v), torch.randn(5, 6).t(), torch.tensor([1, -3], dtype=torch.int32),
          torch.randn(2, 5), kernels=2, externs=0)  # a transposed base keeps its layout, as in eager
    torch._dynamo.reset()
    check(lambda x, i, v: x.index_add(0, i, v), torch.randn(5, 6), torch.tensor(2), torch.randn(1, 6),
          kernels=2, externs=0)


def test_symbolic_sizes_run_the_store_through_torch():
    def f(x, i, v):
        return x.index_add(0, i, v)

    compiled = fusec.compile(f, dynamic=True)
    for n in (5, 7):
        x, i, v = torch.randn(n, 3), torch.tensor([0, 2, 2]), torch.randn(3, 3)
        torch.testing.assert_close(compiled(x, i, v), f(x, i, v))
    assert assert_ran(compiled).stats["extern_calls"] == 1


class _Accumulate(torch.nn.Module):
    def forward(self, x, i, v):
        return x.t().index_add(0, i, v.exp())  # a transposed base: copied row-major first, as eager lays it out


def test_a_package_with_a_scatter_loads_and_runs(tmp_path):
    x, i, v = torch.randn(3, 6), torch.tensor([1, 1, 4]), torch.randn(3, 3)
    fusec.export(_Accumulate(), x, i, v, path=tmp_path / "scatter.fusec")
    loaded = fusec.load(tmp_path / "scatter.fusec")
    torch.testing.assert_close(loaded(x, i, v), _Accumulate()(x, i, v))
    assert [str(k.kind) for k in loaded.report().graphs[0].plan.kernels] == ["pointwise", "scatter"]


def test_integer_alpha_int32_scatter_index_and_the_older_reduce_argument():
    check(lambda x, i, v: x.index_add(-1, i, v, alpha=-2), torch.arange(20).reshape(4, 5), torch.tensor([4, 0, 4]),
          torch.arange(12).reshape(4, 3), kernels=2, externs=0)
    torch._dynamo.reset()
    index = torch.tensor([[3, 0], [1, 1]], dtype=torch.int32)
    check(lambda x, i, s: x.scatter(0, i, s, reduce="add"), torch.randn(4, 2), index, torch.randn(2, 2),
          kernels=2, externs=0)


def test_index_copy_with_int32_indices_raises_eagers_error():
    """Eager's index_copy takes int64 indices only (its index_add takes int32 too)."""
    assert_raises_as_eager(lambda x, i, s: x.index_copy(0, i, s), torch.randn(5, 2),
                           torch.tensor([1, 3], dtype=torch.int32), torch.randn(2, 2), error=RuntimeError)
