"""`fusec bench`: time the kernel workloads under eager, torch.compile and fusec, and report them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from fusec.bench import export as bench_export
from fusec.bench import static as bench_static
from fusec.bench.dynamic import markdown as dynamic_markdown
from fusec.bench.dynamic import measure as measure_dynamic
from fusec.bench.memory import TRAINING
from fusec.bench.memory import markdown as memory_markdown
from fusec.bench.memory import measure as measure_memory
from fusec.bench.memory_workloads import MEMORY_ONLY
from fusec.bench.optimizer import markdown as optimizer_markdown
from fusec.bench.optimizer import measure as measure_optimizer
from fusec.bench.output import markdown, print_table, progress, write_json, write_plot
from fusec.bench.overhead import markdown as overhead_markdown
from fusec.bench.overhead import measure as measure_overhead
from fusec.bench.suite import DTYPES, Settings, default_dtype, environment, run_suite, systems
from fusec.bench.workloads import WORKLOADS
from fusec.cli import Parser
from fusec.cli.paths import first_unwritable


def run(args: argparse.Namespace) -> int:
    if args.compile:
        from fusec.bench import compile as bench_compile
        return bench_compile.run(args)
    if args.ops:
        from fusec.bench import ops as bench_ops
        return bench_ops.run(args.samples, args.op, args.markdown)
    if args.zoo is not None:
        from fusec.bench import cnn_zoo, transformer_zoo, zoo
        zoos = {"cnn": cnn_zoo, "transformers": transformer_zoo}
        return zoo.run({key: zoos[key] for key in args.zoo or zoos}, args.markdown)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("fusec bench: --device cuda, but torch sees no CUDA GPU; use --device cpu", file=sys.stderr)
        return 2
    bad_output = first_unwritable({"--json": args.json, "--markdown": args.markdown, "--plot": args.plot})
    if bad_output:
        print(f"fusec bench: error: {bad_output}", file=sys.stderr)
        return 2
    settings = Settings(device=device, dtype=args.dtype or default_dtype(device), quick=args.quick)
    names = list(dict.fromkeys(args.workloads or WORKLOADS))
    if not args.memory and set(names) & set(MEMORY_ONLY):
        print(f"fusec bench: {', '.join(n for n in names if n in MEMORY_ONLY)} is measured by --memory only; "
              "add --memory, or name another workload", file=sys.stderr)
        return 2
    if args.static:
        return bench_static.run(names, DTYPES[args.dtype or "bf16"], args.quick, args.markdown)
    if args.overhead:
        return _overhead(names, device, args)
    if args.memory:
        return _memory(args.workloads or list(TRAINING), device, args)
    if args.export:
        return _export(args.workloads or list(bench_export.DEFAULT), device, args)
    if args.optimizer:
        print(f"fusec bench --optimizer: AdamW steps on {device}, {settings.tier} sizes", file=sys.stderr)
        rows = measure_optimizer(device, settings.tier, budget_s=settings.budget_s)
        return _write_rows(rows, optimizer_markdown(rows, device), device, args)
    if args.dynamic:
        print(f"fusec bench --dynamic: sequence length changing every call, on {device}", file=sys.stderr)
        rows = measure_dynamic(device, args.quick)
        return _write_rows(rows, dynamic_markdown(rows, device), device, args)
    timed = systems(device)
    print(f"fusec bench: {len(names)} workload(s) under {', '.join(timed)} on {device}, {settings.dtype}, "
          f"{settings.tier} sizes", file=sys.stderr)
    env = environment(settings)
    if env["note"]:
        print(env["note"], file=sys.stderr)

    records = []
    suite = run_suite(names, settings, env)
    with progress(len(names) * len(timed)) as advance:
        for name in names:
            for system in timed:
                advance(f"{name} · {system}")
                records.append(next(suite))
            if args.json:
                write_json(args.json, records, env)  # after each workload, so a run cut short keeps what it measured

    print_table(records, env)
    if args.markdown:
        args.markdown.write_text(markdown(records, env))
    if args.plot:
        write_plot(args.plot, records, env)
    return 0


def _overhead(names: list[str], device: str, args: argparse.Namespace) -> int:
    print(f"fusec bench --overhead: host cost per call of {len(names)} workload(s) on {device}", file=sys.stderr)
    rows = [row for name in names if (row := measure_overhead(name, device)) is not None]
    return _write_rows(rows, overhead_markdown(rows, device), device, args)


def _memory(names: list[str], device: str, args: argparse.Namespace) -> int:
    others = [n for n in names if n not in TRAINING]
    if others:
        print(f"fusec bench --memory: {', '.join(others)} cannot train here; --memory measures "
              f"{', '.join(TRAINING)}", file=sys.stderr)
        return 2
    print(f"fusec bench --memory: bytes saved for backward by {len(names)} workload(s) on {device}", file=sys.stderr)
    rows = [row for name in names for row in measure_memory(name, device, args.quick)]
    return _write_rows(rows, memory_markdown(rows, device), device, args)


def _export(names: list[str], device: str, args: argparse.Namespace) -> int:
    # On a CPU both ways CPU graphs run: the generated kernels (interpreted) and torch.
    modes = ("interpret", "torch") if device == "cpu" else ("interpret",)
    print(f"fusec bench --export: fresh-process load vs compile of {len(names)} workload(s) on {device}",
          file=sys.stderr)
    rows = [bench_export.measure(name, device, args.quick, cpu) for cpu in modes for name in names]
    return _write_rows(rows, bench_export.markdown(rows, device), device, args)


def _write_rows(rows: list, text: str, device: str, args: argparse.Namespace) -> int:
    """The table on stdout, and the --markdown and --json files when asked for."""
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2))
    return 0


DESCRIPTION = ("Time each workload under eager PyTorch, torch.compile and fusec in one process, with launch counts, "
               "compile seconds, error against eager, and achieved bandwidth against the device's copy bandwidth. "
               "On CPU, fusec's kernels run in Triton's interpreter (the \"fusec\" rows) and fusec's plan runs "
               "through torch (\"fusec (torch)\", fusec's default on CPU): times there are not a performance claim.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    _add_arguments(sub.add_parser("bench", help="time kernel workloads under eager, torch.compile and fusec",
                                  description=DESCRIPTION))


def main(argv: list[str] | None = None) -> int:
    """`fusec bench` without the rest of the CLI (which needs rich): what bench/gpu_check.py runs."""
    p = Parser(prog="fusec bench", description=DESCRIPTION)
    _add_arguments(p)
    args = p.parse_args(argv)
    return args.run(args)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", dest="workloads", nargs="+", action="extend", choices=[*WORKLOADS, *MEMORY_ONLY],
                   metavar="NAME", help=f"workloads to run (default: all): {', '.join(WORKLOADS)}; with --memory "
                                        f"also {', '.join(MEMORY_ONLY)}")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if torch sees a GPU, else cpu")
    p.add_argument("--quick", action="store_true", help="small sizes and short timing (tiny sizes on CPU)")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--overhead", action="store_true",
                   help="measure host time per call and per kernel instead (launches stubbed on a CPU)")
    p.add_argument("--static", action="store_true",
                   help="compile each workload's kernels for sm_90 without a GPU and report registers, spills, "
                        "shared memory, vector widths and passes over each row (default dtype bf16)")
    p.add_argument("--memory", action="store_true",
                   help="measure training memory instead: the bytes each system saves for backward in one "
                        "forward, and one step's peak (measured on a GPU, modeled on a CPU) "
                        f"(default workloads: {', '.join(TRAINING)})")
    p.add_argument("--ops", action="store_true",
                   help="which of PyTorch's elementwise ops (its OpInfo samples) run in generated kernels, "
                        "each checked against eager in Triton's interpreter; exits 1 if any is wrong")
    p.add_argument("--zoo", nargs="*", choices=("cnn", "transformers"), metavar="ZOO",
                   help="launches per forward of real models (CNNs built in plain torch; Hugging Face "
                        "transformers at tiny widths when installed) under eager, torch.compile and fusec, "
                        "counted on any device (default: both zoos)")
    p.add_argument("--samples", type=int, default=1, metavar="N", help="--ops: samples per op (default 1)")
    p.add_argument("--op", nargs="+", metavar="NAME", help="--ops: only these OpInfo names (e.g. div.floor_rounding)")
    p.add_argument("--export", action="store_true",
                   help="measure a fresh process's fusec.load + first call against fusec.compile + first call "
                        f"instead (default workloads: {', '.join(bench_export.DEFAULT)})")
    p.add_argument("--optimizer", action="store_true",
                   help="measure one AdamW step over a GPT-2-small-shaped parameter list instead: launches and "
                        "time under eager foreach, eager fused, torch.compile and fusec")
    p.add_argument("--dynamic", action="store_true",
                   help="call a transformer block with a new sequence length every call: graphs compiled, "
                        "compile seconds and time per call, fusec with dynamic=None and False against eager")
    p.add_argument("--json", type=Path, metavar="FILE", help="write one record per workload and system")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="write the table as Markdown")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="write a bar chart of speedup over eager")
    p.add_argument("--compile", action="store_true",
                   help="measure compile time instead: capture, fusec's planning per stage and torch.compile, "
                        "per workload and for synthetic graphs of --sizes ops")
    p.add_argument("--sizes", type=int, nargs="*", default=[1000, 2000, 5000, 10000], metavar="OPS",
                   help="with --compile: synthetic graph sizes (default: 1000 2000 5000 10000)")
    p.add_argument("--inductor-cap", type=float, default=120.0, metavar="SECONDS",
                   help="with --compile: stop timing torch.compile after this long (0: skip it)")
    p.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="with --compile: plan each graph N times and keep the fastest (default: 3)")
    p.set_defaults(run=run)


if __name__ == "__main__":
    sys.exit(main())
