"""The `fusec` command line: each subcommand lives in its own cmd_*.py module."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("fusec.cmd_demo", "compile a bundled example, check it against eager, show the report"),
    "inspect": ("fusec.cmd_inspect", "show a model's kernels, streams and fusion decisions"),
    "bench": ("fusec.cmd_bench", "time fusec against eager PyTorch and torch.compile"),
}


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, just that subcommand's module is imported
    (so `fusec bench` runs where the terminal libraries of the others are missing)."""
    p = argparse.ArgumentParser(prog="fusec", description="A graph-level operator fusion compiler for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    args = parser(chosen).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
