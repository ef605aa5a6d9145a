"""The dataflow graph of a report as DOT or SVG: nodes filled by kernel, outlined by stream.

SVG comes from Graphviz `dot` where it is installed, else from a layered
layout computed here with networkx (rows are topological generations,
ordered within a row by the barycenter heuristic). Either way each op is one
SVG element with class "op" (inputs and the output have class "io") and
`data-*` / class attributes naming its kernel and stream, so a page or a test
can find it. Nothing is fetched: the SVG is text made here.
"""

from __future__ import annotations

import html
import logging
import shutil
import subprocess
from statistics import mean
from typing import Any

import networkx as nx

from fusec.report_data import is_op
from fusec.report_format import shape, short_op

log = logging.getLogger("fusec")

# ColorBrewer Set3: pale enough for black text, distinct enough to tell kernels apart.
KERNEL_FILLS = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
                "#bc80bd", "#ccebc5", "#ffed6f", "#d9d9f3")
STREAM_STROKES = ("#1f3a5f", "#c0392b", "#1e8449", "#7d3c98", "#b9770e", "#117a65", "#5d6d7e", "#a93226")
EXTERN_FILL = "#d5d8dc"
PLAIN_FILL = "#ffffff"
REFUSED_EDGE = "#c0392b"  # two kernels the fuse pass kept apart: the edges worth reading
EXTERN_EDGE = "#aab7b8"  # an edge into or out of torch: never fusable, so drawn quietly

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN, TITLE_H = 156, 38, 18, 46, 16, 24
LABEL_CHARS = 22


def to_dot(data: dict[str, Any], graphs: list[str] | None = None) -> str:
    """One digraph: a cluster per captured graph, a dashed cluster per kernel inside it."""
    lines = ["digraph fusec {",
             "  graph [rankdir=TB, fontname=monospace, fontsize=11, nodesep=0.2, ranksep=0.35];",
             '  node [shape=box, style="rounded,filled", fontname=monospace, fontsize=9, penwidth=1.6];',
             '  edge [color="#7f8c8d", arrowsize=0.6];']
    for name in graphs if graphs is not None else drawable(data):
        nodes = _nodes(data, name)
        nodes_by_name = {n["name"]: n for n in nodes}
        fills = _kernel_fill(data, name)
        lines.append(f"  subgraph {_q('cluster_' + name)} {{")
        lines.append(f"    label={_q(name)};")
        by_kernel: dict[str | None, list[dict]] = {}
        for n in nodes:
            by_kernel.setdefault(n["kernel"], []).append(n)
        for kernel, members in by_kernel.items():
            indent = "    "
            if kernel is not None:
                lines.append(f"    subgraph {_q(f'cluster_{name}_{kernel}')} {{")
                lines.append(f'      label={_q(kernel)}; style=dashed; color="#95a5a6";')
                indent = "      "
            for n in members:
                lines.append(indent + _dot_node(name, n, fills))
            if kernel is not None:
                lines.append("    }")
        lines.append("  }")
        reasons = _reasons(data, name)
        for n in nodes:
            for src in n["inputs"]:
                reason = reasons.get((src, n["name"]))
                colour = _edge_colour(reason, nodes_by_name[src], n)
                style = f" [style=dashed, color={_q(colour)}, tooltip={_q(reason)}]" if reason else ""
                lines.append(f"  {_q(name + '/' + src)} -> {_q(name + '/' + n['name'])}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(data: dict[str, Any], graphs: list[str] | None = None, layout: str = "auto") -> str:
    """The graphs as one SVG document. layout: "dot" (Graphviz), "layered" (networkx), or "auto"."""
    names = graphs if graphs is not None else drawable(data)
    if layout not in ("auto", "dot", "layered"):
        raise ValueError(f"layout must be 'auto', 'dot' or 'layered', got {layout!r}")
    if layout == "dot" or (layout == "auto" and shutil.which("dot")):
        try:
            return _graphviz_svg(to_dot(data, names))
        except (OSError, subprocess.SubprocessError) as exc:
            if layout == "dot":
                raise
            # Graphviz is optional: a broken install must not cost the user the report.
            log.warning("fusec: Graphviz dot failed (%s); drawing with the built-in layout", exc)
    return _layered_svg(data, names)


def drawable(data: dict[str, Any]) -> list[str]:
    """Graphs that have a dataflow graph to draw (those that fell back to torch have none)."""
    return [g["name"] for g in data["graphs"] if g.get("ops") is not None]


def _graphviz_svg(dot: str) -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError("Graphviz dot is not installed; install graphviz or use layout='layered'")
    done = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True, timeout=300, check=True)
    # Drop the XML declaration and DOCTYPE: the SVG is embedded in HTML.
    return done.stdout[done.stdout.index("<svg"):]


