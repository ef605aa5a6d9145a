"""What `fusec bench` shows and writes: progress, the table (rich or plain), JSON, Markdown, a speedup plot.

rich is optional here: the GPU check runs on machines that have torch and
triton but not rich, so without it progress and the table are plain text.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
except ImportError:
    Console = None  # progress and table fall back to plain text


def _us(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def _fixed(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


# (header, cell) in table order; the terminal and Markdown tables share them.
COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("workload", lambda r: r["workload"]),
    ("system", lambda r: r["system"]),
    ("median µs", lambda r: _us(r["time_median_us"])),
    ("IQR µs", lambda r: _us(r["time_iqr_us"])),
    ("speedup", lambda r: _fixed(r["speedup_vs_eager"], ".2f")),
    ("launches", lambda r: _fixed(r["launches_per_call"], "g")),
    ("compile s", lambda r: _fixed(r["compile_seconds"], ".2f")),
    ("max err", lambda r: _fixed(r["max_abs_error"], ".1e")),
    ("GB/s", lambda r: _fixed(r["achieved_gbps"], ".3g")),
    ("% copy BW", lambda r: _fixed(None if r["bandwidth_fraction"] is None else 100 * r["bandwidth_fraction"], ".1f")),
]


def headline(env: dict[str, Any]) -> str:
    return (f"{env['device']} ({env['device_name']}), {env['dtype']}, {env['size_tier']} sizes; "
            f"torch {env['torch_version']}, triton {env['triton_version']}; "
            f"device copy bandwidth {env['device_copy_gbps']} GB/s")


def legend(records: list[dict[str, Any]]) -> list[str]:
    """How each launch count in the table was taken (it differs by device and system)."""
    methods = dict.fromkeys(f"{r['system']}: {r['launches_counted_by']}" for r in records if r["launches_counted_by"])
    return [f"launches — {m}" for m in methods]


def markdown(records: list[dict[str, Any]], env: dict[str, Any]) -> str:
    lines = ["# fusec bench", "", headline(env), ""]
    if env["note"]:
        lines += [f"> {env['note']}", ""]
    columns = [*COLUMNS, ("error", lambda r: r["error"] or "")]
    lines.append("| " + " | ".join(h for h, _ in columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for r in records:
        lines.append("| " + " | ".join(cell(r).replace("|", "\\|") for _, cell in columns) + " |")
    lines += ["", *(f"- {line}" for line in legend(records))]
    return "\n".join(lines) + "\n"


def print_table(records: list[dict[str, Any]], env: dict[str, Any]) -> None:
    if Console is None:
        print(markdown(records, env))
        return
    table = Table(title=f"fusec bench — {headline(env)}", title_justify="left")
    for header, _ in COLUMNS:
        table.add_column(header, justify="left" if header in ("workload", "system") else "right", no_wrap=True)
    for i, r in enumerate(records):
        new_workload = i + 1 < len(records) and records[i + 1]["workload"] != r["workload"]
        table.add_row(*(cell(r) for _, cell in COLUMNS), end_section=new_workload,
                      style="red" if r["error"] else None)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file has no width to fit; rich would assume 80 columns
    console.print(table)
    for r in records:
        if r["error"]:
            console.print(f"{r['workload']} · {r['system']}: {r['error']}", style="red", markup=False)
    for line in legend(records):
        console.print(line, style="dim")
    if env["note"]:
        console.print(env["note"], style="bold yellow")


@contextlib.contextmanager
def progress(total: int) -> Iterator[Callable[[str], None]]:
    """A progress display; the yielded function takes each step's label just before the step runs."""
    done = -1
    if Console is None:
        def plain(label: str) -> None:
            nonlocal done
            done += 1
            print(f"[{done + 1}/{total}] {label}", file=sys.stderr, flush=True)
        yield plain
        return
    # On stderr, so that stdout holds the table alone.
    with Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("", total=total)

        def step(label: str) -> None:
            nonlocal done
            done += 1
            bar.update(task, description=label, completed=done)
        yield step
        bar.update(task, completed=total)


def write_json(path: Path, records: list[dict[str, Any]], env: dict[str, Any]) -> None:
    path.write_text(json.dumps({"environment": env, "records": records}, indent=2) + "\n")


def write_plot(path: Path, records: list[dict[str, Any]], env: dict[str, Any]) -> None:
    """Speedup over eager per workload, one bar per system, on a log scale (1 = eager)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise SystemExit("fusec bench: --plot needs matplotlib (pip install matplotlib)") from exc
    workloads = list(dict.fromkeys(r["workload"] for r in records))
    systems = list(dict.fromkeys(r["system"] for r in records))
    speedup = {(r["workload"], r["system"]): r["speedup_vs_eager"] for r in records}
    fig = Figure(figsize=(max(6.0, 0.9 * len(workloads) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        xs = [w + (i - (len(systems) - 1) / 2) * width for w in range(len(workloads))]
        # A failed system has no bar; NaN leaves its slot empty.
        ys = [speedup.get((w, system)) or float("nan") for w in workloads]
        ax.bar(xs, ys, width, label=system)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)), workloads, rotation=35, ha="right")
    ax.set_ylabel("speedup over eager (eager = 1)")
    title = f"fusec bench: {env['device']} ({env['device_name']}), {env['dtype']}, {env['size_tier']} sizes"
    if env["note"]:
        title += "\nCPU: interpreted Triton — not a performance claim"
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.savefig(path, dpi=120)
