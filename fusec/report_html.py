"""The inspection report as one self-contained HTML page: inline CSS and SVG, no script, no fetch.

Every piece of text that comes from the model or the compiler goes through
html.escape: op names, reasons and kernel sources are not ours to trust.
"""

from __future__ import annotations

from html import escape
from typing import Any

from fusec import report_format as fmt
from fusec.report_svg import EXTERN_EDGE, EXTERN_FILL, KERNEL_FILLS, REFUSED_EDGE, STREAM_STROKES, to_svg

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1em; margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .2em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, monospace; font-size: .85em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
.graph { overflow: auto; border: 1px solid #eee; max-height: 80vh; }
.fallback { color: #a93226; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; border: 2px solid #999; }
details summary { cursor: pointer; }
"""


def to_html(data: dict[str, Any], layout: str = "auto") -> str:
    """The page for one report; `layout` picks how graphs are drawn (see report_svg.to_svg)."""
    mode = "training (forward + backward)" if data["training"] else "inference"
    inputs = ", ".join(f"{fmt.shape(i['shape'])}:{i['dtype']}" if "shape" in i else i["value"]
                       for i in data["inputs"]) or "none"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fusec inspect {escape(data['target'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>fusec inspect <code>{escape(data['target'])}</code></h1>",
        f"<p>{mode}; inputs: <code>{escape(inputs)}</code>; options: <code>{escape(str(data['options']))}</code>. "
        f"Times are modeled with the {escape(data['cost_model']['name'])} roofline, not measured.</p>",
        _summary(data["stats"]),
    ]
    if not data["graphs"]:
        parts.append("<p>No graph was captured: torch ran the model without handing fusec a graph.</p>")
    for graph in data["graphs"]:
        parts.append(_graph(data, graph, layout))
    parts.append("</body></html>\n")
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
    out.append(f'<div class="graph">{to_svg(data, [name], layout)}</div>')
    out.append(_legend(data, name))
    kernels = [k for k in data["kernels"] if k["graph"] == name]
    out.append(_table("Kernels", ("id", "kind", "member ops", "stream", "bytes", "FLOPs", "est. time"),
                      [(k["id"], k["kind"], " ".join(fmt.short_op(op) for op in k["ops"]), k["stream"],
                        fmt.nbytes(k["bytes"]), fmt.count(k["flops"]), fmt.seconds(k["seconds"])) for k in kernels]))
    externs = [e for e in data["extern_calls"] if e["graph"] == name and e["counted"]]
    out.append(_table("Extern calls (run by torch)", ("id", "target", "stream", "bytes", "est. time"),
                      [(e["id"], e["target"], e["stream"], fmt.nbytes(e["bytes"]), fmt.seconds(e["seconds"]))
                       for e in externs]))
    path = graph["critical_path"]
    out.append(f"<h3>Critical path</h3><p>{fmt.seconds(path['seconds'])} of {fmt.seconds(graph['serial_seconds'])} "
               f"modeled serial time: <code>{escape(' → '.join(path['steps']))}</code></p>")
    edges = [e for e in data["edges"] if e["graph"] == name]
    out.append(_table("Not fused", ("from", "to", "edge", "reason"),
                      [(e["src_kernel"], e["dst_kernel"], f"{e['src']} → {e['dst']}", e["reason"]) for e in edges]))
    waits = [w for w in data["waits"] if w["graph"] == name]
    if waits:
        out.append(_table("Cross-stream waits", ("step", "stream", "waits for", "on stream"),
                          [(w["step"], w["stream"], w["on"], w["on_stream"]) for w in waits]))
    if kernels:
        out.append("<h3>Generated Triton source</h3>")
    for k in kernels:
        out.append(f'<details class="kernel-source" id="{escape(name)}-{escape(k["id"])}">'
                   f"<summary><code>{escape(k['id'])}</code> {escape(k['fn_name'])} ({len(k['members'])} ops)</summary>"
                   f"<pre><code>{escape(k['source'])}</code></pre></details>")
    out.append("</section>")
    return "\n".join(out)


def _legend(data: dict[str, Any], graph: str) -> str:
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
