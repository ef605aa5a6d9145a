"""The dataflow graph of a report, one box per op, as DOT or SVG: filled by kernel, outlined by stream.

Each op is one SVG element with class "op" (inputs and the output have class
"io") and class / `data-*` attributes naming its kernel and stream, so a page
or a test can find it. `kernel_drawing` draws one kernel's member ops the
same way, for the HTML report's drill-down.
"""

from __future__ import annotations

from typing import Any

from fusec.report.data import is_op
from fusec.report.draw import Arrow, Box, Drawing, clip, dot_document, draw
from fusec.report.format import shape, short_op

# ColorBrewer Set3: pale enough for black text, distinct enough to tell kernels apart.
KERNEL_FILLS = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
                "#bc80bd", "#ccebc5", "#ffed6f", "#d9d9f3")
STREAM_STROKES = ("#1f3a5f", "#c0392b", "#1e8449", "#7d3c98", "#b9770e", "#117a65", "#5d6d7e", "#a93226")
EXTERN_FILL = "#d5d8dc"
PLAIN_FILL = "#ffffff"
IO_STROKE = "#95a5a6"
REFUSED_EDGE = "#c0392b"  # two kernels the fuse pass kept apart: the edges worth reading
EXTERN_EDGE = "#aab7b8"  # an edge into or out of torch: never fusable, so drawn quietly


def to_dot(data: dict[str, Any], graphs: list[str] | None = None) -> str:
    """One digraph: a cluster per captured graph, a dashed cluster per kernel inside it."""
    return dot_document([op_drawing(data, name) for name in (graphs if graphs is not None else drawable(data))])


def to_svg(data: dict[str, Any], graphs: list[str] | None = None, layout: str = "auto") -> str:
    """The graphs as one SVG document. layout: "dot" (Graphviz), "layered" (networkx), or "auto"."""
    names = graphs if graphs is not None else drawable(data)
    return draw([op_drawing(data, name) for name in names], layout, key="ops-" + "-".join(names))


def drawable(data: dict[str, Any]) -> list[str]:
    """Graphs that have a dataflow graph to draw (those that fell back to torch have none)."""
    return [g["name"] for g in data["graphs"] if g.get("ops") is not None]


def op_drawing(data: dict[str, Any], graph: str) -> Drawing:
    """Every node of one graph as a box, every data dependency as an arrow."""
    nodes = {n["name"]: n for n in data["nodes"] if n["graph"] == graph}
    fills = kernel_fills(data, graph)
    boxes = [op_box(graph, n, fills) for n in nodes.values()]
    arrows = edge_arrows(data, graph, nodes, set(nodes))
    clusters = {f"cluster_{graph}_{k}": k for k in fills}
    return graph, boxes, arrows, clusters


def kernel_drawing(data: dict[str, Any], graph: str, kernel: dict[str, Any]) -> Drawing:
    """One kernel's member ops and the values it reads from outside (as io boxes)."""
    nodes = {n["name"]: n for n in data["nodes"] if n["graph"] == graph}
    members = [nodes[m] for m in kernel["members"]]
    outside = dict.fromkeys(src for m in members for src in m["inputs"] if src not in kernel["members"])
    fills = kernel_fills(data, graph)
    boxes = [op_box(graph, {**nodes[src], "kind": "input"}, fills, prefix="member") for src in outside]
    boxes += [op_box(graph, m, fills, prefix="member", cls="member") for m in members]
    arrows = edge_arrows(data, graph, nodes, {*kernel["members"], *outside}, prefix="member")
    return f"{kernel['id']} of {graph}", boxes, arrows, {}


def kernel_fills(data: dict[str, Any], graph: str) -> dict[str, str]:
    kernels = [k["id"] for k in data["kernels"] if k["graph"] == graph]
    return {k: KERNEL_FILLS[i % len(KERNEL_FILLS)] for i, k in enumerate(kernels)}


def stream_stroke(stream: int | None) -> str:
    return IO_STROKE if stream is None else STREAM_STROKES[stream % len(STREAM_STROKES)]


