"""Freezing (`freeze=True`): an inference graph's parameters and buffers are constants.

Which inputs are a module's weights is known only in Dynamo's graph (each input's source);
the ATen graph AOTAutograd makes from it takes the same inputs in the same order. There,
a pointwise op with a constant per-channel operand right after a convolution (or a per-column
one after a matmul) folds into the weights: eval BatchNorm's decomposed affine, a layer scale.
What stays computed from constants only is split off by fusec/frozen.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.fx

aten = torch.ops.aten

# Sources of a module's parameters and buffers in Dynamo's graph (nn modules inlined).
_WEIGHT_SOURCE = re.compile(r"\._(parameters|buffers)\[")
# op -> (may the folded operand be either argument, what the weight does, what the bias does)
_FOLDABLE = {
    aten.mul.Tensor: (True, aten.mul.Tensor, aten.mul.Tensor),
    aten.div.Tensor: (False, aten.div.Tensor, aten.div.Tensor),
    aten.add.Tensor: (True, None, aten.add.Tensor),
    aten.sub.Tensor: (False, None, aten.sub.Tensor),
}


@dataclass(frozen=True)
class Weight:
    """An input of the captured graph that is a module's parameter or buffer."""

    index: int  # its position among the graph's inputs
    name: str  # its path in the module: `layer1.0.bn1.running_var`
    tensor: torch.Tensor


def weights_of(gm: torch.fx.GraphModule, example_inputs: list) -> list[Weight]:
    """The inputs of Dynamo's graph that are parameters or buffers of a module, with their values."""
    found = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for index, (node, value) in enumerate(zip(placeholders, example_inputs, strict=False)):
        source = getattr(node.meta.get("grapharg"), "source", None)
        path = source.name if source is not None else ""
        if isinstance(value, torch.Tensor) and _WEIGHT_SOURCE.search(path) and not value.is_inference():
            found.append(Weight(index, _weight_path(path), value))
    return found


def _weight_path(dynamo_path: str) -> str:
    """`L['self']._modules['layer1']._modules['0']._buffers['running_var']` -> `layer1.0.running_var`."""
    keys = re.findall(r"\._(?:modules|parameters|buffers)\[['\"]?([^'\"\]]+)['\"]?\]", dynamo_path)
    return ".".join(keys) or dynamo_path


