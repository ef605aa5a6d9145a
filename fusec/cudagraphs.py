"""CUDA graphs: record a call's launches once, replay them as one launch afterwards.

The first call runs the launcher as usual (it compiles kernels and times matmul
choices). The second records the launcher's work into a CUDA graph over static
input buffers; later calls copy their inputs into those buffers and replay the
graph, whatever the number of kernels, extern calls and streams inside.
A parameter or buffer whose address did not change between the first two
calls is read in place, not copied; should its address change
later, the graph is recorded again, copying it from then on (a few times at
most, then the launcher runs without a graph). The call that records runs
the launcher once first (the warm-up torch.cuda.graphs asks for): that run is
the call's, and its outputs are what the call returns.

Outputs are the graph's own buffers: like torch.compile's
`mode="reduce-overhead"`, a call's outputs are valid until the next call of
the same compiled graph (clone what must live longer).

A dynamic graph keeps one recording per size it is called with (the values
of its size symbols, read from the inputs as its launcher reads them), up to
MAX_SIZES; calls of other sizes run the launcher. Each recording has a memory
pool of its own (replays of different sizes interleave, which a shared pool
does not allow) and its own copies of the inputs not read in place.

A graph that writes new values into its inputs (an optimizer step) is
recorded too: an input read in place (a parameter, an optimizer state) is
written where it is; a copied one is written into its copy, which is then
copied back into the caller's tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from fusec.ir import Graph
from fusec.plan import Extern, LaunchExtra, Plan
from fusec.size_reads import symbol_sources, var
from fusec.stores import stores

log = logging.getLogger("fusec")

MAX_RECORDINGS = 4  # recordings of one size, made again as inputs read in place move
MAX_SIZES = 8  # sizes recorded per graph (a dynamic graph's): calls of other sizes run without a graph
_NONE = object()


def refusal(plan: Plan, graph_name: str) -> str | None:
    """Why the plan's work cannot be replayed from a recording, or None when it can."""
    if not graph_name.startswith("inference"):
        # A training forward's outputs hold activations its backward reads later: a replay
        # before that backward (gradient accumulation) would overwrite them.
        return "training graphs are not recorded (their saved activations would be overwritten by a replay)"
    for kernel in plan.all_kernels():
        if LaunchExtra.SEED in kernel.extras:
            return f"{kernel.id} draws random numbers with a seed chosen per call"
        if LaunchExtra.BAD_INDEX in kernel.extras:
            return f"{kernel.id} checks its indices on the host after the launch"
    host = [n.name for n in plan.graph if n.host]
    if host:
        # A replay would launch its kernels with the values the recording read (Inductor refuses too).
        return f"it reads CPU scalars ({', '.join(host[:3])}{', ...' if len(host) > 3 else ''}) as kernel arguments"
    for step in plan.steps:
        if isinstance(step, Extern) and _in_place(step.target):
            return f"{step.node} ({step.target}) writes into one of its operands in place"
    return None


def _in_place(target: str) -> bool:
    """aten.add_.Tensor, aten.copy_.default: torch names in-place ops with a trailing underscore."""
    parts = target.split(".")
    name = parts[-2] if len(parts) >= 3 else parts[-1]
    return name.endswith("_") and not name.endswith("__")


def written_inputs(plan: Plan) -> frozenset[int]:
    """The positions, among the graph's inputs, of those it writes new values into."""
    names = [n.name for n in plan.graph.inputs]
    return frozenset(names.index(dst) for _, dst in stores(plan.graph))


