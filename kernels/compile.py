"""Triton source -> callable kernel, cached in memory and on disk by source hash."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import triton

_LOADED: dict[str, Any] = {}


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


def _write_atomically(path: Path, text: str) -> None:
    # A crash mid-write leaves a temp file, never a half kernel that is read back.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_kernel(source: str, fn_name: str, interpret: bool, cache_dir: Path) -> Any:
    """The @triton.jit function `fn_name` defined by `source` (interpreted when asked)."""
    key = source_key(source, interpret)
    if key in _LOADED:
        return _LOADED[key]
    path = Path(cache_dir) / f"{fn_name}_{key}.py"
    if not path.exists() or path.read_text() != source:
        _write_atomically(path, source)
    spec = importlib.util.spec_from_file_location(f"fusec_kernel_{key}", path)
    module = importlib.util.module_from_spec(spec)
    with interpreter(interpret):
        spec.loader.exec_module(module)
    kernel = getattr(module, fn_name)
    _LOADED[key] = kernel
    return kernel
