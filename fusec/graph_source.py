"""An ATen FX graph as Python source and back: what torch runs of an exported graph.

The source is FX's own code for the graph (`def forward(self, *placeholders)`); the
globals it names (torch, `inf`, `device`, ...) are stored by reference, as a module
and an attribute path, and resolved again only inside torch and the standard library.
"""

from __future__ import annotations

import importlib
import math
import types
from collections.abc import Callable
from typing import Any

import torch.fx

from fusec.plan import Extern, Plan

# Where the globals of FX code may be found again: nothing outside these is imported.
_MODULES = ("torch", "builtins", "math", "operator", "_operator")


class GraphSourceError(Exception):
    """A graph whose code names something that cannot be stored by reference."""


def graph_source(gm: torch.fx.GraphModule) -> tuple[str, dict[str, Any]]:
    """FX's source for `gm`'s graph and a JSON-ready description of each global it names."""
    code = gm.graph.python_code(root_module="self")
    return code.src, {name: _reference(name, value) for name, value in code.globals.items()}


def _reference(name: str, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is type(None):  # not reachable as builtins.NoneType
        return {"none_type": True}
    if isinstance(value, types.ModuleType):
        module, path = value.__name__, ""
    else:
        module, path = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not module or not _allowed(module) or path is None:
        raise GraphSourceError(f"the exported graph's code names {name} = {value!r}, which fusec cannot store "
                               "by reference (only torch and the standard library)")
    return {"module": module, "path": path}


def _allowed(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _MODULES)


def _resolve(ref: dict[str, Any]) -> Any:
    if "float" in ref:
        return float(ref["float"])
    if "none_type" in ref:
        return type(None)
    if not _allowed(ref["module"]):
        raise GraphSourceError(f"a graph global in module {ref['module']} (only torch and the standard library)")
    value = importlib.import_module(ref["module"])
    for part in filter(None, ref["path"].split(".")):
        value = getattr(value, part)
    return value


def define(source: str, references: dict[str, Any], filename: str) -> Callable[..., Any]:
    """The graph's function: call it with the graph's placeholders in order."""
    scope = {name: _resolve(ref) for name, ref in references.items()}
    exec(compile(source, filename, "exec"), scope)
    forward = scope["forward"]
    return lambda *inputs: forward(None, *inputs)


def torch_callable(target: str) -> Callable[..., Any]:
    """The torch callable an extern node's target names (`aten.convolution.default`), looked up
    again through `torch.ops`; `_operator.getitem` and the like through the standard library."""
    namespace, _, rest = target.partition(".")
    if namespace in ("_operator", "operator", "math") and rest.isidentifier():
        return getattr(importlib.import_module(namespace), rest)
    parts = rest.split(".")
    if len(parts) == 2 and namespace.isidentifier():
        try:
            op = getattr(getattr(getattr(torch.ops, namespace), parts[0]), parts[1])
        except (AttributeError, RuntimeError):
            op = None
        if isinstance(op, torch._ops.OpOverload):
            return op
    raise GraphSourceError(f"the graph calls {target}, which is not an operator of torch.ops: fusec.export "
                           "stores torch calls by operator name only")


def extern_targets(plan: Plan) -> set[str]:
    """The targets of the torch calls the launcher may make (getitems are inline indexing)."""
    steps = plan.steps + tuple(s for k in plan.kernels for s in k.library)
    nodes = [plan.graph[s.node] for s in steps if isinstance(s, Extern)]
    return {n.target for n in nodes if n.op != "getitem"}
