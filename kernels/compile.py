"""Triton source -> callable kernel, cached in memory and on disk by source hash.

The disk cache is a convenience, never a requirement nor a source of code: a
directory that another user owns or others may write is refused, a bad entry is
rewritten, and where nothing can be written kernels are compiled in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import linecache
import logging
import os
import stat
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import triton

log = logging.getLogger("fusec")

_LOADED: dict[tuple[str, str], Any] = {}
_WARNED: set[str] = set()  # cache problems already reported: each is said once


@contextlib.contextmanager
def interpreter(enabled: bool) -> Iterator[None]:
    """Triton picks compiled vs interpreted when a kernel is decorated: set it for that moment."""
    knobs = getattr(getattr(triton, "knobs", None), "runtime", None)
    saved_env = os.environ.get("TRITON_INTERPRET")
    saved_knob = getattr(knobs, "interpret", None)
    os.environ["TRITON_INTERPRET"] = "1" if enabled else "0"
    if knobs is not None:
        knobs.interpret = enabled
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env
        if knobs is not None:
            knobs.interpret = saved_knob


def source_key(source: str, interpret: bool) -> str:
    text = f"{triton.__version__}\ninterpret={interpret}\n{source}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def write_atomically(path: Path, text: str) -> None:
    # A crash mid-write leaves a temp file, never a half kernel that is read back.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cache_refusal(cache_dir: Path) -> str | None:
    """Why `cache_dir` must not be used for kernels or matmul choices (None: it may). Created 0700."""
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = cache_dir.stat()
    except OSError as exc:
        return f"it cannot be created ({exc})"
    if info.st_uid != os.getuid():
        return "another user owns it"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "other users may write to it (chmod go-w)"
    return None


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("fusec: %s", message)


def _cached_file(cache_dir: Path, name: str, source: str) -> Path | None:
    """The cache file holding `source` (written or rewritten if it does not), or None
    where the cache cannot hold it: the kernel is then compiled from memory only."""
    why = cache_refusal(cache_dir)
    if why is not None:
        _warn_once(f"not using the kernel cache {cache_dir}: {why}; compiling kernels in memory")
        return None
    path = cache_dir / name
    try:
        if path.read_text(encoding="utf-8") == source:
            return path
    except (OSError, UnicodeError):
        pass  # missing, unreadable or corrupt: written afresh below
    try:
        write_atomically(path, source)
        return path
    except OSError as exc:
        _warn_once(f"cannot write to the kernel cache {cache_dir} ({exc}); compiling kernels in memory")
        return None


def load_kernel(source: str, fn_name: str, interpret: bool, cache_dir: Path) -> Any:
    """The @triton.jit function `fn_name` defined by `source` (interpreted when asked).

    The module is executed from `source` itself, never from a file or bytecode found in
    the cache: the cache file only gives tracebacks and Triton's source lookups a name.
    """
    key = source_key(source, interpret)
    if (key, fn_name) in _LOADED:  # a module may define several entries (a reduction's variants)
        return _LOADED[key, fn_name]
    path = _cached_file(Path(cache_dir), f"{fn_name}_{key}.py", source)
    filename = str(path) if path is not None else f"<fusec kernel {fn_name}_{key}>"
    # Triton reads a kernel's source through linecache: give it this text, whatever the file holds.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(f"fusec_kernel_{key}")
    module.__file__ = filename
    with interpreter(interpret):
        exec(compile(source, filename, "exec"), module.__dict__)
    kernel = getattr(module, fn_name)
    _LOADED[key, fn_name] = kernel
    return kernel
