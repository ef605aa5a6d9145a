"""What a generated launcher is written into (`Source`: its lines and the globals they name) and
what the generator knows beyond the plan (`StepCode`): shared by the launcher's writer
(`launcher.py`) and its per-call head and straight launches (`direct_launch.py`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from fusec import sizes
from fusec.ir import Ref
from fusec.plan import Kernel
from fusec.size_reads import var
from fusec.torch_calls import Reinterpreted


@dataclass
class Source:
    """Lines of the generated function and the globals they name."""

    lines: list[str] = field(default_factory=list)
    names: dict[str, Any] = field(default_factory=dict)
    counter: itertools.count = field(default_factory=itertools.count)
    bound: dict[tuple[str, int], str] = field(default_factory=dict)  # (prefix, id(value)) -> its name
    direct: bool = False  # whether some kernel is launched straight (the call then reads `direct`, `stream`)
    views: dict[str, Reinterpreted] = field(default_factory=dict)  # views run as one reinterpretation each
    needed: set[str] = field(default_factory=set)  # those some other step or the caller reads
    last_view: dict[str, int] = field(default_factory=dict)  # buffer -> the step writing its last needed view
    read: set[str] = field(default_factory=set)  # values some step, the result or a store reads
    unnamed: set[str] = field(default_factory=set)  # values written into an input nothing reads by their name
    wants_device: bool = False  # whether some line reads the call's `device`
    # input -> its slot in the addresses' tuple the C++ head returns (None: the Python head's `p_` locals)
    head_slots: dict[str, int] | None = None

    def emit(self, line: str, indent: int = 1) -> None:
        self.lines.append("    " * indent + line)

    def bind(self, value: Any, prefix: str = "C") -> str:
        """A global name for `value` (the same name for the same object)."""
        key = (prefix, id(value))  # `names` keeps the value alive, so its id stays its own
        if key not in self.bound:
            self.bound[key] = f"{prefix}{next(self.counter)}"
            self.names[self.bound[key]] = value
        return self.bound[key]

    def literal(self, value: Any) -> str:
        return literal(self, value)


@dataclass
class StepCode:
    """What the generator needs beyond the plan: kernels' calls, extern callables, choices."""

    calls: dict[str, Callable[..., None]]  # kernel id -> KernelCall
    callables: dict[str, Callable[..., Any]]  # extern target -> torch callable
    library: frozenset[str] = frozenset()  # matmul kernels that run as torch's matmul + epilogue
    draw_seed: Callable[[], int] | None = None
    bounds_error: Callable[[Kernel, torch.Tensor], None] | None = None
    final_buffers: Callable[[Kernel, torch.device], list[torch.Tensor]] | None = None
    # where outputs go when the graph has no tensor input
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    stream_ops: dict[str, Any] = field(default_factory=dict)  # current_stream, SIDE, stream_context, record_stream
    reuse: dict[str, str] = field(default_factory=dict)  # buffer -> the dead buffer it takes over (memory plan)
    counts: list[int] | None = None  # what ran: the launcher adds 1 at counts[counted[step id]] per step run
    counted: dict[str, int] = field(default_factory=dict)
    step_hook: Callable[[str], None] | None = None  # called with each step's id as it starts (tests)
    in_place: dict[str, str] = field(default_factory=dict)  # new value -> the input its kernel writes (stores)
    # kernel id -> its extents as expressions, for kernels of a dynamic graph (sizes chosen per call)
    extents: dict[str, tuple] = field(default_factory=dict)
    fresh: frozenset[str] = frozenset()  # buffers the launcher allocates (the allocator aligns them)
    scalars: frozenset[str] = frozenset()  # CPU scalars a kernel takes as numbers (`.item()`): no pointer
    vouched: tuple[str, ...] = ()  # the inputs whose alignment the flag `aligned` holds, checked once per call
    # Static kernels launch their compiled binaries straight from the launcher's code, when the
    # call's tensors are on device index `direct_device` (None: a CPU's, the overhead bench's
    # stubbed binaries) and no profiler asked Triton to see launches; one stream only.
    direct: bool = False
    direct_device: int | None = None
    raw_stream: Callable[[int | None], int] | None = None  # the current stream's handle on a device
    native: Any = None  # the C++ head's module (`native.py`); None: the head is Python lines


def literal(src: Source, value: Any) -> str:
    """Source for an argument structure: Refs become locals; other leaves literals or bound globals."""
    if isinstance(value, Ref):
        return var(value.name)
    if isinstance(value, tuple):
        inner = ", ".join(literal(src, v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return f"[{', '.join(literal(src, v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {literal(src, v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, (bool, str, int)):
        return repr(value)
    if isinstance(value, sympy.Expr):
        return sizes.source(value, python=True)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return src.bind(value)