class GraphedCall:
    """Runs `launch(inputs)` from a CUDA graph of the call's sizes once one has been recorded (see
    the module docstring). `written`: the positions of the inputs the launch writes into. `sizes`:
    a call's sizes read from its inputs (a dynamic graph's symbols; None: the graph has one size).
    `cuda`: torch.cuda's graphs and streams (a test's stand-in records on a CPU), on devices of
    type `device_type`."""

    def __init__(self, launch: Callable[[list[Any]], Any], name: str, ran: list[int] | None = None,
                 written: frozenset[int] = frozenset(), sizes: Callable[[list[Any]], tuple] | None = None,
                 cuda: Any = torch.cuda, device_type: str = "cuda") -> None:
        self.launch = launch
        self.name = name
        self.written = written
        self.sizes = sizes
        self.cuda, self.device_type = cuda, device_type
        # The launcher's counts of what ran: the warm-up before a recording ran this call, the
        # recording runs nothing, a replay runs what it recorded.
        self.ran = ran if ran is not None else []
        self.by_size: dict[tuple | None, Recorded] = {}
        self.given_up: str | None = None
        self.unrecorded = 0  # calls of sizes beyond the MAX_SIZES recorded

    def __call__(self, inputs: list[Any]) -> Any:
        if self.given_up is not None:
            return self.launch(inputs)
        key = None if self.sizes is None else self.sizes(inputs)
        recorded = self.by_size.get(key)
        if recorded is None:
            if len(self.by_size) >= MAX_SIZES and not self._room():
                if not self.unrecorded:
                    log.warning("fusec: %s: calls of sizes other than the %d recorded run without a CUDA graph",
                                self.name, MAX_SIZES)
                self.unrecorded += 1
                return self.launch(inputs)
            recorded = self.by_size[key] = Recorded(self)
        return recorded(inputs)

    def _room(self) -> bool:
        """Whether a size seen once and never recorded could be forgotten to make room for another
        (sizes seen once at start-up do not hold the bound against the one that repeats)."""
        once = next((key for key, r in self.by_size.items() if r.graph is None and not r.recordings), _NONE)
        if once is _NONE:
            return False
        del self.by_size[once]
        return True

    @property
    def recordings(self) -> int:
        return sum(r.recordings for r in self.by_size.values())

    @property
    def replays(self) -> int:
        return sum(r.replays for r in self.by_size.values())

    def give_up(self, inputs: list[Any], reason: str) -> Any:
        self.stop(reason)
        return self.launch(inputs)

    def stop(self, reason: str) -> None:
        """No more recordings nor replays: every call runs the launcher (the counts stay)."""
        self.given_up = reason
        for recorded in self.by_size.values():
            recorded.let_go()
        log.warning("fusec: %s runs without a CUDA graph: %s", self.name, reason)


class Recorded:
    """The recording of one size of a GraphedCall's calls: made by its second call of that size,
    replayed by the later ones."""

    def __init__(self, owner: GraphedCall) -> None:
        self.owner = owner
        self.per_call: list[tuple[int, int]] = []  # (slot of `ran`, what one replay adds), nonzero only
        self.calls = 0
        self.recordings = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.first_ptrs: list[int | None] = []
        self.in_place: list[bool] = []  # read where the caller keeps it (address stable)
        self.places: list[int | None] = []  # each input's address the recording reads
        self.static: list[Any] = []  # what the recording reads: the inputs read in place, copies of the others
        # (position, copy) of each input copied (not read in place), and the copy's storage as one
        # flat tensor where the copy addresses an element twice (an expanded input): copied whole
        self.copies: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        self.outputs: Any = None
        self.replays = 0

    def __call__(self, inputs: list[Any]) -> Any:
        self.calls += 1
        if self.calls == 1:
            self.first_ptrs = [_ptr(x) for x in inputs]
            return self.owner.launch(inputs)
        if self.graph is None or not self._same_places(inputs):
            return self._record(inputs)
        for i, copy, span in self.copies:
            if span is None:
                copy.copy_(inputs[i])  # element by element, whatever the caller's layout
            elif inputs[i].stride() == copy.stride():
                span.copy_(_span(inputs[i]))
            else:  # an expanded input laid out otherwise than the recording's: this call runs without it
                return self.owner.launch(inputs)
        self.graph.replay()
        self.replays += 1
        for i, n in self.per_call:
            self.owner.ran[i] += n
        self._copy_back(inputs)
        return self.outputs

    def let_go(self) -> None:
        """The recording, its outputs and the copies it reads let go (their memory with them)."""
        self.graph = self.outputs = None
        self.static, self.copies = [], []

    def _copy_back(self, inputs: list[Any]) -> None:
        """A copied input the call wrote into: its new value into the caller's tensor, element by
        element (its span may hold another input's elements between its rows)."""
        for i, copy, _ in self.copies:
            if i in self.owner.written:
                inputs[i].copy_(copy)

    def _same_places(self, inputs: list[Any]) -> bool:
        """Whether every input read in place is where the recording read it. (Not where the object
        the recording was given is now: a parameter's `.data` may have been set to a new tensor.)"""
        return all(not in_place or _ptr(x) == place
                   for x, place, in_place in zip(inputs, self.places, self.in_place, strict=True))

    def _record(self, inputs: list[Any]) -> Any:
        owner = self.owner
        if self.recordings >= MAX_RECORDINGS:
            return owner.give_up(inputs, f"inputs read in place moved {MAX_RECORDINGS} times")
        if any(isinstance(x, torch.Tensor) and x.device.type != owner.device_type for x in inputs):
            return owner.give_up(inputs, "an input is not on the GPU")
        self.recordings += 1
        if self.graph is None:
            self.in_place = [_static_address(x) and _ptr(x) == p for x, p in zip(inputs, self.first_ptrs, strict=True)]
        else:  # an input read in place moved: copy it from now on
            self.in_place = [keep and _ptr(x) == place for x, place, keep in zip(inputs, self.places, self.in_place,
                                                                                strict=True)]
        self.let_go()  # the last recording of this size, before the next is made
        copies = [None if keep or not isinstance(x, torch.Tensor) else _static_copy(x)
                  for x, keep in zip(inputs, self.in_place, strict=True)]
        self.static = [c[0] if c else x for c, x in zip(copies, inputs, strict=True)]
        self.copies = [(i, c[0], None if torch._debug_has_internal_overlap(c[0]) == 0 else c[1])
                       for i, c in enumerate(copies) if c is not None]
        self.places = [_ptr(x) for x in self.static]
        cuda = owner.cuda
        side = cuda.Stream()
        side.wait_stream(cuda.current_stream())
        try:
            # The warm-up on a side stream, as torch.cuda.graphs recommends, is this call's work: its
            # one write into the inputs, and the outputs it returns.
            with cuda.stream(side):
                result = owner.launch(list(self.static))
        except Exception:
            # The launcher's own error, raised as a call without a graph raises it: the runtime
            # decides what runs instead (never the launcher again where it may have written into
            # inputs). The next call of this size records again.
            self.let_go()
            raise
        cuda.current_stream().wait_stream(side)
        for value in tree_leaves(result):  # made on the side stream, read on the caller's
            record_stream(value, cuda.current_stream())
        self._copy_back(inputs)
        graph = cuda.CUDAGraph()
        before = list(owner.ran)
        try:
            with cuda.graph(graph):
                outputs = owner.launch(list(self.static))
        except Exception as exc:  # an op that syncs with the host or allocates outside the pool, say
            owner.stop(f"recording failed: {type(exc).__name__}: {exc}")
            return result
        finally:  # a recording runs nothing: what one replay runs is counted when it replays
            self.per_call = [(i, after - was) for i, (after, was) in enumerate(zip(owner.ran, before, strict=True))
                             if after != was]
            owner.ran[:] = before
        self.graph, self.outputs = graph, outputs
        return result