def _nodes(data: dict[str, Any], graph: str) -> list[dict[str, Any]]:
    return [n for n in data["nodes"] if n["graph"] == graph]


def _reasons(data: dict[str, Any], graph: str) -> dict[tuple[str, str], str]:
    return {(e["src"], e["dst"]): e["reason"] for e in data["edges"] if e["graph"] == graph}


def _kernel_fill(data: dict[str, Any], graph: str) -> dict[str, str]:
    kernels = [k["id"] for k in data["kernels"] if k["graph"] == graph]
    return {k: KERNEL_FILLS[i % len(KERNEL_FILLS)] for i, k in enumerate(kernels)}


def _edge_colour(reason: str | None, src: dict[str, Any], dst: dict[str, Any]) -> str:
    if reason is None:
        return "#7f8c8d"
    return REFUSED_EDGE if src["kernel"] and dst["kernel"] else EXTERN_EDGE


def _look(n: dict[str, Any], fills: dict[str, str]) -> dict[str, str]:
    """Fill, outline, dash and CSS classes of one node."""
    stroke = STREAM_STROKES[n["stream"] % len(STREAM_STROKES)] if n["stream"] is not None else "#95a5a6"
    if not is_op(n):
        return {"fill": PLAIN_FILL, "stroke": "#95a5a6", "dash": "", "cls": "io"}
    stream_cls = f" stream-{n['stream']}" if n["stream"] is not None else ""
    if n["kernel"] is not None:
        return {"fill": fills[n["kernel"]], "stroke": stroke, "dash": "", "cls": f"op kernel-{n['kernel']}{stream_cls}"}
    if n["extern"]:
        return {"fill": EXTERN_FILL, "stroke": stroke, "dash": "", "cls": f"op extern{stream_cls}"}
    # A view or getitem on its own: an alias made by torch, no launch.
    return {"fill": PLAIN_FILL, "stroke": "#95a5a6", "dash": "4 3", "cls": f"op alias{stream_cls}"}


def _labels(n: dict[str, Any]) -> tuple[str, str]:
    if n["kind"] == "output":
        return n["name"], ""
    first = n["name"] if not is_op(n) else short_op(n["op"])
    second = f"{shape(n['shape'])} {n['dtype']}"
    if n["kernel"]:
        second = f"{n['kernel']} · {second}"
    return _clip(first), _clip(second)


def _tooltip(n: dict[str, Any]) -> str:
    where = n["kernel"] or ("extern call (torch)" if n["extern"] else "no launch")
    stream = f", stream {n['stream']}" if n["stream"] is not None else ""
    return f"{n['name']}: {n['op']} [{n['kind']}] -> {n['dtype']}[{shape(n['shape'])}]\n{where}{stream}"


