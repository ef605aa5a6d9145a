"""`fusec.export`: capture a model with torch.export, plan it as fusec.compile would, write a package.

The capture is torch.export's (parameters lifted to inputs, one flat ATen graph
decomposed with fusec's table), so loading needs no Dynamo and no AOTAutograd;
everything after it is fusec's one pipeline (`plan_graph`: lowering, passes, plan,
streams, kernel sources). Shapes are the example inputs' unless torch.export's
`dynamic_shapes` makes dims symbols: the manifest then holds each dim as an int or
its expression over the symbols (`"s0"`), and each symbol's range.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sympy
import torch
from torch import nn
from torch.export.graph_signature import InputKind, OutputKind
from torch.utils import _pytree

from fusec.compiler import CompiledGraph, build_runtime, plan_graph
from fusec.decompositions import DECOMPOSITIONS
from fusec.execution import TRITON
from fusec.export_sizes import tensor_spec, versions
from fusec.graph_source import extern_targets, graph_source, torch_callable
from fusec.kernels.binaries import current_target, pack
from fusec.launcher_text import launcher_source
from fusec.options import OptionError, Options
from fusec.package import dump_plan, write

log = logging.getLogger("fusec")

GRAPH_NAME = "export_0"
WEIGHT_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


@dataclass(frozen=True)
class Exported:
    """What `fusec.export` wrote: the file, its SHA-256 (pin it with `fusec.load(path, sha256=...)`),
    its manifest and the planned graph."""

    path: Path
    sha256: str
    manifest: dict[str, Any]
    record: CompiledGraph


class _Function(nn.Module):
    """A function of tensors as the module torch.export takes."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def export(model: Callable[..., Any], *args: torch.Tensor, path: str | Path, weights: bool = True,
           dynamic_shapes: Any = None, **options: Any) -> Exported:
    """Trace `model(*args)`, plan and generate its kernels, and write them to one file at `path`.

    `args` are tensors; the package serves their dtypes on their device, and their shapes
    except the dims `dynamic_shapes` (torch.export's, e.g. `{"x": {0: Dim("batch")}}`) names.
    With `weights=False` the package holds only the names, shapes and dtypes of the
    parameters and buffers: give them with `runner.load_state_dict(...)` after `fusec.load`.
    Options are fusec.compile's (fusec.Options); those that decide how it runs (cpu, strict,
    cudagraphs, matmul, cache_dir) are given again to `fusec.load`.
    """
    opts = Options.from_user(**options)
    if opts.freeze:
        raise OptionError("fusec.export: freeze=True is fusec.compile's; a package's weights are inputs "
                          "(runner.load_state_dict replaces them): export without it")
    if not callable(model):
        raise TypeError(f"fusec.export expects a function or an nn.Module, got {type(model).__name__}")
    for i, arg in enumerate(args, start=1):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(f"fusec.export: argument {i} is a {type(arg).__name__}; example inputs must be "
                            "tensors (bind other arguments into the model, e.g. with functools.partial)")
    module = model if isinstance(model, nn.Module) else _Function(model)
    names = _input_names(model, len(args))
    dynamic = _positional(dynamic_shapes, names)
    with torch.no_grad(), warnings.catch_warnings():
        # torch.export's own use of a deprecated pytree check: nothing the user can change
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        shapes = dynamic if dynamic is None or isinstance(model, nn.Module) else (dynamic,)  # forward(*args)
        program = torch.export.export(module, tuple(args), dynamic_shapes=shapes).run_decompositions(DECOMPOSITIONS)
    placeholders, weight_values = _inputs(program, args, names)
    gm = program.graph_module
    record, _ = plan_graph(gm, GRAPH_NAME, opts)
    for target in extern_targets(record.plan) if record.plan is not None else ():
        torch_callable(target)  # raises now, not at load, for a call that cannot be found by name
    source, references = graph_source(gm)
    # The graph after each pass is for inspecting a live compile; a package keeps the final plan only.
    members = {"plan.pkl": dump_plan(dataclasses.replace(record, history=[])), "graph.py": source.encode(),
               "weights.pt": _saved(weight_values if weights else {})}
    if record.plan is not None:
        members["launcher.py"] = launcher_source(record.plan).encode()
        members.update({f"kernels/{k.id}.py": k.source.encode() for k in record.plan.all_kernels()})
    manifest = {**versions(), "device": record.device, "execution": record.execution,
                "placeholders": placeholders, "symbols": _symbols(program, placeholders, dynamic or ()),
                "weights_included": weights, "graph_globals": references,
                "outputs": _outputs(gm), "output_tree": _pytree.treespec_dumps(program.call_spec.out_spec),
                "options": {k: str(v) for k, v in vars(opts).items() if k not in ("cache_dir", "dump_dir")},
                "fallback": record.fallback}
    if record.device == "cuda":
        manifest["gpu"] = torch.cuda.get_device_name()
    if record.plan is not None and record.execution == TRITON:
        manifest["binaries"], packed = _compiled(record, opts)
        members.update(packed)
    digest = write(path, manifest, members)
    return Exported(Path(path), digest, json.loads(json.dumps(manifest)), record)


