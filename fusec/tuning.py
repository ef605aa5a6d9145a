"""Matmul choices timed on a GPU, kept on disk: a shape is timed once per machine, not once per
process.

A choice is the position of the fastest tile configuration in the list `matmul_configs` makes
for the problem, or "library" (torch's matmul and the epilogue kernel). The file holding it is
named by a hash of everything that decides it: the kernel's source, its sizes, the GPU's name,
Triton's version and the candidate configurations themselves, so a change to any of them (a
new fusec, another GPU) asks for a new timing instead of reading a stale position. The files
live beside the kernel sources, under the same rules (`kernels/compile.py`): a directory
another user owns or others may write is not used, a file that does not parse is timed again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusec.kernels.compile import cache_refusal, source_key, write_atomically
from fusec.kernels.launch import Launch

Choice = int | str  # a configuration's position, or "library"


def choice_key(source: str, sizes: Sequence[Any], device: str, configs: Sequence[Launch]) -> str:
    candidates = [(c.grid, sorted(c.constants.items()), c.num_warps, c.num_stages) for c in configs]
    # (source_key hashes Triton's version in too)
    return source_key(json.dumps([source, list(map(str, sizes)), device, repr(candidates)]), interpret=False)


def stored(cache_dir: Path, key: str, count: int) -> Choice | None:
    """The choice kept under `key` (a position below `count`, or "library"), or None (also where
    the directory is one the kernel cache would not use)."""
    folder = cache_dir / "matmul"
    if not folder.is_dir() or not _usable(folder):
        return None
    try:
        choice = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    valid = choice == "library" or (isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < count)
    return choice if valid else None


def store(cache_dir: Path, key: str, choice: Choice) -> None:
    """Keep `choice` under `key`, where the kernel cache may be written (else nothing is kept)."""
    folder = cache_dir / "matmul"
    if not _usable(folder):
        return
    with contextlib.suppress(OSError):  # a choice not kept is timed again by the next process
        write_atomically(folder / f"{key}.json", json.dumps(choice))


def _usable(folder: Path) -> bool:
    """Whether the choices' folder, and the cache directory holding it, may be used (created 0700)."""
    return cache_refusal(folder.parent) is None and cache_refusal(folder) is None
