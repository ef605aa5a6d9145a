"""The call of a reduction whose rows are split across programs: two launches of one kernel,
stage 1 writing each chunk's partials into a buffer of this call, stage 2 reading them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from fusec.kernels.call import KernelCall
from fusec.kernels.kinds import SplitLaunch


class SplitCall:
    """Launches a split kernel as KernelCall launches one: `call(*tensors_and_extras)`."""

    def __init__(self, fn: Any, split: SplitLaunch, sizes: Sequence[int], interpret: bool, *, loaded: int,
                 name: str = "") -> None:
        self.stages = (KernelCall(fn, split.first, sizes, interpret, loaded=loaded, name=name),
                       KernelCall(fn, split.second, sizes, interpret, loaded=loaded, name=name))
        self.partials = split.partials
        # What the launcher sizes a total over all rows by: stage 2 computes it, a program per row group.
        self.launch = split.second
        self.count = 0

    def __call__(self, *args: Any) -> None:
        self._run(KernelCall.__call__, args)

    def aligned(self, *args: Any) -> None:
        """Both launches by KernelCall.aligned (the partials come from the allocator: aligned)."""
        self._run(KernelCall.aligned, args)

    def _run(self, launch: Callable[..., None], args: tuple) -> None:
        self.count += 1
        # The allocator's block is stream-ordered: the next call may take it once stage 2 has read it.
        partials = torch.empty(self.partials, dtype=torch.float32, device=args[0].device)
        for stage in self.stages:
            launch(stage, *args, partials)
