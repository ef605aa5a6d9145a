"""Report: a view of the compiled graphs, their kernels and fusion decisions.

The package is layered: `data` computes every number and row from the compiled
graphs (and imports no view); `format`, `draw`, `svg`, `overview`, `html` and
`terminal` render what `data.collect` returns. `Report` is the public face.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fusec.compiler import CompiledGraph
from fusec.plan import Kernel
from fusec.report.data import STATS_KEYS, collect, counts_as_extern, edge_rows, stats_of, symbolic_text
from fusec.report.html import to_html

__all__ = ["STATS_KEYS", "Report", "counts_as_extern"]


@dataclass
class Report:
    """What fusec did with a model: one entry per captured graph."""

    graphs: list[CompiledGraph]
    runs_eagerly: str | None = None  # set when Dynamo stopped compiling the callable (recompile limit)

    @property
    def stats(self) -> dict[str, Any]:
        return stats_of(self.graphs)

    @property
    def kernels(self) -> list[Kernel]:
        return [k for g in self.graphs if g.plan for k in g.plan.kernels]

    def edges(self) -> list[dict[str, str]]:
        """Every edge between two different kernels or extern calls, with why it was not fused;
        `kind` is "kernels" when both ends are generated kernels, "torch" when one runs through torch."""
        return edge_rows(self.graphs)

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
                                   "shape": list(n.shape), "symbolic_shape": symbolic_text(n), "dtype": n.dtype,
                                   "kernel": launch.get(n.group)}
                                  for n in g.graph]
            graphs.append(entry)
        return {"stats": self.stats, "graphs": graphs, "edges": self.edges(), "runs_eagerly": self.runs_eagerly}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_html(self, path: str | None = None, target: str = "model") -> str:
        """The self-contained HTML report (what `fusec inspect --html` writes); written to
        `path` when given."""
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