def _clip(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def _q(text: str) -> str:
    """A DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_node(graph: str, n: dict[str, Any], fills: dict[str, str]) -> str:
    look = _look(n, fills)
    first, second = _labels(n)
    style = "rounded,filled,dashed" if look["dash"] else "rounded,filled"
    attrs = {"label": f"{first}\n{second}", "fillcolor": look["fill"], "color": look["stroke"], "style": style,
             "class": look["cls"], "id": f"{graph}/{n['name']}", "tooltip": _tooltip(n)}
    return f"{_q(graph + '/' + n['name'])} [{', '.join(f'{k}={_q(v)}' for k, v in attrs.items())}];"


def layered_positions(dag: nx.DiGraph) -> dict[Any, tuple[float, int]]:
    """(x, row) per node: rows are topological generations, sources sit just above their first
    consumer, and a few barycenter sweeps order each row to cut edge crossings."""
    row = {v: i for i, generation in enumerate(nx.topological_generations(dag)) for v in generation}
    for v in dag:
        if dag.in_degree(v) == 0 and dag.out_degree(v) > 0:
            row[v] = min(row[s] for s in dag.successors(v)) - 1
    rows: list[list] = [[] for _ in range(max(row.values(), default=-1) + 1)]
    for v in dag:  # insertion order is a topological order: a good first guess
        rows[row[v]].append(v)
    x = _place(rows)
    down, up = range(1, len(rows)), range(len(rows) - 2, -1, -1)
    for _ in range(4):
        for sweep, neighbours in ((down, dag.predecessors), (up, dag.successors)):
            for i in sweep:
                rows[i].sort(key=lambda v, nb=neighbours: mean([x[u] for u in nb(v)] or [x[v]]))
                x.update(_place([rows[i]]))
    return {v: (x[v], row[v]) for v in dag}


def _place(rows: list[list]) -> dict[Any, float]:
    """x of each node, every row centred on 0."""
    return {v: (i - (len(r) - 1) / 2) * (BOX_W + GAP_X) for r in rows for i, v in enumerate(r)}


def _layered_svg(data: dict[str, Any], graphs: list[str]) -> str:
    parts, width, top = [], 2 * MARGIN, MARGIN
    for index, name in enumerate(graphs):
        body, w, h = _layered_graph(data, name, top, marker=f"fusec-arrow-{index}")
        parts += body
        width, top = max(width, w), top + h + MARGIN
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="fusec-graph" width="{width:.0f}" height="{top:.0f}" '
            f'viewBox="0 0 {width:.0f} {top:.0f}" font-family="monospace" font-size="10">\n'
            + "\n".join(parts) + "\n</svg>\n")


def _layered_graph(data: dict[str, Any], name: str, top: float, marker: str) -> tuple[list[str], float, float]:
    nodes = {n["name"]: n for n in _nodes(data, name)}
    dag = nx.DiGraph()
    dag.add_nodes_from(nodes)
    dag.add_edges_from((src, n["name"]) for n in nodes.values() for src in n["inputs"])
    pos = layered_positions(dag)
    left = min((x for x, _ in pos.values()), default=0.0)
    rows = max((r for _, r in pos.values()), default=-1) + 1
    width = 2 * MARGIN + (max((x for x, _ in pos.values()), default=0.0) - left) + BOX_W

    def corner(v: str) -> tuple[float, float]:
        x, r = pos[v]
        return MARGIN + x - left, top + TITLE_H + r * (BOX_H + GAP_Y)

    out = [f'<g class="graph" data-graph="{html.escape(name)}">',
           f'<defs><marker id="{marker}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
           f'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#7f8c8d"/></marker></defs>',
           f'<text x="{MARGIN}" y="{top + 14:.0f}" font-size="13" font-weight="bold">{html.escape(name)}</text>']
    reasons = _reasons(data, name)
    for src, dst in dag.edges:
        (x1, y1), (x2, y2) = corner(src), corner(dst)
        x1, y1, x2, y2 = x1 + BOX_W / 2, y1 + BOX_H, x2 + BOX_W / 2, y2
        bend = (y2 - y1) / 2
        reason = reasons.get((src, dst))
        colour = _edge_colour(reason, nodes[src], nodes[dst])
        look = f'stroke="{colour}" stroke-dasharray="5 3"' if reason else f'stroke="{colour}"'
        title = f"<title>not fused: {html.escape(reason)}</title>" if reason else ""
        kind = (" refused" if colour == REFUSED_EDGE else " unfused") if reason else ""
        out.append(f'<path class="edge{kind}" d="M{x1:.1f},{y1:.1f} C{x1:.1f},'
                   f'{y1 + bend:.1f} {x2:.1f},{y2 - bend:.1f} {x2:.1f},{y2:.1f}" fill="none" {look} '
                   f'marker-end="url(#{marker})">{title}</path>')
    fills = _kernel_fill(data, name)
    for v, n in nodes.items():
        x, y = corner(v)
        look = _look(n, fills)
        first, second = _labels(n)
        dash = f' stroke-dasharray="{look["dash"]}"' if look["dash"] else ""
        attrs = {"class": look["cls"], "data-node": v, "data-kernel": n["kernel"] or "",
                 "data-stream": "" if n["stream"] is None else str(n["stream"])}
        out.append(f'<g {" ".join(f"{k}={_attr(a)}" for k, a in attrs.items())}>'
                   f"<title>{html.escape(_tooltip(n))}</title>"
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="{14 if not is_op(n) else 4}" '
                   f'fill="{look["fill"]}" stroke="{look["stroke"]}" stroke-width="1.6"{dash}/>'
                   f'<text x="{x + BOX_W / 2:.1f}" y="{y + 16:.1f}" text-anchor="middle" font-weight="bold">'
                   f"{html.escape(first)}</text>"
                   f'<text x="{x + BOX_W / 2:.1f}" y="{y + 30:.1f}" text-anchor="middle">'
                   f"{html.escape(second)}</text></g>")
    out.append("</g>")
    return out, width, TITLE_H + max(rows * (BOX_H + GAP_Y) - GAP_Y, 0)


def _attr(value: str) -> str:
    return f'"{html.escape(value, quote=True)}"'
