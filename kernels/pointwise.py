"""Render a pointwise fusion group as one Triton kernel over a 1-D block of elements."""

from __future__ import annotations

from fusec.ir import Graph, Node, contiguous_strides
from fusec.kernels.render import PRELUDE, Index, Renderer, kernel_name, live_lines, module_source, needs_int64
from fusec.plan import Kernel


class PointwiseRenderer(Renderer):
    def __init__(self, graph: Graph, kernel: Kernel) -> None:
        super().__init__(graph, kernel, roots={"offs": "mask"})

    def iteration_index(self, node: Node) -> Index:
        """Unravel `offs` over the output's dims, innermost = smallest stride (coalesced stores)."""
        strides = node.strides or contiguous_strides(node.shape)
        order = sorted(range(len(node.shape)), key=lambda d: (-strides[d], d))
        return self.unravel("offs", node.shape, order)

    def render(self) -> tuple[str, str]:
        k = self.kernel
        idx = self.iteration_index(self.graph[k.outputs[0]])
        stores = [self.store(self.graph[name], idx, self.value(name, idx), "mask", "[BLOCK]") for name in k.outputs]
        pid = "tl.program_id(0).to(tl.int64)" if needs_int64(self.graph, k) else "tl.program_id(0)"
        body = [f"offs = {pid} * BLOCK + tl.arange(0, BLOCK)", "mask = offs < numel"]
        body += live_lines(self.out.scope.lines, stores) + stores
        fn_name = kernel_name(self.graph, k)
        params = [*self.params(), "numel", "BLOCK: tl.constexpr"]
        helpers = [PRELUDE[h] for h in sorted(self.prelude)]
        return module_source(fn_name, params, body, k.members, helpers), fn_name


def render_pointwise(graph: Graph, kernel: Kernel) -> tuple[str, str]:
    """Triton source of the group's kernel and the name of its entry function."""
    return PointwiseRenderer(graph, kernel).render()
