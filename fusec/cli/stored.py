"""`fusec inspect model.fusec`: the report of a package's stored plan, read without running anything in it."""

from __future__ import annotations

import argparse
from typing import Any

from fusec.cli.targets import UsageError
from fusec.package import PackageError, load_plan, read
from fusec.report import Report

PACKAGE_SUFFIX = ".fusec"


def stored_report(path: str, args: argparse.Namespace) -> tuple[Report, str, list[dict[str, Any]]]:
    """The report of the plan in the package at `path` (every member verified first), its label
    and its inputs."""
    given = [flag for flag, value in (("--input", args.input), ("--training", args.training),
                                      ("--streams", args.streams), ("--example", args.example)) if value]
    if given:
        raise UsageError(f"{', '.join(given)}: not for a package (its plan was made at export; "
                         "export again to change it)")
    try:
        package = read(path)
        record = load_plan(package.members["plan.pkl"])
    except PackageError as exc:
        raise UsageError(str(exc)) from None
    inputs = [{"shape": s["shape"], "dtype": s["dtype"]} for s in package.manifest["placeholders"]
              if s["kind"] == "input"]
    made = package.manifest
    binaries = made.get("binaries") or {}
    compiled = (f", {len(binaries['kernels'])} kernel(s) compiled for {binaries['target']}" if binaries.get("kernels")
                else ", kernel sources only" if made["device"] == "cuda" else "")
    label = f"{path} (exported with fusec {made['fusec']}, torch {made['torch']}, on {made['device']}{compiled})"
    return Report([record]), label, inputs
