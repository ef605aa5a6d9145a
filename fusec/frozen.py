"""A frozen inference graph: constants folded once at compile time, weights checked at every call.

The ATen graph splits in two: a constant graph (the ops that read frozen weights only) that
torch runs once, and the graph fusec compiles, which takes the live inputs and the folded
constants. Each call checks that every frozen weight is the tensor it was, unwritten since
(`_version`); when one changed, the constants are folded again from the new values, so a
changed weight never gives a stale result.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import unset_fake_temporarily

from fusec.freezing import Weight, fold_into_producers, is_foldable, written_inputs

log = logging.getLogger("fusec")


@dataclass
class Frozen:
    """An inference graph with its weights folded: what to compile, and how to feed it."""

    graph: torch.fx.GraphModule  # takes the live inputs, then the constants
    constants_of: torch.fx.GraphModule  # the frozen weights -> the constants
    live: list[int]  # positions of the original inputs the graph still takes
    weights: list[Weight]  # positions (in the original inputs) and values of the frozen weights
    constants: list[torch.Tensor]
    folded_ops: int  # pointwise ops folded into convolutions' and matmuls' weights

    def summary(self) -> str:
        return (f"{len(self.weights)} weights frozen, {len(self.constants)} constants folded, "
                f"{self.folded_ops} ops folded into convolutions and matmuls")


class NotFrozen(Exception):
    """AOTAutograd's graph does not take Dynamo's inputs as they were: which are weights is unknown."""


def freeze(gm: torch.fx.GraphModule, fake_inputs: list, weights: list[Weight]) -> Frozen | str:
    """The frozen form of an ATen inference graph, or why there is nothing in it to freeze.

    `weights` are positions among the inputs of Dynamo's graph, which AOTAutograd's graph
    takes in the same order; a graph whose inputs differ (deduplicated, or a size or dtype
    that differs) raises NotFrozen.
    """
    gm = torch.fx.GraphModule(gm, _copy(gm.graph))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(fake_inputs):
        raise NotFrozen(f"its ATen graph takes {len(placeholders)} inputs where Dynamo's took {len(fake_inputs)}")
    written = written_inputs(gm)
    kept = []
    for weight in weights:
        node = placeholders[weight.index] if weight.index < len(placeholders) else None
        val = node.meta.get("val") if node is not None else None
        if not isinstance(val, torch.Tensor) or val.shape != weight.tensor.shape or val.dtype != weight.tensor.dtype:
            raise NotFrozen(f"input {weight.index} of its ATen graph is not the weight {weight.name}")
        if node not in written:
            kept.append(weight)
    if len(kept) < len(weights):
        log.warning("fusec: freeze=True: the graph writes %s, so they stay inputs and nothing computed from "
                    "them is folded (a BatchNorm in training mode? call model.eval() for inference)",
                    _names([w.name for w in weights if w not in kept]))
    if not kept:
        return "no weight is read and left unwritten"
    constant = _foldable_from(gm, {placeholders[w.index] for w in kept})
    folded_ops = fold_into_producers(gm, constant)
    constant = _computed(gm, _foldable_from(gm, constant))  # what the folds left computed from constants only
    if not constant:
        return "nothing is computed from weights alone"
    kept = [w for w in kept if placeholders[w.index] in constant]
    return _split(gm, placeholders, kept, constant, folded_ops, detect_fake_mode(fake_inputs))


def _copy(graph: torch.fx.Graph) -> torch.fx.Graph:
    new = torch.fx.Graph()
    output = new.graph_copy(graph, {}, return_output_node=True)
    new.output(output[0])
    return new


def _foldable_from(gm: torch.fx.GraphModule, constant: set[torch.fx.Node]) -> set[torch.fx.Node]:
    """The nodes computed from frozen weights only (the folds' new weights included), none larger
    than the largest constant it reads (a broadcast of a weight stays in the compiled graph)."""
    done = set(constant)
    changed = True
    while changed:  # the folds' new weights sit after their readers: repeat to a fixed point
        changed = False
        for node in gm.graph.nodes:
            if node in done or node.op != "call_function":
                continue
            reads = node.all_input_nodes
            if node in constant or (reads and all(r in done for r in reads) and is_foldable(node)
                                    and _numel(node) <= max(_numel(r) for r in reads)):
                done.add(node)
                changed = True
    return done


def _computed(gm: torch.fx.GraphModule, constant: set[torch.fx.Node]) -> set[torch.fx.Node]:
    """`constant` without the weights and views of weights nothing is computed from: the compiled
    graph reads those live (a view is no launch), and they need no check at each call. Nor are
    the graph's outputs constants: each call returns new tensors, as eager does, which the caller
    may write without writing a constant."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    constant = set(constant) - {n for n in output.all_input_nodes if n.op != "placeholder" and "val" in n.meta}
    changed = True
    while changed:  # what reads an output is not constant either (`wt = w.t()` returned, `wt * 2` folded)
        changed = False
        for node in list(constant):
            if any(r not in constant for r in node.all_input_nodes):
                constant.discard(node)
                changed = True
    changed = True
    while changed:
        changed = False
        for node in list(constant):
            read_live = node.op == "placeholder" or (getattr(node.target, "is_view", False) and "val" in node.meta)
            if read_live and not any(u in constant for u in node.users):
                constant.discard(node)
                changed = True
    return constant


def _numel(node: torch.fx.Node) -> int:
    val = node.meta.get("val")
    return val.numel() if isinstance(val, torch.Tensor) else 0  # a fold's new weight: no value yet


def _split(gm: torch.fx.GraphModule, placeholders: list[torch.fx.Node], weights: list[Weight],
           constant: set[torch.fx.Node], folded_ops: int, fake_mode: Any) -> Frozen:
    """The constant graph and the compiled graph, the constants computed once."""
    needed = [n for n in _in_order(gm, constant) if n.op != "placeholder" or n in constant]
    boundary = [n for n in needed if any(u not in constant for u in n.users)]
    constants_of = _constant_graph(gm, [placeholders[w.index] for w in weights], needed, boundary)
    with unset_fake_temporarily(), torch.no_grad():  # real values, inside AOTAutograd's fake tracing
        values = list(constants_of(*[w.tensor for w in weights]))
    live = [i for i, n in enumerate(placeholders) if n not in constant]
    main = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for i in live:
        env[placeholders[i]] = main.node_copy(placeholders[i], env.__getitem__)
    for node, value in zip(boundary, values, strict=True):
        env[node] = main.placeholder(f"frozen_{node.name}")
        env[node].meta["val"] = fake_mode.from_tensor(value, static_shapes=True)
    for node in gm.graph.nodes:
        if node.op != "placeholder" and node not in constant:
            env[node] = main.node_copy(node, env.__getitem__)
    main.eliminate_dead_code()
    main.lint()
    return Frozen(torch.fx.GraphModule(gm, main), constants_of, live, weights, values, folded_ops)


def _in_order(gm: torch.fx.GraphModule, nodes: set[torch.fx.Node]) -> list[torch.fx.Node]:
    """`nodes` in an order where each comes after what it reads (a fold's new weights do not yet)."""
    ordered: list[torch.fx.Node] = []
    seen: set[torch.fx.Node] = set()

    def visit(node: torch.fx.Node) -> None:
        stack = [(node, False)]
        while stack:
            current, expanded = stack.pop()
            if expanded:
                ordered.append(current)
            elif current not in seen:
                seen.add(current)
                stack.append((current, True))
                stack.extend((r, False) for r in current.all_input_nodes if r in nodes and r not in seen)
    for node in gm.graph.nodes:
        if node in nodes:
            visit(node)
    return ordered


def _constant_graph(gm: torch.fx.GraphModule, inputs: list[torch.fx.Node], nodes: list[torch.fx.Node],
                    outputs: list[torch.fx.Node]) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in inputs:
        env[node] = graph.placeholder(node.name)
    for node in nodes:
        if node.op != "placeholder":
            env[node] = graph.node_copy(node, env.__getitem__)
    graph.output(tuple(env[n] for n in outputs))
    graph.eliminate_dead_code()
    return torch.fx.GraphModule(gm, graph)


class FrozenCall:
    """Runs a compiled frozen graph on the live inputs and the constants, folding the constants
    again first when a frozen weight is another tensor or was written since."""

    _boxed_call = True

    def __init__(self, frozen: Frozen, compiled: Callable, fallback: Callable, name: str) -> None:
        self.frozen = frozen
        self.compiled = compiled
        self.fallback = fallback  # the unfrozen graph, for weights whose constants no longer fit
        self.name = name
        self.at = [w.index for w in frozen.weights]
        self.tensors = [w.tensor for w in frozen.weights]
        self.versions = [t._version for t in self.tensors]
        self.refolds = 0
        self.broken: str | None = None

    def __call__(self, args: list[Any]) -> Any:
        if self.broken:
            return self.fallback(args)
        weights = [args[i] for i in self.at]
        if not (all(map(operator.is_, weights, self.tensors)) and [w._version for w in weights] == self.versions):
            self._refold(weights)
            if self.broken:
                return self.fallback(args)
        inputs = [args[i] for i in self.frozen.live]
        inputs += self.frozen.constants
        args.clear()
        return self.compiled(inputs)

    def _refold(self, weights: list[torch.Tensor]) -> None:
        changed = [w.name for w, new, old, version in zip(self.frozen.weights, weights, self.tensors,
                                                          self.versions, strict=True)
                   if new is not old or new._version != version]
        with torch.no_grad():
            values = list(self.frozen.constants_of(*weights))
        if any(_layout(a) != _layout(b) for a, b in zip(values, self.frozen.constants, strict=True)):
            self.broken = (f"frozen weights of {self.name} changed size, dtype, layout or device ("
                           f"{_names(changed)}); the graph runs through torch, unfrozen, from now on")
            log.warning("fusec: %s", self.broken)
            return
        (log.debug if self.refolds else log.warning)(
            "fusec: %s: frozen weights changed since they were folded (%s): their constants are folded "
            "again (freeze=True suits weights that do not change; each change costs a fold)",
            self.name, _names(changed))
        self.refolds += 1
        self.frozen.constants = values
        self.tensors = weights
        self.versions = [w._version for w in weights]


def _layout(t: torch.Tensor) -> tuple:
    return t.shape, t.stride(), t.dtype, t.device


def _names(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
