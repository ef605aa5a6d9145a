"""Boxes and arrows as SVG or DOT: the drawing layer under every graph in a report.

A drawing is a list of `Box`es and `Arrow`s between them. SVG comes from
Graphviz `dot` where it is installed, else from a layered layout computed
here with networkx (rows are topological generations, ordered within a row
by the barycenter heuristic). Either way each box is one SVG element carrying
its `cls` and `id`, so a page's script or a test can find it. Nothing is
fetched: the SVG is text made here.
"""

from __future__ import annotations

import html
import logging
import shutil
import subprocess
from dataclasses import dataclass
from statistics import mean
from typing import Any

import networkx as nx

log = logging.getLogger("fusec")

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN, TITLE_H = 156, 38, 18, 46, 16, 24
LABEL_CHARS = 22
PLAIN_EDGE = "#7f8c8d"


@dataclass(frozen=True)
class Box:
    id: str  # unique in the page: the SVG element's id
    first: str  # bold label line
    second: str
    fill: str
    stroke: str
    cls: str  # CSS classes
    tooltip: str
    dashed: bool = False
    rounded: bool = False  # inputs and outputs
    data: tuple[tuple[str, str], ...] = ()  # data-* attributes (layered layout only)
    cluster: str | None = None  # DOT: boxes of one cluster are drawn inside one dashed frame


@dataclass(frozen=True)
class Arrow:
    src: str  # Box ids
    dst: str
    colour: str = PLAIN_EDGE
    dashed: bool = False
    tooltip: str = ""
    cls: str = ""
    id: str = ""


Drawing = tuple[str, list[Box], list[Arrow], dict[str, str]]  # title, boxes, arrows, cluster labels


def dot_document(drawings: list[Drawing]) -> str:
    """One digraph: a cluster per drawing, its boxes' clusters inside it."""
    lines = ["digraph fusec {",
             "  graph [rankdir=TB, fontname=monospace, fontsize=11, nodesep=0.2, ranksep=0.35];",
             '  node [shape=box, style="rounded,filled", fontname=monospace, fontsize=9, penwidth=1.6];',
             f'  edge [color="{PLAIN_EDGE}", arrowsize=0.6];']
    for title, boxes, arrows, clusters in drawings:
        lines.append(f"  subgraph {q('cluster_' + title)} {{")
        lines.append(f"    label={q(title)};")
        lines += dot_body(boxes, arrows, clusters)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(drawings: list[Drawing], layout: str = "auto", cls: str = "fusec-graph", key: str = "fusec") -> str:
    """The drawings as one SVG document. layout: "dot" (Graphviz), "layered" (networkx), or "auto"
    (Graphviz where installed); `key` keeps the arrowhead ids of several SVGs in one page apart."""
    if layout not in ("auto", "dot", "layered"):
        raise ValueError(f"layout must be 'auto', 'dot' or 'layered', got {layout!r}")
    if layout == "dot" or (layout == "auto" and shutil.which("dot")):
        try:
            svg = graphviz_svg(dot_document(drawings))
            return svg.replace("<svg ", f'<svg class="{cls}" ', 1)
        except (OSError, subprocess.SubprocessError) as exc:
            if layout == "dot":
                raise
            # Graphviz is optional: a broken install must not cost the user the report.
            log.warning("fusec: Graphviz dot failed (%s); drawing with the built-in layout", exc)
    groups = [layered(title, boxes, arrows, marker=f"{key}-arrow-{i}")
              for i, (title, boxes, arrows, _) in enumerate(drawings)]
    return svg_document(groups, cls)


def clip(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def graphviz_svg(dot: str) -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError("Graphviz dot is not installed; install graphviz or use layout='layered'")
    done = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True, timeout=300, check=True)
    # Drop the XML declaration and DOCTYPE: the SVG is embedded in HTML.
    return done.stdout[done.stdout.index("<svg"):]


