"""The public entry points: `fusec.compile` and `fusec.inspect`."""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.exc import TorchRuntimeError

from fusec.frontend import Backend, leave
from fusec.options import Options
from fusec.report import Report
from fusec.runtime import EAGER_RAISES

log = logging.getLogger("fusec")


def compile(model: Callable | None = None, **options: Any) -> Any:
    """Compile a function or nn.Module with fusec.

    Works as `@fusec.compile`, `@fusec.compile(**options)` and
    `fusec.compile(model, **options)`. Options are those of `fusec.Options`,
    checked here: a wrong name, type or value raises at once.

    On CUDA tensors the generated Triton kernels run compiled. On CPU tensors
    fusec plans, fuses and reports the same, then by default (`cpu="torch"`)
    torch runs each graph at eager speed; `cpu="interpret"` (or FUSEC_CPU=interpret)
    runs the generated kernels in Triton's interpreter instead, 100-500x slower
    than eager, to check them without a GPU. `fusec.report_of(...).stats["execution"]`
    says which ran.
    """
    opts = Options.from_user(**options)
    if model is None:
        return lambda fn: _compile(fn, opts)
    return _compile(model, opts)


class CompiledModule(OptimizedModule):
    """torch.compile's module wrapper, raising eager's errors where eager would."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        outer = self._fusec_backend.enter()
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if not _eager_raises(exc):
                raise
            return self._orig_mod(*args, **kwargs)
        finally:
            leave(outer)


def _compile(model: Callable, options: Options) -> Any:
    if not callable(model):
        raise TypeError(f"fusec.compile expects a function or an nn.Module, got {type(model).__name__}")
    _warn_float_lr(model)
    backend = Backend(options)
    compiled = torch.compile(model, backend=backend, dynamic=options.dynamic)
    if isinstance(compiled, OptimizedModule):
        compiled.__class__ = CompiledModule
        # The state dict keeps the module's own keys: a checkpoint saved from a compiled module
        # loads into an uncompiled one and back (Lightning's ddp_spawn loads the weights its
        # processes saved into the main process's module with strict=False: a renamed key
        # would be dropped silently).
        compiled.register_state_dict_post_hook(_unwrapped_keys)
        compiled.register_load_state_dict_pre_hook(_wrapped_keys)
    else:
        compiled = _eager_errors(compiled, model, backend)
    compiled._fusec_backend = backend
    return compiled


def _warn_float_lr(model: Callable) -> None:
    """An optimizer's float lr is a constant of the captured graph: a scheduler recompiles it each step."""
    optimizer = getattr(model, "__self__", None)
    if isinstance(optimizer, torch.optim.Optimizer) and any(
            isinstance(group.get("lr"), float) for group in optimizer.param_groups):
        log.warning("fusec: %s's lr is a Python float, a constant of the compiled step: each new value (a "
                    "scheduler's) compiles the step again, until Dynamo's recompile limit; pass "
                    "lr=torch.tensor(...) instead", type(optimizer).__name__)


_WRAPPED = "_orig_mod."  # where torch.compile's module wrapper keeps the module


def _unwrapped_keys(module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + _WRAPPED)]:
        state_dict[prefix + key[len(prefix + _WRAPPED):]] = state_dict.pop(key)


def _wrapped_keys(module: torch.nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + _WRAPPED)]:
        state_dict[prefix + _WRAPPED + key[len(prefix):]] = state_dict.pop(key)


def _eager_errors(compiled: Callable, model: Callable, backend: Backend) -> Callable:
    """When tracing fails on inputs eager would reject too (a shape mismatch), Dynamo
    raises its own wrapped error; run eagerly instead, so the user gets eager's."""
    @functools.wraps(model)
    def call(*args: Any, **kwargs: Any) -> Any:
        outer = backend.enter()
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:
            if not _eager_raises(exc):
                raise
            return model(*args, **kwargs)
        finally:
            leave(outer)
    return call


def _eager_raises(exc: Exception) -> bool:
    """Tracing or a kernel found inputs eager rejects: rerun eagerly for eager's own error."""
    return isinstance(exc, TorchRuntimeError) or getattr(exc, EAGER_RAISES, False)


def report_of(compiled: Any) -> Report:
    """The report of what a `fusec.compile`d callable has compiled so far."""
    backend = getattr(compiled, "_fusec_backend", None)
    if backend is None:
        raise TypeError("report_of expects the result of fusec.compile")
    return Report(list(backend.records), runs_eagerly=backend.runs_eagerly)


def inspect(model: Callable, *args: Any, training: bool = False, options: dict | None = None,
            **kwargs: Any) -> Report:
    """Capture and plan `model(*args, **kwargs)` the way fusec.compile would, launching no kernel.

    The model runs once through torch on the given inputs (with backward too
    when `training`), which is how Dynamo sees the graphs it captures.
    """
    if not callable(model):
        raise TypeError(f"fusec.inspect expects a function or an nn.Module, got {type(model).__name__}")
    backend = Backend(Options.from_user(**(options or {})), launch=False)
    entry = _fresh_entry(model)
    compiled = torch.compile(entry, backend=backend, dynamic=backend.options.dynamic)
    if training:
        out = compiled(*args, **kwargs)
        loss = sum(t.float().sum() for t in tensors_in(out) if t.requires_grad)
        if isinstance(loss, torch.Tensor):
            loss.backward()
    else:
        with torch.no_grad():
            compiled(*args, **kwargs)
    return Report(list(backend.records))


def _fresh_entry(model: Callable) -> Callable:
    """A wrapper with a code object of its own, so Dynamo's cache for `model`
    (from earlier compiles or inspects) is neither hit nor filled."""
    def entry(*args: Any, **kwargs: Any) -> Any:
        return model(*args, **kwargs)
    return types.FunctionType(entry.__code__.replace(), entry.__globals__, "fusec_inspect",
                              None, entry.__closure__)


def tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors in a value, in order: nested lists, tuples and dict values (what a model returns)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    return []
