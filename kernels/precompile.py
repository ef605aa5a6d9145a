"""Every static kernel of a plan compiled for the GPU right after loading, before its first launch.

Triton's JIT compiles a kernel at the first launch of each specialization (argument
dtypes, 16-byte alignment of pointers, integers equal to 1 or divisible by 16) and
keeps the binary in its own per-function cache. `JITFunction.warmup` takes the same
path without launching: given mock tensors of the dtypes the runtime passes (mocks
count as aligned, as the allocator's buffers are), the very sizes and constants that
`KernelCall` binds and the same `num_warps`, it files the binary under the key the
first real launch computes, so that launch compiles nothing. Triton's on-disk cache
(`TRITON_CACHE_DIR`) keeps the binaries for the next process.

Threads, not processes: a warmed-up binary must land in this process's JIT cache (a process
pool would fill only Triton's disk cache, to be read back here). What threads gain depends on
how much of a compile runs without the GIL (ptxas does, as a subprocess); compiling for sm_90
on a busy 2-core CPU they gained little, and lost nothing.

This is an optimisation only: a kernel that cannot be warmed up (an argument it takes
that the plan does not describe, a Triton without `warmup`) is logged at debug level
and compiles at its first launch as before. Kernels of dynamic graphs, whose sizes
are known only per call, always do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from triton.runtime.jit import MockTensor

from fusec.ir import FLOAT_DTYPES, Graph
from fusec.kernels.call import KernelCall
from fusec.kernels.dtypes import compute_dtype
from fusec.plan import Kernel

log = logging.getLogger("fusec")

MAX_WORKERS = 8
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


def precompile(calls: Mapping[str, Any], graph: Graph, kernels: Iterable[Kernel], dtypes: Mapping[str, Any],
               workers: int | None = None) -> dict[str, Any]:
    """Compile each static kernel's launch in `calls` (kernel id -> its call) on `workers` threads;
    kernel id -> its compiled binary, for those that compiled (the others compile when launched).
    `dtypes` maps fusec's dtype names to the framework's (what a mock tensor carries)."""
    todo = [(k, calls[k.id]) for k in kernels if k.numel and isinstance(calls.get(k.id), KernelCall)]
    # Launches of one function go to one thread: Triton builds a function's per-device cache on first use.
    by_function: dict[int, list] = {}
    for kernel, call in todo:
        by_function.setdefault(id(call.fn), []).append((kernel, call))
    groups = list(by_function.values())
    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1, len(groups))) if workers is None else workers

    def compile_group(group: list) -> list[tuple[str, Any]]:
        return [(kernel.id, _warm(graph, kernel, call, dtypes)) for kernel, call in group]

    if workers <= 1 or len(groups) <= 1:
        done = [pair for group in groups for pair in compile_group(group)]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fusec-compile") as pool:
            done = [pair for pairs in pool.map(compile_group, groups) for pair in pairs]
    return {kid: binary for kid, binary in done if binary is not None}


def _warm(graph: Graph, kernel: Kernel, call: Any, dtypes: Mapping[str, Any]) -> Any:
    launch = call.launch
    try:
        named = warmup_arguments(graph, kernel, call.fn.arg_names, call.sizes, launch.constants,
                                 lambda dtype: MockTensor(dtypes[dtype]))
        return call.fn.warmup(grid=launch.grid, **launch.options(), **named)
    except Exception as exc:  # never fatal: the kernel compiles at its first launch instead
        log.debug("fusec: %s not compiled ahead of its launch (%s: %s); it compiles when first launched",
                  kernel.id, type(exc).__name__, exc)
        return None
