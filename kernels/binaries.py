"""Compiled GPU kernels as package members, and back into Triton's on-disk cache.

Each binary Triton compiles is a folder of its cache named by its key, a hash of the
kernel's source, the target GPU, the compile options and Triton itself; the folder
holds the metadata JSON, the cubin and the IRs that led to it. `pack` reads those
files for each compiled kernel; `install` writes them into this process's Triton
cache under the same key, where the JIT's compile then finds them (a cache hit:
nothing is compiled). Only the same source, target and Triton compute that key
again: on another GPU architecture the binaries are not used and the kernels
compile from their sources as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREFIX = "binaries/"
_KEY = re.compile(r"[0-9a-f]{32,128}")
_FILE = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def target_name(target: Any) -> str:
    """A Triton GPU target as text: `cuda:90:32` (backend, architecture, warp size)."""
    return f"{target.backend}:{target.arch}:{target.warp_size}"


def current_target() -> str:
    """This process's GPU target, as `target_name` writes it."""
    from triton.runtime import driver

    return target_name(driver.active.get_current_target())


def pack(binaries: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, bytes]]:
    """Kernel id -> its binary's cache key, and the members holding every binary's files
    (`binaries/<key>/<file>`), read from Triton's cache where compiling put them."""
    keys: dict[str, str] = {}
    members: dict[str, bytes] = {}
    for kernel_id, binary in binaries.items():
        keys[kernel_id] = binary.hash
        for name, path in binary.metadata_group.items():
            members[f"{PREFIX}{binary.hash}/{name}"] = Path(path).read_bytes()
    return keys, members


def install(members: Mapping[str, bytes]) -> int:
    """Write the packed binaries into Triton's cache (a key already there is left as it is);
    how many binaries the cache now holds from the package."""
    from triton.runtime.cache import get_cache_manager

    by_key: dict[str, dict[str, bytes]] = {}
    for member, data in members.items():
        if member.startswith(PREFIX):
            key, _, name = member.removeprefix(PREFIX).partition("/")
            if not (_KEY.fullmatch(key) and _FILE.fullmatch(name)):
                raise ValueError(f"{member}: not a binary fusec.export packs (binaries/<hex key>/<file name>)")
            by_key.setdefault(key, {})[name] = data
    for key, files in by_key.items():
        manager = get_cache_manager(key)
        metadata = next((name for name in files if name.endswith(".json")), None)
        if metadata is None:
            raise ValueError(f"{PREFIX}{key}: no metadata (.json) among {', '.join(sorted(files))}")
        if manager.get_group(metadata) is not None:
            continue
        # The group file, which compile looks up, lists where each file now lies: written last.
        manager.put_group(metadata, {name: manager.put(data, name) for name, data in files.items()})
    return len(by_key)
