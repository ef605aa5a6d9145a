"""Every static kernel of a plan compiled for the GPU right after loading, before its first launch.

Triton's JIT compiles a kernel at the first launch of each specialization (argument
dtypes, 16-byte alignment of pointers, integers equal to 1 or divisible by 16) and
keeps the binary in its own per-function cache. `JITFunction.warmup` takes the same
path without launching: given mock tensors of the dtypes the runtime passes (mocks
count as aligned, as the allocator's buffers are), the very sizes and constants that
`KernelCall` binds and the same `num_warps`, it files the binary under the key the
first real launch computes, so that launch compiles nothing. Triton's on-disk cache
(`TRITON_CACHE_DIR`) keeps the binaries for the next process.

Where there are enough kernels and cores (`compile_mode`), the kernels compile in worker
processes first (`compile_pool`: Triton's compile holds the GIL, so threads of one process
barely overlap), into Triton's disk cache under the key this process's JIT computes; the
warmup here then reads each binary back instead of compiling it. Otherwise they compile here,
on threads or one after the other. `fusec.compile` does not wait for the workers: under
Triton's AsyncCompileMode each warmup files a FutureKernel in the JIT's cache and returns, the
next graph is planned meanwhile, and a kernel's first launch waits for its worker and reads the
binary back (or compiles it, where the worker failed) on the launching thread.

This is an optimisation only: a kernel that cannot be warmed up (an argument it takes
that the plan does not describe, a Triton without `warmup`) is logged at debug level
and compiles at its first launch as before. Kernels of dynamic graphs, whose sizes
are known only per call, always do.
"""

from __future__ import annotations

import contextvars
import functools
import linecache
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import triton
from triton.runtime import driver
from triton.runtime.jit import MockTensor

from fusec.ir import FLOAT_DTYPES, Graph
from fusec.kernels import compile_pool
from fusec.kernels.call import KernelCall
from fusec.kernels.dtypes import compute_dtype
from fusec.plan import Kernel

log = logging.getLogger("fusec")

MAX_WORKERS = 8
POOL_MIN_KERNELS = 4
POOL_MIN_CPUS = 4
SEED = 2**31  # the class of every seed the runtime draws (>= 2**31: a 64-bit integer)
_INT32 = ("p_bad_index", "p_ticket")  # the bounds flag and a final reduction's ticket counter


def warmup_arguments(graph: Graph, kernel: Kernel, arg_names: Iterable[str], sizes: Iterable[int],
                     constants: Mapping[str, Any], tensor: Callable[[str], Any]) -> dict[str, Any]:
    """Each parameter of the kernel by name, as its launch passes it: `tensor(dtype)` for a pointer
    (fusec's IR dtype name), the seed's class, a host scalar's type, the bound sizes in order, then
    the constants."""
    sizes = list(sizes)
    out: dict[str, Any] = {}
    for name in arg_names:
        if name in constants:
            out[name] = constants[name]
        elif name.startswith("p_partial_"):
            out[name] = tensor(compute_dtype(graph[name.removeprefix("p_partial_")].dtype))
        elif name in _INT32:
            out[name] = tensor("int32")
        elif name == "p_split":  # a split row's partials
            out[name] = tensor("float32")
        elif name.startswith("p_"):
            out[name] = tensor(graph[name.removeprefix("p_")].dtype)
        elif name == "seed":
            out[name] = SEED
        elif name.startswith("s_"):  # a host scalar: unspecialized, any value of its type
            out[name] = 1.0 if compute_dtype(graph[name.removeprefix("s_")].dtype) in FLOAT_DTYPES else 1
        else:
            out[name] = sizes.pop(0)
    if sizes:
        raise TypeError(f"kernel {kernel.id}: {len(sizes)} size(s) left over after its parameters")
    return out


def compile_mode(functions: int, cpus: int) -> str:
    """How to compile `functions` kernel functions on `cpus` cores: `serial`, `threads` or `processes`.
    A worker process costs about half a second to start and a core to run; below
    POOL_MIN_KERNELS kernels or POOL_MIN_CPUS cores it does not pay (measured: bench/README.md)."""
    if functions < 2 or cpus < 2:
        return "serial"
    if functions >= POOL_MIN_KERNELS and cpus >= POOL_MIN_CPUS:
        return "processes"
    return "threads"


