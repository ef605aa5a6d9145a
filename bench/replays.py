"""Extern calls replayed instead of run, for `fusec bench --overhead` on a CPU.

A compiled call's extern calls (matmuls, attention, convolutions: torch's own
kernels, which neither compiler generates) cost the same CPU time under both
compilers, and on a CPU that time is compute the host comparison is not about.
So, the same way for fusec and for torch.compile, each op a call computes
through torch is replaced by a `Replay`: one call runs it for real and keeps
what each of its calls returned; later calls return those results in the same
order and compute nothing. What is left is each compiler's own host work: its
guards, wrappers, allocations, views and launches, and a Python call per extern
call (a replay costs about as much as calling a Python function).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch._C._dynamo.guards import _empty_strided_cpu

from fusec.plan import does_work
from fusec.torch_calls import entry_point

_OP_CALL = re.compile(r"torch\.ops\.(\w+)\.(\w+)\.(\w+)\(")


class Replay:
    """Stands for one torch op in a compiled call: records what its calls return while
    `recording`, then returns those results in turn (a compiled call makes its extern calls in
    the same order every time). A call given an `out=` buffer gets it back, as it is (the code
    calling it allocated it); any other call returns new tensors laid out as the recorded ones,
    as the op it stands for would allocate them, by the allocator torch's ops use (no argument
    parsing): the same for both compilers' calls."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.results: list[Any] = []
        self.recording = True
        self.at = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.recording:
            self.results.append(self.fn(*args, **kwargs))
            return self.results[-1]
        result = self.results[self.at]
        self.at = (self.at + 1) % len(self.results)
        return kwargs["out"] if "out" in kwargs else _allocated_like(result)


def _allocated_like(result: Any) -> Any:
    if isinstance(result, torch.Tensor):
        if result.device.type == "cpu":
            return _empty_strided_cpu(tuple(result.shape), result.stride(), result.dtype)
        return torch.empty_strided(result.size(), result.stride(), dtype=result.dtype, device=result.device)
    if isinstance(result, (tuple, list)):
        return type(result)(_allocated_like(r) for r in result)
    return result


@contextlib.contextmanager
def recorded(replays: list[Replay]) -> Iterator[None]:
    """Within: the replays record (one compiled call); after: they replay."""
    try:
        yield
    finally:
        for replay in replays:
            replay.recording = False


def replay_fusec_externs(runtimes: list[Any]) -> list[Replay]:
    """Replace each op fusec's launchers call through torch to compute (not views) by a replay;
    the launchers are generated again to call them."""
    replays = []
    for runtime in runtimes:
        plan = runtime.plan
        working = {plan.graph[s.node].target for s in plan.externs if does_work(plan, s)}
        for target in sorted(working, key=str):
            replay = Replay(entry_point(runtime.callables[target]))
            runtime.callables[target] = replay
            replays.append(replay)
        runtime.launch_directly()
    return replays


def inductor_modules() -> list[Any]:
    """The Python modules of Inductor's output code loaded so far (each compiled graph's `call`)."""
    from torch._inductor.codecache import PyCodeCache

    return list(PyCodeCache.modules)


@contextlib.contextmanager
def inductor_externs_replayed(modules: list[Any]) -> Iterator[list[Replay]]:
    """Within: the ops Inductor's output code in `modules` calls through torch, replayed: every
    `extern_kernels.*` it calls and each `torch.ops.<ns>.<op>.<overload>(` it names."""
    from torch._inductor.select_algorithm import extern_kernels

    source = "\n".join(_text(m) for m in modules)
    patched: list[tuple[Any, str, Any]] = []
    for name in sorted(set(re.findall(r"extern_kernels\.(\w+)\(", source))):
        patched.append((extern_kernels, name, getattr(extern_kernels, name)))
    for namespace, op, overload in sorted(set(_OP_CALL.findall(source))):
        packet = getattr(getattr(torch.ops, namespace), op)
        patched.append((packet, overload, getattr(packet, overload)))
    replays = [Replay(fn) for _, _, fn in patched]
    for (owner, name, _), replay in zip(patched, replays, strict=True):
        setattr(owner, name, replay)
    try:
        yield replays
    finally:
        for owner, name, fn in patched:
            setattr(owner, name, fn)


def _text(module: Any) -> str:
    path = getattr(module, "__file__", None)
    if path is None:
        return ""
    with open(path) as f:
        return f.read()
