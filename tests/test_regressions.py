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
    "cat_skips_legacy_empty": (lambda e, k: torch.cat([e, k], dim=-2) + 1, (torch.tensor([]), torch.randn(1, 2, 3, 4))),
    "cat_of_empty_inputs": (lambda a, b: torch.cat([a, b], dim=1) + 1, (torch.randn(2, 0), torch.randn(2, 0))),
    "rand_of_one_element": (lambda x: torch.where(torch.rand_like(x.amin(-1, keepdim=True)) < 1.0, x, -x),
                            (torch.randn(1, 4),)),
}


def test_cat_with_an_empty_1d_part_fuses():
    """torch's legacy cat skips a 1-d empty part of any rank (an empty KV cache, as in Hugging Face GPT-2)."""
    check(lambda cache, k: torch.cat([cache, k * 2], dim=-2) + 1, torch.tensor([]), torch.randn(2, 4, 3, 8),
          kernels=1, externs=0)


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


def _dropout_matmul(x, w):
    return torch.nn.functional.dropout(x @ w, 0.5, training=True)


def _dropout_matmul_softmax(x, w):
    return torch.nn.functional.dropout(torch.relu(x @ w), 0.25, training=True).softmax(-1)


@pytest.mark.parametrize("fn, kernels", [(_dropout_matmul, 1), (_dropout_matmul_softmax, 1)],
                         ids=["matmul", "matmul-then-reduction"])
