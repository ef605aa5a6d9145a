"""`fusec inspect`: capture and plan a model without running a kernel, then show every decision."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

import fusec
from fusec.cli.dynamic import DEFAULT_SIZE, mark, parse_dynamic, substitute
from fusec.cli.eager_check import check_runs_eagerly
from fusec.cli.paths import first_unwritable
from fusec.cli.stored import PACKAGE_SUFFIX, stored_report
from fusec.cli.targets import (
    DEFAULT_MAX_INPUT_GIB,
    Target,
    UsageError,
    describe_inputs,
    example_target,
    make_inputs,
    one_line,
    resolve_target,
    signature_hint,
)
from fusec.examples import EXAMPLES
from fusec.launcher_text import launcher_source
from fusec.report.data import collect
from fusec.report.html import to_html
from fusec.report.svg import to_dot, to_svg
from fusec.report.terminal import print_report

EPILOG = """\
TARGET names NAME in a file or module: an nn.Module subclass (built with no
arguments), a function that returns a module or (model, example_args), or a
function of tensors. --input gives one argument each, in order, as SHAPE or
SHAPE:DTYPE (8x128x768:float16); they replace the target's own example
inputs. A dim may be a name given by --dynamic (--input Bx128 --dynamic B=8):
it is compiled as a size symbol, and the report shows shapes such as s0x128.
Inputs are numbered from 1 in error messages. With --training the
model is put in train mode and floating inputs require grad.

fusec inspect runs the TARGET's file (or imports its module) as an import
would, so its top-level code runs. It then calls the model twice on the
inputs: once through torch, to check that eager PyTorch accepts them (a
mistake then reads as eager's own error), and once under fusec's capture,
which plans every graph and launches no generated kernel (with --training,
that call runs backward too). Outputs are checked before that work: a path
that cannot be written is refused first. --input tensors are random
(integers in [0, 8)); shapes may have zero-size dimensions; inputs over
--max-input-gib (default 4) are refused before anything is allocated.

A TARGET ending in .fusec is a package written by fusec.export: its stored
plan is shown as it was exported (the package is verified, nothing in it
runs; --input, --training and --streams do not apply).

--kernels DIR writes one Triton source file per kernel: KERNEL.py, or
GRAPH.KERNEL.py (forward_0.k0.py) when several graphs have kernels.
--json follows the schema in docs/report-schema.md.

Exit status: 0 done; 2 a mistake in the command, the target or its inputs
(one line on stderr says what to change); 1 fusec itself failed (a bug).

examples:
  fusec inspect --example transformer --html report.html
  fusec inspect model.py:Block --input 8x128x768:float16 --training
  fusec inspect model.py:Block --input BxSx768 --dynamic B=4 --dynamic S=128
  fusec inspect mypkg.models:make_block --json report.json --kernels kernels/
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show how fusec would fuse a model: kernels, reasons, critical path",
                       description="Capture and plan a model the way fusec.compile would, launching no "
                                   "kernel, and report every fusion decision. It runs the TARGET's file and "
                                   "calls the model twice (see below).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", metavar="TARGET",
                   help="path/to/file.py:NAME or package.module:NAME, or a package written by fusec.export (.fusec)")
    p.add_argument("--example", metavar="NAME", help="inspect a bundled example instead of a TARGET")
    p.add_argument("--list-examples", action="store_true", help="list the bundled examples and exit")
    p.add_argument("--input", action="append", default=[], metavar="SHAPE[:DTYPE]",
                   help="one model argument, e.g. 8x128x768:float16 (repeat per argument)")
    p.add_argument("--dynamic", action="append", default=[], metavar="NAME[=SIZE]",
                   help="a named --input dimension (--input Bx128) compiled as a symbol; SIZE is its example "
                        f"value (default {DEFAULT_SIZE})")
    p.add_argument("--max-input-gib", type=float, default=DEFAULT_MAX_INPUT_GIB, metavar="GIB",
                   help="refuse --input tensors needing more memory than this (default %(default)g)")
    p.add_argument("--training", action="store_true", help="inspect the forward and backward graphs")
    p.add_argument("--streams", metavar="N", help="CUDA streams to plan for: a positive integer or 'auto'")
    p.add_argument("--json", metavar="FILE", type=Path, help="write the whole report as JSON")
    p.add_argument("--html", metavar="FILE", type=Path, help="write a self-contained HTML report")
    p.add_argument("--dot", metavar="FILE", type=Path, help="write the dataflow graph as Graphviz DOT")
    p.add_argument("--svg", metavar="FILE", type=Path, help="write the dataflow graph as SVG")
    p.add_argument("--kernels", metavar="DIR", type=Path, help="write each kernel's Triton source into DIR")
    p.add_argument("--launcher", metavar="FILE", type=Path,
                   help="write each graph's generated launcher (the Python that runs its kernels) into FILE")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks and compiler warnings")
    p.set_defaults(run=run)


