"""The memory a generated launcher hands its kernels: where it is allocated, and what is known
of its alignment.

Triton compiles a kernel once per pattern of 16-byte-aligned pointers (an aligned pointer gets
vector loads and stores), so a launch must know its pointers' pattern to pick the binary. The
launcher knows most of it when it writes its source: the buffers it allocates come from torch's
allocator, whose blocks are aligned (512 bytes on a GPU, 64 on a CPU), and stay so when a later
buffer takes one over. Only what comes from outside can be anywhere: the call's inputs (a view
may start at any element), checked once per call in one flag, and what a torch call returned,
checked before the kernel that reads it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch._C._dynamo.guards import _empty_strided_cpu, _empty_strided_cuda

from fusec import sizes
from fusec.ir import Node, contiguous_strides
from fusec.plan import Kernel


class StrideMismatch(Exception):
    """An input arrived with strides other than the ones the kernels were generated for."""


def allocator(device: torch.device) -> Callable[..., torch.Tensor]:
    """`empty_strided(size, stride, dtype)` on `device` by the shortest path: torch's C++ entry
    points that skip the argument parser (Inductor's output code calls them too) allocate on the
    CPU or on the current CUDA device; another device takes torch.empty_strided."""
    if device.type == "cpu":
        return _empty_strided_cpu
    if device.type == "cuda" and device.index == torch.cuda.current_device():
        return _empty_strided_cuda
    return functools.partial(_empty_strided_on, device)


def current_allocator(device_type: str) -> tuple[Callable[[], int], Callable[..., torch.Tensor]]:
    """The index of the current device of a type, as a tensor's `get_device()` gives it, and
    torch's allocator on it: a launcher allocates through that allocator when the call's tensors
    are on the current device, which costs one test per call instead of a lookup (`allocator`, a
    third of a microsecond); elsewhere it asks `allocator`."""
    if device_type == "cuda":
        return torch._C._cuda_getDevice, _empty_strided_cuda
    return _cpu_index, _empty_strided_cpu


def _cpu_index() -> int:
    return -1  # a CPU tensor's `get_device()`


def _empty_strided_on(device: torch.device, size: tuple, stride: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_strided(size, stride, dtype=dtype, device=device)


def fresh_buffers(kernels: Iterable[Kernel], in_place: dict[str, str], reuse: dict[str, str]) -> frozenset[str]:
    """The kernels' outputs the launcher allocates, or takes over from one it allocated (not an
    input written in place): aligned by the allocator."""
    made = {o for k in kernels for o in k.outputs if o not in in_place}

    def root(name: str) -> str:
        while name in reuse:
            name = reuse[name]
        return name
    return frozenset(name for name in made if root(name) in made)


def inputs_taken(kernels: Iterable[Kernel], in_place: dict[str, str], inputs: Sequence[str]) -> tuple[str, ...]:
    """The inputs the kernels read or write in place, in the call's order."""
    taken = {in_place.get(n, n) for k in kernels for n in (*k.inputs, *k.outputs)}
    return tuple(n for n in inputs if n in taken)


def all_aligned(tensors: Sequence[str], addresses: Sequence[str] | None = None) -> str:
    """Source of a test that the tensors named all start at a multiple of 16 bytes: the low
    4 bits of their addresses' bitwise or (`addresses`: locals already holding them)."""
    joined = " | ".join(addresses if addresses is not None else [f"{name}.data_ptr()" for name in tensors])
    return f"not (({joined}) & 15)" if len(tensors) > 1 else f"not ({joined} & 15)"


def _checked_dims(node: Node) -> tuple[list[int], tuple] | None:
    """The dims whose strides address anything (longer than 1; a symbolic dim is at least 2:
    Dynamo specializes 0 and 1) and the strides expected there; None: nothing to check."""
    dims = [d for d, s in enumerate(node.shape) if not sizes.is_static(s) or s > 1]
    if not dims or node.strides is None:
        return None
    return dims, tuple(node.strides[d] for d in dims)


def _contiguous(node: Node, dims: list[int], expected: tuple) -> bool:
    return expected == tuple(contiguous_strides(node.shape)[d] for d in dims)


def stride_check(node: Node, value: str) -> list[tuple[str, int]]:
    """Source lines (and their indent under the first) raising `StrideMismatch` unless the tensor
    `value` has `node`'s strides. Only the strides of dims longer than 1 address anything: those
    are checked."""
    checked = _checked_dims(node)
    if checked is None:
        return []
    dims, expected = checked
    if _contiguous(node, dims, expected):
        test = f"if not {value}.is_contiguous():"  # is_contiguous ignores dims of size 1 too, and is one cached flag
    elif len(dims) == len(node.shape):
        test = f"if {value}.stride() != {sizes.tuple_source(expected)}:"
    else:
        test = f"if ({', '.join(f'{value}.stride({d})' for d in dims)},) != {sizes.tuple_source(expected)}:"
    raised = (f"raise StrideMismatch(f'{node.name} has strides {{tuple({value}.stride())}}, "
              f"the kernel expects {expected_strides(node)}')")
    return [(test, 0), (raised, 1)]


def expected_strides(node: Node) -> str:
    """`node`'s strides as the message of a mismatch shows them."""
    return "(" + ", ".join(map(sizes.text, node.strides)) + ("," if len(node.strides) == 1 else "") + ")"


NOT_STATIC = object()  # `native_check`'s answer where only Python can check: a stride is a symbol


def native_check(node: Node) -> Any:
    """What the C++ head checks of input `node` (`native.py`): None (nothing), True (contiguous),
    a tuple (dim, stride, dim, stride, ...), or `NOT_STATIC` (`stride_check`'s lines check it)."""
    checked = _checked_dims(node)
    if checked is None:
        return None
    dims, expected = checked
    if _contiguous(node, dims, expected):
        return True
    if not sizes.all_static(expected):
        return NOT_STATIC
    return tuple(int(v) for pair in zip(dims, expected, strict=True) for v in pair)


class PartialsByStream(threading.local):
    """A static kernel's final-reduction partials and ticket as its straight launch finds them:
    kept per thread by stream (a straight launch is on the device its binaries were bound for, so
    the stream is the rest of the key), a stream's first launch asking `find(device)` (the
    runtime's own buffers for the kernel, kept per thread, device, stream and program count).
    A dict lookup per launch instead of a call of fusec's (0.5 µs)."""

    def __init__(self, find: Callable[[Kernel, torch.device], list[torch.Tensor]], kernel: Kernel) -> None:
        self.find, self.kernel = find, kernel
        self.kept: dict[int | None, list[torch.Tensor]] = {}

    def first(self, device: torch.device, stream: int | None) -> list[torch.Tensor]:
        if len(self.kept) >= MAX_KEPT:  # a thread that launched on many streams: keep memory bounded
            self.kept.clear()
        found = self.kept[stream] = self.find(self.kernel, device)
        return found


# The most buffers a cache of the runtime's keeps (by stream here; by kernel, device, stream and
# size in `Runtime._final_buffers`) before it starts again.
MAX_KEPT = 256


def partials_by_stream(args: list[str], kept: str) -> list[str]:
    """A straight launch's arguments: the partials its call finds (`*FINALS...`) found in `kept`,
    a `PartialsByStream`, by the launch's stream."""
    return [f"*({kept}.kept.get(stream) or {kept}.first(device, stream))" if a.startswith("*FINALS") else a
            for a in args]
