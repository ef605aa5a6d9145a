"""What each ATen call becomes in fusec's IR: a table of handlers, one per ATen op.

A handler returns `(op, args)` for an ATen call fusec can generate code for,
or None, in which case the node runs through torch. Handlers only translate:
shapes, dtypes and strides come from the fake tensors in `node.meta["val"]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from fusec import sizes
from fusec.ir import ITEMSIZE, POINTWISE_OPS, Graph, Ref
from fusec.lowering_bits import BIT_OPS
from fusec.lowering_index import (
    arange,
    div,
    embedding,
    full_like,
    index,
    index_select,
    modulo,
    put,
    round_,
    view,
)
from fusec.lowering_scan import reverse_scan, scan
from fusec.lowering_sizes import dtype_name, size_of

aten = torch.ops.aten
prims = torch.ops.prims

# Generated kernels handle these; complex and quantized types run through torch.
SUPPORTED_DTYPES = frozenset(ITEMSIZE) - {"complex64", "complex128"}


Lowered = tuple[str, tuple[Any, ...]] | None
Handler = Callable[[tuple, dict, Any], Lowered]


def _same(op: str) -> Handler:
    def handler(args: tuple, kwargs: dict, val: Any) -> Lowered:
        return (op, tuple(args)) if not kwargs else None
    return handler


def _alpha(op: str) -> Handler:
    """add/sub, with torch's `alpha` scaling the second operand when it is not 1."""
    def handler(args: tuple, kwargs: dict, val: Any) -> Lowered:
        alpha = args[2] if len(args) > 2 else kwargs.get("alpha", 1)
        if isinstance(alpha, Ref | bool):
            return None
        return (op, tuple(args[:2]) if alpha == 1 else (*args[:2], alpha))
    return handler


def _copy(args: tuple, kwargs: dict, val: Any) -> Lowered:
    # Functional copy_: the source's values in the destination's shape and dtype.
    return None if kwargs.get("non_blocking") else ("cast", (args[1],))


def _pow(args: tuple, kwargs: dict, val: Any) -> Lowered:
    # Integer powers are generated only as products (x ** 0..16); torch runs the rest.
    if not isinstance(args[0], Ref):
        # A positive scalar to a tensor power (an optimizer's beta ** step): exp(b * log(base)).
        positive = isinstance(args[0], int | float) and not isinstance(args[0], bool) and 0 < args[0] != 1
        return ("pow", tuple(args)) if positive and val.dtype.is_floating_point else None
    if val.dtype.is_floating_point or (
            not isinstance(args[1], Ref | bool | float) and 0 <= args[1] <= 16):
        return ("pow", tuple(args))
    return None


def _clamp(args: tuple, kwargs: dict, val: Any) -> Lowered:
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    # One tensor bound is torch.maximum/minimum exactly (NaN from either side, the first of -0.0 and 0.0).
    if isinstance(lo, Ref) and hi is None:
        return ("maximum", (args[0], lo))
    if isinstance(hi, Ref) and lo is None:
        return ("minimum", (args[0], hi))
    if isinstance(lo, Ref) or isinstance(hi, Ref):
        return None
    return ("clamp", (args[0], lo, hi))