class CompilerError(Exception):
    """fusec itself failed on a model it could trace: a bug in fusec, reported as one line, exit status 1."""


def run(args: argparse.Namespace) -> int:
    try:
        return _inspect(args)
    except (UsageError, CompilerError) as exc:
        if args.debug:
            raise
        print(f"fusec inspect: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


def _inspect(args: argparse.Namespace) -> int:
    console = Console()
    if args.list_examples:
        for name, (description, _) in EXAMPLES.items():
            console.print(f"{name:12} {description}", highlight=False)
        return 0
    if bool(args.target) == bool(args.example):
        raise UsageError("give either a TARGET (path/to/file.py:NAME or package.module:NAME) or --example NAME "
                         "(fusec inspect --list-examples shows them)")
    options = _options(args.streams)
    bad_output = first_unwritable({"--json": args.json, "--html": args.html, "--dot": args.dot, "--svg": args.svg,
                                   "--launcher": args.launcher,
                                   "--kernels": None if args.kernels is None else args.kernels / "k0.py"})
    if bad_output:
        raise UsageError(bad_output)
    if args.target and args.target.endswith(PACKAGE_SUFFIX):
        report, label, described = stored_report(args.target, args)
    else:
        report, label, described = _traced(args, options)
    data = collect(report, label, args.training, described, options)
    # Files first: they are what a script asked for, and must not depend on stdout staying open.
    written = _write_outputs(args, data)
    if args.launcher is not None:
        _write(args.launcher, "\n\n".join(f"# graph {g.name}\n{launcher_source(g.plan)}"
                                           for g in report.graphs if g.plan is not None))
        written.append(f"wrote {args.launcher}")
    print_report(data, console)
    for line in written:
        console.print(line, highlight=False)
    return 0


def _traced(args: argparse.Namespace, options: dict[str, Any]) -> tuple[fusec.Report, str, list[dict[str, Any]]]:
    """Trace and plan the target on its inputs: the report, the target's label and its inputs."""
    target = example_target(args.example) if args.example else resolve_target(args.target)
    sizes = parse_dynamic(args.dynamic)
    if sizes and not args.input:
        raise UsageError("--dynamic names a dimension of the --input shapes: give them, e.g. --input Bx128 --dynamic B")
    specs, marked = substitute(args.input, sizes)
    inputs = _inputs(target, specs, args.training, args.max_input_gib)
    if sizes:
        mark(inputs, marked)
    if isinstance(target.model, nn.Module):
        target.model.train(args.training)
    check_runs_eagerly(target.model, inputs)
    with contextlib.nullcontext() if args.debug else _quiet():
        try:
            report = fusec.inspect(target.model, *inputs, training=args.training, options=options)
        except Exception as exc:
            found = _compiler_failure(exc)
            if found:
                where, cause = found
                raise CompilerError(f"fusec failed while planning {target.label}: {one_line(cause)} (at {where}); "
                                    "this is a bug in fusec: please report it with the output of --debug") from exc
            raise UsageError(f"fusec could not trace {target.label}: {one_line(exc)}; "
                             "run with --debug for the traceback") from exc
    return report, target.label, describe_inputs(inputs)


def _options(streams: str | None) -> dict[str, Any]:
    """fusec.inspect options, checked here so a bad value is a usage error, not a crash mid-run."""
    if streams is None:
        return {}
    value: int | str = int(streams) if streams.lstrip("-").isdigit() else streams
    try:
        fusec.Options.from_user(streams=value)
    except ValueError as exc:
        raise UsageError(f"bad --streams: {str(exc).removeprefix('fusec: ')}") from exc
    return {"streams": value}


def _inputs(target: Target, specs: list[str], training: bool, max_gib: float) -> tuple[Any, ...]:
    if specs:
        return make_inputs(specs, training, max_gib)
    if target.args is None:
        raise UsageError(f"{target.label} brings no example inputs; pass --input SHAPE[:DTYPE] once per argument "
                         f"of {signature_hint(target.model)}, e.g. --input 8x128:float32")
    if not training:
        return target.args
    # As with --input: floating inputs require grad, so the backward graph has work even without parameters.
    return tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in target.args)


