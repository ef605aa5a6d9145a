"""The launcher's per-call head in C++ (`native_head.cpp`), built once per machine.

A generated launcher starts each call by reading, for every input its kernels take, whether its
layout is the one the kernels were generated for and where it starts in memory. In Python that
is two method calls per input (0.1 µs each); the C++ head does all of them in one call, and
draws a call's seed from torch's generator without a tensor (`seed`, 0.05 µs against 1.2).

It is compiled with the C++ compiler and headers torch's own extensions use, into the kernel
cache directory, under a name that hashes the source, torch's and Python's versions and the
compiler: a new torch builds it again. The build (about 15 s on two cores) runs in a thread of its
own the first time a launcher is generated; until it is loaded, and wherever it cannot be built
(no compiler, no Python headers, a cache directory that is not the user's), launchers keep the
Python head, which computes the same values. When it loads, launchers written before it are
written again by their next call.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import operator
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from fusec.kernels.compile import cache_refusal
from fusec.pointers import StrideMismatch

log = logging.getLogger("fusec")

SOURCE = Path(__file__).with_name("native_head.cpp")
MODULE = "fusec_native_head"
BUILD_SECONDS = 600  # a compiler that takes longer is stopped; the Python head stays


class _State:
    """The process's one C++ head: loaded, being built, or why it is not there."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.module: ModuleType | None = None
        self.refusal: str | None = None  # why there is none (None: there is one, or it is being built)
        self.thread: threading.Thread | None = None
        self.waiting: list[weakref.ref] = []  # launcher owners told when it loads


_STATE = _State()


def module() -> ModuleType | None:
    """The loaded C++ head, or None."""
    return _STATE.module


def refusal() -> str | None:
    """Why launchers use the Python head (None: the C++ one is loaded or being built)."""
    return _STATE.refusal


def start(cache_dir: Path, when_loaded: Any = None) -> ModuleType | None:
    """The C++ head if it is loaded or already built in `cache_dir`; else None, and a build started
    in a thread of its own. `when_loaded`: an object whose `native_loaded()` is called (from the
    building thread) once it loads; held weakly."""
    with _STATE.lock:
        if _STATE.module is not None or _STATE.refusal is not None:
            return _STATE.module
        path, why = _target(cache_dir)
        if why is not None:
            return _refuse(why)
        if path.exists() and _STATE.thread is None:
            _load_or_refuse(path)
            if _STATE.module is not None:
                return _STATE.module
        if when_loaded is not None:
            _STATE.waiting.append(weakref.ref(when_loaded))
        if _STATE.thread is None:
            _STATE.thread = threading.Thread(target=_build_and_load, args=(path,), name="fusec-native", daemon=True)
            _STATE.thread.start()
        return None


def wait(cache_dir: Path, timeout: float | None = BUILD_SECONDS) -> ModuleType | None:
    """The C++ head, built first if needed (tests and benchmarks start from it), or None."""
    start(cache_dir)
    thread = _STATE.thread
    if thread is not None:
        thread.join(timeout)
    return _STATE.module


def _target(cache_dir: Path) -> tuple[Path, str | None]:
    folder = cache_dir / "native"
    why = cache_refusal(cache_dir) or cache_refusal(folder)
    if why is not None:
        return folder, f"the cache directory {cache_dir} cannot hold it: {why}"
    compiler = _compiler()
    if compiler is None:
        return folder, "no C++ compiler found (set CXX, or install g++)"
    text = "\n".join([SOURCE.read_text(encoding="utf-8"), torch.__version__, str(torch.version.git_version),
                      sys.version, sysconfig.get_config_var("EXT_SUFFIX") or "", compiler])
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    return folder / f"{MODULE}_{key}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}", None


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++") or shutil.which("clang++")


def command(compiler: str, source: Path, output: Path) -> list[str]:
    """The compile line: torch's headers and libraries, its C++ ABI, Python's headers."""
    from torch.utils import cpp_extension

    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    libraries = cpp_extension.library_paths()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [compiler, "-O2", "-shared", "-fPIC", "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w",
            *(f"-I{p}" for p in includes), str(source), "-o", str(output),
            *(f"-L{p}" for p in libraries), *(f"-Wl,-rpath,{p}" for p in libraries),
            "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]


def _build_and_load(path: Path) -> None:
    try:
        if not path.exists():
            _build(path)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        with _STATE.lock:
            _refuse(f"building it failed: {exc}")
        return
    with _STATE.lock:
        _load_or_refuse(path)
        waiting, _STATE.waiting = _STATE.waiting, []
    if _STATE.module is not None:
        for ref in waiting:
            owner = ref()
            if owner is not None:
                owner.native_loaded()


def _build(path: Path) -> None:
    """Compile into a temporary file beside `path`, then move it there (another process building
    at once moves a file as good)."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found")
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run(command(compiler, SOURCE, Path(tmp)), capture_output=True, text=True,
                              timeout=BUILD_SECONDS, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_or_refuse(path: Path) -> None:
    try:
        spec = importlib.util.spec_from_file_location(MODULE, path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        loaded.set_tensor_types((torch.Tensor, torch.nn.Parameter))
    except (ImportError, OSError, AttributeError) as exc:
        _refuse(f"loading {path} failed: {exc}")
        return
    _STATE.module = loaded
    log.debug("fusec: launchers read their inputs with the C++ head %s", path)


def _refuse(why: str) -> None:
    _STATE.refusal = why
    log.info("fusec: launchers read their inputs in Python (0.1 µs more per input): %s", why)


def python_head(spec: tuple, *tensors: torch.Tensor) -> tuple:
    """What `native_head.cpp`'s head computes, in Python: where a tensor is one it leaves to Python
    (a subclass, a layout not the expected one), and the reference its tests compare it with."""
    _, _, _, *entries = spec
    addresses = []
    for tensor, (name, check, wants_address, expected) in zip(tensors, entries, strict=True):
        if not _matches(tensor, check):
            raise StrideMismatch(f"{name} has strides {tuple(tensor.stride())}, the kernel expects {expected}")
        if wants_address:
            addresses.append(tensor.data_ptr())
    aligned = not (functools.reduce(operator.or_, addresses, 0) & 15)
    return (tensors[0].get_device(), aligned, *addresses)


def _matches(tensor: torch.Tensor, check: Any) -> bool:
    if check is None:
        return True
    if check is True:
        return tensor.is_contiguous()
    pairs = zip(check[::2], check[1::2], strict=True)
    return all(dim < tensor.dim() and tensor.stride(dim) == stride for dim, stride in pairs)


def spec(entries: Sequence[tuple[str, Any, bool, str]]) -> tuple:
    """A head's spec: the Python head, a slot per address read (the C++ head keeps there the int it
    returned last, and its value as 8 raw bytes), and per tensor an entry: its name, its check,
    whether its address is read, its strides as a mismatch's message shows them."""
    slots = sum(bool(e[2]) for e in entries)
    return (python_head, [None] * slots, bytearray(8 * slots), *entries)