def precompile(calls: Mapping[str, Any], graph: Graph, kernels: Iterable[Kernel], dtypes: Mapping[str, Any],
               workers: int | None = None, mode: str | None = None, wait: bool = True) -> dict[str, Any]:
    """Compile each static kernel's launch in `calls` (kernel id -> its call); kernel id -> its
    compiled binary, for those that compiled (the others compile when launched); a split row's
    second launch as `id/2`. `dtypes` maps fusec's dtype names to the framework's (what a mock
    tensor carries); `workers` caps the threads or processes, `mode` overrides `compile_mode`.
    With `wait=False`, kernels going to worker processes are not waited for: each binary is then
    Triton's FutureKernel, which its first launch waits for."""
    todo = [(k, call, name) for k in kernels if k.numel for name, call in _launches(k.id, calls.get(k.id))]
    # Launches of one function go to one thread: Triton builds a function's per-device cache on first use.
    by_function: dict[int, list] = {}
    for kernel, call, name in todo:
        by_function.setdefault(id(call.fn), []).append((kernel, call, name))
    groups = list(by_function.values())
    cpus = _cpus()
    mode = mode or compile_mode(len(groups), cpus)
    workers = max(1, min(MAX_WORKERS, cpus)) if workers is None else workers
    if mode == "processes":
        compiling = _compile_in_workers(todo, graph, dtypes, workers)
        later = None if wait or not compiling else _warm_when_compiled(todo, graph, dtypes, compiling)
        if later is not None:
            return later
        _wait(compiling)

    def compile_group(group: list) -> list[tuple[str, Any]]:
        return [(name, _warm(graph, kernel, call, dtypes)) for kernel, call, name in group]

    if mode != "threads" or workers <= 1 or len(groups) <= 1:
        done = [pair for group in groups for pair in compile_group(group)]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(groups)), thread_name_prefix="fusec-compile") as pool:
            done = [pair for pairs in pool.map(compile_group, groups) for pair in pairs]
        # Triton's compile is not always safe on threads (a kernel now and then failed there under
        # load): what failed on a thread is tried once more here, alone.
        failed = {name for name, binary in done if binary is None}
        done += compile_group([job for job in todo if job[2] in failed])
    return {kid: binary for kid, binary in done if binary is not None}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _compile_in_workers(todo: list, graph: Graph, dtypes: Mapping[str, Any], workers: int) -> dict[str, Future]:
    """Send every kernel of `todo` to the worker processes, which compile it into Triton's disk
    cache; kernel id -> the future of its compile. A kernel no worker compiles is compiled here,
    by the warmup that follows."""
    try:
        environment = _environment()
        pool = compile_pool.shared_pool(workers)
    except Exception as exc:
        log.debug("fusec: no compile workers (%s: %s); kernels compile in this process", type(exc).__name__, exc)
        return {}
    futures = {}
    for kernel, call, name in todo:
        try:
            futures[name] = pool.submit(_job(graph, kernel, call, dtypes, environment))
        except Exception as exc:
            log.debug("fusec: %s not sent to a compile worker (%s: %s)", name, type(exc).__name__, exc)
    return futures


def _wait(compiling: Mapping[str, Future]) -> None:
    for kernel_id, future in compiling.items():
        _log_failure(kernel_id, future)


def _log_failure(kernel_id: str, future: Future) -> None:
    if future.exception() is not None:
        log.debug("fusec: a compile worker did not compile %s (%s); it compiles in this process",
                  kernel_id, future.exception())


class _CompiledWhenAsked(Future):
    """A kernel's compile, run by the first thread that asks for its result (the kernel's first
    launch) once the worker compiling it (`worker`) is done: the binary is then read back from the
    disk cache, or, where the worker failed, compiled. Never on the pool's feeder threads: Triton's
    compile is not always safe on a thread (see `precompile`), and a feeder has jobs to hand on."""

    def __init__(self, compile_here: Callable[[], Any], worker: tuple[str, Future] | None) -> None:
        super().__init__()
        self._compile_here, self._worker = compile_here, worker
        self._asked = threading.Lock()

    def result(self, timeout: float | None = None) -> Any:
        self._compile()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._compile()
        return super().exception(timeout)

    def _compile(self) -> None:
        with self._asked:
            if self.done():
                return
            if self._worker is not None:
                _log_failure(*self._worker)  # waits for the worker
            try:
                self.set_result(self._compile_here())
            except BaseException as exc:  # the kernel's first launch raises it, as its own compile would
                self.set_exception(exc)


