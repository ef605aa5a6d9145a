"""Runs a Plan: allocates buffers, launches kernels, calls torch for extern ops."""

from __future__ import annotations

import logging
import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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
from fusec.plan import Extern, Kernel, Plan, Step, does_work

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


def _device_name() -> str:
    return torch.cuda.get_device_name()


class KernelFailed(Exception):
    """A generated kernel did not compile or run."""


class StrideMismatch(Exception):
    """An input arrived with strides other than the ones the kernels were generated for."""


@dataclass
class RunCounts:
    """What a Runtime ran, counted as it runs: tests compare it with the plan, the report shows it."""

    calls: int = 0
    kernels: Counter[str] = field(default_factory=Counter)  # kernel id -> times run
    extern_calls: int = 0  # torch calls that do work (views and getitems excluded)
    through_torch: int = 0  # calls torch ran whole instead of the plan


class Runtime:
    """The callable a compiled graph becomes (boxed: takes the list of inputs)."""

    def __init__(self, plan: Plan, kernels: dict[str, Any], callables: dict[str, Callable],
                 interpret: bool, fallback: Callable[..., Any], strict: bool = False,
                 matmul: str = "auto") -> None:
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
        # One counter per kernel and device; calls of one compiled graph from several
        # threads at once would share it (see the note on concurrency in README).
        self.tickets: dict[tuple[str, str], torch.Tensor] = {}
        self.counts = RunCounts()
        self.working_externs = {s.id for s in plan.steps if isinstance(s, Extern) and does_work(plan, s)}
        # The stream and event API of the multi-stream path: torch.cuda, or a stand-in
        # that records the order of launches, waits and records (tests on a CPU).
        self.stream_api: Any = torch.cuda

    def __call__(self, args: list[Any]) -> Any:
        inputs = list(args)
        args.clear()  # boxed convention: let the caller's references go
        self.counts.calls += 1
        if self.broken:
            return self._through_torch(inputs)
        try:
            return self.run(inputs)
        except StrideMismatch as exc:
            if self.strict:
                raise
            log.warning("fusec: %s; running this call through torch", exc)
            return self._through_torch(inputs)
        except KernelFailed as exc:
            if self.strict:
                raise
            self.broken = str(exc)
            log.warning("fusec: %s; %s runs through torch from now on", exc, self.plan.graph.name)
            return self._through_torch(inputs)

    def _through_torch(self, inputs: list[Any]) -> Any:
        self.counts.through_torch += 1
        return self.fallback(*inputs)

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
            if step.id in self.working_externs:
                self.counts.extern_calls += 1

    def _run_on_streams(self, env: dict[str, Any]) -> None:
        """Each step on its stream: stream 0 is the caller's, the others first wait for it;
        a step waits on the events of the producers its plan names; the caller's stream
        waits for every stream at the end. Buffers stay referenced until that join, so
        no stream reuses memory another may still read."""
        cuda = self.stream_api
        caller = cuda.current_stream()
        streams = [caller, *self._side_streams()]
        for side in streams[1:]:
            side.wait_stream(caller)
        events: dict[str, Any] = {}
        for step in self.plan.steps:
            stream = streams[step.stream]
            for producer in step.waits:
                stream.wait_event(events[producer])
            with cuda.stream(stream):
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
        if self.side is None:
            self.side = [self.stream_api.Stream() for _ in range(self.n_streams - 1)]
        return self.side

    def _launch(self, kernel: Kernel, env: dict[str, Any]) -> None:
        if kernel.library and self._matmul_choice(kernel, env) == "library":
            for step in kernel.library:
                self._step(step, env)
        else:
            self._launch_kernel(kernel, env)
        self.counts.kernels[kernel.id] += 1

    def _matmul_choice(self, kernel: Kernel, env: dict[str, Any]) -> str:
        """Template or torch's matmul + epilogue kernel: as asked, or timed once per kernel
        and shape on this GPU, the template in each of a few tile configurations (every
        candidate computes the same outputs into env)."""
        if self.matmul != "auto":
            return self.matmul
        key = (kernel.source, self.sizes[kernel.id], _device_name())
        if key not in _MATMUL_CHOICE:
            timings: list[tuple[float, Launch | str]] = []
            for config in matmul_configs(*matmul_problem(self.plan.graph, kernel)):
                self.launches[kernel.id] = config
                try:
                    timings.append((_time_cuda(lambda: self._launch_kernel(kernel, env)), config))
                except KernelFailed as exc:  # one tile size too large for this GPU: skip it
                    log.info("fusec: %s: %s", kernel.id, exc)
            timings.append((_time_cuda(lambda: [self._step(step, env) for step in kernel.library]), "library"))
            _MATMUL_CHOICE[key] = min(timings, key=lambda pair: pair[0])[1]
            log.info("fusec: %s: %s", kernel.id, ", ".join(
                f"{c if c == 'library' else c.constants}: {t * 1e6:.1f} us" for t, c in timings))
        choice = _MATMUL_CHOICE[key]
        if choice == "library":
            return "library"
        self.launches[kernel.id] = choice
        return "template"

    def _launch_kernel(self, kernel: Kernel, env: dict[str, Any]) -> None:
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
        launch = self.launches[kernel.id]
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
            self.kernels[kernel.id][launch.grid](*args, *self.sizes[kernel.id], **launch.constants,
                                                 num_warps=launch.num_warps)
        except Exception as exc:  # a Triton compile or launch failure is fusec's bug, not the user's
            raise KernelFailed(f"kernel {kernel.id} failed: {type(exc).__name__}: {exc}") from exc
        if flag is not None and flag.item():
            gathers = [m for m in kernel.members if self.plan.graph[m].op == "gather"]
            raise IndexError(f"fusec: an index read by {', '.join(gathers)} is out of bounds "
                             "(eager raises here too: check the targets or indices)")

    def _final_buffers(self, kernel: Kernel, programs: int, device: torch.device) -> list[torch.Tensor]:
        """One partial per program for each final reduction, and the kernel's ticket counter
        (zeroed once; the last program resets it)."""
        graph = self.plan.graph
        partials = [torch.empty(programs, dtype=_DTYPES[compute_dtype(graph[f].dtype)], device=device)
                    for f in kernel.finals]
        key = (kernel.id, str(device))
        if key not in self.tickets:
            self.tickets[key] = torch.zeros(1, dtype=torch.int32, device=device)
        return [*partials, self.tickets[key]]

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
