"""Render a pointwise fusion group as one Triton kernel over a 1-D block of elements,
or over a 2-D tile where an input is read along another dim than the output is written."""

from __future__ import annotations

from fusec import sizes
from fusec.ir import Graph, Node
from fusec.kernels.render import Index, Renderer, live_lines, needs_int64
from fusec.kernels.signature import (
    Rendered,
    extra_params,
    kernel_name,
    rendered_module,
    scalar_params,
    size_params,
    tensor_params,
)
from fusec.kernels.tiles import Tiles, iteration_order, tiling
from fusec.plan import Kernel, LaunchExtra

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

    def render(self) -> Rendered:
        k = self.kernel
        pid = "tl.program_id(0).to(tl.int64)" if needs_int64(self.graph, k) else "tl.program_id(0)"
        body = self.body(pid, "numel") if self.tiles is None else self.tile_body(self.tiles, pid)
        symbols = size_params(self.graph, k)
        extents = ["numel", "BLOCK: tl.constexpr"] if self.tiles is None else [
            "ynumel", "xnumel", "YBLOCK: tl.constexpr", "XBLOCK: tl.constexpr"]
        params = [*self.params(), *symbols, *extents]
        return rendered_module(kernel_name(self.graph, k), params, body, [self], self.extras(), symbols)


def render_pointwise(graph: Graph, kernel: Kernel, interpret: bool = True) -> Rendered:
    """The group's kernel, for the interpreter or a GPU."""
    return PointwiseRenderer(graph, kernel, interpret=interpret).render()


def combo_extents(graph: Graph, kernel: Kernel) -> tuple:
    """Each part's element count: its first output's (the elements its programs iterate over)."""
    return tuple(graph[p.outputs[0]].numel for p in kernel.parts)


def render_combo(graph: Graph, kernel: Kernel, interpret: bool = True) -> Rendered:
    """One launch for independent pointwise kernels: program ids are dealt out part by
    part (ceil(numel_i / BLOCK) each) and each program runs one block of its part."""
    renderers = [PointwiseRenderer(graph, part, part=f"h{i}_", interpret=interpret)
                 for i, part in enumerate(kernel.parts)]
    wide = any(needs_int64(graph, part) for part in kernel.parts)
    body = ["pid = tl.program_id(0).to(tl.int64)" if wide else "pid = tl.program_id(0)"]
    # A part's element count that is a number is written into the kernel (a constant, as Inductor
    # writes a static kernel's xnumel): one argument fewer per part for the launch to pass.
    counts = combo_extents(graph, kernel)
    body += [f"numel{i} = {count}" for i, count in enumerate(counts) if sizes.is_static(count)]
    for i in range(len(renderers)):
        body.append(f"end{i} = " + (f"end{i - 1} + " if i else "") + f"(numel{i} + BLOCK - 1) // BLOCK")
    for i, renderer in enumerate(renderers):
        body.append(("if" if i == 0 else "elif") + f" pid < end{i}:")
        start = f"(pid - end{i - 1})" if i else "pid"
        body.extend("    " + line for line in renderer.body(start, f"numel{i}"))
    # The runtime passes the combo's inputs, then its outputs (but those stored through an input's
    # pointer: `Kernel.into`), then the extras.
    extras = tuple(e for e in LaunchExtra if any(e in r.extras() for r in renderers))
    symbols = size_params(graph, kernel)
    params = tensor_params(graph, kernel.buffers) + extra_params(extras, ())
    params += scalar_params(graph, kernel.inputs)
    params += symbols + [f"numel{i}" for i, count in enumerate(counts) if not sizes.is_static(count)]
    params += ["BLOCK: tl.constexpr"]
    fn_name = f"{kernel.id.split('+')[0]}_combo{len(renderers)}"
    return rendered_module(fn_name, params, body, renderers, extras, symbols)
