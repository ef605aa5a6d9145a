"""How numbers and ops read in the terminal, HTML and SVG views of a report."""

from __future__ import annotations

import math
from typing import Any

STAT_LABELS = {
    "nodes": "ops",
    "kernels": "kernels",
    "extern_calls": "extern calls",
    "bytes_unfused": "bytes unfused (modeled)",
    "bytes_fused": "bytes fused (modeled)",
    "peak_bytes_unfused": "peak memory, op by op (modeled)",
    "peak_bytes": "peak memory, planned",
    "streams": "streams",
    "dag_width": "DAG width",
    "cross_stream_waits": "cross-stream waits",
    "compile_seconds": "compile time",
    "execution": "runs",
    "ran": "ran",
    "saved_bytes": "saved for backward",
    "host_ops": "host-scalar ops (CPU, no launch)",
    "stores_in_place": "stores into inputs, in place",
    "stores_copied": "stores into inputs, copied",
}

EXECUTION = {"triton": "compiled Triton kernels", "interpreter": "kernels in Triton's interpreter",
             "torch": "through torch"}


def execution(modes: str) -> str:
    """`interpreter, torch` -> what each execution mode means to a reader."""
    return ", ".join(EXECUTION.get(m, m) for m in modes.split(", "))


def nbytes(n: int) -> str:
    power = min(int(math.log(max(n, 1), 1024)), 3)
    return f"{n} B" if power == 0 else f"{n / 1024 ** power:.1f} {('KiB', 'MiB', 'GiB')[power - 1]}"


def count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def stat(key: str, value: Any) -> str:
    if key.startswith(("bytes_", "peak_bytes")) or key.endswith("_bytes"):
        return f"{nbytes(value)} ({value})"
    if key == "compile_seconds":
        return seconds(value)
    if key == "execution":
        return execution(value)
    if key == "ran":
        return (f"{value['kernels']} kernels, {value['extern_calls']} extern calls, "
                f"{value['through_torch']} calls through torch")
    return str(value)


def traffic_saved(stats: dict[str, Any]) -> str:
    """`-25%`: how much modeled traffic fusion removed."""
    if not stats["bytes_unfused"]:
        return "n/a"
    return f"{(stats['bytes_fused'] - stats['bytes_unfused']) / stats['bytes_unfused']:+.0%}"


def short_op(op: str) -> str:
    """`aten.addmm.default` -> `addmm`: the namespace and default overload say nothing to a reader."""
    op = op.removeprefix("aten.").removeprefix("_operator.")
    return op.removesuffix(".default")


def shape(dims: list[int]) -> str:
    return "x".join(map(str, dims)) or "scalar"
