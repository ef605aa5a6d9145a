"""A generated launcher's per-call head and its straight launches of compiled binaries.

The head reads, once per call, what every launch of the call shares: the device its tensors are
on (an int, `get_device()`), whether kernels launch their binaries straight (on the device the
binaries were bound for, no profiler hooking Triton's launches), the stream, the allocator, and
each input's address, which serves twice: its low bits make the alignment flag, and the address
itself is what a straight launch passes (Triton's launcher takes an int as the address and
skips its own `data_ptr()` call and driver query for that argument).

A straight launch calls the binary itself with its grid, sizes and constants written out. Its
first launches go through the kernel's call, which compiles or finds the binary with the
tensors in hand; after a call, `Binder` puts each binary found into the launcher's globals and
turns its kernel's straight launch on.
"""

from __future__ import annotations

from typing import Any

from fusec import native, pointers
from fusec.kernels.call import launch_hooks_set
from fusec.launcher_code import Source, StepCode
from fusec.plan import Kernel, LaunchExtra
from fusec.pointers import all_aligned, current_allocator
from fusec.size_reads import var

# Calls after which a launcher stops trying to bind binaries its calls never compiled (a kernel
# whose pointers are never all aligned): its kernels keep launching through their calls.
BIND_TRIES = 8


class Binder:
    """Binds, after a call of the launcher, each kernel binary its straight launches wait for:
    the binary its call launched for aligned pointers on the launcher's device, if the sizes and
    constants the launcher writes out are those the call passed (they are worked out apart;
    where they differ, the kernel keeps launching through its call, slower but right)."""

    def __init__(self, scope: dict[str, Any], device: int | None) -> None:
        self.scope, self.device = scope, device
        self.pending: list[tuple[Any, tuple[str, str, str, str], tuple | None]] = []
        self.tries = 0

    def add(self, call: Any, names: tuple[str, str, str, str], tail: tuple | None) -> None:
        """`names`: the globals of the binary's entry point, function and metadata, and the flag
        that turns its straight launch on."""
        self.pending.append((call, names, tail))
        self.scope.update(dict.fromkeys(names[:3]), **{names[3]: False})

    def __call__(self) -> None:
        self.tries += 1
        if launch_hooks_set():  # the binaries a hooked launch found are bound by a later call
            return
        left = []
        for call, names, tail in self.pending:
            entry = call.ready.get(self.device)
            if entry is None:
                left.append((call, names, tail))
            elif call.tail == tail:
                self.scope.update({**dict(zip(names[:3], entry, strict=True)), names[3]: True})
        self.pending = left
        if not left or self.tries >= BIND_TRIES:
            self.scope["BOUND"] = True


def head(src: Source, code: StepCode, first: str | None, at_head: list[tuple[str, Any, bool, str, int]]) -> list[str]:
    """The call's device index and device, whether kernels launch straight and on which stream,
    the allocator, and every input a kernel takes: its address and whether all are aligned.
    `first`: the first tensor input (None: the graph has none, its device is `code.device`).
    `at_head`: the C++ head's entries (`native.spec`), which check those inputs' layouts and
    read the index and addresses (`ADDRESSES`, a tuple) in one call; none: Python lines read them."""
    lines = []
    if first is None:
        src.names["DEV"] = code.device
        index = -1 if code.device.type == "cpu" else code.device.index
        lines += ["device = DEV", f"index = {index!r}"]
    elif at_head:
        src.names["HEAD"] = code.native.head
        lines.append(f"index, aligned, {ADDRESSES} = HEAD({src.bind(native.spec(at_head), 'SPEC')}, inputs)"
                     "  # layouts checked in C++")
    else:
        lines.append(f"index = {var(first)}.get_device()  # -1 on a CPU")
    if first is not None and src.wants_device:
        lines.append(f"device = {var(first)}.device")
    device = "device" if first is None or src.wants_device else f"{var(first)}.device"
    if src.direct:
        src.names.update(HOOKS=launch_hooks_set, RAW_STREAM=code.raw_stream)
        at = -1 if code.direct_device is None else code.direct_device
        lines.append(f"direct = index == {at!r} and not HOOKS()  # binaries launched straight")
        lines.append(f"stream = RAW_STREAM({code.direct_device!r}) if direct else None")
    if any(name not in code.reuse for name in code.fresh):
        src.names.update(zip(("HERE", "ALLOC_HERE"), current_allocator(code.device.type), strict=True))
        lines.append(f"empty_strided = ALLOC_HERE if index == HERE() else ALLOC({device})")
    if code.vouched and not at_head:
        tensors = [var(n) for n in code.vouched]
        addresses = [address(n) for n in code.vouched] if src.direct else None
        if addresses:
            lines += [f"{a} = {t}.data_ptr()" for a, t in zip(addresses, tensors, strict=True)]
        lines.append(f"aligned = {all_aligned(tensors, addresses)}  # every input a kernel takes")
    return ["    " + line for line in lines]


