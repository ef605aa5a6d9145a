"""The `fusec` command line: each subcommand lives in its own cmd_*.py module."""

from __future__ import annotations

import argparse
import sys

from fusec import cmd_bench, cmd_demo, cmd_inspect


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusec", description="A graph-level operator fusion compiler for PyTorch.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmd_demo.add_parser(sub)
    cmd_inspect.add_parser(sub)
    cmd_bench.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
