"""Render a scatter fusion group: values stored at (or added to) computed positions of a buffer.

The grid covers the stored elements, BLOCK a program. Each element's position and value are
computed where it is stored, with the pointwise work that made them; the store writes into
the base's buffer, which the launcher hands over (filled with the base before the launch).
An accumulating scatter adds with `tl.atomic_add`: elements at one position may sit in
different programs, whose adds land in no fixed order (eager's CUDA index_add_ is no
different). A position outside the buffer sets the bounds flag and stores nothing.
"""

from __future__ import annotations

from fusec.ir import Graph, Kind, Node, contiguous_strides
from fusec.kernels.launch import Launch, pointwise_launch
from fusec.kernels.render import Renderer, live_lines, needs_int64
from fusec.kernels.signature import Rendered, kernel_name, param, rendered_module, size_params
from fusec.plan import Kernel
from fusec.sizes import Size, source


def scatter_node(graph: Graph, kernel: Kernel) -> Node:
    return next(graph[m] for m in kernel.members if graph[m].kind is Kind.SCATTER)


def scatter_extents(graph: Graph, kernel: Kernel) -> tuple[Size]:
    """(stored elements,): the positions' count."""
    return (graph[scatter_node(graph, kernel).args[1].name].numel,)


def scatter_launch(graph: Graph, kernel: Kernel, values: tuple, interpret: bool, persistent: bool) -> Launch:
    return pointwise_launch(values[0], interpret)


class ScatterRenderer(Renderer):
    def __init__(self, graph: Graph, kernel: Kernel, interpret: bool = True) -> None:
        super().__init__(graph, kernel, roots={"offs": "mask"}, interpret=interpret)
        self.scatter = scatter_node(graph, kernel)
        self.scalar_shape = "[BLOCK]"

    def store_line(self) -> str:
        """The store (or atomic add) of this block's values at their positions."""
        node = self.scatter
        _, positions, values, accumulate = node.args
        idx = self.unravel("offs", self.graph[positions.name].shape)
        where = self.value(positions.name, idx).expr
        size = source(node.numel)
        where = self.out.let(f"tl.where({where} < 0, {where} + {size}, {where})", "x")
        checked = self.checked(where, node.numel)
        bad = self.out.let(f"({where} < 0) | ({where} >= {size})", "t")  # the flag's own test, bound once
        addr = checked
        if (node.strides or contiguous_strides(node.shape)) != contiguous_strides(node.shape):
            addr = self.address(self.unravel(checked, node.shape), node)
        value = self.value(values.name, idx)
        stored = self.to(f"tl.broadcast_to({value.expr}, [BLOCK])", node.dtype)
        target = f"{param(node.name)} + tl.broadcast_to({addr}, [BLOCK])"
        mask = f"mask & ({bad} == 0)"
        if accumulate:
            return f"tl.atomic_add({target}, {stored}, mask={mask}, sem=\"relaxed\")"
        return f"tl.store({target}, {stored}, mask={mask})"

    def render(self) -> Rendered:
        k = self.kernel
        pid = "tl.program_id(0).to(tl.int64)" if needs_int64(self.graph, k) else "tl.program_id(0)"
        store = self.store_line()
        body = [f"offs = {pid} * BLOCK + tl.arange(0, BLOCK)", "mask = offs < numel"]
        body += [*live_lines(self.out.scope.lines, [store]), store]
        symbols = size_params(self.graph, k)
        params = [*self.params(), *symbols, "numel", "BLOCK: tl.constexpr"]
        return rendered_module(kernel_name(self.graph, k), params, body, [self], self.extras(), symbols)


def render_scatter(graph: Graph, kernel: Kernel, interpret: bool = True) -> Rendered:
    """The group's scatter kernel, for the interpreter or a GPU."""
    return ScatterRenderer(graph, kernel, interpret).render()


def owns_base(graph: Graph, scatter: str) -> bool:
    """Whether a scatter may store straight into its base's buffer: a kernel wrote the base
    (its clone, fused with whatever computed it) and nothing but the scatter reads it."""
    base = graph[graph[scatter].args[0].name]
    return base.group is not None and base.kind is not Kind.VIEW and graph.users(base.name) == [scatter] and \
        (base.shape, base.strides, base.dtype) == (graph[scatter].shape, graph[scatter].strides, graph[scatter].dtype)
