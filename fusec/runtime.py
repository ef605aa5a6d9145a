"""Runs a Plan through its generated launcher; falls back to torch when a kernel cannot run."""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fusec import native, tuning
from fusec.cudagraphs import GraphedCall, record_stream, refusal, sizes_of, written_inputs
from fusec.device import time_cuda as _time_cuda
from fusec.ir import Graph
from fusec.kernels.call import DynamicCall, KernelCall, KernelFailed
from fusec.kernels.dtypes import compute_dtype
from fusec.kernels.kinds import ROWS_VARIANT, extents, fits_block, launch_at, size_args, split_launch
from fusec.kernels.launch import Launch, matmul_configs
from fusec.kernels.matmul import matmul_problem
from fusec.launcher import DTYPES, StepCode, StrideMismatch, dynamic, generate
from fusec.plan import Extern, Kernel, Plan, does_work
from fusec.pointers import MAX_KEPT
from fusec.size_reads import symbolic
from fusec.split_rows import SplitCall
from fusec.stores import in_place

log = logging.getLogger("fusec")

__all__ = ["EAGER_RAISES", "BadIndex", "KernelFailed", "Runtime", "StrideMismatch"]


def _call(graph: Graph, kernel: Kernel, exact: tuple, kernels: dict[str, Any],
          interpret: bool) -> KernelCall | SplitCall | DynamicCall:
    """A kernel's call: sizes bound once, or (a size or stride of it depends on a symbol)
    chosen from the extents the launcher passes at each call. `exact`: its extents."""
    fn = kernels[kernel.id]
    loaded = loaded_pointers(graph, kernel)
    if not dynamic(kernel, exact):
        split = split_launch(graph, kernel, interpret, exact)
        if split is not None:
            return SplitCall(fn, split, size_args(kernel, exact), interpret, name=kernel.id, loaded=loaded)
        return KernelCall(fn, launch_at(graph, kernel, exact, interpret), size_args(kernel, exact), interpret,
                          name=kernel.id, loaded=loaded)
    rows_fn = kernels.get(kernel.id + ROWS_VARIANT)

    def choose(values: tuple) -> tuple[Any, Launch]:
        if rows_fn is not None and fits_block(kernel, values[1]):
            return rows_fn, launch_at(graph, kernel, values, interpret, persistent=True)
        return fn, launch_at(graph, kernel, values, interpret)
    return DynamicCall(choose, functools.partial(size_args, kernel), len(exact), interpret,
                       loaded=loaded, name=kernel.id)


def loaded_pointers(graph: Graph, kernel: Kernel) -> int:
    """The pointers a launch passes the kernel, its buffers (host scalars are passed as values, after
    the extras; an output stored through an input's pointer is not passed again; an output written
    into an input the kernel does not read is passed as that input)."""
    return sum(not graph[n].host for n in kernel.buffers)


# (kernel source, sizes, GPU) -> the fastest template Launch or "library": timed once per process.
_MATMUL_CHOICE: dict[tuple, Any] = {}
_MATMUL_TIMING = threading.Lock()  # one thread times a choice; the others wait for it


class BadIndex(Exception):
    """A kernel read an index out of range: eager raises for these inputs."""


# Set on an error raised for inputs eager rejects: the API reruns the model eagerly, so
# the user gets eager's own exception (type and message), from the op they wrote.
EAGER_RAISES = "_fusec_eager_raises"


def _device_name() -> str:
    return torch.cuda.get_device_name()


class _SeedBuffer(threading.local):
    """A 64-bit integer per thread that seeds are drawn into (threads draw at once: torch lets
    the GIL go while it draws)."""

    def __init__(self) -> None:
        # Not an inference tensor, whatever mode the thread's first draw is made in: later
        # draws outside torch.inference_mode() write into it.
        with torch.inference_mode(False):
            self.value = torch.empty((), dtype=torch.int64, device="cpu")


_SEED = _SeedBuffer()


def draw_seed() -> int:
    """A call's seed: one draw of torch's generator, so torch.manual_seed makes runs repeatable and
    each call draws new numbers. Into a buffer kept per thread, with no bounds to parse (0.6 µs;
    `torch.randint(low, high, ())` took 2-4); bit 62 set, so the kernel always takes it as a
    64-bit integer (one compiled variant) and 62 bits are random."""
    return _SEED.value.random_().item() | 2**62


