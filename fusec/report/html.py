"""The inspection report as one self-contained HTML page: inline CSS, SVG and script, no fetch.

A graph is shown first as its launches (one box per kernel or extern call,
fusec.report.overview); a click on a kernel opens its drill-down with its member
ops, and every op is one click further ("every op"). Every piece of text that
comes from the model or the compiler goes through html.escape: op names,
reasons and kernel sources are not ours to trust.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from fusec.passes.refusal import CODES
from fusec.report import format as fmt
from fusec.report.draw import draw
from fusec.report.overview import launched, step_arrow_id, step_box_id, step_drawing
from fusec.report.page import CSS, SCRIPT
from fusec.report.svg import (
    EXTERN_EDGE,
    EXTERN_FILL,
    KERNEL_FILLS,
    REFUSED_EDGE,
    STREAM_STROKES,
    kernel_drawing,
    op_drawing,
)


def to_html(data: dict[str, Any], layout: str = "auto") -> str:
    """The page for one report; `layout` picks how graphs are drawn (see fusec.report.draw.draw)."""
    mode = "training (forward + backward)" if data["training"] else "inference"
    inputs = ", ".join(f"{fmt.shape(i['shape'])}:{i['dtype']}" if "shape" in i else i["value"]
                       for i in data["inputs"]) or "none"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fusec inspect {escape(data['target'])}</title>",
        f"<style>{CSS}</style></head><body>",
        '<div class="toolbar"><input type="search" id="fusec-search" '
        'placeholder="find an op, kernel, module or reason (e.g. k3, addmm, h.2.mlp)"> <span id="fusec-hits"></span>'
        "</div>",
        f"<h1>fusec inspect <code>{escape(data['target'])}</code></h1>",
        f"<p>{mode}; inputs: <code>{escape(inputs)}</code>; options: <code>{escape(str(data['options']))}</code>. "
        f"Times are modeled with the {escape(data['cost_model']['name'])} roofline, not measured.</p>",
        _summary(data["stats"]),
    ]
    if not data["graphs"]:
        parts.append("<p>No graph was captured: torch ran the model without handing fusec a graph.</p>")
    for graph in data["graphs"]:
        parts.append(_graph(data, graph, layout))
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def _summary(stats: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{escape(label)}</th><td class=num>{escape(fmt.stat(key, stats[key]))}</td>"
                   f"<td><code>{key}</code></td></tr>" for key, label in fmt.STAT_LABELS.items())
    rows += f"<tr><th>traffic change from fusion</th><td class=num>{fmt.traffic_saved(stats)}</td><td></td></tr>"
    return f'<h2>Summary</h2><table class="summary">{rows}</table>'


def _graph(data: dict[str, Any], graph: dict[str, Any], layout: str) -> str:
    name = graph["name"]
    out = [f'<section class="fusec-graph-section" id="{escape(name)}">',
           f"<h2>{escape(name)} <small>({escape(graph['device'])})</small></h2>"]
    if graph["fallback"]:
        out.append(f'<p class="fallback">Runs through torch entirely ({graph["fallback_ops"]} ops): '
                   f"{escape(graph['fallback'])}</p></section>")
        return "\n".join(out)
    out.append(f"<p>{graph['ops']} ops, {graph['kernels']} kernels, DAG width {graph['dag_width']}.</p>")
    out.append("<h3>Launches</h3>" + _overview_legend())
    overview = draw([step_drawing(data, name)], layout, cls="fusec-overview", key=f"steps-{name}")
    # The launch graph beside its tables: a click in one, the answer in the other, both on screen.
    out.append(f'<div class="split"><div class="graph">{overview}</div><div class="tables">'
               f"{_kernel_table(data, name)}{_extern_table(data, name)}</div></div>")
    path = graph["critical_path"]
    out.append(f"<h3>Critical path</h3><p>{fmt.seconds(path['seconds'])} of {fmt.seconds(graph['serial_seconds'])} "
               f"modeled serial time: {' → '.join(_step_link(data, name, s) for s in path['steps'])}</p>")
    out.append(_refusals(data, name))
    out.append(_passes(graph))
    waits = [w for w in data["waits"] if w["graph"] == name]
    if waits:
        out.append(_table("Cross-stream waits", ("step", "stream", "waits for", "on stream"),
                          [(w["step"], w["stream"], w["on"], w["on_stream"]) for w in waits]))
    out.append(_drill_downs(data, name))
    ops_svg = draw([op_drawing(data, name)], layout, key=f"ops-{name}")
    out.append(f'<details class="all-ops"><summary>Every op of {escape(name)} ({graph["ops"]} ops, '
               f'filled by kernel)</summary>{_op_legend(data, name)}<div class="graph">{ops_svg}</div></details>')
    out.append("</section>")
    return "\n".join(out)


def _passes(graph: dict[str, Any]) -> str:
    """What each pass left (ops, groups, edges kept apart) and what it cost."""
    seconds = {p["name"]: p["seconds"] for p in graph["passes"]}
    return _table("Passes", ("after", "ops", "groups", "edges kept apart", "seconds"),
                  [(h["pass"], h["ops"], h["groups"], h["refused_edges"],
                    f"{seconds[h['pass']]:.3f}" if h["pass"] in seconds else "") for h in graph["history"]])


def _kernel_table(data: dict[str, Any], name: str) -> str:
    kernels = [k for k in data["kernels"] if k["graph"] == name]
    if not kernels:
        return "<h3>Kernels</h3><p>none</p>"
    head = "".join(f"<th>{c}</th>" for c in ("id", "kind", "module", "member ops", "stream", "bytes", "FLOPs",
                                            "est. time"))
    rows = []
    for k in kernels:
        ops = " ".join(fmt.short_op(op) for op in k["ops"])
        search = " ".join((k["id"], k["kind"], k.get("module") or "", ops, *k["members"]))
        rows.append(f'<tr data-search="{escape(search)}"><td>{_step_link(data, name, k["id"])}</td>'
                    f"<td>{escape(k['kind'])}</td><td>{escape(k.get('module') or '')}</td><td>{escape(ops)}</td>"
                    f"<td class=num>{k['stream']}</td><td class=num>{fmt.nbytes(k['bytes'])}</td>"
                    f"<td class=num>{fmt.count(k['flops'])}</td><td class=num>{fmt.seconds(k['seconds'])}</td></tr>")
    return f"<h3>Kernels</h3><table><tr>{head}</tr>{''.join(rows)}</table>"


def _extern_table(data: dict[str, Any], name: str) -> str:
    externs = [e for e in data["extern_calls"] if e["graph"] == name and e["counted"]]
    return _table("Extern calls (run by torch)", ("id", "target", "stream", "bytes", "est. time"),
                  [(e["id"], e["target"], e["stream"], fmt.nbytes(e["bytes"]), fmt.seconds(e["seconds"]))
                   for e in externs])


def _step_link(data: dict[str, Any], graph: str, step: str) -> str:
    """A step id that jumps to its box in the launch graph."""
    return f'<a href="#{escape(step_box_id(graph, step))}"><code>{escape(step)}</code></a>'


def reason_pattern(reason: str, names: set[str]) -> str:
    """A refusal reason with its node names and shapes blanked, so refusals of one kind group together."""
    words = re.sub(r"[\w.]+", lambda m: "…" if m.group(0) in names else m.group(0), reason)
    return re.sub(r"\[[\d, ]*\]", "[…]", words)


def _refusals(data: dict[str, Any], name: str) -> str:
    """Unfused edges grouped by the rule that refused them (the reason's code), most frequent first,
    with the distinct reasons under each; each edge links to its arrow in the launch graph."""
    edges = [e for e in data["edges"] if e["graph"] == name]
    if not edges:
        return "<h3>Not fused</h3><p>none</p>"
    names = {n["name"] for n in data["nodes"] if n["graph"] == name}
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in edges:
        groups.setdefault(e["code"], []).append(e)
    steps = launched(data, name)
    out = [f"<h3>Not fused</h3><p>{len(edges)} edges between different launches, refused by {len(groups)} "
           "rules:</p>", '<table class="refusals"><tr><th>edges</th><th>rule</th><th>reasons</th><th>where</th></tr>']
    for code, group in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        patterns = list(dict.fromkeys(reason_pattern(e["reason"], names) for e in group))
        shown = "<br>".join(escape(p) for p in patterns[:3]) + (f"<br>… {len(patterns) - 3} more" if len(patterns) > 3
                                                                 else "")
        links = " ".join(_edge_link(name, e, steps) for e in group)
        search = " ".join([code, *patterns])
        out.append(f'<tr data-search="{escape(search)}"><td class=num>{len(group)}</td>'
                   f"<td><code>{escape(code)}</code>: {escape(CODES.get(code, code))}</td><td>{shown}</td>"
                   f"<td><details><summary>{len(group)} edges</summary>{links}</details></td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _edge_link(graph: str, e: dict[str, Any], steps: dict[str, Any]) -> str:
    src, dst = e["src_kernel"], e["dst_kernel"]
    target = step_arrow_id(graph, src, dst) if src in steps and dst in steps else step_box_id(graph, dst)
    return (f'<a href="#{escape(target)}" title="{escape(e["src"])} → {escape(e["dst"])}: {escape(e["reason"])}">'
            f"{escape(src)} → {escape(dst)}</a>")


def _drill_downs(data: dict[str, Any], name: str) -> str:
    """Per kernel, closed until asked for: its member ops drawn, the refusals that touch it, its source."""
    out = ["<h3>Kernels one by one</h3><p>Click a kernel in the launch graph, or open it here.</p>"]
    for k in (k for k in data["kernels"] if k["graph"] == name):
        members = draw([kernel_drawing(data, name, k)], "layered", cls="fusec-kernel", key=f"kernel-{name}-{k['id']}")
        touching = [e for e in data["edges"] if e["graph"] == name and k["id"] in (e["src_kernel"], e["dst_kernel"])]
        refusals = "".join(f"<li>{escape(e['src_kernel'])} → {escape(e['dst_kernel'])} "
                           f"({escape(e['src'])} → {escape(e['dst'])}): {escape(e['reason'])}</li>" for e in touching)
        module = f" in <code>{escape(k['module'])}</code>" if k.get("module") else ""
        out.append(f'<details class="kernel-source drill" id="{escape(name)}:kernel:{escape(k["id"])}">'
                   f"<summary><code>{escape(k['id'])}</code> {escape(k['kind'])}{module}: {escape(k['fn_name'])} "
                   f"({len(k['members'])} ops)</summary><div class=\"graph\">{members}</div>"
                   + (f"<p>Not fused with its neighbours:</p><ul>{refusals}</ul>" if refusals else "")
                   + f"<pre><code>{escape(k['source'])}</code></pre></details>")
    return "\n".join(out)


def _overview_legend() -> str:
    items = [f'<span class="swatch" style="background:{KERNEL_FILLS[0]}"></span> kernel (kernels with the same '
             "ops share a fill, so repeated layers look alike; second line: its module)",
             f'<span class="swatch" style="background:{EXTERN_FILL}"></span> extern call (torch)',
             f'<span style="color:{REFUSED_EDGE}">- - -</span> fusion refused (hover for the reason)',
             f'<span style="color:{EXTERN_EDGE}">- - -</span> data to or from torch']
    return (f'<p class="legend">One box per launch; outline: stream. Click a kernel for its ops and Triton source. '
            f'{" &nbsp; ".join(items)}</p>')


def _op_legend(data: dict[str, Any], graph: str) -> str:
    kernels = [k["id"] for k in data["kernels"] if k["graph"] == graph]
    streams = sorted({n["stream"] for n in data["nodes"] if n["graph"] == graph and n["stream"] is not None})
    items = [f'<span class="swatch" style="background:{KERNEL_FILLS[i % len(KERNEL_FILLS)]}"></span> {escape(k)}'
             for i, k in enumerate(kernels)]
    items.append(f'<span class="swatch" style="background:{EXTERN_FILL}"></span> extern call (torch)')
    items.append('<span class="swatch" style="background:#fff;border-style:dashed"></span> view / getitem (no launch)')
    items += [f'<span class="swatch" style="background:#fff;border-color:{STREAM_STROKES[s % len(STREAM_STROKES)]}">'
              f"</span> stream {s}" for s in streams]
    items.append(f'<span style="color:{REFUSED_EDGE}">- - -</span> fusion refused between kernels, '
                 f'<span style="color:{EXTERN_EDGE}">- - -</span> edge to or from torch (hover for the reason)')
    return f'<p class="legend">Fill: kernel. Outline: stream. {" &nbsp; ".join(items)}</p>'


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    if not rows:
        return f"<h3>{escape(title)}</h3><p>none</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<h3>{escape(title)}</h3><table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, int):
        return f"<td class=num>{value}</td>"
    return f"<td>{escape(str(value))}</td>"
