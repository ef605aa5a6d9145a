"""Kernels compiled in worker processes: on a CPU, with Triton's JIT pointed at an sm_90 target, a
worker's binary is a disk-cache hit for this process's own warmup (the keys match), a worker that
fails or dies costs only time, the pool is reused by later graphs and stopped at exit, and no
worker starts where nothing is compiled for a GPU."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
import triton

import fusec
from fusec.bench.compile_workers import gpu_calls
from fusec.examples import build
from fusec.kernels import compile as compile_module
from fusec.kernels import compile_pool
from fusec.kernels import precompile as precompile_module
from fusec.kernels.call import KernelCall
from fusec.kernels.launch import Launch
from fusec.kernels.precompile import compile_mode, precompile
from fusec.launcher import DTYPES
from tests.test_precompile import _assert_first_launches_find, _recorded_launches
from tests.test_precompile import sm90_jit as sm90_jit  # a fixture

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_pool():
    compile_pool.shutdown()
    yield
    compile_pool.shutdown()


def _listen(monkeypatch) -> list[bool]:
    """Whether each compile Triton's JIT asks for in this process from now on finds its binary on disk."""
    events: list[bool] = []
    monkeypatch.setattr(triton.knobs.compilation, "listener", lambda **info: events.append(info["cache_hit"]))
    return events


def _plan(monkeypatch, tmp_path, name="pointwise"):
    """A model's graph, kernels, their recorded launches and calls compiling for the GPU, each call
    a fresh JIT function (not one an earlier test compiled: its binaries stay in memory)."""
    graph, kernels, launched = _recorded_launches(*build(name))
    assert kernels
    monkeypatch.setattr(compile_module, "_LOADED", {})
    return graph, kernels, launched, gpu_calls(graph, kernels, tmp_path / "fusec")


def test_a_kernel_a_worker_compiled_is_a_cache_hit_here(sm90_jit, monkeypatch, fresh_pool):
    graph, kernels, launched, calls = _plan(monkeypatch, sm90_jit)
    compiles = _listen(monkeypatch)
    binaries = precompile(calls, graph, kernels, DTYPES, workers=2, mode="processes")
    assert set(binaries) == {k.id for k in kernels}
    assert all(b.metadata.target.arch == 90 for b in binaries.values())
    assert compiles == [True] * len(kernels)  # every binary read back from what the workers wrote
    _assert_first_launches_find(monkeypatch, calls, kernels, launched, binaries)


def test_the_pool_is_reused_by_later_graphs(sm90_jit, monkeypatch, fresh_pool):
    graph, kernels, _, calls = _plan(monkeypatch, sm90_jit)
    compiles = _listen(monkeypatch)
    precompile(calls, graph, kernels, DTYPES, workers=2, mode="processes")
    pool = compile_pool.shared_pool(2)
    processes = list(pool._processes)
    assert pool.started == len(processes) == 2
    graph, more, _, calls = _plan(monkeypatch, sm90_jit, "mlp")
    again = _listen(monkeypatch)
    assert len(precompile(calls, graph, more, DTYPES, workers=2, mode="processes")) == len(more)
    assert compile_pool.shared_pool(2) is pool and pool._processes == processes
    assert all(p.poll() is None for p in processes)  # still running, between graphs
    assert compiles == [True] * len(kernels) and again == [True] * len(more)


def _sabotage(monkeypatch, kernel_id: str, source: str) -> None:
    """The job of `kernel_id` carries `source` instead of its kernel's."""
    job = precompile_module._job

    def sabotaged(graph, kernel, *rest):
        made = job(graph, kernel, *rest)
        return {**made, "source": source} if kernel.id == kernel_id else made
    monkeypatch.setattr(precompile_module, "_job", sabotaged)


@pytest.mark.parametrize("source, why, wait", [
    ("raise RuntimeError('no kernel here')", "RuntimeError: no kernel here", False),
    ("import os\nos._exit(3)", "the compile worker died", True)])
def test_a_kernel_no_worker_compiled_compiles_here(sm90_jit, monkeypatch, fresh_pool, caplog, source, why, wait):
    graph, kernels, launched, calls = _plan(monkeypatch, sm90_jit, "mlp")
    assert len(kernels) > 1
    compiles = _listen(monkeypatch)
    caplog.clear()
    victim = kernels[0]
    _sabotage(monkeypatch, victim.id, source)
    with caplog.at_level(logging.DEBUG, logger="fusec"):
        binaries = precompile(calls, graph, kernels, DTYPES, workers=1, mode="processes", wait=wait)
        _assert_first_launches_find(monkeypatch, calls, kernels, launched, binaries)
        compiled = [b.result() if isinstance(b, triton.FutureKernel) else b for b in binaries.values()]
    assert set(binaries) == {k.id for k in kernels} and all(b.metadata.target.arch == 90 for b in compiled)
    assert compiles.count(False) == 1 and compiles.count(True) == len(kernels) - 1  # the victim compiled here
    assert f"a compile worker did not compile {victim.id}" in caplog.text and why in caplog.text
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]
    if "died" in why:  # the next job went to a worker started in its place
        assert compile_pool.shared_pool(1).started == 2