def q(text: str) -> str:
    """A DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot_body(boxes: list[Box], arrows: list[Arrow], cluster_labels: dict[str, str], indent: str = "    ") -> list[str]:
    """DOT statements for the boxes (grouped into their clusters) and arrows."""
    lines: list[str] = []
    by_cluster: dict[str | None, list[Box]] = {}
    for b in boxes:
        by_cluster.setdefault(b.cluster, []).append(b)
    for cluster, members in by_cluster.items():
        inner = indent
        if cluster is not None:
            lines.append(f"{indent}subgraph {q(cluster)} {{")
            lines.append(f'{indent}  label={q(cluster_labels.get(cluster, cluster))}; style=dashed; color="#95a5a6";')
            inner = indent + "  "
        lines += [inner + _dot_box(b) for b in members]
        if cluster is not None:
            lines.append(f"{indent}}}")
    for a in arrows:
        attrs = {"id": a.id, "class": f"edge {a.cls}".strip(), "tooltip": a.tooltip} if a.id or a.cls else {}
        attrs = {k: v for k, v in attrs.items() if v}
        if a.dashed or a.colour != PLAIN_EDGE:
            attrs |= {"style": "dashed" if a.dashed else "solid", "color": a.colour}
        style = f" [{', '.join(f'{k}={q(v)}' for k, v in attrs.items())}]" if attrs else ""
        lines.append(f"  {q(a.src)} -> {q(a.dst)}{style};")
    return lines


def _dot_box(b: Box) -> str:
    style = "rounded,filled,dashed" if b.dashed else "rounded,filled"
    attrs = {"label": f"{b.first}\n{b.second}" if b.second else b.first, "fillcolor": b.fill, "color": b.stroke,
             "style": style, "class": b.cls, "id": b.id, "tooltip": b.tooltip}
    return f"{q(b.id)} [{', '.join(f'{k}={q(v)}' for k, v in attrs.items())}];"


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


def svg_document(groups: list[tuple[list[str], float, float]], cls: str = "fusec-graph") -> str:
    """Stack drawn groups (parts, width, height) top to bottom in one SVG element."""
    parts, width, top = [], 2 * MARGIN, MARGIN
    for body, w, h in groups:
        parts.append(f'<g transform="translate(0,{top:.0f})">')
        parts += body
        parts.append("</g>")
        width, top = max(width, w), top + h + MARGIN
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" width="{width:.0f}" height="{top:.0f}" '
            f'viewBox="0 0 {width:.0f} {top:.0f}" font-family="monospace" font-size="10">\n'
            + "\n".join(parts) + "\n</svg>\n")


def layered(title: str, boxes: list[Box], arrows: list[Arrow], marker: str,
            attrs: str = "") -> tuple[list[str], float, float]:
    """One graph drawn in rows: (SVG parts, width, height), its top at y=0."""
    dag = nx.DiGraph()
    dag.add_nodes_from(b.id for b in boxes)
    dag.add_edges_from((a.src, a.dst) for a in arrows)
    pos = layered_positions(dag)
    left = min((x for x, _ in pos.values()), default=0.0)
    rows = max((r for _, r in pos.values()), default=-1) + 1
    width = 2 * MARGIN + (max((x for x, _ in pos.values()), default=0.0) - left) + BOX_W

    def corner(v: str) -> tuple[float, float]:
        x, r = pos[v]
        return MARGIN + x - left, TITLE_H + r * (BOX_H + GAP_Y)

    out = [f'<g class="graph"{attrs}>',
           f'<defs><marker id="{marker}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
           f'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="{PLAIN_EDGE}"/></marker></defs>',
           f'<text x="{MARGIN}" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    out += [_arrow(a, corner(a.src), corner(a.dst), marker) for a in arrows]
    out += [_box(b, *corner(b.id)) for b in boxes]
    out.append("</g>")
    return out, width, TITLE_H + max(rows * (BOX_H + GAP_Y) - GAP_Y, 0)


def _arrow(a: Arrow, start: tuple[float, float], end: tuple[float, float], marker: str) -> str:
    x1, y1, x2, y2 = start[0] + BOX_W / 2, start[1] + BOX_H, end[0] + BOX_W / 2, end[1]
    bend = (y2 - y1) / 2
    look = f'stroke="{a.colour}"' + (' stroke-dasharray="5 3"' if a.dashed else "")
    title = f"<title>{html.escape(a.tooltip)}</title>" if a.tooltip else ""
    ident = f" id={attr(a.id)}" if a.id else ""
    return (f"<path class={attr(f'edge {a.cls}'.strip())}{ident} d=\"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + bend:.1f} "
            f'{x2:.1f},{y2 - bend:.1f} {x2:.1f},{y2:.1f}" fill="none" {look} marker-end="url(#{marker})">'
            f"{title}</path>")


def _box(b: Box, x: float, y: float) -> str:
    dash = ' stroke-dasharray="4 3"' if b.dashed else ""
    data = "".join(f" data-{k}={attr(v)}" for k, v in b.data)
    return (f"<g class={attr(b.cls)} id={attr(b.id)}{data}><title>{html.escape(b.tooltip)}</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="{14 if b.rounded else 4}" '
            f'fill="{b.fill}" stroke="{b.stroke}" stroke-width="1.6"{dash}/>'
            f'<text x="{x + BOX_W / 2:.1f}" y="{y + 16:.1f}" text-anchor="middle" font-weight="bold">'
            f"{html.escape(b.first)}</text>"
            f'<text x="{x + BOX_W / 2:.1f}" y="{y + 30:.1f}" text-anchor="middle">{html.escape(b.second)}</text></g>')


def attr(value: str) -> str:
    return f'"{html.escape(value, quote=True)}"'
