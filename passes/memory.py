"""Memory plan: which buffers a kernel writes can take over the buffer of one already dead.

A buffer is taken over whole, by a buffer of the same layout (shape, strides,
dtype): the launcher then writes `new = old` instead of allocating. Only
buffers that generated kernels write and read are pooled: a torch call may
return a view of its operand, and a view would keep seeing the buffer after it
was handed on. A graph output may take over a dead buffer, but is never taken
over (the caller keeps it).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepBuffers:
    """What one step of a plan does with buffers."""

    writes: tuple[tuple[str, Hashable], ...]  # (buffer, layout) of each buffer it allocates
    reads: tuple[str, ...]
    pooled: bool  # a generated kernel (its buffers may be taken over; it may take one over)


def plan_reuse(steps: Sequence[StepBuffers], keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """{new buffer: the dead buffer it takes over}. Invariant: at every step, no two live
    buffers share storage (a buffer is live from the step that writes it to its last reader),
    and no step that allocates runs while a dead buffer is held for a later taker."""
    last_read = _last_reads(steps)
    unpoolable = set(keep)
    for step in steps:
        if not step.pooled:
            unpoolable.update(step.reads)
            unpoolable.update(name for name, _ in step.writes)
    free: dict[Hashable, list[str]] = {}  # layout -> dead buffers still held, to be taken over
    reuse: dict[str, str] = {}
    dying: dict[int, list[tuple[str, Hashable]]] = {}
    for i, step in enumerate(steps):
        fresh = []
        for name, layout in step.writes:
            if step.pooled and free.get(layout):  # an output the caller keeps may take over a dead buffer too
                reuse[name] = free[layout].pop()
            else:
                fresh.append(name)
        if fresh:
            # New memory is asked for: dead buffers are let go instead of held, so the allocator
            # can hand their memory out again (holding them could only raise the peak).
            free.clear()
        for name, layout in step.writes:
            if step.pooled and name not in unpoolable:
                # a buffer no step reads is dead once written
                dying.setdefault(last_read.get(name, i), []).append((name, layout))
        for name, layout in dying.pop(i, []):
            free.setdefault(layout, []).append(name)
    return reuse


def live_bytes_peak(steps: Sequence[StepBuffers], sizes: dict[str, int], reuse: dict[str, str],
                    keep: frozenset[str] = frozenset()) -> int:
    """The most bytes held at once by the storages the steps allocate, with `reuse` applied
    (a storage is held from its first holder's write to its last holder's death)."""
    last_read = _last_reads(steps)
    span: dict[str, list[int]] = {}  # storage -> [first step, last step]
    nbytes: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name, _ in step.writes:
            root = _root(name, reuse)
            end = len(steps) if name in keep else max(last_read.get(name, i), i)
            first, last = span.get(root, [i, end])
            span[root] = [min(first, i), max(last, end)]
            nbytes[root] = max(nbytes.get(root, 0), sizes.get(name, 0))
    delta = [0] * (len(steps) + 2)
    for root, (first, last) in span.items():
        delta[first] += nbytes[root]
        delta[last + 1] -= nbytes[root]
    peak = held = 0
    for change in delta:
        held += change
        peak = max(peak, held)
    return peak


def _last_reads(steps: Sequence[StepBuffers]) -> dict[str, int]:
    """Buffer -> the last step that reads it."""
    return {name: i for i, step in enumerate(steps) for name in step.reads}


def _root(name: str, reuse: dict[str, str]) -> str:
    while name in reuse:
        name = reuse[name]
    return name
