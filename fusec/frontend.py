"""Capture: Dynamo's FX graph -> AOTAutograd -> ATen graphs (forward, backward)."""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.backends.common import aot_autograd

from fusec.compiler import CompiledGraph, boxed, compile_graph, plan_graph
from fusec.decompositions import DECOMPOSITIONS
from fusec.freezing import Weight, weights_of
from fusec.frozen import FrozenCall, NotFrozen, freeze
from fusec.options import Options
from fusec.partition import Partition, partitioner

log = logging.getLogger("fusec")


class Backend:
    """A Dynamo backend: every graph Dynamo captures goes through AOTAutograd to fusec.

    `records` collects what was decided for each graph (forward, backward,
    inference), in the order they were compiled. With `launch=False` graphs
    are planned and rendered but run through torch: that is `fusec.inspect`.
    """

    def __init__(self, options: Options, launch: bool = True) -> None:
        self.options = options
        self.launch = launch
        self.records: list[CompiledGraph] = []
        self.graph_ids = itertools.count()  # per backend: names are stable run to run
        self.runs_eagerly: str | None = None  # why Dynamo stopped compiling for this callable
        self.partition: Partition | None = None  # the last training graph's, for its forward and backward records
        self.warned_unfrozen = False  # freeze=True met a graph that computes gradients
        _watch_recompile_limit()

    def enter(self) -> Backend | None:
        """Marks a call of the compiled callable, so what Dynamo decides during it is ours; returns
        the mark it replaced, for `leave` at the call's end (no context manager: it costs a
        generator per call)."""
        outer = _CALLING.__dict__.get("backend")
        _CALLING.backend = self
        return outer

    def hit_recompile_limit(self, function: str, limit: str, value: object) -> None:
        if self.runs_eagerly is None:
            self.runs_eagerly = (f"Dynamo hit its {limit} ({value}) for {function}: calls that match no "
                                 f"compiled graph run eagerly, uncompiled (raise torch._dynamo.config.{limit} "
                                 "or give fewer distinct shapes and Python values)")
            log.warning("fusec: %s", self.runs_eagerly)

    def _partitioned(self, partition: Partition) -> None:
        self.partition = partition

    def _compiler(self, kind: str, weights: list[Weight]) -> Callable:
        def compile_fn(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
            name = f"{kind}_{next(self.graph_ids)}"
            partition = self.partition if kind != "inference" else None
            if kind == "inference" and weights:
                return self._frozen(gm, example_inputs, weights, name)
            if kind == "forward" and self.options.freeze and not self.warned_unfrozen:
                self.warned_unfrozen = True
                _warn_not_frozen(name)
            return self._compile(gm, name, partition)
        return compile_fn

    def _compile(self, gm: torch.fx.GraphModule, name: str, partition: Partition | None) -> Callable:
        if self.launch:
            before = len(self.records)
            compiled = compile_graph(gm, name, self.options, self.records)
            for record in self.records[before:]:  # the one it made
                record.partition = partition
            return compiled
        record, _ = plan_graph(gm, name, self.options)
        record.partition = partition
        self.records.append(record)
        return boxed(gm)

    def _frozen(self, gm: torch.fx.GraphModule, example_inputs: list[Any], weights: list[Weight],
                name: str) -> Callable:
        """`gm` with its weights as constants (fusec/frozen.py), compiled."""
        try:
            frozen = freeze(gm, example_inputs, weights)
        except NotFrozen as exc:
            log.warning("fusec: freeze=True: %s is not frozen, its weights stay inputs: %s", name, exc)
            return self._compile(gm, name, None)
        if isinstance(frozen, str):
            log.info("fusec: freeze=True: nothing to freeze in %s: %s", name, frozen)
            return self._compile(gm, name, None)
        log.info("fusec: %s: %s", name, frozen.summary())
        return FrozenCall(frozen, self._compile(frozen.graph, name, None), boxed(gm), name)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        weights = weights_of(gm, example_inputs) if self.options.freeze else []
        backend = aot_autograd(
            fw_compiler=self._compiler("forward", weights),
            bw_compiler=self._compiler("backward", weights),
            inference_compiler=self._compiler("inference", weights),
            decompositions=DECOMPOSITIONS,
            partition_fn=partitioner(self.options.remat, self._partitioned),
            # An input's new value (an optimizer's parameters and states) stays in the graph
            # as a store that a kernel writes in place (fusec.stores), not an output copied back.
            keep_inference_input_mutations=True,
        )
        if not (self.launch and self.options.cpu == "torch" and _on_cpu(example_inputs)):
            return backend(gm, example_inputs)
        # A CPU graph torch runs (cpu="torch"): fusec still plans and reports its forward and
        # backward (the backward now, not at its first call), then Dynamo's own graph runs as
        # eager would, ops undecomposed and autograd as usual.
        with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
            backend(gm, example_inputs)
        return gm


def _warn_not_frozen(name: str) -> None:
    log.warning("fusec: freeze=True folds weights into inference graphs only; %s computes gradients (grad "
                "mode is on and an input or weight requires grad), so it runs unfrozen: call the model under "
                "torch.no_grad() or torch.inference_mode() to freeze it", name)


def _on_cpu(example_inputs: list[Any]) -> bool:
    return all(t.device.type == "cpu" for t in example_inputs if isinstance(t, torch.Tensor))


def fusec_backend(gm: torch.fx.GraphModule, example_inputs: list[Any], **options: Any) -> Callable:
    """The `torch.compile(..., backend="fusec")` entry point.

    torch.compile hands its `options={...}` dict over as one keyword, `options`,
    and a `mode` other than None as `mode`; fusec's options may also come as keywords.
    """
    return Backend(backend_options(**options))(gm, example_inputs)


def backend_options(options: dict[str, Any] | None = None, mode: str | None = None, **kwargs: Any) -> Options:
    """fusec's Options from what torch.compile passes a backend."""
    if mode not in (None, "default", "reduce-overhead"):
        raise ValueError(f"fusec: torch.compile mode={mode!r} is Inductor's; fusec takes mode=None, 'default' or "
                         "'reduce-overhead' (CUDA graphs) and its own options as options={...} (see fusec.Options)")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"fusec: torch.compile options must be a dict of fusec options, got {options!r}")
    return Options.from_user(**(options or {}), **kwargs, **({"mode": mode} if mode else {}))


_CALLING = threading.local()  # the Backend whose compiled callable this thread is in


def leave(outer: Backend | None) -> None:
    """The end of a call `Backend.enter` marked: the mark it replaced is back."""
    _CALLING.backend = outer


class _RecompileLimit(logging.Handler):
    """Dynamo says only in its log that a function hit the recompile limit and now runs
    eagerly: hand that to the fusec callable being called."""

    def emit(self, record: logging.LogRecord) -> None:
        backend = getattr(_CALLING, "backend", None)
        if backend is None or not str(record.msg).startswith("torch._dynamo hit config."):
            return
        limit, value, function = record.args[:3]
        backend.hit_recompile_limit(function, limit, value)


@functools.cache
def _watch_recompile_limit() -> None:
    logging.getLogger("torch._dynamo.convert_frame").addHandler(_RecompileLimit(logging.WARNING))


@functools.cache
def register() -> None:
    """Make backend="fusec" work without the package's entry point being installed."""
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if "fusec" not in _COMPILER_FNS:
        register_backend(fusec_backend, name="fusec")
