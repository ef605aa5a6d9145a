"""Render a pointwise fusion group as one Triton kernel.

The kernel walks the iteration space of the group's outputs in blocks. Every
member's value is produced at an index (one expression per dimension of its
own shape): broadcasts and views turn the consumer's index into the
producer's, so views, expands and permutes cost index math, not copies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fusec.ir import FLOAT_DTYPES, Graph, Kind, Node, Ref, contiguous_strides
from fusec.kernels.dtypes import TL_TYPE, compute_dtype, literal, promote
from fusec.kernels.ops import NAN_AWARE, OPS, PREDICATES, pow_scalar
from fusec.plan import Kernel


@dataclass(frozen=True)
class Index:
    """Per-dimension index expressions; `linear` is the row-major offset when known."""

    dims: tuple[str, ...]
    linear: str | None = None


@dataclass(frozen=True)
class Value:
    expr: str
    dtype: str  # the compute dtype the expression has
    block: bool  # False for a scalar (every lane reads the same element)


class _Emitter:
    """Straight-line code with common subexpressions bound once."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bound: dict[str, str] = {}

    def let(self, expr: str, prefix: str = "t") -> str:
        if expr.isidentifier() or expr.lstrip("-").isdigit():
            return expr
        if expr not in self.bound:
            name = f"{prefix}{len(self.bound)}"
            self.bound[expr] = name
            self.lines.append(f"{name} = {expr}")
        return self.bound[expr]


def _param(name: str) -> str:
    return f"p_{name}"


def needs_int64(graph: Graph, kernel: Kernel) -> bool:
    """Offsets overflow int32 once a tensor spans 2**31 elements."""
    for name in kernel.inputs + kernel.outputs:
        node = graph[name]
        extent = sum((s - 1) * st for s, st in zip(node.shape, node.strides or ()) if s)
        if max(extent, node.numel) >= 2**31:
            return True
    return kernel.numel >= 2**31


class _Renderer:
    def __init__(self, graph: Graph, kernel: Kernel) -> None:
        self.graph = graph
        self.kernel = kernel
        self.members = set(kernel.members)
        self.out = _Emitter()
        self.memo: dict[tuple[str, Index], Value] = {}

    # index math -------------------------------------------------------------
    def iteration_index(self, node: Node) -> Index:
        """Unravel `offs` over the output's dims, innermost = smallest stride (coalesced stores)."""
        shape, strides = node.shape, node.strides or contiguous_strides(node.shape)
        order = sorted(range(len(shape)), key=lambda d: (-strides[d], d))
        dims = ["0"] * len(shape)
        divisor = 1
        for d in reversed(order):
            if shape[d] == 1:
                continue
            quotient = "offs" if divisor == 1 else self.out.let(f"offs // {divisor}", "x")
            outermost = divisor * shape[d] >= node.numel
            dims[d] = quotient if outermost else self.out.let(f"{quotient} % {shape[d]}", "x")
            divisor *= shape[d]
        linear = "offs" if order == sorted(order) else None
        return Index(tuple(dims), linear)

    def unravel(self, linear: str, shape: tuple[int, ...]) -> Index:
        dims, divisor = ["0"] * len(shape), 1
        total = math.prod(shape)
        for d in reversed(range(len(shape))):
            if shape[d] == 1:
                continue
            quotient = linear if divisor == 1 else self.out.let(f"{linear} // {divisor}", "x")
            outermost = divisor * shape[d] >= total
            dims[d] = quotient if outermost else self.out.let(f"{quotient} % {shape[d]}", "x")
            divisor *= shape[d]
        return Index(tuple(dims), linear)

    def linearize(self, idx: Index, shape: tuple[int, ...]) -> str:
        if idx.linear is not None:
            return idx.linear
        terms = [_term(i, s) for i, s in zip(idx.dims, contiguous_strides(shape))]
        return self.out.let(" + ".join(t for t in terms if t) or "0", "x")

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
            return self.unravel(self.linearize(idx, node.shape), src.shape)
        if node.op == "permute":
            dims = ["0"] * len(src.shape)
            for out_dim, src_dim in enumerate(node.args[1]):
                dims[src_dim] = idx.dims[out_dim]
            return Index(tuple(dims))
        if node.op == "expand":
            return self.broadcast(idx, src.shape, node.shape)
        if node.op == "slice":
            _, dim, start, step = node.args
            dims = list(idx.dims)
            dims[dim] = self.out.let(f"{start} + {step} * {dims[dim]}" if step != 1 else
                                     f"{start} + {dims[dim]}", "x") if (start or step != 1) else dims[dim]
            return Index(tuple(dims))
        if node.op == "select":
            _, dim, index = node.args
            return Index((*idx.dims[:dim], str(index), *idx.dims[dim:]))
        if node.op == "alias":
            return idx
        raise NotImplementedError(f"view op {node.op}")

    def address(self, idx: Index, node: Node) -> str:
        strides = node.strides or contiguous_strides(node.shape)
        if idx.linear is not None and strides == contiguous_strides(node.shape):
            return idx.linear
        terms = [_term(i, st) for i, s, st in zip(idx.dims, node.shape, strides) if s != 1]
        return self.out.let(" + ".join(t for t in terms if t) or "0", "x")

    # values -----------------------------------------------------------------
    def value(self, name: str, idx: Index) -> Value:
        key = (name, idx)
        if key not in self.memo:
            self.memo[key] = self._compute(self.graph[name], idx)
        return self.memo[key]

    def _compute(self, node: Node, idx: Index) -> Value:
        if node.name not in self.members:
            return self.load(node, idx)
        if node.kind is Kind.VIEW:
            return self.value(node.operands()[0], self.view_index(node, idx))
        return self.pointwise(node, idx)

    def load(self, node: Node, idx: Index) -> Value:
        addr = self.address(idx, node)
        dtype = compute_dtype(node.dtype)
        if addr == "0":
            raw = f"tl.load({_param(node.name)})"
        else:
            raw = f"tl.load({_param(node.name)} + {addr}, mask=mask, other=0)"
        expr = raw if dtype == node.dtype else f"{raw}.to({TL_TYPE[dtype]})"
        return Value(self.out.let(expr, "v"), dtype, addr != "0")

    def pointwise(self, node: Node, idx: Index) -> Value:
        dtype = compute_dtype(node.dtype)
        operands = {ref.name: self.value(ref.name, self.broadcast(idx, self.graph[ref.name].shape, node.shape))
                    for ref in node.args if isinstance(ref, Ref)}
        targets = _operand_types(node, dtype, [v.dtype for v in operands.values()])
        args = [_convert(a, operands, t) for a, t in zip(node.args, targets, strict=True)]
        expr = self._expr(node, args, targets[0] if targets else dtype)
        if node.op == "full":
            expr = f"tl.full([BLOCK], {expr}, {TL_TYPE[dtype]})"
        block = node.op == "full" or any(v.block for v in operands.values())
        if node.op in _RETYPED or dtype == "bool":
            expr = _to(expr, dtype)
        return Value(self.out.let(expr), dtype, block)

    def _expr(self, node: Node, args: list[str], work: str | None) -> str:
        if node.op == "pow" and not isinstance(node.args[1], Ref):
            exact = pow_scalar(args[0], float(node.args[1]))
            if exact is not None:
                return exact
        fn = OPS[node.op]
        if node.op in NAN_AWARE:
            return fn(*args, floating=work in FLOAT_DTYPES)
        return fn(*args)

    # the kernel -------------------------------------------------------------
    def render(self) -> tuple[str, str]:
        k = self.kernel
        first = self.graph[k.outputs[0]]
        offs_type = "tl.int64" if needs_int64(self.graph, k) else None
        pid = "tl.program_id(0).to(tl.int64)" if offs_type else "tl.program_id(0)"
        idx = self.iteration_index(first)
        stores = []
        for name in k.outputs:
            out = self.graph[name]
            val = self.value(name, idx)
            expr = val.expr if val.block else f"tl.full([BLOCK], {val.expr}, {TL_TYPE[val.dtype]})"
            addr = self.address(idx, out)
            if addr == "0":
                addr = "offs * 0"
            stores.append(f"tl.store({_param(name)} + {addr}, {expr}.to({TL_TYPE[out.dtype]}), mask=mask)")
        ops = "_".join(dict.fromkeys(self.graph[m].op for m in k.members if self.graph[m].kind is not Kind.VIEW))
        fn_name = f"{k.id}_{ops}"[:60]
        params = ", ".join(_param(n) for n in k.inputs + k.outputs)
        body = [f"pid = {pid}", "offs = pid * BLOCK + tl.arange(0, BLOCK)", "mask = offs < numel"]
        body += _live_lines(self.out.lines, stores) + stores
        members = ", ".join(k.members)
        source = "\n".join([
            "import triton",
            "import triton.language as tl",
            "",
            "",
            f"# members: {members}",
            "@triton.jit",
            f"def {fn_name}({params}, numel, BLOCK: tl.constexpr):",
            *("    " + line for line in body),
            "",
        ])
        return source, fn_name


