"""One captured ATen graph -> IR -> passes -> Plan -> kernels -> a Runtime."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx

from fusec import sizes
from fusec.device import device_model
from fusec.execution import INTERPRETER, TORCH, TRITON, announce, execution_mode
from fusec.ir import Graph
from fusec.kernels.kinds import persistent_for, render
from fusec.kernels.parallel_load import load_kernels
from fusec.kernels.precompile import precompile
from fusec.launcher import DTYPES
from fusec.lowering import Unsupported, to_ir
from fusec.lowering_host import host_scalars, is_scalar_on_host
from fusec.options import Options
from fusec.partition import Partition
from fusec.passes.cost import H100, DeviceModel
from fusec.pipeline import run_passes
from fusec.plan import Kernel, KernelKind, Plan, build_plan
from fusec.runtime import Runtime
from fusec.size_reads import symbol_sources, symbolic
from fusec.stores import in_place
from fusec.streams import StreamDecision, plan_streams

log = logging.getLogger("fusec")


@dataclass
class CompiledGraph:
    """Everything fusec decided about one graph: what reports are made of."""

    name: str
    device: str
    graph: Graph | None = None
    plan: Plan | None = None
    pass_seconds: list[tuple[str, float]] = field(default_factory=list)
    history: list[tuple[str, Graph]] = field(default_factory=list)  # the graph after capture and each pass
    device_model: DeviceModel = H100  # what the planner's cost model assumed; the report uses the same
    compile_seconds: float = 0.0
    fallback: str | None = None  # why the whole graph runs through torch
    fallback_ops: int = 0  # ops it then runs through torch
    streams: StreamDecision | None = None
    runtime: Runtime | None = None  # what runs the graph (None when torch runs it whole)
    execution: str = TORCH  # how it runs: "triton", "interpreter" or "torch" (fusec.execution)
    modules: dict[str, str] = field(default_factory=dict)  # node -> the nn.Module path it came from
    partition: Partition | None = None  # a training graph's: what is saved for backward, what recomputed

    def runs_through_torch(self, reason: str, gm: torch.fx.GraphModule) -> None:
        """From now on torch runs the whole graph, for `reason`: what every report shows."""
        self.fallback = reason
        self.fallback_ops = sum(n.op == "call_function" for n in gm.graph.nodes)
        self.execution = TORCH


def module_paths(gm: torch.fx.GraphModule) -> dict[str, str]:
    """Node name -> the innermost nn.Module it was traced in (`h.0.attn`), where Dynamo recorded one
    (for a backward node: the module of the forward op it differentiates)."""
    paths = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or node.meta.get("fwd_nn_module_stack")
        if stack:
            paths[node.name] = _module_path(list(stack.values())[-1][0])
    return paths


def _module_path(dynamo_path: str) -> str:
    """`L['self']._modules['h'][0].attn` -> `h.0.attn`: the path a user writes."""
    path = re.sub(r"\[['\"]?([^'\"\]]+)['\"]?\]", r".\1", dynamo_path)
    parts = [p for p in path.split(".") if p not in ("_modules", "")]
    return ".".join(parts[2:] if parts[:1] == ["L"] else parts)


def graph_device(gm: torch.fx.GraphModule) -> str:
    """The one device the graph's tensors live on; several devices are unsupported, except
    0-dim CPU tensors beside GPU ones (host scalars: fusec/lowering_host.py)."""
    devices, host = set(), False
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        for v in val if isinstance(val, (tuple, list)) else (val,):
            if is_scalar_on_host(v):
                host = True
            elif isinstance(v, torch.Tensor):
                devices.add(v.device.type)
    if host and not devices:
        devices.add("cpu")
    if len(devices) > 1:
        raise Unsupported(f"tensors on several devices ({', '.join(sorted(devices))})")
    device = devices.pop() if devices else "cpu"
    if device not in ("cpu", "cuda"):
        raise Unsupported(f"tensors on {device}, which fusec does not generate code for")
    return device


def rendered(graph: Graph, step: Kernel, interpret: bool) -> Kernel:
    """`step` with its Triton source for Triton's interpreter or for a GPU (`graph` symbolic:
    the source reads sizes that depend on a symbol from its arguments)."""
    step = replace(step, persistent=persistent_for(graph, step))
    out = render(graph, step, interpret)
    library = tuple(rendered(graph, s, interpret) if isinstance(s, Kernel) else s for s in step.library)
    return replace(step, source=out.source, fn_name=out.fn_name, params=out.params, extras=out.extras,
                   symbols=out.symbols, rows_fn=out.rows_fn, asserts=out.asserts, split=out.split,
                   library=library)


def render_plan(plan: Plan, interpret: bool) -> Plan:
    """The plan with every kernel's Triton source filled in, for the interpreter or a GPU."""
    graph = symbolic(plan.graph)
    plan = replace(stored_through_inputs(replace(plan, graph=graph)), graph=plan.graph)  # as the launcher decides
    steps = tuple(rendered(graph, s, interpret) if isinstance(s, Kernel) else s for s in plan.steps)
    return replace(plan, steps=steps)