def _compiled(record: CompiledGraph, opts: Options) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Every kernel compiled for this GPU as the runner launches it: what the manifest says of the
    binaries (their target, each kernel's key) and the members holding them."""
    try:
        _, binaries = build_runtime(record.plan, False, opts, {}, fallback=lambda *inputs: None)  # nothing runs
        keys, members = pack(binaries)
        return {"target": current_target(), "kernels": keys}, members
    except Exception as exc:  # the package then holds sources only, which compile at load
        log.debug("fusec: export keeps no compiled kernels (%s: %s)", type(exc).__name__, exc)
        return {"target": None, "kernels": {}}, {}


def _positional(dynamic_shapes: Any, names: list[str]) -> tuple | None:
    """torch.export's `dynamic_shapes` for the inputs in order (a dict is keyed by the model's names)."""
    if dynamic_shapes is None or isinstance(dynamic_shapes, (tuple, list)):
        return None if dynamic_shapes is None else tuple(dynamic_shapes)
    if not isinstance(dynamic_shapes, dict):
        raise TypeError(f"fusec.export: dynamic_shapes is a {type(dynamic_shapes).__name__}; give a dict keyed by "
                        f"input name ({', '.join(names)}) or a tuple in input order, as torch.export takes")
    unknown = sorted(set(dynamic_shapes) - set(names))
    if unknown:
        raise ValueError(f"fusec.export: dynamic_shapes names {', '.join(unknown)}, which the model's inputs "
                         f"({', '.join(names)}) are not")
    return tuple(dynamic_shapes.get(name) for name in names)


def _symbols(program: torch.export.ExportedProgram, placeholders: list[dict], dynamic: tuple) -> dict[str, dict]:
    """Each size symbol of the inputs: the Dim's name it came from and its range (max None: unbounded).
    A derived Dim (`2*batch`) names the symbol of its root (`batch`); only symbols are listed, not
    the expressions torch.export also ranges."""
    dims = {}
    for spec, given in zip((p for p in placeholders if p["kind"] == "input"), dynamic, strict=False):
        items = given.items() if isinstance(given, dict) else enumerate(given or ())
        for d, dim in items:
            expr = spec["shape"][d]
            dim = getattr(dim, "root", dim)  # a derived Dim's own name is its expression's
            if isinstance(expr, str) and isinstance(getattr(dim, "__name__", None), str):
                symbol = sympy.sympify(expr).free_symbols
                if len(symbol) == 1:
                    dims.setdefault(str(symbol.pop()), dim.__name__)
    out = {}
    for symbol, bounds in program.range_constraints.items():
        if not symbol.is_Symbol:
            continue
        upper = bounds.upper
        out[str(symbol)] = {"dim": dims.get(str(symbol), str(symbol)), "min": int(bounds.lower),
                            "max": int(upper) if isinstance(upper, (int, sympy.Integer)) else None}
    return out


def _input_names(model: Callable[..., Any], count: int) -> list[str]:
    """The model's names for its inputs (`x`, `residual`), as error messages at load name them."""
    fn = model.forward if isinstance(model, nn.Module) else model
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: no signature to read
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:count]
    return names + [f"input{i}" for i in range(len(names) + 1, count + 1)]


def _inputs(program: torch.export.ExportedProgram, args: tuple[torch.Tensor, ...],
            names: list[str]) -> tuple[list[dict], dict]:
    """Each graph input in order (a weight by its state-dict name, or a user input), and the weights."""
    signature = program.graph_signature
    buffers = list(signature.buffers_to_mutate.values())
    if buffers:
        raise ValueError(f"fusec.export: the model writes into its buffers {', '.join(buffers)} (a module in "
                         "training mode updates its running statistics): call model.eval() first; packages "
                         "serve inference")
    written = list(signature.user_inputs_to_mutate.values())
    if written:
        raise ValueError(f"fusec.export: the model writes into its input(s) {', '.join(written)} (an in-place op "
                         "such as x.add_(1)): a package serves functions that return their results; compute "
                         "into a new tensor instead (x + 1)")
    bad = [s.kind.name for s in program.graph_signature.output_specs if s.kind is not OutputKind.USER_OUTPUT]
    if bad:
        raise ValueError(f"fusec.export: the graph has outputs of kind {', '.join(bad)}; packages serve inference")
    placeholders, values, user = [], {}, iter(zip(args, names, strict=True))
    for spec in signature.input_specs:
        if spec.kind in WEIGHT_KINDS:
            value = program.state_dict.get(spec.target, program.constants.get(spec.target))
            values[spec.target] = value.detach()
            placeholders.append({"kind": "weight", "name": spec.target, **tensor_spec(value)})
        elif spec.kind is InputKind.USER_INPUT:
            arg, name = next(user)
            fake = program.graph.find_nodes(op="placeholder", target=spec.arg.name)[0].meta["val"]
            placeholders.append({"kind": "input", "name": name, "device": arg.device.type,
                                 **tensor_spec(fake)})
        else:
            raise ValueError(f"fusec.export: the graph takes an input of kind {spec.kind.name} "
                             f"({spec.arg.name}), which packages do not serve")
    return placeholders, values


def _outputs(gm: torch.fx.GraphModule) -> list[dict[str, Any]]:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    return [tensor_spec(node.meta["val"]) for node in output.args[0]]


def _saved(values: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(values, buffer)
    return buffer.getvalue()
