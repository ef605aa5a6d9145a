"""The launcher fusec.compile generates on a GPU, written out to be read (`fusec inspect --launcher`,
an exported package's `launcher.py`), without compiling a kernel."""

from __future__ import annotations

from dataclasses import replace

from fusec.kernels.kinds import extents
from fusec.kernels.reduction_split import SPLIT_PARAM
from fusec.launcher import StepCode, dynamic, generate
from fusec.plan import Plan
from fusec.size_reads import symbolic


class _Named:
    """Stands for an object a launcher binds, in a launcher written to be read, not run."""

    def __init__(self, name: str, direct: bool = True) -> None:
        self.name = name
        self.direct = direct

    def tail_for(self, given: int) -> None:
        """A kernel's sizes and constants, not known here (the kernel is not compiled); a kernel the
        launcher never launches straight (a split row's two stages) has none, as its call has none."""
        if not self.direct:
            raise AttributeError(f"{self.name} is launched through its call")
        return None


class _NamedCallables(dict):
    def __missing__(self, target: str) -> _Named:
        self[target] = _Named(target)
        return self[target]


def launcher_source(plan: Plan) -> str:
    """The launcher fusec.compile generates for `plan` on a GPU, as text (what `fusec inspect
    --launcher` writes): every kernel the template, every bound object a name."""
    graph = symbolic(plan.graph)
    exact = {k.id: extents(graph, k) for k in plan.all_kernels()}
    calls = {k.id: _Named(k.id, direct=SPLIT_PARAM not in k.params) for k in plan.all_kernels()}
    code = StepCode(calls=calls, callables=_NamedCallables(),
                    draw_seed=_Named("draw_seed"), bounds_error=_Named("bounds_error"),
                    final_buffers=_Named("final_buffers"), direct=True, direct_device=0,
                    raw_stream=_Named("current_raw_stream"),
                    extents={k.id: exact[k.id] for k in plan.all_kernels() if dynamic(k, exact[k.id])})
    source, _ = generate(replace(plan, graph=graph), code, streams=any(s.stream for s in plan.steps))
    return source
