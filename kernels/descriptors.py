"""TMA descriptors for a matmul's operand tiles: which operands can take one, and how one is read.

On Hopper a tensor descriptor (`tl.make_tensor_descriptor`) lets the TMA unit copy a whole
tile into shared memory, zero-filling what lies past the tensor's ends, where pointers take a
thread's share of address math and masks per element. A descriptor needs: the tensor's base
16-byte aligned, one dim contiguous (stride 1), every other stride a multiple of 16 bytes, two
to five dims, and each box dim at most 256 elements.

An operand here can take one when it is a kernel input read through views that only reorder or
broadcast its dims (permute, expand, a reshape of a row-major tensor or one that adds or drops
size-1 dims), so that it is a strided view of the input's memory from its first element; its
strides are static and fit the rules above, and every dim the tile walks (M or N, and K) is one
of the view's dims (a batch dim is a box of 1). The base's alignment is known per call only:
the kernel takes a constexpr TMA, which the launch sets where the operands allow and the call
turns off for a call whose pointers are not all 16-byte aligned (`kernels/call.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fusec.ir import ITEMSIZE, Graph, Kind, contiguous_strides
from fusec.kernels.render import needs_int64
from fusec.plan import Kernel
from fusec.sizes import Size, source

# the box of a tile index along one descriptor dim, and the coordinate the tile starts at
BOXES = {"pid_b": "1", "am": "BLOCK_M", "bn": "BLOCK_N", "ka": "BLOCK_K", "kb": "BLOCK_K"}
STARTS = {"pid_b": "pid_b", "am": "pid_m * BLOCK_M", "bn": "pid_n * BLOCK_N", "ka": "k0", "kb": "k0"}
# A TMA box dim holds at most this many elements.
MAX_BOX = 256
_DTYPES = ("float16", "bfloat16", "float32")
_REORDERING = ("permute", "expand", "broadcast_in_dim", "reshape", "alias")


@dataclass(frozen=True)
class Descriptor:
    """An operand read through a descriptor of its input: the descriptor's dims outermost
    first (strides decreasing), each with its extent, stride and the tile index reading it."""

    input: str
    shape: tuple[Size, ...]
    strides: tuple[int, ...]
    indices: tuple[str, ...]  # BOXES' keys

    def make(self, name: str, pointer: str) -> str:
        """Source making the descriptor `name` over the input's pointer."""
        shape = ", ".join(source(s) for s in self.shape)
        strides = ", ".join(map(str, self.strides))
        boxes = ", ".join(BOXES[i] for i in self.indices)
        return f"{name} = tl.make_tensor_descriptor({pointer}, [{shape}], [{strides}], [{boxes}])"

    def load(self, name: str, tile: tuple[str, str]) -> str:
        """Source of the tile (indices `tile`, e.g. ("kb", "bn")) read through descriptor `name`:
        the box loaded, its batch dims dropped, transposed where the contiguous dim is the tile's first."""
        expr = f"{name}.load([{', '.join(STARTS[i] for i in self.indices)}])"
        kept = tuple(i for i in self.indices if i != "pid_b")
        if len(kept) != len(self.indices):
            expr = f"tl.reshape({expr}, [{', '.join(BOXES[i] for i in kept)}])"
        return expr if kept == tile else f"tl.trans({expr})"


def operand_descriptor(graph: Graph, kernel: Kernel, operand: str, tile: tuple[str, ...]) -> Descriptor | None:
    """The descriptor the operand's tile (read at `tile`: its indices per dim of the matmul's
    operand, batch first) can be loaded through, or None: it loads with pointers."""
    found = _strided_view(graph, kernel, operand)
    if found is None or needs_int64(graph, kernel) or graph[operand].dtype not in _DTYPES:
        return None
    base, shape, strides = found
    indices = tile[-len(shape):] if len(shape) <= len(tile) else None
    if indices is None:
        return None
    dims = [d for d, (size, stride) in enumerate(zip(shape, strides, strict=True)) if size != 1 and stride != 0]
    dims.sort(key=lambda d: -strides[d])
    walked = {indices[d] for d in dims}
    if not set(tile[-2:]) <= walked or not 2 <= len(dims) <= 5 or strides[dims[-1]] != 1:
        return None
    width = ITEMSIZE[graph[operand].dtype]
    outer = [strides[d] for d in dims[:-1]]
    if len(set(outer)) != len(outer) or any(s * width % 16 for s in outer) or indices[dims[-1]] == "pid_b":
        return None
    return Descriptor(base, tuple(shape[d] for d in dims), tuple(strides[d] for d in dims),
                      tuple(indices[d] for d in dims))


def _strided_view(graph: Graph, kernel: Kernel, name: str) -> tuple[str, list, list] | None:
    """(input, shape, strides): `name` as a strided view of a kernel input's memory from its first
    element, strides static; None when a view between them is anything else."""
    chain = []
    while name in kernel.members:
        node = graph[name]
        if node.kind is not Kind.VIEW or node.op not in _REORDERING:
            return None
        chain.append(node)
        name = node.operands()[0]
    base = graph[name]
    if name not in kernel.inputs or base.host:
        return None
    shape, strides = list(base.shape), list(base.strides or contiguous_strides(base.shape))
    for node in reversed(chain):
        found = _view(node, shape, strides)
        if found is None:
            return None
        shape, strides = found
    if not all(isinstance(s, int) for s in strides):
        return None
    return name, shape, strides


def _view(node, shape: list, strides: list) -> tuple[list, list] | None:
    """The view `node` makes of (shape, strides), or None where it is not one strided view."""
    if node.op == "alias":
        return shape, strides
    if node.op == "permute":
        order = node.args[1]
        return [shape[d] for d in order], [strides[d] for d in order]
    if node.op == "expand":
        lead = len(node.shape) - len(shape)
        return list(node.shape), [0] * lead + [0 if s == 1 else st for s, st in zip(shape, strides, strict=True)]
    if node.op == "broadcast_in_dim":
        out = [0] * len(node.shape)
        for src, dim in enumerate(node.args[1]):
            out[dim] = 0 if shape[src] == 1 else strides[src]
        return list(node.shape), out
    kept = [d for d, s in enumerate(shape) if s != 1]
    if tuple(strides[d] for d in kept) == contiguous_strides(tuple(shape[d] for d in kept)):
        return list(node.shape), list(contiguous_strides(node.shape))  # row-major: any reshape is a view
    out_kept = [d for d, s in enumerate(node.shape) if s != 1]
    if [shape[d] for d in kept] != [node.shape[d] for d in out_kept]:
        return None
    out = [0] * len(node.shape)
    for d, e in zip(kept, out_kept, strict=True):
        out[e] = strides[d]
    return list(node.shape), out
