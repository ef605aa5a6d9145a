"""The pass list, run top to bottom, with invariants checked after each pass (and timed apart)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fusec.ir import Graph
from fusec.options import Options
from fusec.passes.cleanup import cleanup
from fusec.passes.constants import private_constants
from fusec.passes.fuse import fuse
from fusec.passes.horizontal import horizontal
from fusec.passes.verify import verify, verify_change
from fusec.passes.view_outputs import view_outputs

Pass = Callable[[Graph], Graph]

log = logging.getLogger("fusec")


def pass_list(options: Options) -> list[tuple[str, Pass]]:
    fuel = options.fuel if options.fuse else 0
    passes = [("cleanup", cleanup)]
    if options.fuse:
        passes.append(("private_constants", private_constants))
    passes.append(("fuse", functools.partial(fuse, fuel=fuel)))
    if options.fuse:
        passes.append(("view_outputs", view_outputs))
    if options.fuse and options.horizontal:
        passes.append(("horizontal", horizontal))
    return passes


def run_passes(graph: Graph, options: Options) -> tuple[Graph, list[tuple[str, float]], list[tuple[str, Graph]]]:
    """The graph after the last pass, each pass's name with its seconds, and the graph
    after capture and after each pass (passes are pure: keeping them costs no copy)."""
    start = time.perf_counter()
    verify(graph, after="capture")
    timings = [("verify", time.perf_counter() - start)]
    history = [("capture", graph)]
    folder = _dump_folder(options.dump_dir, graph.name)
    folder = _dump(graph, folder, 0, "capture")
    for i, (name, fn) in enumerate(pass_list(options), start=1):
        start = time.perf_counter()
        before, graph = graph, fn(graph)
        timings.append((name, time.perf_counter() - start))
        history.append((name, graph))
        start = time.perf_counter()
        check_pass(before, graph, name, options.strict)
        timings.append(("verify", time.perf_counter() - start))
        folder = _dump(graph, folder, i, name)
    return graph, _merged(timings), history


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


# Dump folders taken by graphs of this process: a second graph of the same name (another
# compiled function sharing the dump_dir) gets a folder of its own instead of overwriting.
_CLAIMED: set[Path] = set()
_CLAIMING = threading.Lock()
_WARNED: set[str] = set()


def _dump_folder(dump_dir: Path | None, name: str) -> Path | None:
    if dump_dir is None:
        return None
    with _CLAIMING:
        folder, n = Path(dump_dir) / name, 1
        while folder in _CLAIMED:
            n += 1
            folder = Path(dump_dir) / f"{name}-{n}"
        _CLAIMED.add(folder)
    return folder


def _dump(graph: Graph, folder: Path | None, index: int, name: str) -> Path | None:
    """Write the graph after a pass; a dump that cannot be written is reported once and
    dropped (a debugging aid never changes what runs). The folder to use next time, if any."""
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:02d}_{name}.txt").write_text(graph.format() + "\n")
        (folder / f"{index:02d}_{name}.dot").write_text(graph.to_dot() + "\n")
    except OSError as exc:
        message = f"fusec: cannot write pass dumps to {folder.parent} ({exc}); compiling without them"
        if str(folder.parent) not in _WARNED:
            _WARNED.add(str(folder.parent))
            log.warning(message)
        return None
    return folder
