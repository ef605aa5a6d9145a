"""The pass list, run top to bottom, with invariants checked after each pass."""

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
from fusec.passes.verify import verify

Pass = Callable[[Graph], Graph]


def pass_list(options: Options) -> list[tuple[str, Pass]]:
    fuel = options.fuel if options.fuse else 0
    passes = [("classify", classify), ("cleanup", cleanup), ("fuse", functools.partial(fuse, fuel=fuel))]
    if options.fuse and options.horizontal:
        passes.append(("horizontal", horizontal))
    return passes


def run_passes(graph: Graph, options: Options) -> tuple[Graph, list[tuple[str, float]]]:
    """The graph after every pass, and each pass's name with its seconds."""
    verify(graph, after="capture")
    _dump(graph, options.dump_dir, 0, "capture")
    timings = []
    for i, (name, fn) in enumerate(pass_list(options), start=1):
        start = time.perf_counter()
        graph = fn(graph)
        timings.append((name, time.perf_counter() - start))
        verify(graph, after=name)
        _dump(graph, options.dump_dir, i, name)
    return graph, timings


def _dump(graph: Graph, dump_dir: Path | None, index: int, name: str) -> None:
    if dump_dir is None:
        return
    folder = Path(dump_dir) / graph.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{index:02d}_{name}.txt").write_text(graph.format() + "\n")
    (folder / f"{index:02d}_{name}.dot").write_text(graph.to_dot() + "\n")
