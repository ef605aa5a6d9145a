"""Position and index plumbing, and integer arithmetic: arange and full_like as index math
inside the consuming kernel, splits as views, remainder / floor division / fmod / round
as pointwise ops with torch's semantics."""

import pytest
import torch

import fusec
from tests.eager import assert_raises_as_eager, check

INTS = torch.tensor([-9, -8, -7, -4, -3, -1, 0, 1, 3, 4, 7, 8, 9, 100, -100])
FLOATS = torch.tensor([-7.5, -3.0, -2.5, -1.5, -0.5, -0.3, -0.0, 0.0, 0.3, 0.5, 0.7, 1.0, 1.5, 2.5, 3.5,
                       1e7 + 0.5, -1e7, float("inf"), -float("inf"), float("nan"), 0.49999997, 1.0000001])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8])
@pytest.mark.parametrize("divisor", [4, -3, 1, 7])
def test_integer_remainder_and_floor_division_floor_as_python(dtype, divisor):
    x = INTS.to(dtype)

    def f(a):
        return a % divisor, a // divisor, torch.fmod(a, divisor), torch.div(a, divisor, rounding_mode="trunc")

    check(f, x, kernels=1, externs=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_remainder_floor_division_fmod_against_eager(dtype):
    # Every pair of values, zeros, infinities and NaN included.
    a, b = FLOATS.to(dtype).repeat(len(FLOATS)), FLOATS.to(dtype).repeat_interleave(len(FLOATS))

    def f(a, b):
        return (a % b, a // b, torch.fmod(a, b), torch.div(a, b, rounding_mode="trunc"),
                a % 0.7, a // 0.1, torch.fmod(a, -1.5))

    check(f, a, b, kernels=1, externs=0, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_division_modes_run_through_torch(dtype):
    # Eager rounds the quotient (and the scalar) to the 16-bit type before flooring.
    a = FLOATS.to(dtype)
    check(lambda a: (a % 0.7, a // 0.3, torch.fmod(a, 0.7)), a, kernels=0, externs=3)


def test_floor_division_of_one_by_a_tenth_is_nine_as_in_python():
    check(lambda a: a // 0.1, torch.tensor([1.0, -1.0, 0.3]), kernels=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_round_is_half_to_even_and_keeps_the_sign_of_zero(dtype):
    x = FLOATS.to(dtype)
    got = fusec.compile(torch.round)(x)
    torch.testing.assert_close(got, torch.round(x), equal_nan=True, rtol=0, atol=0)
    assert torch.equal(torch.signbit(got), torch.signbit(torch.round(x)))
    check(lambda a: torch.trunc(a * 3) + torch.round(a * 3), x, kernels=1)


def test_round_of_integers_is_the_integer():
    check(torch.round, INTS, kernels=1)


def test_integer_tensor_divisor_runs_through_torch():
    # torch raises on an integer division by zero; a kernel cannot, so torch keeps it.
    a, b = INTS, INTS.flip(0).clamp(min=1)
    check(lambda a, b: (a % b) * 2, a, b, kernels=1, externs=1)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        fusec.compile(lambda a, b: a // b)(a, torch.zeros_like(a))


def test_round_with_decimals_is_one_kernel():
    # eager's x * 10^d rounded, then divided: the same float32 steps, so the same bits.
    check(lambda a: torch.round(a, decimals=2), torch.randn(8), kernels=1, externs=0, rtol=0, atol=0)


def test_position_ids_never_materialise():
    # A position bias over [batch, seq, width] from arange(T)[None]: index math, no tensor.
    def f(h, scale):
        positions = torch.arange(h.shape[1])[None]
        return torch.relu(h + positions[..., None] * scale)

    report = check(f, torch.randn(2, 7, 16), torch.randn(16), kernels=1, externs=0)
    assert not any(g.graph[n].op == "iota" for g in report.graphs for k in g.plan.kernels for n in k.inputs)
    assert not any("arange" in e.target for g in report.graphs for e in g.plan.externs)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32, torch.bfloat16, torch.float16])
def test_arange_forms_are_index_math(dtype):
    def f(x):
        a = torch.arange(x.shape[-1], dtype=dtype)
        b = torch.arange(3, 3 + 2 * x.shape[-1], 2, dtype=dtype)
        c = torch.arange(x.shape[-1] - 1, -1, -1, dtype=dtype)
        return x + a, x * b - c

    check(f, torch.randn(3, 5).to(dtype if dtype.is_floating_point else torch.float32), kernels=1, externs=0)


def test_arange_alone_and_fractional_steps_run_through_torch():
    check(lambda x: x + torch.arange(0, 1, 0.1), torch.randn(10), kernels=1, externs=1)
    # 3000 is not a float16: the arange must round as torch's does.
    check(lambda x: x + torch.arange(2990, 3000, dtype=torch.float16), torch.randn(10).half(),
          kernels=1, externs=1)


def test_zero_size_arange_and_full_like():
    check(lambda x: x + torch.arange(x.shape[0]) + torch.full_like(x, 2), torch.randn(0))


@pytest.mark.parametrize("fill", [torch.zeros_like, torch.ones_like, lambda t: torch.full_like(t, -2.5)])
def test_full_like_is_a_constant_of_the_kernel(fill):
    check(lambda x: torch.maximum(x, fill(x)) * 2, torch.randn(4, 6), kernels=1, externs=0)
    check(lambda x: x + fill(x).to(torch.int32), torch.randn(4, 6).t(), kernels=1, externs=0)


@pytest.mark.parametrize("split", [
    lambda t: torch.split(t, [2, 1, 3], dim=1), lambda t: torch.split(t, 4, dim=1),
    lambda t: t.chunk(3, dim=-1), lambda t: t.unbind(0), lambda t: torch.split(t, 2, dim=0)])
def test_splits_are_views_not_launches(split):
    def f(x):
        parts = split(x)
        return sum(p * (i + 1) for i, p in enumerate(parts)) if parts[0].shape == parts[-1].shape else \
            torch.cat([p.relu() for p in parts], dim=1)

    check(f, torch.randn(4, 6), kernels=1, externs=0)


def test_split_of_a_zero_size_dim():
    check(lambda x: [p + 1 for p in torch.split(x, 2, dim=0)], torch.randn(0, 3))


class Embeddings(torch.nn.Module):
    """GPT-2's input: token and position embeddings added, then a LayerNorm."""

    def __init__(self, vocab: int = 50, positions: int = 12, width: int = 16) -> None:
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab, width), torch.nn.Embedding(positions, width)
        self.ln = torch.nn.LayerNorm(width)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1])[None]
        return self.ln(self.wte(tokens) + self.wpe(positions))


def test_gpt2_embeddings_are_one_kernel_and_positions_never_materialise():
    torch.manual_seed(0)
    model = Embeddings()
    with torch.no_grad():
        report = check(model, torch.randint(0, 50, (2, 7)), kernels=1, externs=0)
    assert not any(g.graph[n].op == "iota" for g in report.graphs for k in g.plan.kernels
                   for n in k.inputs + k.outputs)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_row_lookups_against_eager(index_dtype):
    table = torch.randn(9, 5)
    idx = torch.tensor([[0, 8, -1], [-9, 3, 3]], dtype=index_dtype)
    check(lambda t, i: t[i] * 2, table, idx, kernels=1, externs=0)  # negative: from the end
    check(lambda t, i: torch.index_select(t, 0, i.flatten() % 9) + 1, table, idx, kernels=1, externs=0)
    check(lambda t, i: torch.nn.functional.embedding(i % 9, t).relu(), table, idx, kernels=1, externs=0)
    check(lambda t, i: t.t()[i[0] % 5] - 1, table, idx, kernels=1, externs=0)  # a strided table


def test_row_lookup_of_zero_rows():
    check(lambda t, i: t[i] + 1, torch.randn(4, 3), torch.zeros(0, dtype=torch.long))


@pytest.mark.fallback_expected
@pytest.mark.parametrize("fn", [lambda t, i: torch.nn.functional.embedding(i, t) + 1,
                                lambda t, i: t[i] + 1, lambda t, i: t[-i - 20] + 1])
def test_out_of_range_row_lookup_raises_eagers_error(fn):
    table, idx = torch.randn(9, 5), torch.tensor([1, 9, 2])
    assert_raises_as_eager(fn, table, idx)


def test_several_indices_not_on_the_leading_dims_run_through_torch():
    x = torch.randn(2, 4, 5)
    check(lambda x, i: x[:, i, i] + 1, x, torch.tensor([0, 3]), kernels=1, externs=1)


def test_arange_of_one_and_two_arguments():
    check(lambda x: x * torch.arange(6) + torch.arange(2, 8), torch.randn(6), kernels=1, externs=0)
    # A 0-d index: index_select keeps the dim (torch runs it), x[0-d tensor] drops it.
    check(lambda x: x[torch.tensor(2)] + torch.index_select(x, 0, torch.tensor(1)), torch.randn(4, 3))
