"""Report: a view of the compiled graphs, their kernels and fusion decisions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fusec.compiler import CompiledGraph
from fusec.ir import Kind
from fusec.launcher import planned_peak, unfused_peak
from fusec.passes.cost import bytes_fused, bytes_unfused
from fusec.plan import Extern, Kernel, does_work

STATS_KEYS = ("nodes", "kernels", "extern_calls", "bytes_unfused", "bytes_fused", "peak_bytes_unfused",
              "peak_bytes", "streams", "dag_width", "cross_stream_waits", "compile_seconds", "execution", "ran",
              "saved_bytes")


def counts_as_extern(step: Extern, record: CompiledGraph) -> bool:
    """An extern call that does work (not a view, getitem or constant)."""
    return does_work(record.plan, step)


@dataclass
class Report:
    """What fusec did with a model: one entry per captured graph."""

    graphs: list[CompiledGraph]
    runs_eagerly: str | None = None  # set when Dynamo stopped compiling the callable (recompile limit)

    @property
    def stats(self) -> dict[str, Any]:
        planned = [g for g in self.graphs if g.plan is not None and g.fallback is None]  # what runs
        kernels = sum(len(g.plan.kernels) for g in planned)
        externs = sum(counts_as_extern(s, g) for g in planned for s in g.plan.externs)
        decided = [g.streams for g in planned if g.streams is not None]
        return {
            "nodes": sum(len(g.graph.op_nodes()) for g in planned),
            "kernels": kernels,
            "extern_calls": externs + sum(g.fallback_ops for g in self.graphs),
            "bytes_unfused": sum(bytes_unfused(g.graph) for g in planned),
            "bytes_fused": sum(bytes_fused(g.graph) for g in planned),
            # Graphs run one after another: the largest of their peaks.
            "peak_bytes_unfused": max((unfused_peak(g.graph) for g in planned), default=0),
            "peak_bytes": max((planned_peak(g.plan) for g in planned), default=0),
            "streams": max((d.streams for d in decided), default=1),
            "dag_width": max((d.dag_width for d in decided), default=0),
            "cross_stream_waits": sum(d.waits for d in decided),
            "compile_seconds": round(sum(g.compile_seconds for g in self.graphs), 4),
            # How the graphs run ("triton", "interpreter", "torch"), each named once, in graph order.
            "execution": ", ".join(dict.fromkeys(g.execution for g in self.graphs)) or "none",
            "ran": self._ran(),
            # Activations the training graphs save for their backward (fusec.partition).
            "saved_bytes": sum(g.partition.saved_bytes for g in self.graphs
                               if g.partition is not None and g.name.startswith("forward")),
        }

    def _ran(self) -> dict[str, int]:
        """What the runtimes counted over every call so far (all zero for `fusec.inspect`)."""
        counts = [g.runtime.counts for g in self.graphs if g.runtime is not None]
        return {"kernels": sum(sum(c.kernels.values()) for c in counts),
                "extern_calls": sum(c.extern_calls for c in counts),
                "through_torch": sum(c.through_torch for c in counts)}

    @property
    def kernels(self) -> list[Kernel]:
        return [k for g in self.graphs if g.plan for k in g.plan.kernels]

    def edges(self) -> list[dict[str, str]]:
        """Every edge between two different kernels or extern calls, with why it was not fused;
        `kind` is "kernels" when both ends are generated kernels, "torch" when one runs through torch."""
        rows = []
        for g in self.graphs:
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
                             "dst_kernel": launch.get(b.group, dst), "kind": kind, "reason": data["reason"]})
        return rows

    def to_dict(self) -> dict[str, Any]:
        graphs = []
        for g in self.graphs:
            entry: dict[str, Any] = {"name": g.name, "device": g.device, "execution": g.execution,
                                     "fallback": g.fallback,
                                     "compile_seconds": g.compile_seconds,
                                     "streams": g.streams.reason if g.streams else None}
            if g.plan is not None:
                entry["kernels"] = [_kernel_dict(g, k) for k in g.plan.kernels]
                entry["extern_calls"] = [{"id": s.id, "target": s.target, "bytes": s.bytes,
                                          "view": s.is_view} for s in g.plan.externs]
                launch = g.graph.launch_of()
                entry["nodes"] = [{"name": n.name, "op": n.op, "kind": n.kind.value,
                                   "shape": list(n.shape), "dtype": n.dtype, "kernel": launch.get(n.group)}
                                  for n in g.graph]
            graphs.append(entry)
        return {"stats": self.stats, "graphs": graphs, "edges": self.edges(), "runs_eagerly": self.runs_eagerly}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_html(self, path: str | None = None, target: str = "model") -> str:
        """The self-contained HTML report (what `fusec inspect --html` writes); written to
        `path` when given."""
        # The HTML view is built from report_data, which builds on Report itself.
        from fusec.report_data import collect
        from fusec.report_html import to_html

        page = to_html(collect(self, target, training=any(g.name.startswith("backward") for g in self.graphs),
                               inputs=[], options={}))
        if path is not None:
            with open(path, "w") as f:
                f.write(page)
        return page

    def to_dot(self) -> str:
        return "\n".join(g.graph.to_dot() for g in self.graphs if g.graph is not None)

    def summary(self) -> str:
        """A short plain-text account: stats, kernels, and why edges were not fused."""
        lines = [f"{key}: {value}" for key, value in self.stats.items()]
        if self.runs_eagerly:
            lines.append(f"runs eagerly: {self.runs_eagerly}")
        for g in self.graphs:
            if g.fallback:
                lines.append(f"{g.name}: runs through torch ({g.fallback})")
            if g.streams is not None:
                lines.append(f"{g.name} streams: {g.streams.reason}")
            if g.pass_seconds:
                lines.append(f"{g.name} seconds: " + ", ".join(f"{name} {s:.3f}" for name, s in g.pass_seconds))
            for k in g.plan.kernels if g.plan else ():
                ops = " ".join(g.graph[m].op for m in k.members)
                lines.append(f"{g.name} {k.id} [{k.kind}] {ops}  ({k.bytes} bytes)")
            for s in g.plan.externs if g.plan else ():
                if counts_as_extern(s, g):
                    lines.append(f"{g.name} {s.id} [extern] {s.target}")
        for e in self.edges():
            lines.append(f"not fused {e['src_kernel']} -> {e['dst_kernel']} ({e['src']} -> {e['dst']}): {e['reason']}")
        return "\n".join(lines)


def _kernel_dict(g: CompiledGraph, k: Kernel) -> dict[str, Any]:
    return {"id": k.id, "kind": k.kind, "members": list(k.members),
            "ops": [g.graph[m].op for m in k.members], "inputs": list(k.inputs),
            "outputs": list(k.outputs), "numel": k.numel, "bytes": k.bytes, "stream": k.stream,
            "source": k.source}
