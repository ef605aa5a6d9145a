"""The launcher's per-call head in C++ (`native_head.cpp`), built once per machine.

A generated launcher starts each call by reading, for every input its kernels take, whether its
layout is the one the kernels were generated for and where it starts in memory. In Python that
is two method calls per input (0.1 µs each); the C++ head does all of them in one call, and
draws a call's seed from torch's generator without a tensor (`seed`, 0.05 µs against 1.2).

It is compiled with the C++ compiler and headers torch's own extensions use, into the kernel
cache directory, under a name that hashes the source, the compile line, and torch's and Python's
versions: a new torch builds it again. The build (about 15 s on two cores) starts the first time a
launcher is written and runs beside the process, in a session of its own, so a script that ends
first leaves it to finish for the next one; a lock file keeps other processes from building it
again meanwhile. Until it is loaded, and wherever it cannot be built (no compiler, no Python
headers, a cache directory that is not the user's), launchers keep the Python head, which computes
the same values. When it loads, launchers written before it are written again by their next call.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import operator
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
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
    beside this process (a thread waits for it and loads it). `when_loaded`: an object whose
    `native_loaded()` is called (from that thread) once it loads; held weakly."""
    with _STATE.lock:
        if _STATE.module is not None or _STATE.refusal is not None:
            return _STATE.module
        try:
            return _start(cache_dir, when_loaded)
        except Exception as exc:  # a speed-up only: whatever goes wrong, launchers keep the Python head
            return _refuse(f"starting its build failed: {exc!r}", warn=True)


