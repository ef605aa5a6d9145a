"""What every kernel renderer shares: scoped straight-line code, index math, values.

A member's value is produced at an index (one expression per dimension of
its own shape): broadcasts and views turn the consumer's index into the
producer's, so views, expands and permutes cost index math, not copies.
Renderers differ only in how they lay out the iteration space and where they
store (pointwise.py, reduction.py).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from fusec import sizes
from fusec.ir import FLOAT_DTYPES, Graph, Kind, Node, Ref, contiguous_strides
from fusec.kernels.contiguous import Piece, merge_contiguous
from fusec.kernels.dtypes import TL_TYPE, compute_dtype, literal, promote
from fusec.kernels.hints import eviction
from fusec.kernels.indexed import Index, IndexedValues, Value
from fusec.kernels.ops import BIT_OPS, NAN_AWARE, OPS, PREDICATES, pow_of_scalar, pow_scalar
from fusec.kernels.signature import extra_params, param, scalar_params, tensor_params
from fusec.plan import Kernel, LaunchExtra
from fusec.sizes import Size, source

_NAME = re.compile(r"[A-Za-z_]\w*")


@dataclass
class Scope:
    """A block of code: a kernel body or a loop body, with what it has bound."""

    parent: Scope | None = None
    lines: list[str] = field(default_factory=list)
    bound: dict[str, str] = field(default_factory=dict)
    memo: dict[tuple[str, Index], Value] = field(default_factory=dict)

    def find(self, table: str, key):
        scope: Scope | None = self
        while scope is not None:
            found = getattr(scope, table).get(key)
            if found is not None:
                return found
            scope = scope.parent
        return None


class Emitter:
    """Straight-line code with common subexpressions bound once per scope.

    `roots` maps the iteration variables (offs, xoffs, roffs, ...) to the mask
    that guards them; every bound name remembers which roots it depends on, so
    a load is masked by exactly what its address uses.
    """

    def __init__(self, roots: dict[str, str], prefix: str = "") -> None:
        self.scope = Scope()
        self.count = 0
        self.prefix = prefix  # keeps names apart when several bodies share one kernel
        self.deps: dict[str, frozenset[str]] = {root: frozenset({root}) for root in roots}
        self.roots = roots

    def let(self, expr: str, prefix: str = "t") -> str:
        if expr.isidentifier() or expr.lstrip("-").isdigit():
            return expr
        found = self.scope.find("bound", expr)
        if found:
            return found
        name = self.fresh(prefix)
        self.scope.bound[expr] = name
        self.scope.lines.append(f"{name} = {expr}")
        self.deps[name] = self.depends(expr)
        return name

    def fresh(self, prefix: str) -> str:
        """A new name, for a binding emitted by hand (e.g. a tuple unpacked from tl.reduce)."""
        name = f"{self.prefix}{prefix}{self.count}"
        self.count += 1
        return name

    def emit(self, line: str) -> None:
        self.scope.lines.append(line)

    def depends(self, expr: str) -> frozenset[str]:
        return frozenset().union(*(self.deps.get(n, frozenset()) for n in _NAME.findall(expr)))

    def mask(self, expr: str) -> str | None:
        masks = [self.roots[r] for r in sorted(self.depends(expr))]
        return " & ".join(masks) if masks else None

    @contextlib.contextmanager
    def block(self, header: str) -> Iterator[None]:
        """Lines emitted inside go under `header` (a for loop), bindings die with it."""
        outer = self.scope
        self.scope = Scope(parent=outer)
        try:
            yield
        finally:
            inner, self.scope = self.scope, outer
            outer.lines.append(header)
            outer.lines.extend("    " + line for line in inner.lines or ["pass"])

    def bind_root(self, name: str, expr: str, roots: set[str]) -> None:
        """Bind an iteration variable (e.g. the loop's r index) that depends on `roots`."""
        self.scope.lines.append(f"{name} = {expr}")
        self.deps[name] = frozenset(roots)


def term(index: str, stride: Size) -> str:
    if index == "0" or stride == 0:
        return ""
    return index if stride == 1 else f"{index} * {source(stride)}"


def live_lines(lines: list[str], roots: list[str]) -> list[str]:
    """Drop top-level bindings nothing reads (index math for dims no load uses)."""
    used = set(_NAME.findall(" ".join(roots)))
    kept = []
    for line in reversed(lines):
        target, sep, _ = line.partition(" = ")
        if not sep or line.startswith(" ") or not target.isidentifier() or target in used:
            kept.append(line)
            used.update(_NAME.findall(line))
    return kept[::-1]


def needs_int64(graph: Graph, kernel: Kernel) -> bool:
    """Offsets overflow int32 once a tensor spans 2**31 elements (which a symbolic size may)."""
    for name in kernel.inputs + kernel.outputs:
        node = graph[name]
        if not (sizes.all_static(node.shape) and sizes.all_static(node.strides)):
            return True
        extent = sum((s - 1) * st for s, st in zip(node.shape, node.strides or ()) if s)
        if max(extent, node.numel) >= 2**31:
            return True
    return kernel.numel >= 2**31


def row_count(n: Size, less: float, kind: str = "float", floor: int = 0) -> str:
    """max(n - less, floor): a literal, or from `rnumel` for a symbolic row length (2 or more)."""
    if sizes.is_static(n):
        return str(max(n - less, floor)) if kind == "int" else str(float(max(n - less, floor)))
    if less > 1:  # the row may be shorter than that
        raise sizes.NotRenderable(f"a variance with correction {less} over a row of symbolic length")
    return f"(rnumel - {less})" if less else "rnumel"


# Ops whose Triton expression may come out in another type than the node's
# (integer literals, `where` over scalars); every other op keeps its operands' type.
_RETYPED = frozenset({"sign", "where", "cast", "pow", "full"}) | BIT_OPS
_LOGICAL = frozenset({"logical_and", "logical_or", "logical_xor", "logical_not"})


class Renderer(IndexedValues):
    """Index math and value computation over one group; subclasses lay out the loops."""

    def __init__(self, graph: Graph, kernel: Kernel, roots: dict[str, str], prefix: str = "",
                 interpret: bool = True) -> None:
        self.graph = graph
        self.interpret = interpret  # rendered for Triton's interpreter (else for a GPU)
        self.kernel = kernel
        self.members = set(kernel.members)
        self.out = Emitter(roots, prefix)
        self.helpers: set[str] = set()  # the functions of helpers.HELPERS the body calls
        self.flags_bad_index = False  # a gather may read out of bounds: take a flag buffer
        self.asserts = False  # a GPU gather checks its indices on the device (compiled with debug on)
        self.scalar_shape = "[1]"  # the block a single element is held in (a renderer's rank)
        self.block_shape: str | None = None  # a reduction's 2-D block, and the root of its contiguous
        # dim where every load along it is inside the block (an inner row's `roffs`; an outer
        # reduction's `xoffs` also indexes its per-output values): such a vector loads as the block
        self.fast_root: str | None = None
        self.uses_seed = False  # random numbers: take the call's seed
        self.loop: int | None = None  # the loop over a row last begun (numbered from 0); None before one
        self.last_loop: dict[str, int] = {}  # input -> the last loop over the row that reads it
        self.pieces: dict[str, Piece] = {}  # index names that are a piece of a linear offset (unravel)

    def to(self, expr: str, dtype: str) -> str:
        """`to` for this renderer's target."""
        return to(expr, dtype, self.interpret)

    # index math -------------------------------------------------------------
    def unravel(self, linear: str, shape: tuple[Size, ...], order: list[int] | None = None) -> Index:
        """Split a linear offset over `shape`, walking dims in `order` (innermost last)."""
        order = list(range(len(shape))) if order is None else order
        dims, divisor = ["0"] * len(shape), 1
        for position in reversed(range(len(order))):
            d = order[position]
            if shape[d] == 1:
                continue
            quotient = linear if divisor == 1 else self.out.let(f"{linear} // {source(divisor)}", "x")
            outermost = all(shape[e] == 1 for e in order[:position])
            dims[d] = quotient if outermost else self.out.let(f"{quotient} % {source(shape[d])}", "x")
            if isinstance(divisor, int) and isinstance(shape[d], int):
                self.pieces[dims[d]] = Piece(linear, divisor, shape[d], outermost)
            divisor = sizes.canonical(divisor * shape[d])
        return Index(tuple(dims), linear if order == sorted(order) else None)

    def linearize(self, idx: Index, shape: tuple[int, ...]) -> str:
        if idx.linear is not None:
            return idx.linear
        # Dims split from one offset are that offset again (`x1 * 1024 + x0` is `xoffs`).
        dims, _, strides = merge_contiguous(idx.dims, shape, contiguous_strides(shape), self.pieces,
                                            lambda expr: self.out.let(expr, "x"))
        terms = [term(i, s) for i, s in zip(dims, strides)]
        return self.out.let(" + ".join(t for t in terms if t) or "0", "x")

    def reshape_index(self, idx: Index, shape: tuple[Size, ...], src: tuple[Size, ...]) -> Index:
        """`idx` over `shape` re-expressed over `src` of the same elements, row-major: the trailing
        dims both share keep their index and only the leading ones are split again, so a weight
        read along the last dim stays `roffs` (contiguous), where `offset % 1024` hides that."""
        found = self.squeeze_index(idx, shape, src)
        if found is not None:
            return found
        common = 0
        while common < min(len(shape), len(src)) - 1 and shape[-1 - common] == src[-1 - common]:
            common += 1
        if common == 0:
            return self.unravel(self.linearize(idx, shape), src)
        lead = self.unravel(self.linearize(Index(idx.dims[:-common]), shape[:-common]), src[:-common])
        return Index(lead.dims + idx.dims[-common:], idx.linear)

    @staticmethod
    def broadcast(idx: Index, to: tuple[int, ...], frm: tuple[int, ...]) -> Index:
        """Index of an operand of shape `to` read by a consumer of shape `frm`."""
        if to == frm:
            return idx
        lead = len(frm) - len(to)
        dims = tuple("0" if size == 1 else idx.dims[lead + d] for d, size in enumerate(to))
        return Index(dims)

    def view_index(self, node: Node, idx: Index) -> Index:
        """The index into a view's source that holds the view's element at `idx`."""
        src = self.graph[node.operands()[0]]
        if node.op == "reshape":
            return self.reshape_index(idx, node.shape, src.shape)
        if node.op == "permute":
            dims = ["0"] * len(src.shape)
            for out_dim, src_dim in enumerate(node.args[1]):
                dims[src_dim] = idx.dims[out_dim]
            return Index(tuple(dims))
        if node.op == "expand":
            return self.broadcast(idx, src.shape, node.shape)
        if node.op == "broadcast_in_dim":
            kept = node.args[1]
            return Index(tuple("0" if src.shape[i] == 1 else idx.dims[d] for i, d in enumerate(kept)))
        if node.op == "slice":
            _, dim, start, step = node.args
            dims = list(idx.dims)
            if start or step != 1:
                dims[dim] = self.out.let(f"{start} + {term(dims[dim], step) or '0'}", "x")
            return Index(tuple(dims))
        if node.op == "select":
            _, dim, index = node.args
            return Index((*idx.dims[:dim], str(index), *idx.dims[dim:]))
        if node.op == "alias":
            return idx
        raise NotImplementedError(f"view op {node.op}")

    @staticmethod
    def squeeze_index(idx: Index, shape: tuple[Size, ...], src: tuple[Size, ...]) -> Index | None:
        """A reshape that only adds or drops size-1 dims keeps each dim's index (no
        division: a transposed read stays visible as one); None for any other reshape."""
        kept, src_kept = [d for d, s in enumerate(shape) if s != 1], [d for d, s in enumerate(src) if s != 1]
        if [shape[d] for d in kept] != [src[d] for d in src_kept]:
            return None
        dims = ["0"] * len(src)
        for d, e in zip(src_kept, kept):
            dims[d] = idx.dims[e]
        return Index(tuple(dims), idx.linear)  # size-1 dims leave the row-major offset as it is

    def address(self, idx: Index, node: Node) -> str:
        strides = node.strides or contiguous_strides(node.shape)
        if idx.linear is not None and strides == contiguous_strides(node.shape):
            return idx.linear
        dims, shape, strides = merge_contiguous(idx.dims, node.shape, strides, self.pieces,
                                                lambda expr: self.out.let(expr, "x"))
        terms = [term(i, st) for i, s, st in zip(dims, shape, strides) if s != 1]
        return self.out.let(" + ".join(t for t in terms if t) or "0", "x")

    # values -----------------------------------------------------------------
    def value(self, name: str, idx: Index) -> Value:
        key = (name, idx)
        found = self.out.scope.find("memo", key)
        if found is None:
            found = self.compute(self.graph[name], idx)
            self.out.scope.memo[key] = found
        return found

    def compute(self, node: Node, idx: Index) -> Value:
        if node.op == "iota":  # an arange is index math wherever it is read
            return self.iota(node, idx)
        if node.name not in self.members:
            return self.pointwise(node, idx) if node.op == "full" and not node.operands() else self.load(node, idx)
        if node.kind is Kind.VIEW:
            return self.value(node.operands()[0], self.view_index(node, idx))
        if node.op == "gather":
            return self.gather(node, idx)
        if node.op == "take":
            return self.take(node, idx)
        if node.op == "rand":
            return self.rand(node, idx)
        if node.op == "cat":
            return self.cat(node, idx)
        return self.pointwise(node, idx)

    def load(self, node: Node, idx: Index) -> Value:
        dtype = compute_dtype(node.dtype)
        if node.host:  # a scalar argument, not a pointer
            return Value(self.out.let(f"tl.full({self.scalar_shape}, s_{node.name}, {TL_TYPE[dtype]})", "v"), dtype)
        addr = self.address(idx, node)
        mask = self.out.mask(addr)
        policy = eviction(self.graph, self.kernel, node, self.loop, self.last_loop)
        hint = f", eviction_policy=\"{policy}\"" if policy else ""
        if mask is None:
            # One element for the whole block: keep it a (broadcastable) block, since the
            # interpreter cannot mix 0-d and block operands in every operator.
            raw = f"tl.broadcast_to(tl.load({param(node.name)} + {addr}{hint}), {self.scalar_shape})"
        else:
            raw = f"tl.load({self._pointers(param(node.name), addr)}, mask={mask}, other=0{hint})"
        expr = raw if dtype == node.dtype else f"{raw}.to({TL_TYPE[dtype]})"
        return Value(self.out.let(expr, "v"), dtype)

    def _pointers(self, base: str, addr: str) -> str:
        """A vector along the block's contiguous dim (a norm's weight), read by every row of the
        block, gets pointers for the whole block: Triton then gives each thread 8 of it (128-bit
        loads, L1 hits past the first row), where one row of 1024 over 512 threads is 2 a thread."""
        if self.fast_root is not None and self.out.depends(addr) == {self.fast_root}:
            return f"tl.broadcast_to({base} + {addr}, {self.block_shape})"
        return f"{base} + {addr}"

    def pointwise(self, node: Node, idx: Index) -> Value:
        dtype = compute_dtype(node.dtype)
        operands = {ref.name: self.value(ref.name, self.broadcast(idx, self.graph[ref.name].shape, node.shape))
                    for ref in node.args if isinstance(ref, Ref)}
        targets = _operand_types(node, dtype, [v.dtype for v in operands.values()])
        args = [_convert(a, operands, t, self.interpret) for a, t in zip(node.args, targets, strict=True)]
        common = dict(node.kwargs).get("dtype") if node.op in PREDICATES else None
        if common in ("float16", "bfloat16"):
            # torch compares in the 16-bit type: an operand of another type rounds to it first.
            args = [self.to(self.to(arg, common), "float32")
                    if isinstance(a, Ref) and self.graph[a.name].dtype != common else arg
                    for a, arg in zip(node.args, args, strict=True)]
        expr = self._expr(node, args, targets[0] if targets else dtype)
        if node.op == "cast" and node.dtype in ("float16", "bfloat16"):
            # An explicit cast rounds, even inside a fused chain (through float32: the
            # interpreter converts integers to bfloat16 wrongly).
            expr = self.to(self.to(self.to(expr, "float32"), node.dtype), dtype)
        if node.op == "full":
            expr = f"tl.full({self.scalar_shape}, {expr}, {TL_TYPE[dtype]})"
        if node.op in _RETYPED or dtype == "bool":
            expr = self.to(expr, dtype)
        return Value(self.out.let(expr), dtype)

    def _expr(self, node: Node, args: list, work: str | None) -> str:
        if node.op == "pow" and not isinstance(node.args[1], Ref):
            return pow_scalar(args[0], float(node.args[1]), floating=work in FLOAT_DTYPES)
        if node.op == "pow" and not isinstance(node.args[0], Ref):
            return pow_of_scalar(float(node.args[0]), args[1])
        fn = OPS[node.op]
        if node.op in NAN_AWARE:
            return fn(*args, floating=work in FLOAT_DTYPES)
        if node.op == "bitcast":
            return fn(*args, TL_TYPE[node.dtype])
        return fn(*args)

    def store(self, node: Node, idx: Index, value: Value, mask: str, shape: str) -> str:
        """A store of `value` to the output buffer of `node` at `idx`, broadcast to `shape`."""
        addr = self.address(idx, node)
        expr = f"tl.broadcast_to({value.expr}, {shape})"
        if addr == "0":
            addr = f"tl.full({shape}, 0, tl.int32)"
        elif self.out.mask(addr) != mask:
            addr = f"tl.broadcast_to({addr}, {shape})"
        # an output stored into an input the kernel reads goes through that input's pointer
        target = dict(self.kernel.into).get(node.name, node.name)
        return f"tl.store({param(target)} + {addr}, {self.to(expr, node.dtype)}, mask={mask})"

    def extras(self) -> tuple[LaunchExtra, ...]:
        """What the body needs passed after the buffers (known once the body is rendered)."""
        wanted = {LaunchExtra.BAD_INDEX: self.flags_bad_index, LaunchExtra.SEED: self.uses_seed,
                  LaunchExtra.PARTIALS: bool(self.kernel.finals)}
        return tuple(e for e in LaunchExtra if wanted[e])

    def params(self) -> list[str]:
        """The buffers' parameters, then the extras'."""
        k = self.kernel
        return (tensor_params(self.graph, k.buffers) + extra_params(self.extras(), k.finals)
                + scalar_params(self.graph, k.inputs))


def _operand_types(node: Node, dtype: str, tensor_dtypes: list[str]) -> list[str | None]:
    """The dtype each argument is converted to before the op (None: keep its own)."""
    n = len(node.args)
    if node.op in PREDICATES:
        # Lowering records torch's comparison dtype (scalars rounded to it already).
        common = dict(node.kwargs).get("dtype")
        return [compute_dtype(common) if common else promote(tensor_dtypes)] * n
    if node.op in _LOGICAL:
        return ["bool"] * n
    if node.op == "where":
        return ["bool"] + [dtype] * (n - 1)
    if node.op in ("cast", "bitcast"):
        return [None]
    if dtype == "bool":
        return ["int32"] * n  # True + True is True in torch: add as integers, then test != 0
    return [dtype] * n


def _convert(arg: object, operands: dict[str, Value], target: str | None, interpret: bool) -> str | None:
    if isinstance(arg, Ref):
        value = operands[arg.name]
        if target is None or value.dtype == target:
            return value.expr
        return to(value.expr, target, interpret)
    if arg is None:
        return None  # an absent optional bound (clamp)
    return literal(arg, target or "float32")


def to(expr: str, dtype: str, interpret: bool = True) -> str:
    """Convert an expression to `dtype`; to bool means 'is nonzero' as in torch. A GPU's
    conversion to bfloat16 rounds to nearest even; the interpreter's needs `round_bf16`."""
    if dtype == "bool":
        return f"({expr} != 0)"
    if dtype == "bfloat16" and interpret:
        return f"({round_bf16(expr)}).to(tl.bfloat16)"
    return f"({expr}).to({TL_TYPE[dtype]})"


def round_bf16(expr: str) -> str:
    """`expr` as float32 rounded to the nearest bfloat16 (ties to even), by its bits: Triton's
    interpreter truncates in its own conversion; after this one the conversion is exact."""
    x = f"({expr}).to(tl.float32)"
    bits = f"{x}.to(tl.uint32, bitcast=True)"
    rounded = f"((({bits} + 0x7FFF + (({bits} >> 16) & 1)) >> 16) << 16).to(tl.float32, bitcast=True)"
    return f"tl.where({x} != {x}, {x}, {rounded})"
