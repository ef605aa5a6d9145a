"""The differential check every end-to-end test uses: fusec against eager PyTorch."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import fusec

# Per-dtype tolerances: fused kernels keep float32 intermediates where eager
# rounds each 16-bit one, so half types get their usual rounding slack.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-7, atol=1e-7),
       torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


def check(fn, *args, kernels: int | None = None, externs: int | None = None, **tol) -> fusec.Report:
    """Compile `fn`, run it on `args`, assert every output matches eager's (shape,
    dtype, values), that fusec's kernels computed it (`assert_ran`) and the kernel /
    extern-call counts; return the report."""
    expected = fn(*args)
    compiled = fusec.compile(fn)
    got = compiled(*args)
    if isinstance(expected, torch.Tensor):
        expected, got = (expected,), (got,)
    for e, g in zip(expected, got, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape, g.dtype, e.dtype)
        long_dims = [d for d in range(e.dim()) if e.shape[d] > 1]
        assert [g.stride(d) for d in long_dims] == [e.stride(d) for d in long_dims], (g.stride(), e.stride())
        torch.testing.assert_close(g, e, equal_nan=True, **(tol or TOL.get(e.dtype, {})))
    report = assert_ran(compiled)
    if kernels is not None:
        assert report.stats["kernels"] == kernels, report.summary()
    if externs is not None:
        assert report.stats["extern_calls"] == externs, report.summary()
    return report


def assert_raises_as_eager(fn, *args, error: type[Exception] = IndexError) -> None:
    """Compiled, `fn(*args)` raises what eager raises: the same exception type and message."""
    with pytest.raises(error) as expected:
        fn(*args)
    with pytest.raises(error) as got:
        fusec.compile(fn)(*args)
    assert str(got.value) == str(expected.value)


def assert_ran(compiled) -> fusec.Report:
    """Every graph `compiled` captured was planned and run by fusec's runtime, each call
    launching exactly the planned kernels once, and no call went through torch."""
    report = fusec.report_of(compiled)
    assert report.graphs, "fusec was handed no graph"
    for g in report.graphs:
        assert g.fallback is None and g.runtime is not None, f"{g.name} runs through torch: {g.fallback}"
        counts = g.runtime.counts
        assert counts.calls >= 1, f"{g.name} was never called"
        assert counts.through_torch == 0, f"{g.name}: {counts.through_torch} call(s) ran through torch"
        planned = Counter({k.id: counts.calls for k in g.plan.kernels})
        # A matmul run as torch's matmul plus an epilogue kernel counts that kernel too.
        library = {s.id for k in g.plan.kernels for s in k.library}
        ran = Counter({k: n for k, n in counts.kernels.items() if k not in library})
        assert ran == planned, (g.name, dict(counts.kernels), dict(planned))
    return report