class _AfterWorker(Executor):
    """Hands Triton's JIT, for each compile it asks for, a compile run when its result is first asked
    for, after the worker compiling that kernel (`worker`, set before each warmup) is done."""

    worker: tuple[str, Future] | None = None

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        return _CompiledWhenAsked(functools.partial(fn, *args, **kwargs), self.worker)


def _warm_when_compiled(todo: list, graph: Graph, dtypes: Mapping[str, Any],
                        compiling: Mapping[str, Future]) -> dict[str, Any] | None:
    """Warm up each kernel under Triton's AsyncCompileMode: the JIT files a FutureKernel in its cache
    and returns at once; the kernel's first launch waits for the worker, then reads the binary back
    (or compiles it) on its own thread. None where that mode is missing (older Triton) or already active."""
    if not hasattr(triton, "AsyncCompileMode"):
        return None
    executor = _AfterWorker()
    async_mode = triton.AsyncCompileMode(executor)

    def warm_all() -> dict[str, Any]:
        async_mode.__enter__()  # in a copy of this context, left there: its exit waits for every compile
        warmed = {}
        for kernel, call, name in todo:
            executor.worker = (name, compiling[name]) if name in compiling else None
            warmed[name] = _warm(graph, kernel, call, dtypes)
        return warmed

    try:
        warmed = contextvars.copy_context().run(warm_all)
    except RuntimeError as exc:
        log.debug("fusec: kernels waited for as they compile (%s)", exc)
        return None
    return {kid: binary for kid, binary in warmed.items() if binary is not None}


def _environment() -> dict[str, Any]:
    """What a worker needs to compile as this process would: its GPU target, and the
    environment Triton's cache key reads, with the cache folder this process uses."""
    target = driver.active.get_current_target()
    return {"target": (target.backend, target.arch, target.warp_size),
            "env": {**os.environ, "TRITON_CACHE_DIR": triton.knobs.cache.dir}}


def _job(graph: Graph, kernel: Kernel, call: Any, dtypes: Mapping[str, Any], environment: dict) -> dict[str, Any]:
    """One kernel's warmup as a worker runs it: its module's source and the same arguments."""
    fn = call.fn.fn
    filename = fn.__code__.co_filename
    source = "".join(linecache.getlines(filename))
    if not source:
        raise LookupError(f"no source for {filename}")
    launch = call.launch
    named = warmup_arguments(graph, kernel, call.fn.arg_names, call.sizes, launch.constants,
                             lambda dtype: _Pointer(str(dtypes[dtype])))
    return {"source": source, "filename": filename, "module": fn.__module__, "fn_name": fn.__name__,
            "values": {n: v for n, v in named.items() if not isinstance(v, _Pointer)},
            "pointers": {n: v.dtype for n, v in named.items() if isinstance(v, _Pointer)},
            "grid": tuple(launch.grid), "options": compile_options(launch, named), **environment}


class _Pointer:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


def _launches(kernel_id: str, call: Any) -> list[tuple[str, KernelCall]]:
    """The static launches of a kernel's call: itself, or a split row's two stages."""
    if isinstance(call, KernelCall):
        return [(kernel_id, call)]
    stages = getattr(call, "stages", ())
    return [(kernel_id + ("/2" if i else ""), stage) for i, stage in enumerate(stages)]


def compile_options(launch: Any, named: Mapping[str, Any]) -> dict[str, Any]:
    """The launch's compile options as its JIT call passes them: warps, stages, and the constants
    that are no parameter of the kernel (e.g. the overflow check a device-side assert turns off)."""
    return {**launch.options(), **{n: v for n, v in launch.constants.items() if n not in named}}


def _warm(graph: Graph, kernel: Kernel, call: Any, dtypes: Mapping[str, Any]) -> Any:
    launch = call.launch
    try:
        named = warmup_arguments(graph, kernel, call.fn.arg_names, call.sizes, launch.constants,
                                 lambda dtype: MockTensor(dtypes[dtype]))
        return call.fn.warmup(grid=launch.grid, **named, **compile_options(launch, named))
    except Exception as exc:  # never fatal: the kernel compiles at its first launch instead
        log.debug("fusec: %s not compiled ahead of its launch (%s: %s); it compiles when first launched",
                  kernel.id, type(exc).__name__, exc)
        return None
