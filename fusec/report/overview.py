"""The launch graph of a report: one box per kernel or extern call, what a reader looks at first.

Views, getitems, constants, inputs and the output launch nothing; arrows go
through them, so a box's arrows are the data its launch waits for. Kernels
with the same ops share a fill, so the layers of a model look alike, and a
kernel's second label line is the nn.Module it came from where that is known.
"""

from __future__ import annotations

from typing import Any

from fusec.report.draw import PLAIN_EDGE, Arrow, Box, Drawing, clip
from fusec.report.format import short_op
from fusec.report.svg import EXTERN_EDGE, EXTERN_FILL, KERNEL_FILLS, REFUSED_EDGE, stream_stroke


def step_box_id(graph: str, step: str) -> str:
    return f"{graph}:step:{step}"


def step_arrow_id(graph: str, src: str, dst: str) -> str:
    return f"{graph}:edge:{src}:{dst}"


def launched(data: dict[str, Any], graph: str) -> dict[str, dict[str, Any]]:
    """Step id -> its row, for the steps that launch work: kernels and counted extern calls."""
    steps = {k["id"]: {**k, "is_kernel": True} for k in data["kernels"] if k["graph"] == graph}
    steps |= {e["id"]: {**e, "is_kernel": False} for e in data["extern_calls"] if e["graph"] == graph and e["counted"]}
    return steps


def step_edges(data: dict[str, Any], graph: str) -> dict[tuple[str, str], list[str]]:
    """(producer step, consumer step) -> the refusal reasons on the node edges between them."""
    nodes = {n["name"]: n for n in data["nodes"] if n["graph"] == graph}
    steps = launched(data, graph)
    reasons = {(e["src"], e["dst"]): e["reason"] for e in data["edges"] if e["graph"] == graph}
    feeds: dict[str, set[str]] = {}  # node -> the launching steps whose results it carries

    def sources(name: str) -> set[str]:
        if name not in feeds:
            n = nodes[name]
            feeds[name] = set()  # a DAG: no cycle, this only stops repeated work
            feeds[name] = {n["step"]} if n["step"] in steps else {s for i in n["inputs"] for s in sources(i)}
        return feeds[name]

    edges: dict[tuple[str, str], list[str]] = {}
    for n in nodes.values():
        if n["step"] not in steps:
            continue
        for src in n["inputs"]:
            for step in sources(src):
                if step != n["step"]:
                    found = edges.setdefault((step, n["step"]), [])
                    if (src, n["name"]) in reasons:
                        found.append(reasons[(src, n["name"])])
    return edges


def signature_fills(data: dict[str, Any], graph: str) -> dict[str, str]:
    """Kernel id -> fill, equal for kernels whose ops are the same (the same layer's kernel, repeated)."""
    seen: dict[tuple[str, ...], str] = {}
    fills = {}
    for k in (k for k in data["kernels"] if k["graph"] == graph):
        signature = (k["kind"], *k["ops"])
        fills[k["id"]] = seen.setdefault(signature, KERNEL_FILLS[len(seen) % len(KERNEL_FILLS)])
    return fills


def step_drawing(data: dict[str, Any], graph: str) -> Drawing:
    steps = launched(data, graph)
    fills = signature_fills(data, graph)
    modules = _extern_modules(data, graph)
    boxes = [_box(graph, s, fills, modules) for s in steps.values()]
    arrows = []
    for (src, dst), reasons in step_edges(data, graph).items():
        both = steps[src]["is_kernel"] and steps[dst]["is_kernel"]
        colour = (REFUSED_EDGE if both else EXTERN_EDGE) if reasons else PLAIN_EDGE
        cls = ("refused" if both else "unfused") if reasons else ""
        tip = "not fused: " + "; ".join(dict.fromkeys(reasons)) if reasons else ""
        arrows.append(Arrow(step_box_id(graph, src), step_box_id(graph, dst), colour, bool(reasons), tip, cls,
                            step_arrow_id(graph, src, dst)))
    return graph, boxes, arrows, {}


def _short(kernel: str) -> str:
    """`k0+k1+…+k9` for a combo of many parts: the id that fits a box."""
    parts = kernel.split("+")
    return kernel if len(parts) <= 2 else f"{parts[0]}+…+{parts[-1]}"


def _extern_modules(data: dict[str, Any], graph: str) -> dict[str, str | None]:
    return {n["name"]: n.get("module") for n in data["nodes"] if n["graph"] == graph}


def _box(graph: str, step: dict[str, Any], fills: dict[str, str], modules: dict[str, str | None]) -> Box:
    stream = f" stream-{step['stream']}"
    if step["is_kernel"]:
        module = step.get("module")
        ops = " ".join(dict.fromkeys(short_op(op) for op in step["ops"]))
        second = module if module else ops
        tip = (f"kernel {step['id']} [{step['kind']}], {len(step['members'])} ops: {ops}"
               + (f"\nmodule {module}" if module else "") + "\nclick for its ops and Triton source")
        return Box(step_box_id(graph, step["id"]), clip(f"{_short(step['id'])} · {step['kind']}"), clip(second),
                   fills[step["id"]], stream_stroke(step["stream"]), f"step kernel{stream}", tip,
                   data=(("step", step["id"]), ("drill", f"{graph}:kernel:{step['id']}")))
    module = modules.get(step["node"])
    target = short_op(step["target"])
    tip = f"extern call {step['id']}: {step['target']} (run by torch)" + (f"\nmodule {module}" if module else "")
    return Box(step_box_id(graph, step["id"]), clip(target), clip(module or "torch"), EXTERN_FILL,
               stream_stroke(step["stream"]), f"step extern{stream}", tip, data=(("step", step["id"]),))
