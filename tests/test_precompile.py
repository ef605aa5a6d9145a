"""Kernels compiled for the GPU ahead of their first launch, in parallel: on a CPU, Triton's JIT is
pointed at an sm_90 target (a stand-in driver: compiling needs no GPU), every kernel of a plan is
warmed up, and the arguments the runtime really passes (recorded from an interpreted run) then
find the compiled binary in the JIT's own cache: the first launch would compile nothing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from triton.runtime import driver

import fusec
from fusec.bench.compile_workers import Hopper, gpu_calls
from fusec.compiler import rendered
from fusec.examples import build
from fusec.kernels.call import KernelCall
from fusec.kernels.compile import load_kernel
from fusec.kernels.kinds import split_launch, static_launch, static_size_args
from fusec.kernels.precompile import precompile, warmup_arguments
from fusec.launcher import DTYPES
from fusec.split_rows import SplitCall

try:
    from triton.backends.compiler import GPUTarget
except ImportError:  # pragma: no cover - very old Triton
    GPUTarget = None

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sm90_jit(monkeypatch, tmp_path):
    if GPUTarget is None:
        pytest.skip("this Triton has no ahead-of-time compile API")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    saved = driver._active  # None until a GPU driver was looked for: restored as found
    driver.set_active(Hopper())
    yield tmp_path
    driver._active = saved


def _recorded_launches(model, args) -> tuple:
    """Run `model` on the interpreter; each kernel's graph, plan kernel and the arguments it was launched with."""
    launched: dict[str, tuple] = {}
    launch = KernelCall.__call__

    def record(self, *given):
        launched.setdefault(self.name, given)
        return launch(self, *given)

    torch._dynamo.reset()
    with pytest.MonkeyPatch.context() as patch:  # its own: the test's (TRITON_CACHE_DIR) stays
        patch.setattr(KernelCall, "__call__", record)
        compiled = fusec.compile(model)
        with torch.no_grad():
            compiled(*args)
    graph = fusec.report_of(compiled).graphs[0]
    return graph.plan.graph, [k for k in graph.plan.all_kernels() if k.id in launched], launched


def _assert_first_launches_find(monkeypatch, calls, kernels, launched, binaries) -> None:
    """Each kernel's first launch, with the arguments the runtime passed it, finds its binary: no compile."""
    for kernel in kernels:
        call = calls[kernel.id]

        def no_compile(*a, kernel=kernel, **k):
            raise AssertionError(f"{kernel.id}: the launch would compile again")
        monkeypatch.setattr(call.fn, "_do_compile", no_compile)
        launch = call.launch
        # KernelCall._dispatch's own arguments, through Triton's JIT, stopping short of the launch.
        found = call.fn.run(*launched[kernel.id], *call.sizes, grid=launch.grid, warmup=True,
                            **launch.constants, **launch.options())
        assert found is binaries[kernel.id]


@pytest.mark.parametrize("name", ["transformer", "pointwise"])
def test_first_launch_finds_the_precompiled_binary(sm90_jit, monkeypatch, name):
    model, args = build(name)
    graph, kernels, launched = _recorded_launches(model, args)
    assert kernels
    calls = gpu_calls(graph, kernels, sm90_jit / "fusec")
    binaries = precompile(calls, graph, kernels, DTYPES, workers=2, mode="threads")
    assert set(binaries) == {k.id for k in kernels}
    assert all(b.metadata.target.arch == 90 for b in binaries.values())
    _assert_first_launches_find(monkeypatch, calls, kernels, launched, binaries)


def test_a_kernel_that_cannot_be_warmed_up_compiles_at_launch_as_before(sm90_jit, monkeypatch, caplog):
    model, args = build("pointwise")
    graph, kernels, _ = _recorded_launches(model, args)
    calls = gpu_calls(graph, kernels, sm90_jit / "fusec")
    broken = kernels[0]
    calls[broken.id].sizes = (*calls[broken.id].sizes, 7)  # one argument more than the kernel takes
    with caplog.at_level(logging.DEBUG, logger="fusec"):
        binaries = precompile(calls, graph, kernels, DTYPES)
    assert broken.id not in binaries and len(binaries) == len(kernels) - 1
    assert f"{broken.id} not compiled ahead of its launch" in caplog.text
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


