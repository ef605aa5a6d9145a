"""The inspection report in the terminal, with rich: summary, kernels, critical path, unfused edges."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fusec.report import format as fmt


def print_report(data: dict[str, Any], console: Console) -> None:
    inputs = ", ".join(_input_text(i) for i in data["inputs"]) or "none"
    mode = "training (forward + backward)" if data["training"] else "inference"
    console.print(f"[bold]fusec inspect[/bold] {escape(data['target'])} — {mode}; inputs: {escape(inputs)}",
                  soft_wrap=True)
    _summary(data, console)
    if not data["graphs"]:
        console.print("[yellow]no graph was captured[/yellow]: torch ran the model without handing fusec a graph "
                      "(it may do no tensor work, or Dynamo ran all of it eagerly)", soft_wrap=True)
    for graph in data["graphs"]:
        _graph(data, graph, console)


def _input_text(spec: dict[str, Any]) -> str:
    return f"{fmt.shape(spec['shape'])}:{spec['dtype']}" if "shape" in spec else spec["value"]


def _summary(data: dict[str, Any], console: Console) -> None:
    stats = data["stats"]
    table = Table(title="summary", title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column("stat")
    table.add_column("value", justify="right")
    for key, label in fmt.STAT_LABELS.items():
        table.add_row(label, fmt.stat(key, stats[key]))
    table.add_row("traffic change from fusion", fmt.traffic_saved(stats))
    console.print(table)


def _graph(data: dict[str, Any], graph: dict[str, Any], console: Console) -> None:
    name = graph["name"]
    console.rule(f"[bold]{escape(name)}[/bold] ({graph['device']}, {fmt.execution(graph['execution'])})")
    if "partition" in graph:
        _partition(graph["partition"], console)
    if graph["fallback"]:
        console.print(f"[red]runs through torch entirely[/red] ({graph['fallback_ops']} ops): "
                      f"{escape(graph['fallback'])}", soft_wrap=True)
        return
    console.print(f"{graph['ops']} ops, {graph['kernels']} kernels, DAG width {graph['dag_width']}")
    if graph.get("size_hints"):
        hints = ", ".join(f"{s}={v}" for s, v in graph["size_hints"].items())
        console.print(f"dynamic shapes: one graph for every size; bytes and times at the example's {hints}")
    kernels = [k for k in data["kernels"] if k["graph"] == name]
    if kernels:
        table = Table(title=f"kernels of {escape(name)}", title_justify="left")
        for column, justify in (("id", "left"), ("kind", "left"), ("member ops", "left"), ("stream", "right"),
                                ("bytes", "right"), ("FLOPs", "right"), ("est. time", "right")):
            table.add_column(column, justify=justify, overflow="fold")
        for k in kernels:
            table.add_row(k["id"], k["kind"], escape(" ".join(fmt.short_op(op) for op in k["ops"])), str(k["stream"]),
                          fmt.nbytes(k["bytes"]), fmt.count(k["flops"]), fmt.seconds(k["seconds"]))
        console.print(table)
    externs = [e for e in data["extern_calls"] if e["graph"] == name and e["counted"]]
    if externs:
        table = Table(title=f"extern calls of {escape(name)} (run by torch)", title_justify="left")
        for column, justify in (("id", "left"), ("target", "left"), ("stream", "right"), ("bytes", "right"),
                                ("est. time", "right")):
            table.add_column(column, justify=justify, overflow="fold")
        for e in externs:
            table.add_row(escape(e["id"]), escape(e["target"]), str(e["stream"]), fmt.nbytes(e["bytes"]),
                          fmt.seconds(e["seconds"]))
        console.print(table)
    path = graph["critical_path"]
    console.print(f"[bold]critical path[/bold] ({fmt.seconds(path['seconds'])} of "
                  f"{fmt.seconds(graph['serial_seconds'])} modeled serial time): {escape(' → '.join(path['steps']))}",
                  soft_wrap=True)
    edges = [e for e in data["edges"] if e["graph"] == name]
    console.print(f"[bold]not fused[/bold]: {len(edges)} edges between different kernels or extern calls")
    for e in edges:
        # The op-level edge only adds something when an end is a kernel of several ops.
        via = "" if (e["src"], e["dst"]) == (e["src_kernel"], e["dst_kernel"]) else f" ({e['src']} → {e['dst']})"
        console.print(f"  {escape(e['src_kernel'])} → {escape(e['dst_kernel'])}{escape(via)}: {escape(e['reason'])}",
                      soft_wrap=True, highlight=False)
    waits = [w for w in data["waits"] if w["graph"] == name]
    for w in waits:
        console.print(f"  stream {w['stream']} waits for {escape(w['on'])} before {escape(w['step'])}",
                      soft_wrap=True, highlight=False)


def _partition(p: dict[str, Any], console: Console) -> None:
    saved = [v for v in p["saved"] if v["op"] != "input"]
    console.print(f"saves for backward ({p['method']}, remat={p['remat']}): {fmt.nbytes(p['saved_bytes'])} in "
                  f"{len(saved)} tensors (default partition: {fmt.nbytes(p['default_saved_bytes'])}): "
                  f"{escape(', '.join(v['name'] for v in saved))}; recomputes {len(p['recomputed'])} ops",
                  soft_wrap=True, highlight=False)
