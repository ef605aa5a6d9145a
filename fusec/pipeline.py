"""The pass list, run top to bottom, with invariants checked after each pass (and timed apart)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

from fusec.ir import Graph
from fusec.options import Options
from fusec.passes.classify import classify
from fusec.passes.cleanup import cleanup
from fusec.passes.fuse import fuse
from fusec.passes.horizontal import horizontal
from fusec.passes.verify import verify, verify_change

Pass = Callable[[Graph], Graph]


def pass_list(options: Options) -> list[tuple[str, Pass]]:
    fuel = options.fuel if options.fuse else 0
    passes = [("classify", classify), ("cleanup", cleanup), ("fuse", functools.partial(fuse, fuel=fuel))]
    if options.fuse and options.horizontal:
        passes.append(("horizontal", horizontal))
    return passes


def run_passes(graph: Graph, options: Options) -> tuple[Graph, list[tuple[str, float]]]:
    """The graph after every pass, and each pass's name with its seconds."""
    start = time.perf_counter()
    verify(graph, after="capture")
    timings = [("verify", time.perf_counter() - start)]
    _dump(graph, options.dump_dir, 0, "capture")
    for i, (name, fn) in enumerate(pass_list(options), start=1):
        start = time.perf_counter()
        before, graph = graph, fn(graph)
        timings.append((name, time.perf_counter() - start))
        start = time.perf_counter()
        check_pass(before, graph, name, options.strict)
        timings.append(("verify", time.perf_counter() - start))
        _dump(graph, options.dump_dir, i, name)
    return graph, _merged(timings)


def check_pass(before: Graph, after: Graph, name: str, strict: bool) -> None:
    """Strict compiles (tests, debugging) verify the whole graph after every pass; others
    verify what the pass changed."""
    if strict:
        verify(after, after=name)
    else:
        verify_change(before, after, after=name)


def _merged(timings: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Seconds per name, summed, in order of first appearance."""
    total: dict[str, float] = {}
    for name, seconds in timings:
        total[name] = total.get(name, 0.0) + seconds
    return list(total.items())


def _dump(graph: Graph, dump_dir: Path | None, index: int, name: str) -> None:
    if dump_dir is None:
        return
    folder = Path(dump_dir) / graph.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{index:02d}_{name}.txt").write_text(graph.format() + "\n")
    (folder / f"{index:02d}_{name}.dot").write_text(graph.to_dot() + "\n")