def test_both_launches_of_a_split_row_are_precompiled(sm90_jit, monkeypatch):
    """4 rows of 40000 split on a GPU: each stage's launch (the runtime's arguments and the
    partials buffer) finds its precompiled binary."""
    torch.manual_seed(0)
    graph, [kernel], launched = _recorded_launches(lambda x: torch.softmax(x, -1),
                                                   (torch.randn(4, 40000),))
    gpu = rendered(graph, kernel, interpret=False)
    fn = load_kernel(gpu.source, gpu.fn_name, interpret=False, cache_dir=sm90_jit / "fusec")
    split = split_launch(graph, gpu, interpret=False)
    call = SplitCall(fn, split, static_size_args(graph, gpu), interpret=False, loaded=2, name=kernel.id)
    binaries = precompile({kernel.id: call}, graph, [gpu], DTYPES)
    assert set(binaries) == {kernel.id, kernel.id + "/2"}

    def no_compile(*a, **k):
        raise AssertionError("the launch would compile again")
    monkeypatch.setattr(fn, "_do_compile", no_compile)
    partials = torch.empty(split.partials)
    for stage, name in zip(call.stages, (kernel.id, kernel.id + "/2"), strict=True):
        launch = stage.launch
        found = fn.run(*launched[kernel.id], partials, *stage.sizes, grid=launch.grid, warmup=True,
                       **launch.constants, num_warps=launch.num_warps)
        assert found is binaries[name]


def test_warmup_arguments_name_every_parameter():
    model, args = build("transformer")
    report = fusec.inspect(model, *args)
    graph = report.graphs[0].plan.graph
    for kernel in report.graphs[0].plan.kernels:
        gpu = rendered(graph, kernel, interpret=False)
        launch = static_launch(graph, gpu, interpret=False)
        named = warmup_arguments(graph, gpu, gpu.params, static_size_args(graph, gpu), launch.constants, str)
        assert list(named) == list(gpu.params)
        assert all(named[n] == v for n, v in launch.constants.items() if n in named)
        assert all(isinstance(named[n], str) for n in gpu.params if n.startswith("p_"))


_COMPILE_TWICE = textwrap.dedent("""
    import json, sys, tempfile
    import triton
    import fusec
    from fusec.bench import static as bench_static
    from fusec.examples import build
    model, args = build("pointwise")
    plan = fusec.inspect(model, *args).graphs[0].plan
    graph, kernels = plan.graph, [k for k in plan.kernels if k.numel]
    hits = []
    triton.knobs.compilation.listener = lambda **info: hits.append(info["cache_hit"])
    for kernel in kernels:
        bench_static.compile_sm90(graph, kernel, tempfile.mkdtemp())
    print(json.dumps(hits))
""")


@pytest.mark.skipif(GPUTarget is None, reason="this Triton has no ahead-of-time compile API")
def test_a_fresh_process_finds_every_sm90_binary_in_tritons_disk_cache(tmp_path):
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path), "FUSEC_CPU": "torch",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def compile_in_a_fresh_process() -> list[bool]:
        done = subprocess.run([sys.executable, "-c", _COMPILE_TWICE], env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    cold = compile_in_a_fresh_process()
    assert cold and not any(cold)
    assert compile_in_a_fresh_process() == [True] * len(cold)


_LOAD_AND_CALL = textwrap.dedent("""
    import sys, torch, triton, fusec
    runner = fusec.load(sys.argv[1])
    compiles = []
    triton.knobs.compilation.listener = lambda **info: compiles.append(info["cache_hit"])
    x = torch.randn(16, 96, device="cuda")
    torch.testing.assert_close(runner(x), torch.softmax(x, -1) * x.sum(-1, keepdim=True))
    assert not compiles, compiles
""")


@pytest.mark.cuda
def test_a_loaded_package_launches_without_compiling(tmp_path):
    """Loading compiles every kernel; the first call then finds each binary in the JIT's cache."""
    def reduction(x):
        return torch.softmax(x, -1) * x.sum(-1, keepdim=True)
    path = tmp_path / "r.fusec"
    fusec.export(reduction, torch.randn(16, 96, device="cuda"), path=path)
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", _LOAD_AND_CALL, str(path)], env=env, check=True, timeout=600)


def test_a_kernel_that_failed_on_a_thread_is_tried_again_alone(sm90_jit, monkeypatch):
    import fusec.kernels.precompile as precompile_module

    model, args = build("transformer")
    graph, kernels, _ = _recorded_launches(model, args)
    calls = gpu_calls(graph, kernels, sm90_jit / "fusec")
    warm, threads = precompile_module._warm, []

    def fails_on_a_thread(graph, kernel, call, dtypes):
        if kernel.id == kernels[1].id and threading.current_thread() is not threading.main_thread():
            threads.append(threading.current_thread().name)
            return None  # as a warmup that raised: logged, no binary
        return warm(graph, kernel, call, dtypes)

    monkeypatch.setattr(precompile_module, "_warm", fails_on_a_thread)
    binaries = precompile(calls, graph, kernels, DTYPES, workers=2, mode="threads")
    assert threads and set(binaries) == {k.id for k in kernels}