def test_dropout_fuses_into_matmul_and_repeats_under_manual_seed(fn, kernels):
    x, w = torch.randn(8, 16), torch.randn(16, 32)
    compiled = fusec.compile(fn, strict=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(compiled(x, w))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    report = fusec.report_of(compiled)
    assert report.stats["kernels"] == kernels and report.stats["extern_calls"] == 0, report.summary()
    assert all(g.runtime is not None and g.runtime.broken is None for g in report.graphs)
    assert report.stats["ran"] == {"kernels": 2 * kernels, "extern_calls": 0, "through_torch": 0}
    kept = torch.relu(x @ w) if fn is _dropout_matmul_softmax else x @ w
    dropped = runs[0] if fn is _dropout_matmul else None
    if dropped is not None:  # every element is dropped or scaled by 1 / (1 - p)
        scaled = torch.isclose(dropped, kept * 2, rtol=1e-5, atol=1e-5)
        assert bool(((dropped == 0) | scaled).all())
        assert 0.3 < float((dropped == 0).float().mean()) < 0.7
    else:
        torch.testing.assert_close(runs[0].sum(-1), torch.ones(8))


class _CrossEntropy(torch.nn.Module):
    def forward(self, x, t):
        return torch.nn.functional.cross_entropy(x * 2, t)


def _raised(fn, *args) -> BaseException:
    with pytest.raises(Exception) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("fn, args", [
    (lambda x, i: x.gather(1, i) * 2, (torch.randn(3, 4), torch.tensor([[4, 0], [1, 2], [0, 0]]))),
    (lambda x, t: torch.nn.functional.cross_entropy(x, t), (torch.randn(2, 5), torch.tensor([7, 0]))),
    (_CrossEntropy(), (torch.randn(2, 5), torch.tensor([0, -3]))),
], ids=["gather", "cross_entropy", "module"])
def test_out_of_range_index_raises_eagers_error(fn, args):
    eager = _raised(fn, *args)
    compiled = fusec.compile(fn)
    got = _raised(compiled, *args)
    assert type(got) is type(eager) and str(got) == str(eager)
    # The check ran in a generated kernel: in-range inputs run it, and it stays in use.
    fine = (args[0], args[1].clamp(0, args[0].shape[1] - 1))
    torch.testing.assert_close(compiled(*fine), fn(*fine))
    report = fusec.report_of(compiled)
    assert report.stats["kernels"] >= 1 and all(g.runtime.broken is None for g in report.graphs)
    assert report.stats["ran"]["kernels"] >= 1 and report.stats["ran"]["through_torch"] == 0


def test_out_of_range_gather_through_torch_compile_raises_eagers_error():
    x, i = torch.randn(3, 4), torch.tensor([[4, 0], [1, 2], [0, 0]])
    fn = lambda x, i: x.gather(1, i) + 1
    eager = _raised(fn, x, i)
    got = _raised(torch.compile(fn, backend="fusec"), x, i)
    assert type(got) is type(eager) and str(got) == str(eager)


@pytest.mark.fallback_expected
def test_report_shows_the_fallback_after_a_kernel_fails_at_run_time(monkeypatch):
    fn = lambda x: torch.sigmoid(x) * 2
    compiled = fusec.compile(fn, strict=False)
    x = torch.randn(8)
    compiled(x)
    assert fusec.report_of(compiled).stats["kernels"] == 1
    runtime = fusec.report_of(compiled).graphs[0].runtime

    class Fails:
        def __getitem__(self, grid):
            raise RuntimeError("launch refused")

    monkeypatch.setattr(next(iter(runtime.calls.values())), "fn", Fails())
    torch.testing.assert_close(compiled(x), fn(x))
    report = fusec.report_of(compiled)
    assert report.stats["kernels"] == 0 and report.stats["extern_calls"] >= 2, report.summary()
    assert "launch refused" in report.graphs[0].fallback
    assert "runs through torch (runtime error: kernel k0 failed" in report.summary()
    assert report.to_dict()["graphs"][0]["fallback"] == report.graphs[0].fallback


def test_an_unwritable_dump_dir_never_changes_what_runs(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a dump_dir under a file can never be created, even by root
    x = torch.randn(16)
    with caplog.at_level("WARNING", logger="fusec"):
        for _ in range(2):
            torch._dynamo.reset()
            compiled = fusec.compile(lambda x: torch.exp(x) + 1, dump_dir=blocked / "dumps")
            torch.testing.assert_close(compiled(x), torch.exp(x) + 1)
            report = fusec.report_of(compiled)
            assert report.stats["kernels"] == 1 and report.graphs[0].fallback is None, report.summary()
            assert_ran(compiled)
    said = [r.getMessage() for r in caplog.records if "cannot write pass dumps" in r.getMessage()]
    assert len(said) == 1, said


def test_functions_sharing_a_dump_dir_keep_their_own_dumps(tmp_path):
    x = torch.randn(16)
    fusec.compile(lambda x: torch.exp(x) + 1, dump_dir=tmp_path)(x)
    fusec.compile(lambda x: torch.tanh(x) * 3, dump_dir=tmp_path)(x)
    captures = sorted(p.read_text() for p in tmp_path.glob("*/00_capture.txt"))
    assert len(captures) == 2
    assert any("exp" in c for c in captures) and any("tanh" in c for c in captures)


@pytest.mark.parametrize("vary", ["shape", "python float"])
def test_hitting_the_recompile_limit_is_said_once_and_reported(caplog, vary):
    limit = torch._dynamo.config.recompile_limit
    # dynamic=False: each new shape or float compiles anew (automatic dynamic would serve them all)
    compiled = fusec.compile(lambda x, lr: torch.exp(x) * lr, dynamic=False)
    with caplog.at_level("WARNING", logger="fusec"):
        for i in range(limit + 3):
            x = torch.randn(i + 1 if vary == "shape" else 4)
            lr = 0.5 + i if vary == "python float" else 0.5
            torch.testing.assert_close(compiled(x, lr), torch.exp(x) * lr)
    said = [r.getMessage() for r in caplog.records if r.name == "fusec" and "recompile_limit" in r.getMessage()]
    assert len(said) == 1, said
    report = fusec.report_of(compiled)
    assert report.runs_eagerly is not None and "run eagerly" in report.runs_eagerly
    assert "runs eagerly:" in report.summary() and report.to_dict()["runs_eagerly"] == report.runs_eagerly
    assert len(report.graphs) == limit  # compiled until the limit, no further


def test_a_callable_within_the_limit_is_not_reported_eager():
    compiled = fusec.compile(lambda x: torch.exp(x) + 1)
    for n in (3, 4):
        compiled(torch.randn(n))
    assert fusec.report_of(compiled).runs_eagerly is None


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


@pytest.mark.parametrize("native", [True, False])
def test_an_effect_token_is_not_where_the_device_is_read(native):
    # linalg.inv checks its input through `with_effects`: AOTAutograd threads an effect token, an empty
    # tensor when traced and None when called, as the graph's first input. The launcher read the call's
    # device from it.
    fn = lambda x: torch.linalg.inv(x) * 2 + 1
    x = torch.randn(4, 4) + 4 * torch.eye(4)
    compiled = fusec.compile(fn, native=native)
    torch.testing.assert_close(compiled(x), fn(x))
    assert_ran(compiled)
