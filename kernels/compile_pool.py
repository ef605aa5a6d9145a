"""Kernels compiled for the GPU in worker processes, into Triton's on-disk cache.

Triton's compile holds the GIL for most of its work (the AST to MLIR, the passes' Python
drivers): threads of one process barely overlap. As Inductor's compile workers do, this
pool compiles in other processes. A worker runs a kernel's JIT warmup with the arguments
the parent would warm it up with, for the parent's GPU target and with its Triton cache
settings, so the binary lands in Triton's disk cache under the very key the parent's JIT
computes: the parent's own warmup then reads it back (a cache hit) instead of compiling.

Workers run this file with `subprocess` rather than `multiprocessing` (a spawned child
re-runs the user's main script unless it is guarded), import Triton only (not torch, not
fusec: they start in about half a second and never create a GPU context), answer one job
at a time, are reused by every graph of the process and stopped at exit. Anything that goes
wrong in a worker is the job's exception, and a worker that died is started afresh for
the next job: the caller compiles that kernel itself.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any, BinaryIO

_HEADER = struct.Struct("<Q")  # each message: its length, then the pickled object
_STOP = None  # the job that stops a feeder thread and its worker
MAX_DEATHS = 3


class WorkerFailed(RuntimeError):
    """A worker could not compile a job (its error, or the worker died)."""


def _send(pipe: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_HEADER.pack(len(data)) + data)
    pipe.flush()


def _receive(pipe: BinaryIO) -> Any:
    """The next message; EOFError when the other side has gone."""
    header = pipe.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the pipe closed")
    (length,) = _HEADER.unpack(header)
    data = pipe.read(length)
    if len(data) < length:
        raise EOFError("the pipe closed mid-message")
    return pickle.loads(data)


class CompilePool:
    """`workers` processes, started at once, fed by one thread each from a shared queue of jobs."""

    command = (sys.executable, __file__)  # a worker: this file run as a script

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.started = 0  # worker processes started so far (a dead one is replaced)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._processes: list[subprocess.Popen] = []
        self._threads = [threading.Thread(target=self._feed, name=f"fusec-compile-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: dict[str, Any]) -> Future:
        """The future of one job: the binary's cache key, or WorkerFailed."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the compile pool has been shut down")
            self._jobs.put((job, future))
        return future

    def shutdown(self) -> None:
        """Stop every worker (each finishes the job it holds); jobs still queued fail."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._fail_queued()  # first: the feeders would take every job queued before their stop
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=30)
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item[1].set_exception(WorkerFailed("the compile pool was shut down"))

    def _start_worker(self) -> subprocess.Popen:
        process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, close_fds=True)
        with self._lock:
            self.started += 1
            self._processes.append(process)
        return process

    def _feed(self) -> None:
        process = None
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            process = self._start_worker()  # at once: it imports Triton while the first jobs come
        deaths = 0  # in a row: past MAX_DEATHS, no worker is started again and jobs fail at once
        while (item := self._jobs.get()) is not _STOP:
            job, future = item
            if deaths >= MAX_DEATHS:
                future.set_exception(WorkerFailed(f"the compile workers died {deaths} times in a row"))
                continue
            try:
                if process is None or process.poll() is not None:
                    process = self._start_worker()
                _send(process.stdin, job)
                status, value = _receive(process.stdout)
            except Exception as exc:  # it could not start, the job does not pickle, or it died
                _stop(process)
                process, deaths = None, deaths + 1
                future.set_exception(WorkerFailed(f"the compile worker died ({type(exc).__name__}: {exc})"))
                continue
            deaths = 0
            if status == "ok":
                future.set_result(value)
            else:
                future.set_exception(WorkerFailed(value))
        _stop(process)


def _stop(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    with contextlib.suppress(OSError):
        process.stdin.close()  # the worker's loop ends at the end of its input
    try:
        process.wait(timeout=5)  # an idle worker exits at once; a busy one is stopped mid-compile
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_POOL: CompilePool | None = None
_POOL_LOCK = threading.Lock()


def _forget_in_child() -> None:
    # A forked child has the pool's queue but not its threads (nor, maybe, a free lock): it starts its own.
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def shared_pool(workers: int) -> CompilePool:
    """The process's pool, started on first use with `workers` workers and reused after."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = CompilePool(workers)
            atexit.register(shutdown)
        return _POOL


def shutdown() -> None:
    """Stop the process's pool, if one was started (at exit; a later `shared_pool` starts a new one)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown()


# ---- the worker's side: this file run as a script ----

class _Target:
    """What Triton's JIT asks its driver before compiling: here, the parent's GPU target."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> Any:
        return self.target


class _Dtype:
    """A torch dtype as Triton reads one off a tensor: by its name (`torch.float32`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


def _compile(job: dict[str, Any], dtypes: dict[str, _Dtype]) -> str:
    """Warm up the job's kernel as the parent would; the binary's key in Triton's disk cache."""
    import linecache
    import types

    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import MockTensor

    source, filename, env, target = job["source"], job["filename"], job["env"], GPUTarget(*job["target"])
    os.environ.clear()  # the parent's: Triton's cache folder and every variable its cache key reads
    os.environ.update(env)
    driver.set_active(_Target(target))
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(job["module"])
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)
    named = dict(job["values"])
    for name, dtype in job["pointers"].items():
        named[name] = MockTensor(dtypes.setdefault(dtype, _Dtype(dtype)))  # one object per dtype, as torch's
    fn = getattr(module, job["fn_name"])
    return fn.warmup(grid=job["grid"], **job["options"], **named).hash


def _serve(jobs: BinaryIO, replies: BinaryIO) -> None:
    dtypes: dict[str, _Dtype] = {}
    while True:
        try:
            job = _receive(jobs)
        except EOFError:
            return
        try:
            reply = ("ok", _compile(job, dtypes))
        except BaseException as exc:  # the parent compiles this kernel itself
            reply = ("error", f"{type(exc).__name__}: {exc}")
        _send(replies, reply)


def _main() -> None:
    # This folder is not a place to import from: its modules' names (compile, ops, ...) would shadow others.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a compiler prints must not corrupt the replies
    import triton.compiler  # noqa: F401  (imported while the parent plans, not at the first job)
    with os.fdopen(0, "rb") as jobs, replies:
        _serve(jobs, replies)


if __name__ == "__main__":
    _main()
