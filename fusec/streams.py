"""Stream assignment for a Plan: which steps run concurrently, and the waits that keep it safe.

The analyses live in passes/parallel.py (pure graph algorithms); this module
applies them to a plan's steps and decides, with the cost model, whether
streams are worth it for this graph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import networkx as nx

from fusec.passes.chains import Closure
from fusec.passes.cost import H100, DeviceModel, estimate_seconds
from fusec.passes.parallel import assign_streams, dag_width, minimal_waits
from fusec.plan import Kernel, Plan, Step, does_work, step_dag

AUTO_CAP = 4
# A kernel with fewer threads of work than this leaves most of an H100 idle
# (132 SMs x 2048 resident threads): running two at once costs nothing.
SMALL_KERNEL_ELEMENTS = 132 * 2048 // 2


@dataclass(frozen=True)
class StreamDecision:
    streams: int
    dag_width: int
    waits: int
    reason: str


def cost_dag(plan: Plan, device: DeviceModel = H100) -> nx.DiGraph:
    """The step DAG weighted by each step's roofline time (0 for steps that do no work)."""
    dag = step_dag(plan)
    steps = {s.id: s for s in plan.steps}
    for node in dag:
        dag.nodes[node]["cost"] = step_seconds(plan, steps[node], device)
    return dag


def step_seconds(plan: Plan, step: Step, device: DeviceModel = H100) -> float:
    """Modeled time of one step: its roofline (extern calls carry FLOPs only for matmuls),
    or nothing for a step that does no work."""
    return estimate_seconds(step.bytes, step.flops, device) if does_work(plan, step) else 0.0


def _elements(step: Step, plan: Plan) -> int:
    if isinstance(step, Kernel):
        return step.numel * max(step.rnumel, 1)
    return plan.graph[step.node].numel


def choose_streams(plan: Plan, requested: int | str | None, runs_streams: bool = True,
                   dag: nx.DiGraph | None = None) -> tuple[int | None, str]:
    """The stream cap for this plan (None: no cap) and why. `runs_streams` is False where
    the plan's kernels cannot run on streams (CPU tensors): "auto" then plans none."""
    if requested == 1:
        return 1, "streams=1: one stream"
    if requested == "auto" and not runs_streams:
        return 1, "auto: one stream: CPU tensors run on no streams"
    dag = step_dag(plan) if dag is None else dag
    width = dag_width(dag)
    if width <= 1:
        return 1, "one stream: no two kernels are independent"
    if requested is None:
        return None, f"no cap: one stream per chain, {width} for a DAG of width {width}"
    if requested != "auto":
        return requested, f"streams={requested}"
    steps = {s.id: s for s in plan.steps}
    closure = Closure(dag, list(nx.topological_sort(dag)))
    small = [n for n in closure.order if _elements(steps[n], plan) <= SMALL_KERNEL_ELEMENTS]
    small_bits = sum(1 << closure.index[n] for n in small)
    independent = [n for n in small if small_bits & ~closure.comparable(n)]
    if len(independent) < 2:
        return 1, "auto: one stream: the independent kernels are large enough to fill the GPU"
    return AUTO_CAP, (f"auto: {len(independent)} small kernels can run side by side "
                      f"(DAG width {width}, at most {AUTO_CAP} streams)")


def plan_streams(plan: Plan, requested: int | str | None, device: DeviceModel = H100,
           runs_streams: bool = True) -> tuple[Plan, StreamDecision]:
    """The plan with every step's stream and waits set; steps keep their order."""
    dag = cost_dag(plan, device)
    width = dag_width(dag)
    cap, reason = choose_streams(plan, requested, runs_streams, dag)
    if cap == 1:
        return plan, StreamDecision(1, width, 0, reason)
    schedule = assign_streams(dag, cap)
    order = [s.id for s in plan.steps if s.id in dag]
    waits = minimal_waits(dag, order, schedule.stream_of)
    waited: dict[str, list[str]] = {}
    for producer, consumer in waits:
        waited.setdefault(consumer, []).append(producer)
    steps = []
    stream_of_buffer: dict[str, int] = {}
    for step in plan.steps:
        if step.id in schedule.stream_of:
            stream = schedule.stream_of[step.id]
        else:  # a view or a constant: no work; a view follows its source
            operands = plan.graph[step.node].operands()
            stream = stream_of_buffer.get(operands[0], 0) if operands else 0
        for name in step.outputs if isinstance(step, Kernel) else (step.node,):
            stream_of_buffer[name] = stream
        steps.append(replace(step, stream=stream, waits=tuple(waited.get(step.id, ()))))
    used = len({s.stream for s in steps})
    return replace(plan, steps=tuple(steps)), StreamDecision(used, width, len(waits), reason)
