"""Calls of one compiled graph from several threads at once: every result as eager's."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

import fusec

THREADS, CALLS = 8, 12


def _inputs(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)


def _run_threads(compiled, fn, calls=CALLS):
    """Every thread calls `compiled` on its own inputs; returns (got, expected) pairs."""
    def work(t: int):
        pairs = []
        for c in range(calls):
            args = _inputs(t * 1000 + c)
            pairs.append((compiled(*args), fn(*args)))
        return pairs

    with ThreadPoolExecutor(THREADS) as pool:
        return [pair for pairs in pool.map(work, range(THREADS)) for pair in pairs]


def test_cross_entropy_from_several_threads_matches_eager():
    compiled = fusec.compile(F.cross_entropy)
    compiled(*_inputs(0))  # compile once, before the threads race
    for got, expected in _run_threads(compiled, F.cross_entropy):
        torch.testing.assert_close(got, expected)
    report = fusec.report_of(compiled)
    assert report.stats["kernels"] == 1 and report.stats["extern_calls"] == 0, report.summary()
    assert all(g.runtime.broken is None for g in report.graphs), "no call fell back to torch"
    # every call ran the kernel: the first one and THREADS x CALLS from the threads
    assert report.stats["ran"] == {"kernels": 1 + THREADS * CALLS, "extern_calls": 0, "through_torch": 0}


@pytest.mark.fallback_expected
def test_a_kernel_failing_in_one_thread_leaves_the_others_right(monkeypatch):
    compiled = fusec.compile(lambda x, t: F.cross_entropy(x * 2, t), strict=False)
    compiled(*_inputs(0))
    runtime = fusec.report_of(compiled).graphs[0].runtime
    [call] = runtime.calls.values()
    real = call.fn
    failed = []

    class FailsOnce:
        def __getitem__(self, grid):
            if not failed:
                failed.append(grid)
                raise RuntimeError("injected launch failure")
            return real[grid]

    monkeypatch.setattr(call, "fn", FailsOnce())
    fn = lambda x, t: F.cross_entropy(x * 2, t)
    for got, expected in _run_threads(compiled, fn, calls=4):
        torch.testing.assert_close(got, expected)
    assert failed and runtime.broken is not None and "injected" in runtime.broken
