"""`fusec demo`: compile a bundled example, check it against eager, print the report."""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

import fusec
from fusec.examples import EXAMPLES, build


def run(args: argparse.Namespace) -> int:
    console = Console()
    model, inputs = build(args.example)
    console.print(f"[bold]fusec demo[/bold]: {args.example} — {EXAMPLES[args.example][0]}")
    # The demo runs fusec's generated kernels: compiled on a GPU, in Triton's interpreter on a CPU.
    compiled = fusec.compile(model, cpu="interpret")
    with torch.no_grad():
        expected = model(*inputs)
        got = compiled(*inputs)
    error = (got.double() - expected.double()).abs().max().item()
    ok = torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    console.print(f"matches eager: {'[green]yes' if ok else '[red]NO'}[/] (max abs error {error:.2e})")
    report = fusec.report_of(compiled)
    table = Table(title="fusion report")
    table.add_column("stat")
    table.add_column("value", justify="right")
    for key, value in report.stats.items():
        table.add_row(key, str(value))
    console.print(table)
    kernels = Table(title="kernels")
    for col in ("graph", "id", "kind", "ops", "bytes"):
        kernels.add_column(col)
    for g in report.graphs:
        for k in g.plan.kernels if g.plan else ():
            kernels.add_row(g.name, k.id, k.kind, " ".join(g.graph[m].op for m in k.members), str(k.bytes))
    console.print(kernels)
    for edge in report.edges():
        console.print(f"not fused {edge['src']} -> {edge['dst']}: {edge['reason']}")
    return 0 if ok else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="compile a bundled example, check it against eager, show the report")
    p.add_argument("example", nargs="?", default="pointwise", choices=sorted(EXAMPLES))
    p.set_defaults(run=run)
