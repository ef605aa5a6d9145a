"""Memory plan: which buffers a kernel writes can take over the buffer of one already dead.

A buffer is taken over whole, by a buffer of the same layout (shape, strides,
dtype): the launcher then writes `new = old` instead of allocating. Only
buffers that generated kernels write and read are pooled: a torch call may
return a view of its operand, and a view would keep seeing the buffer after it
was handed on. A graph output may take over a dead buffer, but is never taken
over (the caller keeps it).

On several streams a dead buffer is taken over only by a step that every step
writing or reading it happens before: earlier on the same stream, or through
the events steps wait for (each step's vector clock: the last step of every
stream it is ordered after). Dead buffers are then held to the end of the call
(a launcher on several streams frees none: the allocator would hand a block
back to its own stream while another still reads it), so taking them over is
what keeps the peak down.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

# On several streams, the dead buffers of a layout a step looks through for one its events order,
# the latest first: a bound on the planner's time where many are held and few ordered.
SCAN = 32


@dataclass(frozen=True)
class StepBuffers:
    """What one step of a plan does with buffers."""

    writes: tuple[tuple[str, Hashable], ...]  # (buffer, layout) of each buffer it allocates
    reads: tuple[str, ...]
    pooled: bool  # a generated kernel (its buffers may be taken over; it may take one over)
    stream: int = 0
    waits: tuple[int, ...] = ()  # the earlier steps whose events it waits for (recorded after each)


def plan_reuse(steps: Sequence[StepBuffers], keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """{new buffer: the dead buffer it takes over}. Invariant: at every step, no two live
    buffers share storage (a buffer is live from the step that writes it to its last reader),
    every step writing or reading a buffer happens before the step that takes it over, and on
    one stream no step that allocates runs while a dead buffer is held for a later taker."""
    last_read = _last_reads(steps)
    one_stream = _one_stream(steps)
    clocks = _clocks(steps)
    users: dict[str, list[int]] = {}  # buffer -> the steps writing or reading it
    for i, step in enumerate(steps):
        for name in (*(n for n, _ in step.writes), *step.reads):
            users.setdefault(name, []).append(i)
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
            # an output the caller keeps may take over a dead buffer too
            held = free.get(layout, []) if step.pooled else []
            at = next((k for k in reversed(range(max(0, len(held) - SCAN), len(held)))
                       if all(_before(steps, u, clocks[i]) for u in users[held[k]])), None)
            if at is not None:
                reuse[name] = held.pop(at)
            else:
                fresh.append(name)
        if fresh and one_stream:
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


def _one_stream(steps: Sequence[StepBuffers]) -> bool:
    return all(step.stream == 0 for step in steps)


def _clocks(steps: Sequence[StepBuffers]) -> list[dict[int, int]]:
    """Each step's vector clock: stream -> the last step on it that the step is ordered after
    (or is): the step before it on its stream, and every step whose event it waits for, with
    all they were ordered after."""
    clocks: list[dict[int, int]] = []
    last_on: dict[int, dict[int, int]] = {}
    for i, step in enumerate(steps):
        clock = dict(last_on.get(step.stream, {}))
        for w in step.waits:
            for stream, at in clocks[w].items():
                clock[stream] = max(clock.get(stream, -1), at)
        clock[step.stream] = i
        clocks.append(clock)
        last_on[step.stream] = clock
    return clocks


def _before(steps: Sequence[StepBuffers], a: int, clock: dict[int, int]) -> bool:
    """Whether step `a` happens before (or is) the step whose vector clock is `clock`."""
    return clock.get(steps[a].stream, -1) >= a


def live_bytes_peak(steps: Sequence[StepBuffers], sizes: dict[str, int], reuse: dict[str, str],
                    keep: frozenset[str] = frozenset()) -> int:
    """The most bytes held at once by the storages the steps allocate, with `reuse` applied
    (a storage is held from its first holder's write to its last holder's death; on several
    streams, to the end of the call)."""
    last_read = _last_reads(steps)
    if not _one_stream(steps):
        keep = keep | {name for step in steps for name, _ in step.writes}
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