# Frames in these files are the user's side of the call: the CLI (this package), the public API and
# the bundled models.
_NOT_COMPILER = {"api.py", "examples.py"}
_CLI = Path(__file__).resolve().parent


def _compiler_failure(exc: BaseException) -> tuple[str, BaseException] | None:
    """Where fusec's compiler raised (`kernels/dtypes.py:33`) and what, or None when tracing failed.

    Torch wraps the compiler's exception (BackendCompilerFailed, carrying the
    original traceback), so the chain of causes is searched from the original
    exception out, each innermost frame first.
    """
    roots = [Path(importlib.import_module(m).__file__).resolve().parent
             for m in ("fusec", "fusec.passes", "fusec.kernels")]
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for cause in reversed(chain):
        for frame in reversed(traceback.extract_tb(cause.__traceback__)):
            path = Path(frame.filename).resolve()
            if path.is_relative_to(_CLI) or path.name in _NOT_COMPILER:
                continue
            if any(path.is_relative_to(root) for root in roots):
                return f"{path.parent.name}/{path.name}:{frame.lineno}", cause
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what the report already shows (a graph falling back to torch is logged as a warning
    by the compiler) and AOTAutograd's warning that inspect's graphs are not boxed callables, which
    is true and harmless: they run once, through torch."""
    logger = logging.getLogger("fusec")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Your compiler for AOTAutograd is returning a function")
            yield
    finally:
        logger.setLevel(level)


def _write_outputs(args: argparse.Namespace, data: dict[str, Any]) -> list[str]:
    """Write the files asked for; one line per output saying where it went."""
    writers = [(args.json, lambda: json.dumps(data, indent=2) + "\n"), (args.html, lambda: to_html(data)),
               (args.dot, lambda: to_dot(data)), (args.svg, lambda: to_svg(data))]
    written = []
    for path, render in writers:
        if path is not None:
            _write(path, render())
            written.append(f"wrote {path}")
    if args.kernels is not None:
        files = _kernel_files(data)
        for name, text in files.items():
            _write(args.kernels / name, text)
        written.append(f"wrote {len(files)} kernel sources to {args.kernels}")
    return written


def _kernel_files(data: dict[str, Any]) -> dict[str, str]:
    """File name -> text for each kernel: KERNEL.py, or GRAPH.KERNEL.py when several graphs have kernels."""
    several = len({k["graph"] for k in data["kernels"]}) > 1
    files = {}
    for k in data["kernels"]:
        name = f"{k['graph']}.{k['id']}.py" if several else f"{k['id']}.py"
        header = (f"# fusec kernel {k['id']} of graph {k['graph']}, from {data['target']}\n"
                  f"# ops: {' '.join(k['ops'])}\n"
                  f"# reads: {', '.join(k['inputs'])}; writes: {', '.join(k['outputs'])}\n"
                  f"# modeled: {k['bytes']} bytes, {k['flops']} FLOPs, stream {k['stream']}\n")
        files[name] = header + k["source"]
    return files


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}; choose a path you can write to") from exc
