"""The inspection report as plain data: what `--json` writes and every other view draws from.

The schema is documented in docs/report-schema.md; bump SCHEMA when a field
changes meaning or goes away (adding a field does not need a bump).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fusec import sizes
from fusec.compiler import CompiledGraph
from fusec.ir import Kind, Node
from fusec.launcher import planned_peak, unfused_peak
from fusec.passes.cost import H100, bytes_fused, bytes_unfused
from fusec.passes.parallel import critical_path, dag_width
from fusec.plan import Extern, Kernel, Plan, Step, does_work
from fusec.stores import in_place, stores
from fusec.streams import cost_dag, step_seconds

if TYPE_CHECKING:  # the report package imports this module, not the other way
    from fusec.report import Report

SCHEMA = 1

STATS_KEYS = ("nodes", "kernels", "extern_calls", "bytes_unfused", "bytes_fused", "peak_bytes_unfused",
              "peak_bytes", "streams", "dag_width", "cross_stream_waits", "compile_seconds", "execution", "ran",
              "saved_bytes", "host_ops", "stores_in_place", "stores_copied")


def counts_as_extern(step: Extern, record: CompiledGraph) -> bool:
    """An extern call that does work (not a view, getitem or constant)."""
    return does_work(record.plan, step)


def stats_of(graphs: list[CompiledGraph]) -> dict[str, Any]:
    """The totals over every graph (`Report.stats`; the keys are STATS_KEYS)."""
    planned = [g for g in graphs if g.plan is not None and g.fallback is None]  # what runs
    kernels = sum(len(g.plan.kernels) for g in planned)
    externs = sum(counts_as_extern(s, g) for g in planned for s in g.plan.externs)
    counts = [store_counts(g.plan) for g in planned]  # (in place, copied) per graph
    decided = [g.streams for g in planned if g.streams is not None]
    return {
        "nodes": sum(len(g.graph.op_nodes()) for g in planned),
        "kernels": kernels,
        "extern_calls": externs + sum(g.fallback_ops for g in graphs),
        "bytes_unfused": sum(bytes_unfused(g.graph) for g in planned),
        "bytes_fused": sum(bytes_fused(g.graph) for g in planned),
        # Graphs run one after another: the largest of their peaks.
        "peak_bytes_unfused": max((unfused_peak(g.graph) for g in planned), default=0),
        "peak_bytes": max((peak_of(g) for g in planned), default=0),
        "streams": max((d.streams for d in decided), default=1),
        "dag_width": max((d.dag_width for d in decided), default=0),
        "cross_stream_waits": sum(d.waits for d in decided),
        "compile_seconds": round(sum(g.compile_seconds for g in graphs), 4),
        # How the graphs run ("triton", "interpreter", "torch"), each named once, in graph order.
        "execution": ", ".join(dict.fromkeys(g.execution for g in graphs)) or "none",
        "ran": _ran(graphs),
        # Activations the training graphs save for their backward (fusec.partition).
        "saved_bytes": sum(g.partition.saved_bytes for g in graphs
                           if g.partition is not None and g.name.startswith("forward")),
        # torch calls on host scalars (0-dim CPU tensors of a GPU graph): on the CPU, no launch
        "host_ops": sum(host_ops(g.plan) for g in planned),
        # new values of the inputs a graph mutates: written by their kernel, or copied in at the end
        "stores_in_place": sum(in_place for in_place, _ in counts),
        "stores_copied": sum(copied for _, copied in counts),
    }


def host_ops(plan: Plan) -> int:
    """The torch calls a plan runs on host scalars (fusec/lowering_host.py)."""
    return sum(plan.graph[s.node].host and plan.graph[s.node].op != "constant" for s in plan.externs)


def store_counts(plan: Plan) -> tuple[int, int]:
    """(stores written in place by their kernel, stores copied into their input after the last step)."""
    direct = len(in_place(plan))
    return direct, len(stores(plan.graph)) - direct


def _ran(graphs: list[CompiledGraph]) -> dict[str, int]:
    """What the runtimes counted over every call so far (all zero for `fusec.inspect`)."""
    counts = [g.runtime.counts for g in graphs if g.runtime is not None]
    return {"kernels": sum(sum(c.kernels.values()) for c in counts),
            "extern_calls": sum(c.extern_calls for c in counts),
            "through_torch": sum(c.through_torch for c in counts)}


def edge_rows(graphs: list[CompiledGraph]) -> list[dict[str, str]]:
    """Every edge between two different kernels or extern calls, with why it was not fused;
    `kind` is "kernels" when both ends are generated kernels, "torch" when one runs through torch."""
    rows = []
    for g in graphs:
        if g.graph is None:
            continue
        launch = g.graph.launch_of()  # a combo part's group -> the combo kernel that launches it
        for src, dst, data in g.graph.nx.edges(data=True):
            if "reason" not in data:
                continue
            a, b = g.graph[src], g.graph[dst]
            if Kind.INPUT in (a.kind, b.kind) or Kind.OUTPUT in (a.kind, b.kind):
                continue
            kind = "kernels" if a.group and b.group else "torch"
            rows.append({"graph": g.name, "src": src, "dst": dst, "src_kernel": launch.get(a.group, src),
                         "dst_kernel": launch.get(b.group, dst), "kind": kind, "reason": str(data["reason"]),
                         "code": getattr(data["reason"], "code", "other")})
    return rows


def collect(report: Report, target: str, training: bool, inputs: list[dict[str, Any]],
            options: dict[str, Any]) -> dict[str, Any]:
    """Everything the report knows, as JSON-ready data (see docs/report-schema.md)."""
    planned = [g for g in report.graphs if g.plan is not None]
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "target": target,
        "training": training,
        "inputs": inputs,
        "options": options,
        "runs_eagerly": report.runs_eagerly,
        # Each graph's model is in its row; graphs of one call share a device, so the first speaks for all.
        "cost_model": asdict(planned[0].device_model if planned else H100),
        "stats": report.stats,
        "graphs": [],
        "nodes": [],
        "kernels": [],
        "extern_calls": [],
        "edges": report.edges(),
        "streams": [],
        "waits": [],
    }
    for record in report.graphs:
        data["graphs"].append(_graph_row(record))
        if record.plan is None:
            continue
        steps = {s.id: s for s in record.plan.steps}
        data["nodes"] += _node_rows(record)
        data["kernels"] += [_kernel_row(record, k) for k in record.plan.kernels]
        data["extern_calls"] += [_extern_row(record, e) for e in record.plan.externs]
        launched = [s for s in record.plan.steps if step_seconds(record.plan, s, record.device_model) > 0]
        for stream in sorted({s.stream for s in launched}):
            data["streams"].append({"graph": record.name, "stream": stream,
                                    "steps": [s.id for s in launched if s.stream == stream]})
        data["waits"] += [{"graph": record.name, "step": s.id, "stream": s.stream, "on": w,
                           "on_stream": steps[w].stream if w in steps else None}
                          for s in record.plan.steps for w in s.waits]
    return data


def _graph_row(record: CompiledGraph) -> dict[str, Any]:
    row: dict[str, Any] = {"name": record.name, "device": record.device, "execution": record.execution,
                           "fallback": record.fallback,
                           "fallback_ops": record.fallback_ops, "compile_seconds": record.compile_seconds,
                           "passes": [{"name": name, "seconds": seconds} for name, seconds in record.pass_seconds],
                           "history": [_history_row(name, graph) for name, graph in record.history],
                           "cost_model": asdict(record.device_model)}
    if record.partition is not None:
        # through JSON's types (tuples as lists), so the data equals what --json writes
        row["partition"] = json.loads(json.dumps(asdict(record.partition)))
    if record.plan is None:
        return row
    dag = cost_dag(record.plan, record.device_model)
    path, seconds = critical_path(dag)
    direct, copied = store_counts(record.plan)
    row.update({"ops": len(record.graph.op_nodes()), "kernels": len(record.plan.kernels),
                "host_ops": host_ops(record.plan), "stores": {"in_place": direct, "copied": copied},
                "dag_width": dag_width(dag), "size_hints": dict(record.graph.hints),
                "serial_seconds": sum(step_seconds(record.plan, s, record.device_model) for s in record.plan.steps),
                "critical_path": {"steps": list(path), "seconds": seconds}})
    return row


def _history_row(name: str, graph: Any) -> dict[str, Any]:
    """What a pass left: its op nodes, the groups they form, the edges it kept apart with a reason."""
    ops = graph.op_nodes()
    groups = {n.group for n in ops if n.group is not None}
    refused = sum(1 for *_, data in graph.nx.edges(data=True) if "reason" in data)
    return {"pass": name, "ops": len(ops), "groups": len(groups), "refused_edges": refused}


def symbolic_text(node: Node) -> str | None:
    """A shape over size symbols as a report shows it (`s0x768`); None when static."""
    return "x".join(map(sizes.text, node.sizes[0])) if node.sizes is not None else None


def _node_rows(record: CompiledGraph) -> list[dict[str, Any]]:
    graph, plan = record.graph, record.plan
    step_of: dict[str, Step] = {}
    for step in plan.steps:
        for name in step.members if isinstance(step, Kernel) else (step.node,):
            step_of[name] = step
    rows = []
    for n in graph:
        step = step_of.get(n.name)
        # The kernel a node runs in is the launched one: a combo part's group (k4) runs in k0+k4+k5.
        kernel = step.id if isinstance(step, Kernel) else None
        rows.append({"graph": record.name, "name": n.name, "op": n.op, "kind": n.kind.value,
                     "shape": list(n.shape), "symbolic_shape": symbolic_text(n),
                     "dtype": n.dtype, "target": n.target, "kernel": kernel,
                     "part": n.group if kernel is not None and n.group != kernel else None,
                     "module": record.modules.get(n.name),
                     "step": step.id if step else None, "stream": step.stream if step else None,
                     "extern": isinstance(step, Extern) and counts_as_extern(step, record),
                     "inputs": graph.producers(n.name)})
    return rows


def _kernel_row(record: CompiledGraph, k: Kernel) -> dict[str, Any]:
    return {"graph": record.name, "id": k.id, "kind": k.kind, "members": list(k.members),
            "module": common_module(_computing([record.modules.get(m) for m in k.members],
                                               [record.graph[m].kind is Kind.VIEW for m in k.members])),
            "ops": [record.graph[m].op for m in k.members], "inputs": list(k.inputs), "outputs": list(k.outputs),
            "numel": k.numel, "bytes": k.bytes, "flops": k.flops,
            "seconds": step_seconds(record.plan, k, record.device_model),
            "stream": k.stream, "waits": list(k.waits), "fn_name": k.fn_name, "source": k.source}


def _extern_row(record: CompiledGraph, e: Extern) -> dict[str, Any]:
    return {"graph": record.name, "id": e.id, "node": e.node, "target": e.target, "bytes": e.bytes,
            "view": e.is_view, "counted": counts_as_extern(e, record), "flops": e.flops,
            "seconds": step_seconds(record.plan, e, record.device_model),
            "stream": e.stream, "waits": list(e.waits)}


def _computing(paths: list[str | None], views: list[bool]) -> list[str | None]:
    """The module paths of the members that compute (a reshape a kernel stores through for
    the next module's matmul is index math, not that module's work); all if none does."""
    computing = [p for p, view in zip(paths, views, strict=True) if not view]
    return computing if any(computing) else paths


def common_module(paths: list[str | None]) -> str | None:
    """The innermost module holding every known path (`h.0.attn` and `h.0.mlp` -> `h.0`); None if none is known."""
    split = [p.split(".") for p in paths if p]
    if not split:
        return None
    common = []
    for parts in zip(*split):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common)


def is_op(node: dict[str, Any]) -> bool:
    """An op node, as `stats["nodes"]` counts them (inputs, graph constants and the output are not ops)."""
    return node["kind"] not in (Kind.INPUT.value, Kind.OUTPUT.value) and node["op"] != "constant"


def peak_of(graph: Any) -> int:
    """A planned graph's modeled peak bytes, on the streams its launcher runs it on (several on a
    GPU: its buffers are then held to the end of the call)."""
    return planned_peak(graph.plan, streams=bool(getattr(graph.runtime, "multi_stream", False)))