def test_what_the_workers_hand_back_is_compiled_on_the_launching_thread(sm90_jit, monkeypatch, fresh_pool):
    """Neither a binary a worker wrote nor the kernel a worker failed is compiled on the pool's
    feeder threads (Triton's compile is not always safe on threads): each compiles when its first
    launch asks for it, on that launch's thread."""
    graph, kernels, _, calls = _plan(monkeypatch, sm90_jit, "mlp")
    compiles: list[tuple[str, bool]] = []
    monkeypatch.setattr(triton.knobs.compilation, "listener",
                        lambda **info: compiles.append((threading.current_thread().name, info["cache_hit"])))
    _sabotage(monkeypatch, kernels[0].id, "raise RuntimeError('no kernel here')")
    pending = precompile(calls, graph, kernels, DTYPES, workers=1, mode="processes", wait=False)
    time.sleep(1)  # time for a feeder to have compiled something, were it to
    assert compiles == []
    for kernel in kernels:  # as each first launch asks
        assert pending[kernel.id].result().metadata.target.arch == 90
    assert sorted(hit for _, hit in compiles) == [False] + [True] * (len(kernels) - 1)  # the victim compiled
    assert {name for name, _ in compiles} == {threading.current_thread().name}


def test_the_first_launch_of_a_kernel_compiled_in_the_background_keeps_the_binary():
    class Function:  # a JIT function whose launch returns the future of a compile, done
        arg_names = ["p_x", "n"]

        def __getitem__(self, grid):
            return lambda *args, **kwargs: future

    binary = object()
    done: Future = Future()
    done.set_result(binary)
    future = triton.FutureKernel(lambda kernel: None, lambda kernel: None, done)
    call = KernelCall(Function(), Launch(grid=(1,), num_warps=4, constants={}), (8,), interpret=False, loaded=1)
    assert call._dispatch((torch.empty(8),)) is binary


_EXIT_WITH_A_POOL = textwrap.dedent("""
    import atexit, importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("compile_pool", sys.argv[1])  # without torch: quicker
    compile_pool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compile_pool)
    workers = []
    # Registered first, so it runs after the pool's own exit handler.
    atexit.register(lambda: print(json.dumps([w.poll() for w in workers])))
    pool = compile_pool.shared_pool(2)
    assert "WorkerFailed" in repr(pool.submit({}).exception(timeout=120))  # a job that is no job: a worker ran it
    workers.extend(pool._processes)
""")


def test_workers_stop_when_the_process_exits(tmp_path):
    done = subprocess.run([sys.executable, "-c", _EXIT_WITH_A_POOL, str(ROOT / "kernels" / "compile_pool.py")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes == [0, 0]  # both workers had exited when the process ended


@pytest.mark.parametrize("cpu", ["interpret", "torch"])
def test_no_worker_starts_where_no_kernel_is_compiled_for_a_gpu(monkeypatch, fresh_pool, cpu):
    def no_pool(workers):
        raise AssertionError("a compile pool was started")
    monkeypatch.setattr(compile_pool, "shared_pool", no_pool)
    model, args = build("pointwise")
    compiled = fusec.compile(model, cpu=cpu)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), model(*args))
    assert fusec.report_of(compiled).graphs[0].plan is not None
    assert compile_pool._POOL is None


def test_processes_only_for_enough_kernels_and_cores():
    assert compile_mode(1, 64) == "serial" and compile_mode(20, 1) == "serial"
    assert compile_mode(3, 2) == "threads" and compile_mode(20, 2) == "threads"
    assert compile_mode(precompile_module.POOL_MIN_KERNELS, precompile_module.POOL_MIN_CPUS) == "processes"
    assert compile_mode(precompile_module.POOL_MIN_KERNELS - 1, 64) == "threads"


def test_a_graph_does_not_wait_for_its_workers_its_first_launch_does(sm90_jit, monkeypatch, fresh_pool):
    graph, kernels, launched, calls = _plan(monkeypatch, sm90_jit, "mlp")
    compiles = _listen(monkeypatch)
    pending = precompile(calls, graph, kernels, DTYPES, workers=2, mode="processes", wait=False)
    assert set(pending) == {k.id for k in kernels}
    assert all(isinstance(p, triton.FutureKernel) for p in pending.values())
    assert any(p.kernel is None for p in pending.values())  # returned while the workers were compiling
    # The first launch finds what the JIT filed, and waits for it (KernelCall._dispatch: `result()`).
    _assert_first_launches_find(monkeypatch, calls, kernels, launched, pending)
    assert all(p.result().metadata.target.arch == 90 for p in pending.values())
    assert compiles == [True] * len(kernels)  # read back from the workers' binaries, none compiled here


def test_shutting_down_fails_the_queued_jobs_without_running_them():
    slow = {"source": "import time\ntime.sleep(1)", "filename": "<slow>", "module": "slow", "fn_name": "missing",
            "env": dict(os.environ), "target": ("cuda", 90, 32), "values": {}, "pointers": {}, "grid": (1,),
            "num_warps": 4}
    pool = compile_pool.CompilePool(1)
    futures = [pool.submit(slow) for _ in range(6)]
    assert "missing" in str(futures[0].exception(timeout=120))  # ran: the module has no such kernel
    started = time.perf_counter()
    pool.shutdown()
    assert time.perf_counter() - started < 4  # at most the job in hand ran on, not the 4 or 5 queued
    failed = [f for f in futures if "shut down" in str(f.exception(timeout=0))]
    assert len(failed) >= 3 and all(p.poll() is not None for p in pool._processes)


def test_workers_that_keep_dying_are_given_up():
    class Dying(compile_pool.CompilePool):
        command = (sys.executable, "-c", "")  # a worker that exits at once

    pool = Dying(1)
    errors = [str(pool.submit({}).exception(timeout=120)) for _ in range(compile_pool.MAX_DEATHS + 2)]
    pool.shutdown()
    assert all("died" in e for e in errors) and pool.started <= compile_pool.MAX_DEATHS + 1
    assert all("in a row" in e for e in errors[-2:])  # no worker started for these
