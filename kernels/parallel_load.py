"""Every kernel of a plan loaded at once, on a pool of threads.

Loading a kernel writes its source to the cache folder, imports it and
decorates it with `triton.jit`; on a GPU, Triton then compiles it to a binary
the first time it is launched and keeps that binary in its own on-disk cache
(`TRITON_CACHE_DIR`, `~/.triton/cache` by default), keyed by the source and the
target, so a second process with the same kernels compiles nothing. fusec
leaves that cache on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fusec.kernels.compile import interpreter, load_kernel
from fusec.kernels.kinds import ROWS_VARIANT
from fusec.plan import Kernel

MAX_WORKERS = 8


def default_workers(n_kernels: int) -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1, n_kernels))


def load_kernels(kernels: Sequence[Kernel], interpret: bool, cache_dir: Path,
                 workers: int | None = None) -> dict[str, Any]:
    """Each kernel's id -> its loaded @triton.jit function (and `id + ROWS_VARIANT` -> its
    rows-in-registers entry, where it has one), loaded by `workers` threads (default: one per
    core, at most MAX_WORKERS). Identical sources load once."""
    workers = default_workers(len(kernels)) if workers is None else workers
    entries = {k.id: (k.source, k.fn_name) for k in kernels}
    entries |= {k.id + ROWS_VARIANT: (k.source, k.rows_fn) for k in kernels if k.rows_fn}
    unique = set(entries.values())
    # The interpreter switch is process-wide: set it once around all loads, so every
    # thread's own set-and-restore finds (and leaves) the value it wants.
    with interpreter(interpret):
        if workers <= 1 or len(unique) <= 1:
            loaded = {key: load_kernel(*key, interpret, cache_dir) for key in unique}
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fusec-load") as pool:
                futures = {key: pool.submit(load_kernel, *key, interpret, cache_dir) for key in unique}
                loaded = {key: future.result() for key, future in futures.items()}
    return {name: loaded[key] for name, key in entries.items()}
