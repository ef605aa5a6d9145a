"""Runs a Plan: allocates buffers, launches kernels, calls torch for extern ops."""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from typing import Any

import torch

from fusec.kernels.launch import Launch, pointwise_launch, reduction_launch
from fusec.ir import map_refs
from fusec.plan import Extern, Kernel, Plan

log = logging.getLogger("fusec")

_DTYPES = {name: getattr(torch, name) for name in
           ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64")}


def _launch(kernel: Kernel, interpret: bool) -> Launch:
    if kernel.kind == "reduction":
        return reduction_launch(kernel.numel, kernel.rnumel, kernel.persistent, kernel.reduce_inner, interpret)
    return pointwise_launch(kernel.numel, interpret)


class KernelFailed(Exception):
    """A generated kernel did not compile or run."""


class StrideMismatch(Exception):
    """An input arrived with strides other than the ones the kernels were generated for."""


class Runtime:
    """The callable a compiled graph becomes (boxed: takes the list of inputs)."""

    def __init__(self, plan: Plan, kernels: dict[str, Any], callables: dict[str, Callable],
                 interpret: bool, fallback: Callable[..., Any], strict: bool = False) -> None:
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
        self.launches = {k.id: _launch(k, interpret) for k in plan.kernels}

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
        except KernelFailed as exc:
            if self.strict:
                raise
            self.broken = str(exc)
            log.warning("fusec: %s; %s runs through torch from now on", exc, self.plan.graph.name)
            return self.fallback(*inputs)

    def run(self, inputs: list[Any]) -> tuple[Any, ...]:
        env: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
        for step, dead in zip(self.plan.steps, self.plan.frees, strict=True):
            if isinstance(step, Kernel):
                self._launch(step, env)
            else:
                env[step.node] = self._extern(step, env)
            for name in dead:
                env.pop(name, None)
        return tuple(map_refs(self.output_args, lambda r: env[r.name]))

    def _launch(self, kernel: Kernel, env: dict[str, Any]) -> None:
        graph = self.plan.graph
        args = []
        for name in kernel.inputs:
            tensor, node = env[name], graph[name]
            if _strides(tensor) != _strides_of(node.shape, node.strides):
                raise StrideMismatch(f"{name} has strides {tuple(tensor.stride())}, "
                                     f"the kernel expects {node.strides}")
            args.append(tensor)
        device = args[0].device if args else None
        for name in kernel.outputs:
            node = graph[name]
            out = torch.empty_strided(node.shape, node.strides, dtype=_DTYPES[node.dtype],
                                      device=device or self._device())
            env[name] = out
            args.append(out)
        if kernel.numel == 0:
            return
        launch = self.launches[kernel.id]
        flag = None
        if "p_bad_index" in kernel.source:
            flag = torch.zeros(1, dtype=torch.int32, device=args[0].device)
            args.append(flag)
        if "seed" in kernel.source.split("):")[0].split("def ")[-1]:
            # Drawn from torch's generator, so torch.manual_seed makes runs repeatable.
            args.append(int(torch.randint(0, 2**62, (), dtype=torch.int64)))
        sizes = (kernel.numel,) if kernel.kind == "pointwise" else (kernel.numel, kernel.rnumel)
        try:
            self.kernels[kernel.id][launch.grid](*args, *sizes, **launch.constants, num_warps=launch.num_warps)
        except Exception as exc:  # a Triton compile or launch failure is fusec's bug, not the user's
            raise KernelFailed(f"kernel {kernel.id} failed: {type(exc).__name__}: {exc}") from exc
        if flag is not None and flag.item():
            gathers = [m for m in kernel.members if self.plan.graph[m].op == "gather"]
            raise IndexError(f"fusec: an index read by {', '.join(gathers)} is out of bounds "
                             "(eager raises here too: check the targets or indices)")

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
