"""Runs a Plan: allocates buffers, launches kernels, calls torch for extern ops."""

from __future__ import annotations

import contextlib
import logging
import operator
import threading
from collections.abc import Callable
from typing import Any

import torch

from fusec.device import time_cuda as _time_cuda
from fusec.ir import Graph, iter_refs, map_refs
from fusec.kernels.dtypes import compute_dtype
from fusec.kernels.launch import (
    Launch,
    combo_launch,
    matmul_configs,
    matmul_launch,
    pointwise_launch,
    reduction_launch,
)
from fusec.kernels.matmul import matmul_problem, matmul_sizes
from fusec.plan import Extern, Kernel, Plan, Step

log = logging.getLogger("fusec")

_DTYPES = {name: getattr(torch, name) for name in
           ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")}


def _launch(graph: Graph, kernel: Kernel, interpret: bool) -> Launch:
    if kernel.kind == "reduction":
        return reduction_launch(kernel.numel, kernel.rnumel, kernel.persistent, kernel.reduce_inner, interpret)
    if kernel.kind == "matmul":
        return matmul_launch(*matmul_problem(graph, kernel), interpret)
    if kernel.kind == "combo":
        return combo_launch([p.numel for p in kernel.parts], interpret)
    return pointwise_launch(kernel.numel, interpret)


def _sizes(graph: Graph, kernel: Kernel) -> tuple[int, ...]:
    """The size arguments a kernel takes after its tensors."""
    if kernel.kind == "reduction":
        return kernel.numel, kernel.rnumel
    if kernel.kind == "matmul":
        return matmul_sizes(graph, kernel)
    if kernel.kind == "combo":
        return tuple(p.numel for p in kernel.parts)
    return (kernel.numel,)


# (kernel source, sizes, GPU) -> the fastest template Launch or "library": timed once per process.
_MATMUL_CHOICE: dict[tuple, Any] = {}
_MATMUL_TIMING = threading.Lock()  # one thread times a choice; the others wait for it

# Triton's interpreter keeps the running program's grid index and its patched `tl` in
# module globals: two interpreted launches at once would read each other's program ids.
_INTERPRETER = threading.Lock()
_UNLOCKED = contextlib.nullcontext()  # compiled launches need no lock


def _device_name() -> str:
    return torch.cuda.get_device_name()


class KernelFailed(Exception):
    """A generated kernel did not compile or run."""


class BadIndex(Exception):
    """A kernel read an index out of range: eager raises for these inputs."""


# Set on an error raised for inputs eager rejects: the API reruns the model eagerly, so
# the user gets eager's own exception (type and message), from the op they wrote.
EAGER_RAISES = "_fusec_eager_raises"


class StrideMismatch(Exception):
    """An input arrived with strides other than the ones the kernels were generated for."""


class Runtime:
    """The callable a compiled graph becomes (boxed: takes the list of inputs)."""

    def __init__(self, plan: Plan, kernels: dict[str, Any], callables: dict[str, Callable],
                 interpret: bool, fallback: Callable[..., Any], strict: bool = False,
                 matmul: str = "auto", on_broken: Callable[[str], None] = lambda reason: None) -> None:
        # On the instance, not the class: AOTAutograd wraps the backward with
        # functools.wraps, which copies the instance __dict__ only.
        self._boxed_call = True
        self.plan = plan
        self.kernels = kernels
        self.callables = {**callables, "_operator.getitem": operator.getitem}
        self.interpret = interpret
        self.fallback = fallback
        self.strict = strict
        self.broken: str | None = None  # set once a kernel failed: torch runs every later call
        self.on_broken = on_broken  # tells the graph's record, so reports show what runs
        graph = plan.graph
        self.input_names = [n.name for n in graph.inputs]
        self.output_args = graph.output.args
        self.launches = {k.id: _launch(graph, k, interpret) for k in plan.all_kernels()}
        self.sizes = {k.id: _sizes(graph, k) for k in plan.all_kernels()}
        self.matmul = "template" if matmul == "auto" and interpret else matmul
        self.n_streams = 1 + max((s.stream for s in plan.steps), default=0)
        self.multi_stream = self.n_streams > 1 and not interpret
        self.recorded = {w for s in plan.steps for w in s.waits}
        self.output_refs = [r.name for r in iter_refs(self.output_args)]
        self.side: list[torch.cuda.Stream] | None = None
        self.side_lock = threading.Lock()
        # Ticket counters per thread (and device and stream): the kernel resets its ticket
        # when it ends, so only launches ordered on one stream may share one.
        self.tickets = threading.local()

    def __call__(self, args: list[Any]) -> Any:
        inputs = list(args)
        args.clear()  # boxed convention: let the caller's references go
        if self.broken:
            return self.fallback(*inputs)
        try:
            return self.run(inputs)
        except StrideMismatch as exc:
            log.warning("fusec: %s; running this call through torch", exc)
            return self.fallback(*inputs)
        except BadIndex:
            return self._raise_as_torch(inputs)
        except KernelFailed as exc:
            if self.strict:
                raise
            self.broken = str(exc)
            self.on_broken(f"runtime error: {exc}")
            log.warning("fusec: %s; %s runs through torch from now on", exc, self.plan.graph.name)
            return self.fallback(*inputs)

    def _raise_as_torch(self, inputs: list[Any]) -> Any:
        """The graph run by torch raises the ATen op's own error (gather's, as eager's)."""
        try:
            return self.fallback(*inputs)
        except Exception as exc:
            setattr(exc, EAGER_RAISES, True)
            raise

    def run(self, inputs: list[Any]) -> tuple[Any, ...]:
        env: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
        if self.multi_stream:
            self._run_on_streams(env)
        else:
            for step, dead in zip(self.plan.steps, self.plan.frees, strict=True):
                self._step(step, env)
                for name in dead:
                    env.pop(name, None)
        return tuple(map_refs(self.output_args, lambda r: env[r.name]))

    def _step(self, step: Step, env: dict[str, Any]) -> None:
        if isinstance(step, Kernel):
            self._launch(step, env)
        else:
            env[step.node] = self._extern(step, env)

    def _run_on_streams(self, env: dict[str, Any]) -> None:
        """Each step on its stream: stream 0 is the caller's, the others first wait for it;
        a step waits on the events of the producers its plan names; the caller's stream
        waits for every stream at the end. Buffers stay referenced until that join, so
        no stream reuses memory another may still read."""
        caller = torch.cuda.current_stream()
        streams = [caller, *self._side_streams()]
        for side in streams[1:]:
            side.wait_stream(caller)
        events: dict[str, torch.cuda.Event] = {}
        for step in self.plan.steps:
            stream = streams[step.stream]
            for producer in step.waits:
                stream.wait_event(events[producer])
            with torch.cuda.stream(stream):
                self._step(step, env)
            if step.id in self.recorded:
                events[step.id] = stream.record_event()
        for side in streams[1:]:
            caller.wait_stream(side)
        for ref in self.output_refs:
            value = env[ref]
            if isinstance(value, torch.Tensor) and value.is_cuda:
                value.record_stream(caller)

    def _side_streams(self) -> list[torch.cuda.Stream]:
        # Shared by the threads: every call orders its steps by its own events.
        with self.side_lock:
            if self.side is None:
                self.side = [torch.cuda.Stream() for _ in range(self.n_streams - 1)]
        return self.side

    def _launch(self, kernel: Kernel, env: dict[str, Any]) -> None:
        choice = self._matmul_choice(kernel, env) if kernel.library else self.launches[kernel.id]
        if choice == "library":
            for step in kernel.library:
                self._step(step, env)
            return
        self._launch_kernel(kernel, env, choice)

    def _matmul_choice(self, kernel: Kernel, env: dict[str, Any]) -> Launch | str:
        """Template or torch's matmul + epilogue kernel: as asked, or timed once per kernel
        and shape on this GPU, the template in each of a few tile configurations (every
        candidate computes the same outputs into env)."""
        if self.matmul != "auto":
            return "library" if self.matmul == "library" else self.launches[kernel.id]
        key = (kernel.source, self.sizes[kernel.id], _device_name())
        if key not in _MATMUL_CHOICE:
            with _MATMUL_TIMING:
                if key not in _MATMUL_CHOICE:
                    _MATMUL_CHOICE[key] = self._time_matmul(kernel, env)
        return _MATMUL_CHOICE[key]

    def _time_matmul(self, kernel: Kernel, env: dict[str, Any]) -> Launch | str:
        timings: list[tuple[float, Launch | str]] = []
        for config in matmul_configs(*matmul_problem(self.plan.graph, kernel)):
            try:
                timings.append((_time_cuda(lambda c=config: self._launch_kernel(kernel, env, c)), config))
            except KernelFailed as exc:  # one tile size too large for this GPU: skip it
                log.info("fusec: %s: %s", kernel.id, exc)
        timings.append((_time_cuda(lambda: [self._step(step, env) for step in kernel.library]), "library"))
        log.info("fusec: %s: %s", kernel.id, ", ".join(
            f"{c if c == 'library' else c.constants}: {t * 1e6:.1f} us" for t, c in timings))
        return min(timings, key=lambda pair: pair[0])[1]

    def _launch_kernel(self, kernel: Kernel, env: dict[str, Any], launch: Launch) -> None:
        graph = self.plan.graph
        args = []
        for name in kernel.inputs:
            tensor, node = env[name], graph[name]
            if _strides(tensor) != _strides_of(node.shape, node.strides):
                raise StrideMismatch(f"{name} has strides {tuple(tensor.stride())}, "
                                     f"the kernel expects {node.strides}")
            args.append(tensor)
        device = args[0].device if args else self._device()
        for name in kernel.outputs:
            node = graph[name]
            out = torch.empty_strided(node.shape, node.strides, dtype=_DTYPES[node.dtype], device=device)
            env[name] = out
            args.append(out)
        if kernel.numel == 0:
            return
        flag = None
        if "p_bad_index" in kernel.params:
            flag = torch.zeros(1, dtype=torch.int32, device=device)
            args.append(flag)
        if "seed" in kernel.params:
            # Drawn from torch's generator, so torch.manual_seed makes runs repeatable.
            args.append(int(torch.randint(0, 2**62, (), dtype=torch.int64)))
        if kernel.finals:
            args += self._final_buffers(kernel, launch.grid[0], device)
        try:
            with _INTERPRETER if self.interpret else _UNLOCKED:
                self.kernels[kernel.id][launch.grid](*args, *self.sizes[kernel.id], **launch.constants,
                                                     num_warps=launch.num_warps)
        except Exception as exc:  # a Triton compile or launch failure is fusec's bug, not the user's
            raise KernelFailed(f"kernel {kernel.id} failed: {type(exc).__name__}: {exc}") from exc
        if flag is not None and flag.item():  # a host sync: eager checks its indices too
            raise BadIndex(kernel.id)

    def _final_buffers(self, kernel: Kernel, programs: int, device: torch.device) -> list[torch.Tensor]:
        """One partial per program for each final reduction, and the kernel's ticket counter
        (zeroed once; the last program resets it)."""
        graph = self.plan.graph
        partials = [torch.empty(programs, dtype=_DTYPES[compute_dtype(graph[f].dtype)], device=device)
                    for f in kernel.finals]
        tickets = self.tickets.__dict__.setdefault("by_kernel", {})
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
        key = (kernel.id, str(device), stream)
        if key not in tickets:
            tickets[key] = torch.zeros(1, dtype=torch.int32, device=device)
        return [*partials, tickets[key]]

    def _device(self) -> torch.device:
        return torch.device("cpu") if self.interpret else torch.device("cuda")

    def _extern(self, step: Extern, env: dict[str, Any]) -> Any:
        node = self.plan.graph[step.node]
        fn = self.callables[node.target]
        args, kwargs = node.torch_call if node.torch_call is not None else (node.args, node.kwargs)
        args = map_refs(args, lambda r: env[r.name])
        kwargs = dict(map_refs(kwargs, lambda r: env[r.name]))
        return fn(*args, **kwargs)


def _strides(tensor: torch.Tensor) -> tuple[int, ...]:
    return _strides_of(tuple(tensor.shape), tuple(tensor.stride()))


def _strides_of(shape: tuple[int, ...], strides: tuple[int, ...] | None) -> tuple[int, ...]:
    """Strides that matter for addressing: those of dims longer than 1."""
    return tuple(st for s, st in zip(shape, strides or ()) if s > 1)
