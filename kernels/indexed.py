"""Values read at computed positions: concatenation, random numbers, arange, gathers
and row lookups. Renderer mixes these in; each returns the value at one index."""

from __future__ import annotations

from dataclasses import dataclass

from fusec import sizes
from fusec.ir import Node
from fusec.kernels.dtypes import TL_TYPE, compute_dtype
from fusec.sizes import Size, source


@dataclass(frozen=True)
class Index:
    """Per-dimension index expressions; `linear` is the row-major offset when known."""

    dims: tuple[str, ...]
    linear: str | None = None


@dataclass(frozen=True)
class Value:
    expr: str
    dtype: str  # the compute dtype the expression has


class IndexedValues:
    """The indexed reads of a Renderer (which provides graph, out, value, to, linearize)."""

    def cat(self, node: Node, idx: Index) -> Value:
        """The element of whichever input's range along dim holds the position. Each
        input is read at an index kept in bounds (its value unused out of range): 0, or
        where the input's size holds whole vectors (a multiple of 8) the position modulo
        that size, which runs contiguously where the position does, so Triton still reads
        whole vectors (0 breaks every run; elsewhere the modulo only costs registers).
        A legacy empty 1-D input (`torch.tensor([])`) is skipped, as torch skips it."""
        *refs, dim = node.args
        dtype = compute_dtype(node.dtype)
        pos, start, parts = idx.dims[dim], 0, []
        for ref in refs:
            if len(self.graph[ref.name].shape) != len(node.shape):
                continue  # torch's legacy cat skips an empty 1-d part (an empty KV cache)
            size = self.graph[ref.name].shape[dim]
            end = sizes.canonical(start + size)
            if size != 0:
                local = self.out.let(f"tl.where(({pos} >= {source(start)}) & ({pos} < {source(end)}), "
                                     f"{pos} - {source(start)}, {_in_bounds(pos, size)})", "x")
                value = self.value(ref.name, Index((*idx.dims[:dim], local, *idx.dims[dim + 1:])))
                parts.append((end, self.to(value.expr, dtype) if value.dtype != dtype else value.expr))
            start = end
        if not parts:  # nothing to read: the output has no elements
            return Value(f"tl.full({self.scalar_shape}, 0, {TL_TYPE[dtype]})", dtype)
        expr = parts[-1][1]
        for end, value in reversed(parts[:-1]):
            expr = f"tl.where({pos} < {source(end)}, {value}, {expr})"
        return Value(self.out.let(expr), dtype)

    def rand(self, node: Node, idx: Index) -> Value:
        """Uniform [0, 1) from Philox keyed by the call's seed, counted by element and node."""
        self.uses_seed = True
        self.helpers.add("_philox")
        offset = self.linearize(idx, node.shape)
        # One element: the offset is a literal, which must still be a block of the kernel's rank.
        counter = f"({offset}).to(tl.uint32)"
        if offset.isdigit():
            counter = f"tl.full({self.scalar_shape}, {offset}, tl.uint32)"
        bits = self.out.let(f"_philox(seed, {counter}, {node.args[0]})", "t")
        value = self.out.let(f"(({bits} >> 8).to(tl.float32) * {2.0 ** -24})", "t")
        return Value(value, "float32")

    def iota(self, node: Node, idx: Index) -> Value:
        """start + step * position; lowering keeps it to integers every dtype holds exactly."""
        start, step = node.args
        pos = idx.dims[0] if idx.dims else "0"
        position = f"tl.full({self.scalar_shape}, {pos}, tl.int64)" if pos.isdigit() else f"({pos}).to(tl.int64)"
        value = f"({start} + {step} * {position})"
        dtype = compute_dtype(node.dtype)
        expr = self.to(value, node.dtype)
        return Value(self.out.let(expr if dtype == node.dtype else self.to(expr, dtype)), dtype)

    def gather(self, node: Node, idx: Index) -> Value:
        """out[i..] = src[i.. with dim replaced by index[i..]] (an indirect load)."""
        src_name, dim, index_name = node.args[0].name, node.args[1], node.args[2].name
        src = self.graph[src_name]
        where = self.value(index_name, self.broadcast(idx, self.graph[index_name].shape, node.shape))
        dims = list(idx.dims)
        dims[dim] = self.checked(where.expr, src.shape[dim])
        return self.value(src_name, Index(tuple(dims)))

    def take(self, node: Node, idx: Index) -> Value:
        """out[*i, *j] = src[index[*i], *j]: a row lookup (embedding, x[idx])."""
        src_name, index_name, wrap = node.args[0].name, node.args[1].name, node.args[2]
        size, rank = self.graph[src_name].shape[0], len(self.graph[index_name].shape)
        where = self.value(index_name, Index(idx.dims[:rank])).expr
        if wrap:
            where = self.out.let(f"tl.where({where} < 0, {where} + {source(size)}, {where})", "x")
        return self.value(src_name, Index((self.checked(where, size), *idx.dims[rank:])))

    def checked(self, where: str, size: Size) -> str:
        """`where` if in [0, size), else 0. On a GPU an index out of range fails a device-side
        assert, as eager's CUDA indexing does (no flag for the host to read back after every
        launch); in Triton's interpreter it sets a flag the runtime reads, to raise eager's IndexError."""
        bad = self.out.let(f"({where} < 0) | ({where} >= {source(size)})", "t")
        mask = self.out.mask(bad)
        if not self.interpret:
            self.asserts = True
            masked = "" if mask is None else f", mask={mask}"
            self.out.emit(f'tl.device_assert({bad} == 0, "index out of bounds"{masked})')
            return self.out.let(f"tl.where({bad}, 0, {where})", "x")
        self.flags_bad_index = True
        flag_mask = bad if mask is None else f"({mask}) & {bad}"
        self.out.emit(f"tl.store(p_bad_index + {bad}.to(tl.int32) * 0, {bad}.to(tl.int32), mask={flag_mask})")
        return self.out.let(f"tl.where({bad}, 0, {where})", "x")


def _in_bounds(pos: str, size: Size) -> str:
    """An index within a concatenated part's `size` for positions outside it (see `cat`)."""
    return f"{pos} % {size}" if isinstance(size, int) and size % 8 == 0 else "0"