def written_inputs(gm: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """The placeholders an op of the graph writes (a BatchNorm's running statistics in training mode)."""
    written = set()
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        for arg, spec in zip(node.args, schema.arguments, strict=False):
            if spec.alias_info is not None and spec.alias_info.is_write and isinstance(arg, torch.fx.Node):
                written.add(arg)
    return written


def is_foldable(node: torch.fx.Node) -> bool:
    """An op torch may compute once, ahead of time: deterministic, writing nothing, one tensor out."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return False
    if target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags:
        return False
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and not _symbolic(val)


def _symbolic(val: torch.Tensor) -> bool:
    return any(isinstance(d, torch.SymInt) for d in (*val.shape, *val.stride()))


def fold_into_producers(gm: torch.fx.GraphModule, constant: set[torch.fx.Node]) -> int:
    """Pointwise ops with a constant per-channel operand fold into the convolution or matmul
    before them (`constant`: nodes computed from frozen inputs only; grows with the new weights).

    Invariant: every value the graph outputs is unchanged up to rounding. Rewrites `gm` in place
    (fusec/frozen.py hands it a copy of its own) and leaves the new weights after their readers
    (fusec/frozen.py moves them into the constant graph). Returns the ops folded.
    """
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.convolution.default:
            folded += _fold_chain(gm.graph, _ConvFold(node, constant))
        elif node.target is aten.mm.default:
            folded += _fold_chain(gm.graph, _MatmulFold(node, constant))
    return folded


def _fold_chain(graph: torch.fx.Graph, fold: _Fold) -> int:
    """Folds the producer's only user into it, again and again while the next one folds too."""
    count = 0
    producer = fold.node
    while fold.ready() and len(producer.users) == 1:
        user = next(iter(producer.users))
        operand = _other_operand(user, producer)
        if operand is None or not fold.fits(user, operand):
            break
        with graph.inserting_before(user):  # after the operand; fusec/frozen.py orders the constants
            folded = fold.apply(graph, user, operand)
        producer = fold.node
        if folded:
            user.replace_all_uses_with(producer)
            graph.erase_node(user)
            count += 1
    return count


def _other_operand(user: torch.fx.Node, producer: torch.fx.Node) -> torch.fx.Node | float | None:
    """The operand of `user` that is not `producer`, when `user` is an op that folds."""
    if user.target not in _FOLDABLE or user.kwargs or len(user.args) != 2:
        return None
    either, _, _ = _FOLDABLE[user.target]
    first, second = user.args
    if first is producer and second is not producer:
        return second
    if either and second is producer:
        return first
    return None


def _same_value_shape(a: torch.fx.Node, b: torch.fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and va.shape == vb.shape
            and va.dtype == vb.dtype and va.stride() == vb.stride())


class _Fold:
    """Folding `op(producer, operand)` into the producer's weight and bias arguments."""

    node: torch.fx.Node
    channel_dim: int  # the producer output's dim the operand may vary along
    weight_ndim: int

    def __init__(self, node: torch.fx.Node, constant: set) -> None:
        self.node = node
        self.constant = constant
        self.channels = node.meta["val"].shape[self.channel_dim]

    def ready(self) -> bool:
        """The producer's weight (and bias, if any) are constants."""
        raise NotImplementedError

    def apply(self, graph: torch.fx.Graph, user: torch.fx.Node, operand: torch.fx.Node | float) -> bool:
        """Folds `user` into the producer (True), or takes it as the producer's own tail (False)."""
        raise NotImplementedError

    def fits(self, user: torch.fx.Node, operand: torch.fx.Node | float) -> bool:
        """`operand` is a constant of the producer's dtype varying along the channel dim only."""
        if not _same_value_shape(user, self.node) or not self.node.meta["val"].is_floating_point():
            return False
        if isinstance(operand, float | int) and not isinstance(operand, bool):
            return True
        if not isinstance(operand, torch.fx.Node) or operand not in self.constant:
            return False
        val, out = operand.meta.get("val"), self.node.meta["val"]
        if not isinstance(val, torch.Tensor) or val.dtype != out.dtype or val.dim() > out.dim():
            return False
        channel = self.channel_dim - out.dim()  # from the right
        return all(size == 1 or (d - val.dim() == channel and size == self.channels)
                   for d, size in enumerate(val.shape))

    def per_channel(self, graph: torch.fx.Graph, operand: torch.fx.Node | float, ndim: int,
                    dim: int) -> torch.fx.Node:
        """The operand as a constant shaped to scale `dim` of an `ndim`-dim tensor."""
        dtype = self.node.meta["val"].dtype
        if isinstance(operand, torch.fx.Node):
            flat = self._constant(graph, aten.reshape.default, (operand, [-1]))
            vector = self._constant(graph, aten.expand.default, (flat, [self.channels]))
        else:
            vector = self._constant(graph, aten.full.default, ([self.channels], operand), {"dtype": dtype})
        shape = [1] * ndim
        shape[dim] = self.channels
        return self._constant(graph, aten.reshape.default, (vector, shape))

    def new_weights(self, graph: torch.fx.Graph, user: torch.fx.Node, operand: torch.fx.Node | float,
                    weight: torch.fx.Node, weight_dim: int, bias: torch.fx.Node | None
                    ) -> tuple[torch.fx.Node, torch.fx.Node | None]:
        """The weight and bias that compute `user` in the producer."""
        _, on_weight, on_bias = _FOLDABLE[user.target]
        vector = self.per_channel(graph, operand, 1, 0)
        if on_weight is not None:
            ndim = self.weight_ndim
            weight = self._constant(graph, on_weight, (weight, self.per_channel(graph, operand, ndim, weight_dim)))
        if bias is not None:
            bias = self._constant(graph, on_bias, (bias, vector))
        elif on_weight is None:  # no bias yet: `x + c` gives c, `x - c` gives -c
            bias = vector if user.target is aten.add.Tensor else self._constant(graph, aten.neg.default, (vector,))
        return weight, bias

    def _constant(self, graph: torch.fx.Graph, target: torch._ops.OpOverload, args: tuple,
                  kwargs: dict | None = None) -> torch.fx.Node:
        node = graph.call_function(target, args, kwargs or {})
        self.constant.add(node)
        return node


class _ConvFold(_Fold):
    """A convolution's weight is [C_out, C_in / groups, *kernel]: each output channel has its row."""

    channel_dim = 1

    @property
    def weight_ndim(self) -> int:
        return self.node.meta["val"].dim()

    def ready(self) -> bool:
        args = self.node.args
        transposed = args[6]
        return not transposed and args[1] in self.constant and (args[2] is None or args[2] in self.constant)

    def apply(self, graph: torch.fx.Graph, user: torch.fx.Node, operand: torch.fx.Node | float) -> bool:
        args = list(self.node.args)
        args[1], args[2] = self.new_weights(graph, user, operand, args[1], 0, args[2])
        self.node.args = tuple(args)
        return True


class _MatmulFold(_Fold):
    """`mm(x, w)`, with its bias added after it (fusec's decompositions split addmm so): w is
    [K, N], each output column has its column of w, and the bias one element."""

    channel_dim = 1
    weight_ndim = 2

    def __init__(self, node: torch.fx.Node, constant: set) -> None:
        super().__init__(node, constant)
        self.mm = node
        self.bias_add: torch.fx.Node | None = None  # the add of the folded bias, once there is one

    def ready(self) -> bool:
        return not self.mm.kwargs and self.mm.args[1] in self.constant

    def apply(self, graph: torch.fx.Graph, user: torch.fx.Node, operand: torch.fx.Node | float) -> bool:
        if self.bias_add is None and user.target is aten.add.Tensor and _is_vector(operand, self.channels):
            self.bias_add = self.node = user  # a Linear's own bias: it is the bias the folds update
            return False
        x, weight = self.mm.args
        bias = None
        if self.bias_add is not None:
            first, second = self.bias_add.args
            bias = second if first is self.mm else first
        weight, bias = self.new_weights(graph, user, operand, weight, 1, bias)
        self.mm.args = (x, weight)
        if self.bias_add is None and bias is not None:
            with graph.inserting_after(self.mm):
                self.bias_add = graph.call_function(aten.add.Tensor, (self.mm, bias))
            self.bias_add.meta = dict(self.mm.meta)
            self.node = self.bias_add
        elif self.bias_add is not None:
            self.bias_add.args = (self.mm, bias) if self.bias_add.args[0] is self.mm else (bias, self.mm)
        return True


def _is_vector(operand: torch.fx.Node | float, length: int) -> bool:
    val = operand.meta.get("val") if isinstance(operand, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and tuple(val.shape) == (length,)
