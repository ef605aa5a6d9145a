"""Which forward values the backward reads: AOTAutograd's partitioners, configured for a fusion compiler.

A training graph is traced as one joint forward+backward graph; the partition
splits it and decides, for each value the backward needs, whether the forward
saves it or the backward recomputes it. Recomputing a cheap pointwise op or a
view is free for fusec: it lands in the backward kernel that reads the op's
inputs anyway. The min cut (what TorchInductor uses) finds the cheapest set of
values to save under that assumption; it never recomputes random ops (a
recomputed dropout would draw a new mask) nor expensive ones (matmuls,
convolutions, attention), which are not on its list of recomputable ops.

remat="none": AOTAutograd's default partition, which saves what the backward reads.
remat="auto": the min cut with Inductor's bans (reductions and long chains are not
  recomputed), views always recomputed (index math in fusec), and Inductor's
  "materialized in backward" ban made fusion-aware: a value a backward matmul reads
  is recomputed only where a backward pointwise kernel already reads what it is
  computed from (the recompute becomes one more output of that kernel); otherwise
  it would need a kernel of its own, and it is saved.
remat="aggressive": the min cut with only the allowlist kept: every cheap op
  (pointwise, reduction, view) may be recomputed.
Either min cut is kept only when it saves no more bytes than the default partition.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx
from torch._functorch import config as functorch_config
from torch.fx.experimental.symbolic_shapes import optimization_hint
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.checkpoint import CheckpointPolicy

log = logging.getLogger("fusec")

# torch._functorch.config settings for each min cut (see the module docstring).
_MIN_CUT_CONFIG = {
    "auto": {"recompute_views": True, "ban_recompute_materialized_backward": False},
    "aggressive": {"recompute_views": True, "ban_recompute_used_far_apart": False,
                   "ban_recompute_long_fusible_chains": False, "ban_recompute_materialized_backward": False,
                   "ban_recompute_reductions": False, "ban_recompute_not_in_allowlist": True},
}


@dataclass(frozen=True)
class Value:
    """One value of the forward, saved for the backward or recomputed there, and why."""

    name: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    reason: str


@dataclass(frozen=True)
class Partition:
    """What one training graph saves for its backward and what the backward recomputes."""

    remat: str
    method: str  # the partition that was kept: "default" or "min-cut"
    saved: tuple[Value, ...]
    recomputed: tuple[Value, ...]
    saved_bytes: int  # the saved activations' distinct storages, less the inputs' (held anyway)
    default_saved_bytes: int  # what the default partition saves, for comparison


def _partitioners() -> Any:
    """torch._functorch.partitioners, imported when a training graph is split: it imports Inductor
    and Dynamo, which a process that only loads packages never needs."""
    import torch._functorch.partitioners

    return torch._functorch.partitioners


def partitioner(remat: str, on_partition: Callable[[Partition], None]) -> Callable[..., Any]:
    """An AOTAutograd `partition_fn` for `remat`; each partition it makes is handed to `on_partition`."""
    def partition(joint: torch.fx.GraphModule, joint_inputs: Any, **kwargs: Any) -> tuple[Any, Any]:
        fw, bw = _partitioners().default_partition(joint, joint_inputs, **kwargs)
        default = _describe(remat, "default", fw, bw, 0)
        chosen = default
        if remat != "none":
            try:
                cut_fw, cut_bw = _min_cut(remat, joint, joint_inputs, kwargs)
            except Exception as exc:  # the default partition is always valid: keep it, and say so
                log.warning("fusec: the min-cut partition failed (%s: %s); the graph saves what its backward reads",
                            type(exc).__name__, exc)
            else:
                cut = _describe(remat, "min-cut", cut_fw, cut_bw, default.saved_bytes)
                if cut.saved_bytes <= default.saved_bytes:
                    fw, bw, chosen = cut_fw, cut_bw, cut
        on_partition(_with_default(chosen, default.saved_bytes))
        return fw, bw

    return partition


def _min_cut(remat: str, joint: torch.fx.GraphModule, joint_inputs: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    if remat == "auto":
        _save_unfused_materialized(joint, kwargs)
    with functorch_config.patch(_MIN_CUT_CONFIG[remat]):
        return _partitioners().min_cut_rematerialization_partition(joint, joint_inputs, **kwargs)


def _save_unfused_materialized(joint: torch.fx.GraphModule, kwargs: dict[str, Any]) -> None:
    """Tags MUST_SAVE each cheap forward value that an unfusible backward op (a matmul) reads and
    whose recompute no backward kernel could take in: none reads it or what it is computed from."""
    static = list(kwargs.get("static_lifetime_input_indices") or [])
    info = _partitioners().classify_nodes(joint, static, kwargs["num_fwd_outputs"])
    ops = _op_types()
    for node in joint.graph.nodes:
        if node.op != "call_function" or not info.is_required_fw(node) or "recompute" in node.meta:
            continue
        if not ops.is_recomputable(node) or ops.is_view(node):
            continue
        readers = [u for u in _readers(node, ops) if not info.is_required_fw(u)]
        if all(ops.is_fusible(u) for u in readers):
            continue  # not materialized in the backward: the min cut's own costs apply
        sources = _cheap_cone(node, info, ops)
        if not any(not info.is_required_fw(u) and ops.is_fusible(u) and not ops.is_view(u)
                   for source in sources for u in _readers(source, ops)):
            node.meta["recompute"] = CheckpointPolicy.MUST_SAVE


def _readers(node: torch.fx.Node, ops: Any) -> list[torch.fx.Node]:
    """The ops that read `node`, through views of it."""
    readers, stack = [], list(node.users)
    while stack:
        user = stack.pop()
        if ops.is_view(user):
            stack.extend(user.users)
        readers.append(user)
    return readers


def _cheap_cone(node: torch.fx.Node, info: Any, ops: Any) -> list[torch.fx.Node]:
    """`node` and the forward values it is recomputed from: its cheap ancestors and the values they start at."""
    cone: dict[torch.fx.Node, None] = {}  # an ordered set
    stack = [node]
    while stack:
        current = stack.pop()
        if current in cone:
            continue
        cone[current] = None
        if current.op == "call_function" and info.is_required_fw(current) and ops.is_recomputable(current):
            stack.extend(a for a in current.all_input_nodes if a not in cone)
    return list(cone)


def _with_default(p: Partition, default_bytes: int) -> Partition:
    return replace(p, default_saved_bytes=default_bytes)


def _describe(remat: str, method: str, fw: torch.fx.GraphModule, bw: torch.fx.GraphModule,
              default_bytes: int) -> Partition:
    """The saved values (the backward's inputs other than incoming gradients) and the recomputed ones
    (forward ops the backward graph computes again)."""
    forward_nodes = {n.name: n for n in fw.graph.nodes}
    saved = tuple(_value(forward_nodes.get(n.name, n), _why_saved(forward_nodes.get(n.name, n), method))
                  for n in bw.graph.nodes
                  if n.op == "placeholder" and not n.name.startswith("tangents") and _is_tensor(n))
    recomputed = tuple(_value(n, _why_recomputed(n)) for n in bw.graph.nodes
                       if n.op == "call_function" and n.name in forward_nodes)
    inputs = {_storage(n) for n in fw.graph.nodes if n.op == "placeholder" and _is_tensor(n)}
    storages = {_storage(n): _storage_bytes(n) for n in bw.graph.nodes if n.name in {v.name for v in saved}}
    saved_bytes = sum(size for key, size in storages.items() if key not in inputs)
    return Partition(remat, method, saved, recomputed, saved_bytes, default_bytes)


def _storage(node: torch.fx.Node) -> Any:
    return StorageWeakRef(node.meta["val"].untyped_storage())


def _storage_bytes(node: torch.fx.Node) -> int:
    # Sizes of a dynamic graph are counted at the example's values: an int() would add a guard.
    return optimization_hint(node.meta["val"].untyped_storage().nbytes())


def _is_tensor(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _value(node: torch.fx.Node, reason: str) -> Value:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return Value(node.name, _op_name(node), (), "", 0, reason)
    shape = tuple(optimization_hint(s) for s in val.shape)
    return Value(node.name, _op_name(node), shape, str(val.dtype).removeprefix("torch."),
                 optimization_hint(val.numel()) * val.element_size(), reason)


def _op_name(node: torch.fx.Node) -> str:
    if node.op == "placeholder":
        return "input"
    packet = getattr(node.target, "_overloadpacket", None)
    return str(packet.__name__) if packet is not None else getattr(node.target, "__name__", str(node.target))


def _why_saved(node: torch.fx.Node, method: str) -> str:
    ops = _op_types()
    if node.op == "placeholder":
        return "graph input: held by the caller anyway"
    if ops.is_random(node) or _is_random(node):
        return "random: recomputing it would draw new numbers"
    if any(ops.is_random(a) or _is_random(a) for a in node.all_input_nodes):
        return "made from random numbers (a dropout mask): kept, never drawn again"
    if ops.is_compute_intensive(node) or "attention" in _op_name(node):
        return "expensive: a matmul, convolution or attention is not recomputed"
    if method == "default":
        return "read by the backward (default partition)"
    if not ops.is_recomputable(node):
        return "not a cheap op (not on the recomputable list)"
    return "min cut: cheaper to save than to recompute from saved values"


def _is_random(node: torch.fx.Node) -> bool:
    return torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())


def _why_recomputed(node: torch.fx.Node) -> str:
    if _op_types().is_view(node):
        return "view: index math, no copy"
    return "cheap: recomputed in the backward from values it reads anyway"


@functools.cache
def _op_types() -> Any:
    return _partitioners().get_default_op_list()
