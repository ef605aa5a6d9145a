"""Programs that once gave wrong results or crashed, found by differential fuzzing."""

import pytest
import torch

import fusec
from tests.eager import assert_ran, check

INF = float("inf")


def _total_beside_argmax(x):
    y = x * 2
    return y.argmax(0) + y.sum()


def _total_beside_row_sum(x):
    y = x * 2
    return y.sum(0), y.sum()


CASES = {
    "pow_zero": (lambda x: torch.pow(x, 0) + x, (torch.randn(4),)),
    "pow_general_scalar": (lambda x: x.abs().pow(1.5) + x.pow(3.0) + x.pow(-3), (torch.randn(5),)),
    "max_with_0d": (lambda a, b: torch.maximum(a, b), (torch.randn(4), torch.randn(()))),
    "min_with_expanded": (lambda a, b: torch.minimum(a, b.expand(4)), (torch.randn(4), torch.randn(1))),
    "log1p_inf": (lambda x: torch.log1p(x), (torch.tensor([INF, 1.0]),)),
    "row_sum_into_other_shape": (lambda x, b: x.sum(1) + b, (torch.arange(12.).reshape(3, 4), torch.zeros(1, 3))),
    "row_sum_broadcast_across_rows": (lambda x: x + x.sum(1), (torch.arange(9.).reshape(3, 3),)),
    "column_sum_broadcast_back": (lambda x: x + x.sum(0), (torch.arange(9.).reshape(3, 3),)),
    "bool_add": (lambda a, b: a + b, (torch.tensor([True, True]), torch.tensor([True, False]))),
    "explicit_half_cast_rounds": (lambda x: x.half().float() - x, (torch.randn(8),)),
    "explicit_bf16_cast_rounds": (lambda x: x.bfloat16().float() - x, (torch.randn(64) * 100,)),
    "total_beside_argmax": (_total_beside_argmax, (torch.randn(1, 4, 2),)),
    "total_beside_row_sum": (_total_beside_row_sum, (torch.arange(8.).reshape(1, 4, 2),)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_eager(name):
    fn, args = CASES[name]
    check(fn, *args, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shapes", [((2, 1), (1, 2)), ((2, 3), (3, 4))], ids=["k1", "k-stride0"])
def test_matmul_keeps_inf_when_k_loads_are_unmasked(shapes):
    if shapes[0][1] == 1:
        x, w = torch.ones(2, 1), torch.tensor([[1.0, INF]])
    else:
        x, w = torch.tensor([[INF], [1.0]]).expand(2, 3), torch.ones(3, 4)
    check(lambda x, w: torch.relu(x @ w), x, w)


def test_negative_zero_to_negative_odd_power():
    x = torch.tensor([-0.0, 0.0, -2.0, 3.0])
    check(lambda x: (x.pow(-3), x.pow(-17), x.pow(5)), x, rtol=1e-5, atol=1e-6)


def test_tensor_constants_in_the_model_fuse():
    def fn(x):
        return x * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor(2.0)
    report = check(fn, torch.randn(4, 3), kernels=1, externs=0)
    assert report.graphs[0].fallback is None
    many = check(lambda x, y: (x * torch.tensor(3.0), y + torch.tensor([1.0, 2.0])),
                 torch.randn(2), torch.randn(2), kernels=1)
    assert many.stats["streams"] == 1


def test_multiply_by_one_then_view_is_a_fresh_tensor():
    x = torch.randn(4, 2)[:, ::2]
    check(lambda x: (x * 1).reshape(4, -1), x)
    out = fusec.compile(lambda x: (x * 1).reshape(4, -1))(x)
    assert out.stride() == (1, 1) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("kept", [lambda x: x.sum(), lambda x: torch.tanh(x[:1, :1])],
                         ids=["after_a_full_reduction", "of_one_element"])
def test_dropout_of_one_element(kept):
    # Its random counter was the literal 0, which the kernel could not cast.
    torch.manual_seed(0)
    x = torch.randn(3, 5)
    compiled = fusec.compile(lambda x: torch.nn.functional.dropout(kept(x), 0.5))
    outs = [compiled(x) for _ in range(16)]
    for out in outs:
        assert out.eq(0).all() or torch.allclose(out, kept(x) * 2)  # dropped, or kept and scaled by 1 / (1 - p)
    assert {bool(out.eq(0).all()) for out in outs} == {True, False}  # 16 seeded draws at p = 0.5: both
    assert_ran(compiled)
