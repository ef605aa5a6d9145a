"""One kernel's launch with everything but its per-call arguments bound once.

`fn[grid](*args, **constants)` goes through Triton's JIT dispatch on every call:
it binds each argument by name, recomputes every specialization (dtype,
16-byte alignment, divisibility of each integer) and hashes them into a cache
key, which costs tens of microseconds of host time per launch. Here, on a
GPU, that dispatch runs once per device and pointer-alignment pattern (the
only things that vary between calls of one plan: sizes, dtypes and constants
are fixed), and later launches call the compiled binary directly; a generated
launcher calls it itself once it has bound it (`fusec/direct_launch.py`). Triton's
interpreter has no binary: on a CPU every launch goes through the JIT
dispatch, which is the interpreter's own entry point.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.runtime import _allocation

from fusec.kernels.launch import Launch

_knobs = getattr(getattr(triton, "knobs", None), "runtime", None)
_FUTURE = getattr(triton, "FutureKernel", ())  # what the JIT files for a compile still running

# Triton's interpreter keeps the running program's grid index and its patched `tl` in
# module globals: two interpreted launches at once would read each other's program ids.
_INTERPRETER = threading.Lock()


def launch_hooks_set() -> bool:
    """Whether a profiler asked Triton to wrap launches (then every launch takes Triton's own path).
    Recent Triton keeps the hooks as chains, empty when nobody asked; a launcher asks once per call."""
    try:
        return bool(_knobs.launch_enter_hook.calls or _knobs.launch_exit_hook.calls)
    except AttributeError:  # a hook set as a plain function, or an older Triton
        return _hooks_set_otherwise()


def _hooks_set_otherwise() -> bool:
    if _knobs is None:
        return False
    enter, leave = _knobs.launch_enter_hook, _knobs.launch_exit_hook
    return bool(getattr(enter, "calls", enter)) or bool(getattr(leave, "calls", leave))


class KernelFailed(Exception):
    """A generated kernel did not compile or run."""


class KernelCall:
    """Launches one compiled kernel: `call(*tensors_and_extras)` appends sizes and constants."""

    def __init__(self, fn: Any, launch: Launch, sizes: Sequence[int], interpret: bool, *, loaded: int,
                 name: str = "") -> None:
        self.fn = fn
        # The leading arguments that may arrive at any alignment (the kernel's inputs and outputs:
        # an output may be an input written in place); the rest come from the allocator (aligned)
        # or are integers of a fixed width.
        self.loaded = loaded
        self.name = name or getattr(fn, "__name__", "kernel")
        self.launch = launch
        self.sizes = tuple(sizes)
        self.interpret = interpret
        self.grid = tuple(launch.grid) + (1,) * (3 - len(launch.grid))
        # (device, alignment of each pointer) -> the compiled binary's entry (`entry_of`)
        self.binaries: dict[tuple, tuple] = {}
        self.ready: dict[int | None, tuple] = {}  # device -> the entry of the binary for pointers all aligned
        self.tail: tuple | None = None  # sizes and constants in parameter order, once known
        self.count = 0  # launches through this call (not those a launcher makes straight)

    def __call__(self, *args: Any) -> None:
        self.count += 1
        try:
            if self.interpret:
                with _INTERPRETER:
                    self._dispatch(args)
                return
            # The device (`.device` costs a sixth of `get_device()`) and the loaded tensors' alignment:
            # every other argument is the same each call.
            key = (args[0].device.index, *[a.data_ptr() % 16 == 0 for a in args[:self.loaded]])
            entry = self.binaries.get(key)
            if entry is None or launch_hooks_set():
                self.binaries[key] = entry_of(self._dispatch(args))
                return
            run_binary(entry, self.grid, key[0], args, self.tail)
        except Exception as exc:  # a Triton compile or launch failure is fusec's bug, not the user's
            raise KernelFailed(f"kernel {self.name} failed: {type(exc).__name__}: {exc}") from exc

    def aligned(self, *args: Any) -> None:
        """A launch whose pointers the caller knows to be 16-byte aligned (the generated launcher
        checks what comes from outside once per call; the allocator's blocks are aligned): no key
        to compute, and the binary's entry point is bound once per device."""
        if self.interpret:
            return self(*args)  # the interpreter's entry point is Triton's dispatch either way
        self.count += 1
        try:
            device = args[0].device.index
            entry = self.ready.get(device)
            if entry is None or launch_hooks_set():
                self.ready[device] = entry_of(self._dispatch(args))
                return None
            run_binary(entry, self.grid, device, args, self.tail)
        except Exception as exc:  # a Triton compile or launch failure is fusec's bug, not the user's
            raise KernelFailed(f"kernel {self.name} failed: {type(exc).__name__}: {exc}") from exc
        return None

    def _dispatch(self, args: Sequence[Any]) -> Any:
        """Through Triton's JIT: compiles on first sight of a specialization; returns the binary."""
        launch = self.launch
        constants = call_constants(launch, args, self.loaded, self.interpret)
        binary = self.fn[launch.grid](*args, *self.sizes, **constants, **launch.options())
        if isinstance(binary, _FUTURE):  # compiled in the background (kernels/precompile.py): now done
            binary = binary.result()
        if self.tail is None and not self.interpret:
            self.tail = self.tail_for(len(args))
        return binary

    def tail_for(self, given: int) -> tuple:
        """Sizes then constants, in the order of the kernel's parameters after the given arguments."""
        names = list(self.fn.arg_names)[given + len(self.sizes):]
        missing = [n for n in names if n not in self.launch.constants]
        if missing:
            raise TypeError(f"kernel {self.name}: no value for parameter(s) {', '.join(missing)}")
        return (*self.sizes, *(self.launch.constants[n] for n in names))



@dataclass(frozen=True)
class _Choice:
    """What a dynamic kernel launches at one set of extents, worked out once for them."""

    fn: Any
    launch: Launch
    grid: tuple  # padded to 3-D
    sizes: tuple  # the size arguments after the symbols
    variant: tuple  # (function, constexpr choices): one compiled kernel each
    key: tuple  # the variant as a binary's key starts: function, warps, constexpr choices


class DynamicCall:
    """Launches a kernel of a dynamic graph: the launcher passes the kernel's symbols and its
    extents after the tensors, and `choose(extents)` picks the function (a reduction has a
    persistent variant for rows that fit one block, and a looped one) and its blocks and grid,
    once per extents seen (a call of sizes seen before looks its choice up).

    Each function and constexpr choice is a compiled variant: Triton compiles one binary
    per variant and per specialization of its integer arguments (`int_class`), so a variant
    compiles once and serves every size that picks it. On a GPU the binary is kept here
    under that key, with the pointers' alignment, and launched directly as KernelCall does.
    """

    def __init__(self, choose: Callable[[tuple], tuple[Any, Launch]], size_args: Callable[[tuple], tuple],
                 n_extents: int, interpret: bool, *, loaded: int, name: str = "") -> None:
        self.choose = choose
        self.size_args = size_args
        self.n_extents = n_extents
        self.interpret = interpret
        self.loaded = loaded
        self.name = name
        self.launch: Launch | None = None  # the last call's
        self.variants: set[tuple] = set()  # every variant chosen so far
        self.chosen: dict[tuple, _Choice] = {}  # extents -> its choice, for the last MAX_CHOICES extents
        self.binaries: dict[tuple, tuple] = {}  # specialization key -> (binary's entry, constants in order)
        self.count = 0

    def launch_at(self, extents: tuple) -> Launch:
        return self._choice(tuple(extents)).launch

    def _choice(self, extents: tuple) -> _Choice:
        choice = self.chosen.get(extents)
        if choice is None:
            if len(self.chosen) >= MAX_CHOICES:  # sizes drawn from a wide range: keep memory bounded
                self.chosen.clear()
            fn, launch = self.choose(extents)
            constants = tuple(sorted(launch.constants.items()))
            choice = _Choice(fn, launch, tuple(launch.grid) + (1,) * (3 - len(launch.grid)),
                             tuple(self.size_args(extents)), (getattr(fn, "__name__", id(fn)), *constants),
                             (id(fn), *launch.options().items(), *constants))
            self.chosen[extents] = choice
            self.variants.add(choice.variant)
        return choice

    def __call__(self, *args: Any) -> None:
        self.count += 1
        cut = len(args) - self.n_extents
        choice = self._choice(tuple(int(e) for e in args[cut:]))
        launch = self.launch = choice.launch
        given = (*args[:cut], *choice.sizes)
        try:
            if self.interpret:
                constants = call_constants(launch, given, self.loaded, True)
                with _INTERPRETER:
                    choice.fn[launch.grid](*given, **constants, **launch.options())
                return
            self._launch(choice, given)
        except Exception as exc:  # a Triton compile or launch failure is fusec's bug, not the user's
            raise KernelFailed(f"kernel {self.name} failed: {type(exc).__name__}: {exc}") from exc

    def _launch(self, choice: _Choice, given: tuple) -> None:
        # Everything a binary depends on: the variant, the device, the loaded pointers' alignment
        # (the rest come from the allocator) and the class of every integer argument.
        device = given[0].device.index
        key = (*choice.key, device, *[a.data_ptr() % 16 == 0 for a in given[:self.loaded]],
               *[int_class(a) for a in given if isinstance(a, int)])
        found = self.binaries.get(key)
        if found is None or launch_hooks_set():
            launch = choice.launch
            constants = call_constants(launch, given, self.loaded, False)
            binary = choice.fn[launch.grid](*given, **constants, **launch.options())
            names = list(choice.fn.arg_names)[len(given):]
            self.binaries[key] = (entry_of(binary), tuple(launch.constants[n] for n in names))
            return
        entry, constants = found
        run_binary(entry, choice.grid, device, given, constants)


MAX_CHOICES = 256


def entry_of(binary: Any) -> tuple:
    """What a direct launch of a compiled binary needs: its entry point, function and metadata.
    A binary that takes global scratch (a kernel making TMA descriptors) has its entry point
    make sure first that the launching thread has an allocator for it (`use_scratch`)."""
    run = binary.run
    if getattr(getattr(binary, "metadata", None), "global_scratch_size", 0):
        run = functools.partial(_run_with_scratch, run)
    return run, binary.function, binary.packed_metadata


def _run_with_scratch(run: Callable[..., Any], *args: Any) -> None:
    use_scratch()
    run(*args)


def run_binary(entry: tuple, grid: tuple, device: int | None, args: Sequence[Any], tail: tuple) -> None:
    """Launch a compiled binary straight, on the current stream, no Triton hooks (callers check
    `launch_hooks_set` first): the grid, the stream, the binary's handles, the arguments."""
    run, function, metadata = entry
    run(*grid, torch._C._cuda_getCurrentRawStream(device), function, metadata, None, None, None, *args, *tail)


def int_class(value: int) -> tuple[bool, bool, bool]:
    """What Triton specializes an integer argument on: equal to 1 (a constant), divisible by
    16 (an alignment hint), and fitting 32 bits (its type): one binary per class."""
    return value == 1, value % 16 == 0, -(2**31) <= value < 2**31


def call_constants(launch: Launch, args: Sequence[Any], loaded: int, interpret: bool) -> dict:
    """The constexprs of the binary this call launches: the launch's, with TMA turned off where a
    descriptor cannot be made (a loaded pointer not 16-byte aligned, a GPU before Hopper). With TMA
    on, the launching thread gets fusec's scratch allocator for the descriptors (`use_scratch`)."""
    constants = launch.constants
    if not constants.get("TMA"):
        return constants
    if any(a.data_ptr() % 16 for a in args[:loaded]) or not (interpret or _has_tma(args[0].device.index)):
        return {**constants, "TMA": False}
    if not interpret:
        use_scratch()
    return constants


@functools.cache
def _has_tma(device: int | None) -> bool:
    return torch.cuda.get_device_capability(device) >= (9, 0)


class Scratch:
    """Triton's global scratch, where programs making TMA descriptors on the device write them:
    one buffer per device and stream, grown when a launch needs more and never freed. Launches on
    one stream run in order, so each finds the last one done with it; no allocation per launch.
    A launch captured into a CUDA graph gets a buffer of its own, kept for good: every replay
    addresses what the capture did, and replays of different graphs (all captured on torch's one
    capture stream) may run at once on streams of their callers."""

    def __init__(self, empty: Callable[[int], torch.Tensor] | None = None,
                 device: Callable[[], int | None] | None = None,
                 capturing: Callable[[], bool] | None = None) -> None:
        self.empty = empty or _empty_on_current_device
        self.device = device or torch.cuda.current_device
        self.capturing = capturing or _capturing
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.outgrown: list[torch.Tensor] = []  # kept: a captured graph may still address one
        self.captured: list[torch.Tensor] = []  # one a captured launch: its graph's for good

    def __call__(self, size: int, alignment: int, stream: int | None) -> torch.Tensor:
        if self.capturing():
            self.captured.append(self.empty(max(size, alignment)))
            return self.captured[-1]
        key = (self.device(), stream)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < size:
            if buffer is not None:
                self.outgrown.append(buffer)
            # torch's blocks start 512-byte aligned; Triton asks for 128 at most
            buffer = self.buffers[key] = self.empty(max(size, alignment))
        return buffer


def _capturing() -> bool:
    """Whether the current stream is recording a CUDA graph (never, in a torch built without CUDA)."""
    try:
        return torch.cuda.is_current_stream_capturing()
    except RuntimeError:
        return False


def _empty_on_current_device(size: int) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device=torch.cuda.current_device())


SCRATCH = Scratch()


def use_scratch() -> None:
    """Give this thread fusec's scratch as Triton's allocator unless it has one of its own.
    Triton keeps the allocator in a context variable, so each thread has its own, and fusec
    launches from its caller's threads, its compile pool and its parallel loads."""
    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(SCRATCH)