def _clamp_min(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return ("maximum", tuple(args)) if isinstance(args[1], Ref) else ("clamp", (args[0], args[1], None))


def _clamp_max(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return ("minimum", tuple(args)) if isinstance(args[1], Ref) else ("clamp", (args[0], None, args[1]))


def _to_copy(args: tuple, kwargs: dict, val: Any) -> Lowered:
    if set(kwargs) - {"dtype", "layout", "device", "memory_format", "non_blocking"}:
        return None
    return ("cast", (args[0],))


def _clone(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return ("copy", (args[0],))


def _full(args: tuple, kwargs: dict, val: Any) -> Lowered:
    value = args[1]
    return None if isinstance(value, Ref) else ("full", (value,))


def _scalar_tensor(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return None if isinstance(args[0], Ref) else ("full", (args[0],))


def _where(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return ("where", tuple(args))


def _reshape(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return ("reshape", (args[0],))


def _permute(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return ("permute", (args[0], tuple(args[1])))


def _transpose(args: tuple, kwargs: dict, val: Any) -> Lowered:
    rank = val.dim()
    perm = list(range(rank))
    if rank:
        d0, d1 = args[1] % rank, args[2] % rank
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return ("permute", (args[0], tuple(perm)))


def _t(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return ("permute", (args[0], (1, 0) if val.dim() == 2 else (0,)))


def _expand(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return ("expand", (args[0],))


def _rand(args: tuple, kwargs: dict, val: Any) -> Lowered:
    if not val.dtype.is_floating_point or kwargs.get("generator") is not None:
        return None
    return ("rand", ())  # the salt that tells random nodes apart is added by _Lowering._call


def _alias(args: tuple, kwargs: dict, val: Any) -> Lowered:
    return ("alias", (args[0],))


HANDLERS: dict[Any, Handler] = {
    aten.add: _alpha("add"), aten.sub: _alpha("sub"), aten.mul: _same("mul"), aten.div: div,
    aten.neg: _same("neg"), aten.abs: _same("abs"), aten.exp: _same("exp"), aten.exp2: _same("exp2"),
    aten.log: _same("log"), aten.log2: _same("log2"), aten.log1p: _same("log1p"),
    aten.expm1: _same("expm1"), aten.sqrt: _same("sqrt"), aten.rsqrt: _same("rsqrt"),
    aten.erf: _same("erf"), aten.tanh: _same("tanh"), aten.sigmoid: _same("sigmoid"),
    aten.sin: _same("sin"), aten.cos: _same("cos"), aten.reciprocal: _same("reciprocal"),
    aten.floor: _same("floor"), aten.ceil: _same("ceil"), aten.trunc: _same("trunc"),
    aten.sign: _same("sign"), aten.relu: _same("relu"), aten.isnan: _same("isnan"),
    aten.isinf: _same("isinf"), aten.maximum: _same("maximum"), aten.minimum: _same("minimum"),
    aten.pow: _pow, aten.clamp: _clamp, aten.clamp_min: _clamp_min,
    aten.clamp_max: _clamp_max, aten.where: _where,
    aten.eq: _same("eq"), aten.ne: _same("ne"), aten.lt: _same("lt"), aten.le: _same("le"),
    aten.gt: _same("gt"), aten.ge: _same("ge"),
    aten.logical_and: _same("logical_and"), aten.logical_or: _same("logical_or"),
    aten.logical_xor: _same("logical_xor"), aten.logical_not: _same("logical_not"),
    **BIT_OPS,
    aten._to_copy: _to_copy, prims.convert_element_type: _to_copy, aten.clone: _clone,
    aten.lift_fresh_copy: _clone, aten.full: _full, aten.scalar_tensor: _scalar_tensor,
    aten._unsafe_view: _reshape, aten.reshape: _reshape,
    aten.squeeze: _reshape, aten.unsqueeze: _reshape, aten.permute: _permute,
    aten.transpose: _transpose, aten.t: _t, aten.expand: _expand, aten.alias: _alias,
    aten.rand_like: _rand, aten.rand: _rand, aten.copy: _copy,
    aten.full_like: full_like, aten.arange: arange, aten.remainder: modulo("remainder"),
    aten.fmod: modulo("fmod"), aten.round: round_,
}


# Ops that exist only once Inductor has defined them (prims.fma), which a process that only loads
# packages never imports: found by name, so importing fusec does not import Inductor.
BY_NAME: dict[str, Handler] = {"prims::fma": _same("fma")}


def _slice_handler(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> Lowered:
    dim = args[1] % len(src_shape) if len(args) > 1 else 0
    start = args[2] if len(args) > 2 and args[2] is not None else 0
    step = args[4] if len(args) > 4 else 1
    if not all(isinstance(v, int) for v in (dim, start, step)) or step < 1:
        return None
    size = src_shape[dim]
    if not isinstance(size, int):
        # Counting from the end of a symbolic dim is index math over its symbol: torch runs it.
        return ("slice", (args[0], dim, start, step)) if start >= 0 else None
    start = min(max(start + size if start < 0 else start, 0), size)
    return ("slice", (args[0], dim, start, step))


def _select_handler(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> Lowered:
    dim = args[1] % len(src_shape)
    index = args[2]
    if not isinstance(index, int) or (index < 0 and not isinstance(src_shape[dim], int)):
        return None
    return ("select", (args[0], dim, index % src_shape[dim]))


def _dims(dims: Any, rank: int) -> tuple[int, ...] | None:
    """Reduced dims, sorted and non-negative; () means all. None when not static."""
    if dims is None:
        return ()
    if isinstance(dims, int):
        dims = (dims,)
    if not all(isinstance(d, int) for d in dims):
        return None
    if rank == 0:
        return ()
    return tuple(sorted({d % rank for d in dims}))


def _reduction(op: str, dims_at: int | None, keepdim_at: int | None, kinds: str = "any") -> Callable:
    """Handler for a reduction whose dims and keepdim sit at these argument positions."""
    def handler(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> Lowered:
        if kwargs.get("dtype") is not None and op not in ("sum", "prod"):
            return None
        dims = args[dims_at] if dims_at is not None and len(args) > dims_at else kwargs.get("dim")
        keepdim = args[keepdim_at] if keepdim_at is not None and len(args) > keepdim_at else kwargs.get("keepdim")
        dims = _dims(dims, len(src_shape))
        if dims is None or (kinds == "ordered" and val.dtype == torch.bool):
            return None
        return (op, (args[0], dims, bool(keepdim)))
    return handler


def _var(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> Lowered:
    dims = _dims(args[1], len(src_shape))
    correction = args[2] if len(args) > 2 else kwargs.get("correction", 1)
    if dims is None or not isinstance(correction, (int, float)) or kwargs.get("output_dtype") is not None:
        return None
    return ("var", (args[0], dims, False, correction))


def _prims_div(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> Lowered:
    # prims.div truncates for integers; only true division is the primitive div.
    return ("div", tuple(args)) if val.dtype.is_floating_point else None


def _broadcast_in_dim(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> Lowered:
    return ("broadcast_in_dim", (args[0], tuple(args[2])))


def _cat(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> Lowered:
    tensors = list(args[0])
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not all(isinstance(t, Ref) for t in tensors) or not isinstance(dim, int) or val.dim() == 0:
        return None
    return ("cat", (*tensors, dim % val.dim()))


def _gather(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> Lowered:
    if kwargs.get("sparse_grad") or (len(args) > 3 and args[3]):
        return None
    return ("gather", (args[0], args[1] % max(len(src_shape), 1), args[2]))


_MATMUL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _matmul(args: tuple, kwargs: dict, val: Any, src_shape: tuple[int, ...]) -> Lowered:
    # Integer and float64 products run through torch; so do mixed dtypes, which torch rejects.
    if val.dtype not in _MATMUL_DTYPES or kwargs:
        return None
    return ("matmul", (args[0], args[1]))


_SHAPE_AWARE = {
    aten.slice: _slice_handler, aten.select: _select_handler, aten.view: view,
    aten.sum: _reduction("sum", 1, 2), prims.sum: _reduction("sum", 1, None),
    aten.amax: _reduction("amax", 1, 2, "ordered"), aten.amin: _reduction("amin", 1, 2, "ordered"),
    aten.prod: _reduction("prod", 1, 2), aten.argmax: _reduction("argmax", 1, 2, "ordered"),
    aten.argmin: _reduction("argmin", 1, 2, "ordered"), aten.any: _reduction("any", 1, 2),
    aten.all: _reduction("all", 1, 2), prims.var: _var, prims.div: _prims_div,
    prims.broadcast_in_dim: _broadcast_in_dim, aten.gather: _gather,
    aten.mm: _matmul, aten.bmm: _matmul, aten.cat: _cat, aten.embedding: embedding,
    aten.index: index, aten.index_select: index_select,
    aten.cumsum: scan("sum"), aten.cumprod: scan("prod"), aten.logcumsumexp: scan("logsumexp"),
}

# Index tensors a row lookup reads (a bool or uint8 index is a mask: torch runs it).
_INDEX_DTYPES = frozenset({"int32", "int64"})


def lower_call(node: torch.fx.Node, graph: Graph, args: tuple, kwargs: dict) -> Lowered:
    """What the call `node` becomes (`args`, `kwargs`: its arguments as IR values), or None:
    it runs through torch."""
    target = node.target
    val = node.meta.get("val")
    if not isinstance(target, torch._ops.OpOverload) or not isinstance(val, torch.Tensor):
        return None
    packet = target.overloadpacket
    tensors = [graph[r.name] for r in args if isinstance(r, Ref)] + [graph[r.name] for r in kwargs.values()
                                                                  if isinstance(r, Ref)]
    if dtype_name(val.dtype) not in SUPPORTED_DTYPES or any(t.dtype not in SUPPORTED_DTYPES for t in tensors):
        return None
    if packet in (aten.mm, aten.bmm) and any(t.dtype != dtype_name(val.dtype) for t in tensors):
        return None
    if packet in _SHAPE_AWARE:
        first = args[0][0] if isinstance(args[0], list | tuple) and args[0] else args[0]
        if not isinstance(first, Ref):
            return None
        lowered = _SHAPE_AWARE[packet](args, kwargs, val, graph[first.name].symbolic_shape)
        if lowered is not None and lowered[0] == "take":
            src, index = (graph[r.name] for r in lowered[1][:2])
            shape = tuple(size_of(s, graph.hints, "an index lookup")[1] for s in val.shape)
            if index.dtype not in _INDEX_DTYPES or shape != index.symbolic_shape + src.symbolic_shape[1:]:
                return None
        return lowered
    if packet is aten.flip:
        return reverse_scan(args, graph)
    if packet is aten.put:
        return put(args, kwargs, graph, node)
    handler = HANDLERS.get(packet) or BY_NAME.get(packet._qualified_op_name)
    lowered = handler(args, kwargs, val) if handler else None
    if lowered is not None and lowered[0] in POINTWISE_OPS and not sizes.all_static(lowered[1]):
        return None  # a size as a value (x * s0): kernels take sizes in index math only
    return lowered
