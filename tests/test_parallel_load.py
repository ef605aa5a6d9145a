"""Kernels of a plan loaded on a thread pool: the same kernels as one at a time, and cached on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fusec
from fusec.kernels.parallel_load import load_kernels
from tests.eager import assert_ran


def _planned(scale: float):
    """A plan with several distinct kernels (the scale makes their sources new to this process)."""
    def fn(x, y):
        a = torch.softmax(x * scale, -1)
        b = torch.sigmoid(y) * scale
        return a.sum(0), b.cumsum(0).tanh() + scale
    x, y = torch.randn(8, 16), torch.randn(8, 16)
    report = fusec.inspect(fn, x, y)
    return fn, (x, y), report.graphs[0].plan


def test_parallel_load_gives_each_kernel_its_function(tmp_path):
    _, _, plan = _planned(1.2345)
    kernels = plan.all_kernels()
    assert len({k.source for k in kernels}) >= 2
    loaded = load_kernels(kernels, interpret=True, cache_dir=tmp_path, workers=4)
    assert set(loaded) == {k.id for k in kernels}
    for k in kernels:
        assert loaded[k.id].fn.__name__ == k.fn_name
    assert len(list(tmp_path.glob("*.py"))) == len({k.source for k in kernels})
    # Loading again, one at a time, finds the same functions (cached by source).
    again = load_kernels(kernels, interpret=True, cache_dir=tmp_path, workers=1)
    assert all(again[k.id] is loaded[k.id] for k in kernels)


def test_compiled_model_with_parallel_loading_matches_eager():
    fn, args, _ = _planned(0.777)
    compiled = fusec.compile(fn)
    got = compiled(*args)
    for g, e in zip(got, fn(*args), strict=True):
        torch.testing.assert_close(g, e)
    assert_ran(compiled)


_WARM = textwrap.dedent("""
    import torch, fusec
    def fn(x):
        return torch.softmax(torch.sigmoid(x) * 3.0, -1)
    x = torch.randn(64, 128, device="cuda")
    torch.testing.assert_close(fusec.compile(fn)(x), fn(x))
    torch.cuda.synchronize()
""")


@pytest.mark.cuda
def test_a_second_process_compiles_nothing(tmp_path):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton"), FUSEC_CACHE_DIR=str(tmp_path / "fusec"))

    def run_and_list() -> list:
        subprocess.run([sys.executable, "-c", _WARM], env=env, check=True)
        return sorted(p.relative_to(tmp_path) for p in (tmp_path / "triton").rglob("*") if p.is_file())

    cold = run_and_list()
    assert cold, "Triton wrote no binary to TRITON_CACHE_DIR"
    assert run_and_list() == cold  # the warm process found every binary and wrote none