def _start(cache_dir: Path, when_loaded: Any) -> ModuleType | None:
    """`start`'s work, under the state's lock."""
    if _STATE.thread is not None:  # a build under way: this launcher is told when it loads
        if when_loaded is not None:
            _STATE.waiting.append(weakref.ref(when_loaded))
        return None
    path, why = _target(cache_dir)
    if why is not None:
        return _refuse(why)
    if path.exists():
        _load_or_refuse(path)
        return _STATE.module
    failed = _failed(path)
    said = _failure(failed)
    if said is not None:  # not tried again by every process: once a day per torch, compiler and source
        return _refuse(f"an earlier build failed (delete {failed} to try again now): {said}", warn=True)
    if when_loaded is not None:
        _STATE.waiting.append(weakref.ref(when_loaded))
    try:  # started here, not in the thread: a process that ends at once still leaves it running
        build = _spawn(path)
    except (OSError, RuntimeError) as exc:
        return _refuse(f"building it failed: {exc}", warn=True)
    _STATE.thread = threading.Thread(target=_build_and_load, args=(path, build), name="fusec-native", daemon=True)
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
                      sys.version, *command(compiler, SOURCE, Path("OUT"))])
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
    undefined = ["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else []  # Python's symbols
    return [compiler, "-O2", "-shared", "-fPIC", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w", *undefined,
            *(f"-I{p}" for p in includes), str(source), "-o", str(output),
            *(f"-L{p}" for p in libraries), *(f"-Wl,-rpath,{p}" for p in libraries),
            "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]


def _build_and_load(path: Path, build: _Build | None) -> None:
    """Wait for the build (ours, or none: another process's), then load it."""
    try:
        if build is not None:
            build.finish()
        elif not path.exists():
            _wait_for(path, _lock(path))
    except Exception as exc:  # a failed build, or anything else: the Python head stays
        with _STATE.lock:
            _refuse(f"building it failed: {exc}", warn=True)
        return
    with _STATE.lock:
        _load_or_refuse(path)
        waiting, _STATE.waiting = _STATE.waiting, []
    if _STATE.module is not None:
        _tell(waiting)


def _tell(waiting: list[weakref.ref]) -> None:
    """Each launcher owner still alive that the C++ head has loaded."""
    for ref in waiting:
        owner = ref()
        if owner is not None:
            owner.native_loaded()


# Compiles into a temporary file and moves it into place, in a session of its own: a process that
# exits before the build ends (a short script) leaves it to finish, and the next process loads it.
# It names itself in the lock first (host and pid), and stops a compiler that hangs. A failed build
# leaves what the compiler said in `failed`, which stops other processes trying again for a while.
_BUILD = ('out=$1; tmp=$2; log=$3; lock=$4; failed=$5; host=$6; limit=$7; shift 7; echo "$host:$$" >"$lock"; '
          'if command -v timeout >/dev/null 2>&1; then set -- timeout -k 10 "$limit" "$@"; fi; '
          '"$@" >"$log" 2>&1; rc=$?; '
          'if [ "$rc" -eq 0 ] && mv -f "$tmp" "$out"; then rm -f "$log" "$lock"; exit 0; fi; '
          'if [ "$rc" -eq 124 ]; then echo "stopped after $limit s" >>"$log"; fi; '
          '[ "$rc" -eq 0 ] && rc=1; mv -f "$log" "$failed"; rm -f "$tmp" "$lock"; exit "$rc"')
RETRY_SECONDS = 24 * 3600  # a failed build is tried again after this (a compiler killed for memory, a full disk)


def _lock(path: Path) -> Path:
    return path.with_name(path.name + ".building")


def _failed(path: Path) -> Path:
    return path.with_name(path.name + ".failed")


def _failure(failed: Path) -> str | None:
    """What a recent failed build said (None: there is none, or it is old enough to try again)."""
    try:
        if time.time() - failed.stat().st_mtime >= RETRY_SECONDS:
            return None
        return failed.read_text(errors="replace").strip()[-2000:]
    except OSError:
        return None


def _host() -> str:
    return platform.node() or "localhost"


class _Build:
    """A build this process started (it made the lock file, which the build then names itself in)."""

    def __init__(self, path: Path, compiler: str, lock: Path) -> None:
        self.compiler, self.lock, self.failed = compiler, lock, _failed(path)
        self.tmp = path.with_name(f"{path.name}.{_host()}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
        self.process = subprocess.Popen(
            ["sh", "-c", _BUILD, "sh", str(path), str(self.tmp), str(self.tmp) + ".log", str(lock), str(self.failed),
             _host(), str(BUILD_SECONDS), *command(compiler, SOURCE, self.tmp)],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self) -> None:
        try:
            returncode = self.process.wait(timeout=BUILD_SECONDS + 30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            for leftover in (self.tmp, Path(f"{self.tmp}.log")):
                leftover.unlink(missing_ok=True)
            if _holder(self.lock) == (_host(), self.process.pid):
                self.lock.unlink(missing_ok=True)
            raise RuntimeError(f"{self.compiler} was stopped after {BUILD_SECONDS + 30} s") from None
        if returncode != 0:
            said = _failure(self.failed) or ""
            raise RuntimeError(f"{self.compiler} exited with {returncode}: {said}")


def _spawn(path: Path) -> _Build | None:
    """Start building `path` beside this process, or None where it need not be: another process
    is building it (its lock is held), or has just built it."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found")
    lock = _lock(path)
    if not _locked(lock):
        return None
    if path.exists():  # built by the holder of a lock taken over just now
        lock.unlink(missing_ok=True)
        return None
    try:
        return _Build(path, compiler, lock)
    except OSError:
        lock.unlink(missing_ok=True)
        raise


def _holder(lock: Path) -> tuple[str, int] | None:
    """The host and process a lock names (None: it names none yet, or is gone)."""
    try:
        host, _, pid = lock.read_text().strip().rpartition(":")
        return host, int(pid)
    except (OSError, ValueError):
        return None


def _held(lock: Path) -> bool:
    """Whether the lock belongs to a build still going: younger than a build may take (the build
    stops its compiler then), and, where it names a process of this host, that process lives."""
    try:
        if time.time() - lock.stat().st_mtime >= BUILD_SECONDS + 60:
            return False
    except FileNotFoundError:
        return False
    holder = _holder(lock)
    if holder is None or holder[0] != _host():  # made a moment ago, or another machine's: its age decides
        return True
    try:
        os.kill(holder[1], 0)
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or a lock no build wrote
        return False
    except PermissionError:
        pass  # another user's process lives
    return True


def _locked(lock: Path) -> bool:
    """Whether this process may build: it made the lock file (one whose build is over without
    removing it is taken over)."""
    for _ in range(2):
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            if _held(lock):
                return False
            lock.unlink(missing_ok=True)
    return False


def _wait_for(path: Path, lock: Path) -> None:
    """Another process is building `path`: wait until it is there, or its build is over."""
    deadline = time.monotonic() + BUILD_SECONDS + 60
    while not path.exists() and lock.exists() and _held(lock) and time.monotonic() < deadline:
        time.sleep(0.25)
    if not path.exists():
        said = _failure(_failed(path))
        raise RuntimeError("another process's build of it ended without one" + (f": {said}" if said else ""))


def _load_or_refuse(path: Path) -> None:
    try:
        spec = importlib.util.spec_from_file_location(MODULE, path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        loaded.set_tensor_types((torch.Tensor, torch.nn.Parameter))
    except Exception as exc:  # a module that will not load: the Python head stays
        _refuse(f"loading {path} failed: {exc}", warn=True)
        return
    _STATE.module = loaded
    log.debug("fusec: launchers read their inputs with the C++ head %s", path)


def _refuse(why: str, warn: bool = False) -> None:
    """Launchers keep the Python head, and say why once: at INFO where nothing is wrong (no compiler),
    as a warning where a build failed."""
    _STATE.refusal = why
    (log.warning if warn else log.info)("fusec: launchers read their inputs in Python (0.1 µs more per input): %s",
                                        why)


def python_head(spec: tuple, inputs: Sequence[Any]) -> tuple:
    """What `native_head.cpp`'s head computes, in Python: where a tensor is one it leaves to Python
    (a subclass, a layout not the expected one), and the reference its tests compare it with."""
    _, _, _, *entries = spec
    addresses = []
    for name, check, wants_address, expected, position in entries:
        tensor = inputs[position]
        if not _matches(tensor, check):
            raise StrideMismatch(f"{name} has strides {tuple(tensor.stride())}, the kernel expects {expected}")
        if wants_address:
            addresses.append(tensor.data_ptr())
    aligned = not (functools.reduce(operator.or_, addresses, 0) & 15)
    return inputs[entries[0][4]].get_device(), aligned, tuple(addresses)


def _matches(tensor: torch.Tensor, check: Any) -> bool:
    if check is None:
        return True
    if check is True:
        return tensor.is_contiguous()
    pairs = zip(check[::2], check[1::2], strict=True)
    return all(dim < tensor.dim() and tensor.stride(dim) == stride for dim, stride in pairs)


def spec(entries: Sequence[tuple[str, Any, bool, str, int]]) -> tuple:
    """A head's spec: the Python head, the addresses' tuple the C++ head returned last (in a list of
    one) and their values as 8 raw bytes each, and per tensor an entry: its name, its check, whether
    its address is read, its strides as a mismatch's message shows them, its position in the call's
    inputs (the first entry's tensor gives the call's device index)."""
    slots = sum(bool(e[2]) for e in entries)
    return (python_head, [None], bytearray(8 * slots), *entries)