@dataclass
class RunCounts:
    """What a Runtime ran, counted as it runs: tests compare it with the plan, the report shows it.
    The launcher adds to `ran` (one slot per kernel of the plan, then one for extern calls)."""

    kernel_ids: list[str]
    ran: list[int] = field(default_factory=list)
    calls: int = 0
    through_torch: int = 0  # calls torch ran whole instead of the plan

    def __post_init__(self) -> None:
        self.ran = [0] * (len(self.kernel_ids) + 1)

    @property
    def kernels(self) -> Counter[str]:
        """Kernel id -> times run."""
        return Counter({kid: n for kid, n in zip(self.kernel_ids, self.ran, strict=False) if n})

    @property
    def extern_calls(self) -> int:
        """Torch calls that do work (views and getitems excluded)."""
        return self.ran[-1]


class Runtime:
    """The callable a compiled graph becomes (boxed: takes the list of inputs)."""

    def __init__(self, plan: Plan, kernels: dict[str, Any], callables: dict[str, Callable],
                 interpret: bool, fallback: Callable[..., Any], strict: bool = False,
                 matmul: str = "auto", cudagraphs: bool = False,
                 on_broken: Callable[[str], None] = lambda reason: None, cache_dir: Path | None = None,
                 native: bool = False) -> None:
        # On the instance, not the class: AOTAutograd wraps the backward with
        # functools.wraps, which copies the instance __dict__ only.
        self._boxed_call = True
        self.plan = plan
        self.kernels = kernels
        self.callables = callables
        self.interpret = interpret
        # where outputs go when the graph has no tensor input, and where matmul choices are timed
        self.device = torch.device("cpu") if interpret else torch.device("cuda")
        self.fallback = fallback
        self.strict = strict
        self.broken: str | None = None  # set once a kernel failed: torch runs every later call
        self.on_broken = on_broken  # tells the graph's record, so reports show what runs
        # Kernels and the launcher read sizes as expressions over the symbols bound per call.
        self.exact = graph = symbolic(plan.graph)
        self.extents = {k.id: extents(graph, k) for k in plan.all_kernels()}
        self.calls = {k.id: _call(graph, k, self.extents[k.id], kernels, interpret) for k in plan.all_kernels()}
        self._matmul = "template" if matmul == "auto" and interpret else matmul
        self.cache_dir = cache_dir  # where matmul choices timed on a GPU are kept (None: not kept)
        # The launcher's head in C++ (`native.py`), built in cache_dir; False or no cache_dir: Python lines
        self.native = native and cache_dir is not None
        self.n_streams = 1 + max((s.stream for s in plan.steps), default=0)
        self.multi_stream = self.n_streams > 1 and not interpret
        # Ticket counters per thread (and device and stream): the kernel resets its ticket
        # when it ends, so only launches ordered on one stream may share one.
        self.tickets = _PerThread()
        self.counts = RunCounts([k.id for k in plan.all_kernels()])
        # The stream and event API of the multi-stream path: torch.cuda, or a stand-in that
        # records the order of launches, waits and records (tests on a CPU, with `step_hook`).
        self.stream_api: Any = torch.cuda
        self.step_hook: Callable[[str], None] | None = None  # called with each step's id as it starts
        self.source: str | None = None  # the generated launcher, once built
        self._call: Callable[[list[Any]], Any] | None = None
        self._building = threading.Lock()  # the first calls of several threads build it once
        self.cudagraphs = cudagraphs and not interpret
        self.direct = not interpret  # static kernels' binaries are launched from the launcher's code
        self.writes_inputs = bool(in_place(plan))  # its kernels store into input buffers
        # Why the calls of this graph are not replayed from a CUDA graph (None: they are, or not asked).
        self.cudagraph_refusal = refusal(plan, graph.name) if self.cudagraphs else None
        if self.cudagraph_refusal:
            log.warning("fusec: %s runs without a CUDA graph: %s", graph.name, self.cudagraph_refusal)

    @property
    def matmul(self) -> str:
        return self._matmul

    @matmul.setter
    def matmul(self, value: str) -> None:
        self._matmul, self._call = value, None  # the launcher is regenerated with the new choice

    @property
    def launches(self) -> dict[str, Launch]:
        """Each kernel's launch (a dynamic kernel's: its last call's)."""
        return {kid: call.launch for kid, call in self.calls.items()}

    def __call__(self, args: list[Any]) -> Any:
        inputs = list(args)
        args.clear()  # boxed convention: let the caller's references go
        self.counts.calls += 1
        if self.broken:
            return self._through_torch(inputs)
        try:
            return (self._call or self._built())(inputs)  # `run`, one Python frame fewer
        except StrideMismatch as exc:
            if self.strict:
                raise
            log.warning("fusec: %s; running this call through torch", exc)
            return self._through_torch(inputs)
        except BadIndex:
            return self._raise_as_torch(inputs)
        except KernelFailed as exc:
            if self.strict:
                raise
            if self.writes_inputs:
                # Some inputs may hold their new values already: a rerun would update them twice.
                raise KernelFailed(f"{exc}; {self.plan.graph.name} writes new values into its inputs, which this "
                                   "call may have written in part, so it is not rerun through torch") from exc
            self.broken = str(exc)
            self.on_broken(f"runtime error: {exc}")
            log.warning("fusec: %s; %s runs through torch from now on", exc, self.plan.graph.name)
            return self._through_torch(inputs)

    def _through_torch(self, inputs: list[Any]) -> Any:
        self.counts.through_torch += 1
        return self.fallback(*inputs)

    def _raise_as_torch(self, inputs: list[Any]) -> Any:
        """The graph run by torch raises the ATen op's own error (gather's, as eager's)."""
        try:
            return self.fallback(*inputs)
        except Exception as exc:
            setattr(exc, EAGER_RAISES, True)
            raise

    def run(self, inputs: list[Any]) -> tuple[Any, ...]:
        """One call through the launcher (no fallback to torch)."""
        return (self._call or self._built())(inputs)

    def _built(self) -> Callable[[list[Any]], Any]:
        with self._building:
            if self._call is None:
                self._call = self._build()
            return self._call

    def launch_directly(self) -> None:
        """Generate the launcher again, launching each static kernel's binary straight, as on a
        GPU: the overhead bench does so on a CPU, with no-op binaries."""
        self.direct, self._call = True, None

    def native_loaded(self) -> None:
        """The C++ head has loaded (in the thread that built it): the next call writes the launcher
        again to use it. A launcher recorded into CUDA graphs keeps its recording."""
        if not self.cudagraphs or self.cudagraph_refusal is not None:
            with self._building:  # after a launcher being written now, not before it is kept
                self._call = None

    def _build(self) -> Callable[[list[Any]], Any]:
        """Decide each fused matmul's implementation, then generate and define the launcher."""
        library = frozenset(k.id for k in self.plan.kernels if k.library and self._choose(k) == "library")
        code = self._step_code(library)
        self.source, names = generate(replace(self.plan, graph=self.exact), code, streams=self.multi_stream)
        call = compile_source(self.source, names)
        if self.cudagraphs and self.cudagraph_refusal is None:
            return GraphedCall(call, self.plan.graph.name, self.counts.ran, written_inputs(self.plan),
                               sizes_of(self.plan.graph))
        return call

    def _step_code(self, library: frozenset[str]) -> StepCode:
        stream_ops = {}
        if self.multi_stream:
            cuda = self.stream_api
            stream_ops = {"current_stream": cuda.current_stream, "stream_context": cuda.stream,
                          "SIDE": [cuda.Stream() for _ in range(self.n_streams - 1)],
                          "record_stream": record_stream}
        working = frozenset(s.id for s in self.plan.steps if isinstance(s, Extern) and does_work(self.plan, s))
        head = native.start(self.cache_dir, when_loaded=self) if self.native else None
        return StepCode(calls=self.calls, callables=self.callables, library=library,
                        draw_seed=draw_seed if head is None else head.seed, native=head,
                        bounds_error=self._bounds_error, final_buffers=self._final_buffers,
                        device=self.device,
                        stream_ops=stream_ops, counts=self.counts.ran,
                        counted={**{k: i for i, k in enumerate(self.counts.kernel_ids)},
                                 **dict.fromkeys(working, len(self.counts.kernel_ids))},
                        step_hook=self.step_hook,
                        extents={kid: self.extents[kid] for kid, call in self.calls.items()
                                 if isinstance(call, DynamicCall)},
                        direct=self.direct, direct_device=None if self.interpret else torch.cuda.current_device(),
                        raw_stream=getattr(torch._C, "_cuda_getCurrentRawStream", None))

    def _choose(self, kernel: Kernel) -> str:
        """Template or torch's matmul + epilogue kernel: as asked, or timed once per kernel
        and shape on this GPU on random inputs, the template in each of a few tile
        configurations."""
        host = any(self.plan.graph[n].host for n in kernel.inputs)  # its timing runs on tensors only
        if self._matmul != "auto" or isinstance(self.calls[kernel.id], DynamicCall) or host:
            return self._matmul if self._matmul != "auto" else "template"  # a dynamic one is not timed
        key = (kernel.source, self.calls[kernel.id].sizes, _device_name())
        if key not in _MATMUL_CHOICE:
            with _MATMUL_TIMING:
                if key not in _MATMUL_CHOICE:
                    _MATMUL_CHOICE[key] = self._kept_or_timed(kernel, key)
        choice = _MATMUL_CHOICE[key]
        if choice == "library":
            return "library"
        call = self.calls[kernel.id]
        self.calls[kernel.id] = KernelCall(call.fn, choice, call.sizes, self.interpret, name=kernel.id,
                                           loaded=call.loaded)
        return "template"

    def _kept_or_timed(self, kernel: Kernel, key: tuple) -> Launch | str:
        """The choice this machine timed before for `key` (kept on disk: `tuning.py`), or timed now
        and kept."""
        configs = matmul_configs(*matmul_problem(self.plan.graph, kernel))
        kept_as = tuning.choice_key(*key, configs)
        kept = None if self.cache_dir is None else tuning.stored(self.cache_dir, kept_as, len(configs))
        if kept is not None:
            return kept if kept == "library" else configs[kept]
        choice = self._time_choices(kernel, configs)
        if self.cache_dir is not None:
            tuning.store(self.cache_dir, kept_as, choice if choice == "library" else configs.index(choice))
        return choice

    def _time_choices(self, kernel: Kernel, configs: list[Launch]) -> Launch | str:
        graph = self.plan.graph
        inputs = [_random_like(graph, name, self.device) for name in kernel.inputs]
        outputs = [torch.empty_strided(graph[o].shape, graph[o].strides, dtype=DTYPES[graph[o].dtype],
                                       device=self.device) for o in kernel.outputs]
        base = self.calls[kernel.id]
        timings: list[tuple[float, Launch | str]] = []
        for config in configs:
            call = KernelCall(base.fn, config, base.sizes, self.interpret, name=kernel.id, loaded=base.loaded)
            try:
                timings.append((_time_cuda(lambda call=call: call(*inputs, *outputs)), config))
            except KernelFailed as exc:  # one tile size too large for this GPU: skip it
                log.info("fusec: %s: %s", kernel.id, exc)
        library = Plan(graph=graph, steps=kernel.library)
        source, names = generate(library, self._step_code(frozenset()), streams=False, inputs=list(kernel.inputs),
                                 result=tuple(kernel.outputs))
        run_library = compile_source(source, names)
        timings.append((_time_cuda(lambda: run_library(list(inputs))), "library"))
        log.info("fusec: %s: %s", kernel.id, ", ".join(
            f"{c if c == 'library' else c.constants}: {t * 1e6:.1f} us" for t, c in timings))
        return min(timings, key=lambda pair: pair[0])[1]

    def _bounds_error(self, kernel: Kernel, flag: torch.Tensor) -> None:
        if flag.item():  # a host sync: eager checks its indices too
            raise BadIndex(kernel.id)

    def _final_buffers(self, kernel: Kernel, device: torch.device, at: tuple | None = None) -> list[torch.Tensor]:
        """One partial per program for each final reduction, and the kernel's ticket counter
        (zeroed once; the last program resets it). `at`: a dynamic kernel's extents this call.
        Kept per thread, device, stream and program count: launches on one stream run in order,
        so a launch finds the last one's partials read and its ticket reset."""
        call = self.calls[kernel.id]
        programs = (call.launch_at(at) if at is not None else call.launch).grid[0]
        # (a CUDA tensor's device has an index, a CPU tensor's none; `device.type` costs 0.4 µs;
        # a graph without tensor inputs runs on `cuda` without one: the current device's stream)
        if device.index is not None:
            stream = torch._C._cuda_getCurrentRawStream(device.index)
        elif device.type == "cuda":
            stream = torch._C._cuda_getCurrentRawStream(torch.cuda.current_device())
        else:
            stream = 0
        kept = self.tickets.by_kernel
        key = (kernel.id, device, stream, programs)
        found = kept.get(key)
        if found is None:
            if len(kept) >= MAX_KEPT:  # sizes drawn from a wide range: keep memory bounded
                kept.clear()
            graph = self.plan.graph
            found = kept[key] = [*[torch.empty(programs, dtype=DTYPES[compute_dtype(graph[f].dtype)], device=device)
                                   for f in kernel.finals], torch.zeros(1, dtype=torch.int32, device=device)]
        return found


class _PerThread(threading.local):
    """Final reductions' partials and tickets kept by one thread: (kernel, device, stream, programs) -> buffers."""

    def __init__(self) -> None:
        self.by_kernel: dict[tuple, list[torch.Tensor]] = {}


def compile_source(source: str, names: dict[str, Any]) -> Callable[[list[Any]], Any]:
    """The generated function, defined from its source (shown in tracebacks as `<fusec launcher>`).
    `names` become its globals (`direct_launch.Binder` writes the binaries it binds there)."""
    exec(compile(source, "<fusec launcher>", "exec"), names)
    return names["call"]


def _random_like(graph: Graph, name: str, device: torch.device) -> torch.Tensor:
    node = graph[name]
    tensor = torch.empty_strided(node.shape, node.strides, dtype=DTYPES[node.dtype], device=device)
    return tensor.normal_() if tensor.is_floating_point() else tensor.zero_()