def address(name: str) -> str:
    """The local the Python head writes input `name`'s address into."""
    return f"p_{name}"


ADDRESSES = "addresses"  # the local holding the C++ head's tuple of addresses

# A run of at least this many arguments that are the C++ head's addresses in its order is passed
# as a slice of its tuple (`*addresses[i:j]`): fewer are read one by one.
RUN = 4


def passed(src: Source, code: StepCode, args: list[str]) -> list[str]:
    """A straight launch's arguments with each input whose address the head read passed as that
    address: the Python head's local, or the C++ head's tuple's item, a run of them as a slice."""
    if src.head_slots is None:
        vouched = {var(n): address(n) for n in code.vouched}
        return [vouched.get(a, a) for a in args]
    slots = {var(n): i for n, i in src.head_slots.items()}
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] not in slots:
            out.append(args[i])
            i += 1
            continue
        j = i + 1
        while j < len(args) and slots.get(args[j]) == slots[args[i]] + (j - i):
            j += 1
        first, last = slots[args[i]], slots[args[i]] + (j - i)
        if j - i < RUN:
            out += [f"{ADDRESSES}[{s}]" for s in range(first, last)]
        else:
            whole = first == 0 and last == len(slots)
            out.append(f"*{ADDRESSES}" if whole else f"*{ADDRESSES}[{first}:{last}]")
        i = j
    return out


def callee(src: Source, kernel: Kernel, code: StepCode) -> tuple[str, list[str] | None]:
    """The kernel's call, and the tests that every pointer it takes is 16-byte aligned (the
    allocator's buffers are, inputs the per-call flag covers, others are tested here): where
    they hold, its binary for aligned pointers, bound once; else through the key its call
    computes from every pointer. A kernel of a dynamic graph keys its binary by its sizes too
    (no tests: None)."""
    call = ident(kernel.id)
    src.names[call] = code.calls[kernel.id]
    if kernel.id in code.extents:
        return call, None
    src.names[f"{call}_aligned"] = getattr(code.calls[kernel.id], "aligned", code.calls[kernel.id])
    unknown = dict.fromkeys(code.in_place.get(n, n) for n in (*kernel.inputs, *kernel.outputs)
                            if n not in code.fresh and n not in code.scalars)
    tests = ["aligned"] if any(n in code.vouched for n in unknown) else []
    others = [var(n) for n in unknown if n not in code.vouched]  # what torch calls returned
    if others:
        tests.append(all_aligned(others))
    return (f"({call}_aligned if {' and '.join(tests)} else {call})" if tests else f"{call}_aligned"), tests


def straight(src: Source, kernel: Kernel, code: StepCode, args: list[str], tests: list[str], indent: int) -> bool:
    """`if direct and <bound> and <aligned>:` a launch of the kernel's compiled binary itself, its
    grid, sizes and constants written out, the inputs' addresses read at the head. False, and
    nothing written, where the call cannot say what the binary takes."""
    call = code.calls[kernel.id]
    given = len(args) + len(kernel.finals) * (LaunchExtra.PARTIALS in kernel.extras)  # *FINALS: partials, ticket
    try:
        tail = call.tail_for(given)
    except (AttributeError, TypeError):  # a parameter the plan has no value for: its call says so at launch
        return False
    if LaunchExtra.PARTIALS in kernel.extras:  # found by stream in a dict of the launcher's, not by a call
        src.wants_device = True
        args = pointers.partials_by_stream(args, src.bind(pointers.PartialsByStream(code.final_buffers, kernel), "P"))
    args = passed(src, code, args)
    prefix = ident(kernel.id).upper()
    names = (f"{prefix}_RUN", f"{prefix}_FN", f"{prefix}_META", f"{prefix}_ON")
    _binder(src, code).add(call, names, tail)
    if tail is None:  # a launcher written to be read (`launcher_source`): the values are the call's
        values = [f"*{ident(kernel.id)}.grid", "stream", *names[1:3], "None, None, None", *args,
                  f"*{ident(kernel.id)}.tail"]
    else:
        values = [*map(str, call.grid), "stream", *names[1:3], "None, None, None", *args,
                  *(src.literal(v) for v in tail)]
    src.emit(f"if {' and '.join(['direct', names[3], *tests])}:", indent)
    src.emit(f"{names[0]}({', '.join(values)})", indent + 1)
    src.direct = True
    return True


def bind_line(src: Source) -> list[str]:
    """The line a launcher ends its calls with until every binary it launches straight is bound."""
    return ["    if not BOUND:", "        BIND()"] if src.direct else []


def _binder(src: Source, code: StepCode) -> Binder:
    if "BIND" not in src.names:
        src.names.update(BIND=Binder(src.names, code.direct_device), BOUND=False)
    return src.names["BIND"]


def ident(step_id: str) -> str:
    """A step's id as a Python name."""
    return step_id.replace("+", "_")