def stored_through_inputs(plan: Plan) -> Plan:
    """Each pointwise kernel (and combo part) that stores a new value into an input it also reads
    told so (`Kernel.into`): it stores through the input's pointer and takes no second one for the
    same buffer. An optimizer step's combo kernel takes each parameter and state once, not twice."""
    direct = in_place(plan)
    steps = []
    for step in plan.steps:
        if isinstance(step, Kernel) and step.kind in (KernelKind.POINTWISE, KernelKind.COMBO):
            into = tuple((o, direct[o]) for o in step.outputs if o in direct and direct[o] in step.inputs)
            parts = tuple(replace(p, into=tuple(pair for pair in into if pair[0] in p.outputs)) for p in step.parts)
            step = replace(step, into=into, parts=parts)
        steps.append(step)
    return replace(plan, steps=tuple(steps))


def plan_graph(gm: torch.fx.GraphModule, name: str, options: Options) -> tuple[CompiledGraph, dict]:
    """Capture-to-plan, without compiling a kernel (what `fusec.inspect` needs)."""
    start = time.perf_counter()
    record = CompiledGraph(name=name, device="cpu")
    callables: dict[str, Callable] = {}
    try:
        record.device = graph_device(gm)
        record.execution = execution_mode(record.device, options)
        with _gc_paused():
            callables = _plan(gm, record, options)
    except Exception as exc:
        if options.strict:
            raise
        # An internal error must never cost the user a crash: torch runs the graph.
        known = isinstance(exc, Unsupported | sizes.NotRenderable)
        reason = str(exc) if known else f"internal error: {type(exc).__name__}: {exc}"
        record.graph, record.plan = None, None
        record.runs_through_torch(reason, gm)
        log.warning("fusec: %s runs through torch: %s", name, reason)
    record.compile_seconds = time.perf_counter() - start
    return record, callables


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Planning allocates many small objects that refcounting frees; the cycle collector
    would rescan every live object (the captured graphs included) over and over — half
    the planning time of a large graph — so it waits until planning is done."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _plan(gm: torch.fx.GraphModule, record: CompiledGraph, options: Options) -> dict:
    """Lower, run the passes, plan, assign streams and render into `record`, timing each stage."""
    clock = time.perf_counter()
    stages: list[tuple[str, float]] = []

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages.append((name, now - clock))
        clock = now

    graph, callables = to_ir(gm, name=record.name, host=host_scalars(gm, record.device))
    symbol_sources(graph)  # every size symbol is read from an input, or the graph is refused
    record.modules = module_paths(gm)
    lap("lower")
    # Fusion compares sizes by value: for a dynamic graph, values no two distinct sizes share
    # (the example's may, by chance); plans and reports then use the example's.
    generic = graph.with_hints(sizes.generic_hints(graph.hints)) if graph.hints else graph
    passed, pass_seconds, record.history = run_passes(generic, options)
    record.graph = passed.with_hints(graph.hints) if graph.hints else passed
    stages += pass_seconds
    clock = time.perf_counter()
    plan = build_plan(record.graph)
    lap("plan")
    record.device_model = device_model(record.device)
    plan, record.streams = plan_streams(plan, options.streams, record.device_model,
                                        runs_streams=record.device == "cuda")
    lap("streams")
    # The interpreter needs workarounds (bfloat16 rounding) a GPU does not: the source differs.
    record.plan = render_plan(plan, interpret=record.execution != TRITON)
    lap("render")
    record.pass_seconds = stages
    return callables


def compile_graph(gm: torch.fx.GraphModule, name: str, options: Options,
                  records: list[CompiledGraph]) -> Callable[..., Any]:
    """A callable that computes what `gm` computes, with fusec's kernels."""
    record, callables = plan_graph(gm, name, options)
    records.append(record)
    if record.plan is None:
        return boxed(gm)
    announce(record.execution)
    if record.execution == TORCH:
        return boxed(gm)
    start = time.perf_counter()
    try:
        # Not waiting where worker processes compile the kernels: the next graph is planned meanwhile.
        record.runtime, _ = build_runtime(record.plan, record.execution == INTERPRETER, options, callables,
                                          gm.forward, on_broken=lambda reason: record.runs_through_torch(reason, gm),
                                          wait=False)
    except Exception as exc:
        if options.strict:
            raise
        record.runs_through_torch(f"internal error loading kernels: {type(exc).__name__}: {exc}", gm)
        log.warning("fusec: %s runs through torch: %s", name, record.fallback)
        return boxed(gm)
    finally:
        record.compile_seconds += time.perf_counter() - start
    return record.runtime


def build_runtime(plan: Plan, interpret: bool, options: Options, callables: dict[str, Callable],
                  fallback: Callable[..., Any], on_broken: Callable[[str], None] = lambda reason: None,
                  wait: bool = True) -> tuple[Runtime, dict[str, Any]]:
    """The Runtime of a rendered plan, its kernels loaded and, for a GPU, every static kernel
    compiled now, in parallel, not one by one at its first launch; with the binaries made then
    (kernel id -> compiled kernel; with `wait=False`, some may still be compiling)."""
    kernels = load_kernels(plan.all_kernels(), interpret, options.cache_dir)
    runtime = Runtime(plan, kernels, callables, interpret, fallback=fallback, strict=options.strict,
                      matmul=options.matmul, cudagraphs=options.cudagraphs, on_broken=on_broken,
                      cache_dir=options.cache_dir, native=options.native)
    binaries = {} if interpret else precompile(runtime.calls, runtime.exact, plan.all_kernels(), DTYPES, wait=wait)
    return runtime, binaries


def boxed(gm: torch.fx.GraphModule) -> Callable[..., Any]:
    def run(args: list[Any]) -> Any:
        inputs = list(args)
        args.clear()
        return gm(*inputs)
    run._boxed_call = True  # type: ignore[attr-defined]
    return run
