"""ATen FX graph -> fusec IR: each ATen op becomes a primitive op or an extern call.

`to_ir` walks the FX graph node by node: inputs, constants, the output, and calls,
which `lowering_ops.lower_call` translates (None: the call runs through torch).
Shapes, dtypes and strides come from the fake tensors in `node.meta["val"]`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from fusec.ir import SIZE_DTYPE, Graph, Kind, Node, Ref, kind_of
from fusec.lowering_ops import lower_call
from fusec.lowering_sizes import Unsupported, describe, dtype_name, size_of
from fusec.lowering_sort import sort_nodes
from fusec.stores import STORES, stores_into_input


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def _convert_args(value: Any, hints: dict[str, int]) -> Any:
    """fx args -> IR args: fx nodes become Refs, sizes (SymInts, or the fx nodes computing
    them) their expressions over the size symbols; every other value is kept as it is."""
    if isinstance(value, torch.fx.Node):
        val = value.meta.get("val")
        return size_of(val, hints, value.name)[1] if isinstance(val, torch.SymInt) else Ref(value.name)
    if isinstance(value, tuple):
        return tuple(_convert_args(v, hints) for v in value)
    if isinstance(value, list):
        return [_convert_args(v, hints) for v in value]
    if isinstance(value, torch.SymInt):
        return size_of(value, hints, "an argument")[1]
    if isinstance(value, torch.SymFloat | torch.SymBool):
        raise Unsupported("a symbolic float or bool argument")
    return value


_COMPARISONS = frozenset({"eq", "ne", "lt", "le", "gt", "ge"})


def _comparison_dtype(args: tuple, graph: Graph) -> torch.dtype:
    """The dtype torch compares in: result_type over the operands, where a Python scalar
    or 0-d tensor only counts when it is of a higher category (x_half < 0.1 compares in
    half, uint8 < int8 in int16)."""
    # A size (an integer, or a SymPy expression over size symbols) compares as a Python int.
    probes = [torch.empty((1,) * len(graph[a.name].shape), dtype=getattr(torch, graph[a.name].dtype))
              if isinstance(a, Ref) else (a if isinstance(a, bool | int | float) else 1) for a in args]
    return torch.result_type(*probes)


def _round_scalar(value: Any, dtype: torch.dtype) -> Any:
    """A scalar as torch sees it once cast to `dtype` (0.1 in half is 0.0999755859375)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    rounded = torch.tensor(value, dtype=dtype).item()
    return float(rounded) if dtype.is_floating_point else rounded


def _constant(value: torch.Tensor) -> torch.Tensor:
    return value


class _Lowering:
    """The IR of one FX graph as it is built, node by node, with the torch callables of its
    extern nodes by target name (`host`: the nodes that are host scalars, torch computes them)."""

    def __init__(self, name: str, host: frozenset[str]) -> None:
        self.graph = Graph(name=name)
        self.hints: dict[str, int] = {}
        self.graph.hints = self.hints
        self.host = host
        self.callables: dict[str, Callable] = {}
        self.stores: list[tuple[Ref, str]] = []
        self.rands = 0  # random nodes so far: each draws a stream of its own

    def add(self, fx_node: torch.fx.Node, gm: torch.fx.GraphModule) -> None:
        what = f"{fx_node.name} ({fx_node.target})"
        val = fx_node.meta.get("val")
        if fx_node.op == "placeholder":
            self._input(fx_node, val, what)
        elif fx_node.op == "call_function" and isinstance(val, torch.SymInt):
            return  # size arithmetic: readers get its expression (_convert_args)
        elif fx_node.op == "get_attr":
            self._constant(fx_node, getattr(gm, fx_node.target), what)
        elif fx_node.op == "output":
            outputs = _convert_args(fx_node.args[0], self.hints)
            kwargs = ((STORES, tuple(self.stores)),) if self.stores else ()
            self.graph.add(Node(fx_node.name, "output", Kind.OUTPUT, (), "bool", args=tuple(outputs), kwargs=kwargs))
        elif stores_into_input(fx_node):
            self.stores.append((Ref(fx_node.args[1].name), fx_node.args[0].name))
        elif fx_node.name not in self.host and (sorted_nodes := sort_nodes(fx_node, self.graph)) is not None:
            for node in sorted_nodes:
                self.graph.add(node)
        elif fx_node.op == "call_function":
            self._call(fx_node, val, what)
        else:
            raise Unsupported(f"fx node kind {fx_node.op!r} ({fx_node.name})")

    def _input(self, fx_node: torch.fx.Node, val: Any, what: str) -> None:
        if isinstance(val, torch.SymInt):
            # A size handed over as a number: it binds its symbol; readers use the expression.
            expr = size_of(val, self.hints, what)[1]
            self.graph.add(Node(fx_node.name, "input", Kind.INPUT, (), SIZE_DTYPE, args=(expr,)))
            return
        if not isinstance(val, torch.Tensor):
            raise Unsupported(f"input {fx_node.name} is not a tensor ({type(val).__name__})")
        self.graph.add(Node(fx_node.name, "input", Kind.INPUT, host=fx_node.name in self.host,
                            **describe(val, what, self.hints)))

    def _constant(self, fx_node: torch.fx.Node, value: Any, what: str) -> None:
        """A tensor constant of the graph (torch.tensor(...) in the model): torch hands it
        over each call; kernels read it as one more input."""
        if not isinstance(value, torch.Tensor):
            raise Unsupported(f"attribute {fx_node.target} is not a tensor")
        target = f"constant.{fx_node.target}"
        self.callables[target] = functools.partial(_constant, value)
        self.graph.add(Node(fx_node.name, "constant", Kind.OPAQUE, target=target, host=fx_node.name in self.host,
                            **describe(value, what, self.hints)))

    def _call(self, fx_node: torch.fx.Node, val: Any, what: str) -> None:
        """A call: the primitive op it lowers to, or an extern node torch runs."""
        args = tuple(_convert_args(fx_node.args, self.hints))
        kwargs = {k: _convert_args(v, self.hints) for k, v in fx_node.kwargs.items()}
        host = fx_node.name in self.host
        lowered = None if host else lower_call(fx_node, self.graph, args, kwargs)
        described = describe(val, what, self.hints)
        target = _target_name(fx_node.target)
        self.callables[target] = fx_node.target
        if lowered is None:
            op = "getitem" if fx_node.target is operator.getitem else target
            self.graph.add(Node(fx_node.name, op, Kind.OPAQUE, args=args, kwargs=tuple(kwargs.items()),
                                target=target, host=host, **described))
            return
        op, ir_args = lowered
        ir_kwargs: tuple = ()
        if op == "rand":
            ir_args, self.rands = (self.rands,), self.rands + 1
        if op in _COMPARISONS:
            common = _comparison_dtype(ir_args, self.graph)
            ir_args = tuple(_round_scalar(a, common) for a in ir_args)
            ir_kwargs = (("dtype", dtype_name(common)),)
        self.graph.add(Node(fx_node.name, op, kind_of(op), args=tuple(ir_args), kwargs=ir_kwargs, target=target,
                            torch_call=(args, tuple(kwargs.items())), **described))


def to_ir(gm: torch.fx.GraphModule, name: str = "graph",
          host: frozenset[str] = frozenset()) -> tuple[Graph, dict[str, Callable]]:
    """The IR of an ATen FX graph, and the torch callables of its extern nodes by target name
    (`host`: the nodes that are host scalars, fusec/lowering_host.py: torch computes them)."""
    lowering = _Lowering(name, host)
    for fx_node in gm.graph.nodes:
        lowering.add(fx_node, gm)
    return lowering.graph, lowering.callables