def record_stream(value: Any, stream: Any) -> None:
    """The caching allocator told that `stream` uses a CUDA tensor made on another: its memory is
    not handed to other work until what `stream` has queued so far has run."""
    if isinstance(value, torch.Tensor) and value.is_cuda:
        value.record_stream(stream)


def sizes_of(graph: Graph) -> Callable[[list[Any]], tuple] | None:
    """A function of a call's inputs giving the values of the graph's size symbols, read as its
    launcher reads them; None for a graph of one size."""
    if not graph.hints:
        return None
    reads = symbol_sources(graph)
    names = [n.name for n in graph.inputs]
    source = (f"def sizes(inputs):\n    {', '.join(var(n) for n in names)}, = inputs\n"
              f"    return ({', '.join(reads.values())},)\n")
    scope: dict[str, Any] = {}
    exec(compile(source, "<fusec sizes>", "exec"), scope)
    return scope["sizes"]


def _static_address(value: Any) -> bool:
    """A parameter or buffer (Dynamo marks the ones it saw as such): its address is expected to
    stay; any other tensor may be a new one each call, at an address the allocator happens to reuse."""
    return isinstance(value, torch.nn.Parameter) or getattr(value, "_dynamo_static_input_type", None) is not None


def _ptr(value: Any) -> int | None:
    return value.data_ptr() if isinstance(value, torch.Tensor) else None


def _span(x: torch.Tensor) -> torch.Tensor:
    """The storage x addresses, from its first element to its last, as one flat tensor: copying
    it copies an expanded input too, which no strided copy can write."""
    extent = 1 + sum((size - 1) * stride for size, stride in zip(x.shape, x.stride(), strict=True)) if x.numel() else 0
    return torch.as_strided(x, (extent,), (1,), x.storage_offset())


def _static_copy(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor with x's sizes, strides and values in a buffer of its own, and that buffer."""
    span = _span(x).clone()
    return torch.as_strided(span, x.shape, x.stride(), 0), span
