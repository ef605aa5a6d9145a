"""Render a pointwise fusion group as one Triton kernel over a 1-D block of elements,
or over a 2-D tile where an input is read along another dim than the output is written."""

from __future__ import annotations

from fusec.ir import Graph, Node
from fusec.kernels.render import (
    Index,
    Renderer,
    kernel_name,
    live_lines,
    module_source,
    needs_int64,
    param,
    size_params,
)
from fusec.kernels.tiles import Tiles, iteration_order, tiling
from fusec.plan import Kernel

TILE = "[YBLOCK, XBLOCK]"


class PointwiseRenderer(Renderer):
    """One block of elements per program; `part` names a body inside a combo kernel."""

    def __init__(self, graph: Graph, kernel: Kernel, part: str = "", interpret: bool = True) -> None:
        self.offs, self.mask = f"{part}offs", f"{part}mask"
        self.tiles = None if part else tiling(graph, kernel)
        roots = {self.offs: self.mask} if self.tiles is None else {"yoffs": "ymask", "xoffs": "xmask"}
        super().__init__(graph, kernel, roots=roots, prefix=part, interpret=interpret)
        self.scalar_shape = "[BLOCK]" if self.tiles is None else "[1, 1]"

    def iteration_index(self, node: Node) -> Index:
        """Unravel `offs` over the output's dims, innermost = smallest stride (coalesced stores)."""
        return self.unravel(self.offs, node.shape, iteration_order(node, self.graph.hints))

    def body(self, block: str, numel: str) -> list[str]:
        """The kernel body for the `block`-th block of this kernel's `numel` elements."""
        k = self.kernel
        idx = self.iteration_index(self.graph[k.outputs[0]])
        stores = [self.store(self.graph[name], idx, self.value(name, idx), self.mask, "[BLOCK]")
                  for name in k.outputs]
        body = [f"{self.offs} = {block} * BLOCK + tl.arange(0, BLOCK)", f"{self.mask} = {self.offs} < {numel}"]
        return body + live_lines(self.out.scope.lines, stores) + stores

    def tile_body(self, tiles: Tiles, pid: str) -> list[str]:
        """The kernel body for the `pid`-th tile, tiles numbered row by row."""
        shape = self.graph[self.kernel.outputs[0]].shape
        rows = self.unravel("yoffs", tuple(shape[d] for d in tiles.y_dims))
        cols = self.unravel("xoffs", tuple(shape[d] for d in tiles.x_dims))
        dims = ["0"] * len(shape)
        for d, expr in [*zip(tiles.y_dims, rows.dims), *zip(tiles.x_dims, cols.dims)]:
            dims[d] = expr
        idx = Index(tuple(dims))
        stores = [self.store(self.graph[name], idx, self.value(name, idx), "xmask & ymask", TILE)
                  for name in self.kernel.outputs]
        body = [f"pid = {pid}", "xtiles = (xnumel + XBLOCK - 1) // XBLOCK",
                "yoffs = (pid // xtiles) * YBLOCK + tl.arange(0, YBLOCK)[:, None]",
                "xoffs = (pid % xtiles) * XBLOCK + tl.arange(0, XBLOCK)[None, :]",
                "ymask = yoffs < ynumel", "xmask = xoffs < xnumel"]
        return body + live_lines(self.out.scope.lines, stores) + stores

    def render(self) -> tuple[str, str]:
        k = self.kernel
        pid = "tl.program_id(0).to(tl.int64)" if needs_int64(self.graph, k) else "tl.program_id(0)"
        body = self.body(pid, "numel") if self.tiles is None else self.tile_body(self.tiles, pid)
        fn_name = kernel_name(self.graph, k)
        extents = ["numel", "BLOCK: tl.constexpr"] if self.tiles is None else [
            "ynumel", "xnumel", "YBLOCK: tl.constexpr", "XBLOCK: tl.constexpr"]
        params = [*self.params(), *size_params(self.graph, k), *extents]
        return module_source(fn_name, params, body, k.members, [self]), fn_name


def render_pointwise(graph: Graph, kernel: Kernel, interpret: bool = True) -> tuple[str, str]:
    """Triton source of the group's kernel (for the interpreter or a GPU) and its entry's name."""
    return PointwiseRenderer(graph, kernel, interpret=interpret).render()


def render_combo(graph: Graph, kernel: Kernel, interpret: bool = True) -> tuple[str, str]:
    """One launch for independent pointwise kernels: program ids are dealt out part by
    part (ceil(numel_i / BLOCK) each) and each program runs one block of its part."""
    renderers = [PointwiseRenderer(graph, part, part=f"h{i}_", interpret=interpret)
                 for i, part in enumerate(kernel.parts)]
    wide = any(needs_int64(graph, part) for part in kernel.parts)
    body = ["pid = tl.program_id(0).to(tl.int64)" if wide else "pid = tl.program_id(0)"]
    for i in range(len(renderers)):
        body.append(f"end{i} = " + (f"end{i - 1} + " if i else "") + f"(numel{i} + BLOCK - 1) // BLOCK")
    for i, renderer in enumerate(renderers):
        body.append(("if" if i == 0 else "elif") + f" pid < end{i}:")
        start = f"(pid - end{i - 1})" if i else "pid"
        body.extend("    " + line for line in renderer.body(start, f"numel{i}"))
    # The runtime passes the combo's inputs, then its outputs, then the extras.
    params = [param(n) for n in kernel.inputs + kernel.outputs]
    params += [p for p in ("p_bad_index", "seed") if any(p in r.params() for r in renderers)]
    params += size_params(graph, kernel)
    params += [f"numel{i}" for i in range(len(renderers))] + ["BLOCK: tl.constexpr"]
    fn_name = f"{kernel.id.split('+')[0]}_combo{len(renderers)}"
    return module_source(fn_name, params, body, kernel.members, renderers), fn_name