def edge_colour(reason: str | None, src_kernel: str | None, dst_kernel: str | None) -> str:
    if reason is None:
        return "#7f8c8d"
    return REFUSED_EDGE if src_kernel and dst_kernel else EXTERN_EDGE


def edge_arrows(data: dict[str, Any], graph: str, nodes: dict[str, dict], keep: set[str],
                prefix: str = "") -> list[Arrow]:
    reasons = {(e["src"], e["dst"]): e["reason"] for e in data["edges"] if e["graph"] == graph}
    arrows = []
    for n in nodes.values():
        if n["name"] not in keep:
            continue
        for src in n["inputs"]:
            if src not in keep:
                continue
            reason = reasons.get((src, n["name"]))
            colour = edge_colour(reason, nodes[src]["kernel"], n["kernel"])
            kind = ("refused" if colour == REFUSED_EDGE else "unfused") if reason else ""
            arrows.append(Arrow(_id(graph, src, prefix), _id(graph, n["name"], prefix), colour, bool(reason),
                                f"not fused: {reason}" if reason else "", kind))
    return arrows


def _id(graph: str, node: str, prefix: str) -> str:
    return f"{prefix}:{graph}/{node}" if prefix else f"{graph}/{node}"


def op_box(graph: str, n: dict[str, Any], fills: dict[str, str], prefix: str = "", cls: str = "") -> Box:
    look = _look(n, fills)
    if cls and is_op(n):
        look["cls"] = look["cls"].replace("op ", f"{cls} ", 1)
    first, second = _labels(n)
    data = (("node", n["name"]), ("kernel", n["kernel"] or ""),
            ("stream", "" if n["stream"] is None else str(n["stream"])))
    cluster = f"cluster_{graph}_{n['kernel']}" if n["kernel"] and not prefix else None
    return Box(_id(graph, n["name"], prefix), first, second, look["fill"], look["stroke"], look["cls"],
               _tooltip(n), dashed=look["dashed"], rounded=not is_op(n), data=data, cluster=cluster)


def _look(n: dict[str, Any], fills: dict[str, str]) -> dict[str, Any]:
    """Fill, outline, dash and CSS classes of one node."""
    stroke = stream_stroke(n["stream"])
    if not is_op(n):
        return {"fill": PLAIN_FILL, "stroke": IO_STROKE, "dashed": False, "cls": "io"}
    stream_cls = f" stream-{n['stream']}" if n["stream"] is not None else ""
    if n["kernel"] is not None:
        return {"fill": fills[n["kernel"]], "stroke": stroke, "dashed": False,
                "cls": f"op kernel-{n['kernel']}{stream_cls}"}
    if n["extern"]:
        return {"fill": EXTERN_FILL, "stroke": stroke, "dashed": False, "cls": f"op extern{stream_cls}"}
    # A view or getitem on its own: an alias made by torch, no launch.
    return {"fill": PLAIN_FILL, "stroke": IO_STROKE, "dashed": True, "cls": f"op alias{stream_cls}"}


def _labels(n: dict[str, Any]) -> tuple[str, str]:
    if n["kind"] == "output":
        return n["name"], ""
    first = n["name"] if not is_op(n) else short_op(n["op"])
    second = f"{n.get('symbolic_shape') or shape(n['shape'])} {n['dtype']}"
    if n["kernel"] and is_op(n):
        second = f"{n.get('part') or n['kernel']} · {second}"
    return clip(first), clip(second)


def _tooltip(n: dict[str, Any]) -> str:
    where = n["kernel"] or ("extern call (torch)" if n["extern"] else "no launch")
    stream = f", stream {n['stream']}" if n["stream"] is not None else ""
    module = f"\nmodule {n['module']}" if n.get("module") else ""
    dims = n.get("symbolic_shape") or shape(n["shape"])
    return f"{n['name']}: {n['op']} [{n['kind']}] -> {n['dtype']}[{dims}]\n{where}{stream}{module}"
