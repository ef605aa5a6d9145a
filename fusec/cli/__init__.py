"""The `fusec` command line: each subcommand lives in its own module here (demo, inspect, bench)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

COMMANDS = {
    "demo": ("fusec.cli.demo", "compile a bundled example, check it against eager, show the report"),
    "inspect": ("fusec.cli.inspect", "show a model's kernels, streams and fusion decisions"),
    "bench": ("fusec.cli.bench", "time fusec against eager PyTorch and torch.compile"),
}


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line said in one line (the usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def attach_values(argv: list[str], flags: tuple[str, ...] = ("--input",)) -> list[str]:
    """`--input -8x128` -> `--input=-8x128`: argparse would take the value for an unknown flag,
    and the user should hear what is wrong with the value instead."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in flags and arg.startswith("-") and arg not in ("-h", "--help"):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, just that subcommand's module is imported
    (so `fusec bench` runs where the terminal libraries of the others are missing)."""
    p = Parser(prog="fusec", description="A graph-level operator fusion compiler for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = attach_values(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    args = parser(chosen).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