# Ops whose Triton expression may come out in another type than the node's
# (integer literals, `where` over scalars); every other op keeps its operands' type.
_RETYPED = frozenset({"sign", "where", "cast", "pow", "full"})
_LOGICAL = frozenset({"logical_and", "logical_or", "logical_xor", "logical_not"})


def _operand_types(node: Node, dtype: str, tensor_dtypes: list[str]) -> list[str | None]:
    """The dtype each argument is converted to before the op (None: keep its own)."""
    n = len(node.args)
    if node.op in PREDICATES:
        return [promote(tensor_dtypes)] * n
    if node.op in _LOGICAL:
        return ["bool"] * n
    if node.op == "where":
        return ["bool"] + [dtype] * (n - 1)
    if node.op == "cast":
        return [None]
    return [dtype] * n


def _convert(arg: object, operands: dict[str, Value], target: str | None) -> str | None:
    if isinstance(arg, Ref):
        value = operands[arg.name]
        if target is None or value.dtype == target:
            return value.expr
        return _to(value.expr, target)
    if arg is None:
        return None  # an absent optional bound (clamp)
    return literal(arg, target or "float32")


def _to(expr: str, dtype: str) -> str:
    """Convert an expression to `dtype`; to bool means 'is nonzero' as in torch."""
    if dtype == "bool":
        return f"({expr} != 0)"
    return f"({expr}).to({TL_TYPE[dtype]})"


def _live_lines(lines: list[str], roots: list[str]) -> list[str]:
    """Drop bindings nothing reads (index math emitted for dims no load uses)."""
    used = set(re.findall(r"[A-Za-z_]\w*", " ".join(roots)))
    kept = []
    for line in reversed(lines):
        target, expr = line.split(" = ", 1)
        if target in used:
            kept.append(line)
            used.update(re.findall(r"[A-Za-z_]\w*", expr))
    return kept[::-1]


def _term(index: str, stride: int) -> str:
    if index == "0" or stride == 0:
        return ""
    return index if stride == 1 else f"{index} * {stride}"


def render_pointwise(graph: Graph, kernel: Kernel) -> tuple[str, str]:
    """Triton source of the group's kernel and the name of its entry function."""
    return _Renderer(graph, kernel).render()
