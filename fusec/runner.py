"""`fusec.load`: a package back as a callable, with no Dynamo, no AOTAutograd and no planning.

The package is checked whole (every member's SHA-256) before anything in it is
unpickled or executed; then the versions and the device it was made for. The
plan comes back as data, the launcher is generated from it by this fusec, the
kernels are loaded from their sources and torch's calls are looked up by name.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree

from fusec.compiler import CompiledGraph, build_runtime
from fusec.execution import TORCH, TRITON, announce, execution_mode
from fusec.export_sizes import bind_symbols, size_at, tensor_spec, versions
from fusec.graph_source import define, extern_targets, torch_callable
from fusec.kernels.binaries import current_target, install
from fusec.launcher import DTYPES
from fusec.options import Options
from fusec.package import Package, PackageError, load_plan, read
from fusec.report import Report
from fusec.runtime import Runtime

log = logging.getLogger("fusec")

# What may differ between export and load: how the package runs here, not what it computes.
LOAD_OPTIONS = ("cpu", "strict", "cudagraphs", "mode", "matmul", "cache_dir")


def load(path: str, *, sha256: str | None = None, **options: Any) -> Runner:
    """The model exported to `path`, ready to call. `sha256` pins the package (as `fusec.export`
    returned it); options are those of fusec.Options that decide how it runs here."""
    fixed = sorted(set(options) - set(LOAD_OPTIONS))
    if fixed:
        raise TypeError(f"fusec.load: {', '.join(fixed)} decided the plan at export and cannot change at load; "
                        f"load takes {', '.join(LOAD_OPTIONS)} (export again to change the others)")
    opts = Options.from_user(**options)
    package = read(path, sha256)
    check_setup(package)
    return Runner(package, opts)


def check_setup(package: Package) -> None:
    """The versions and the device the package was made for are this process's (else a PackageError)."""
    made, here = package.manifest, versions()
    for name, version in here.items():
        if made.get(name) != version:
            raise PackageError(f"{package.path} was exported with {name} {made.get(name)}; this process has {name} "
                               f"{version}: export it again here, or load it where {name} is {made.get(name)}")
    if made["device"] == "cuda" and not torch.cuda.is_available():
        raise PackageError(f"{package.path} was exported for a CUDA GPU ({made.get('gpu')}) and this process "
                           "has none: load it on a GPU, or export the model from CPU tensors")


class Runner:
    """A loaded package: `runner(*inputs)` computes what the exported model did (no autograd).

    Inputs must have the exported shapes (a symbolic dim: any size in its range, the
    same wherever the symbol stands) and dtypes, on the exported device; one with other
    strides is copied to the exported layout at its sizes first.
    """

    def __init__(self, package: Package, options: Options) -> None:
        self.path, self.sha256, self.manifest = package.path, package.digest, package.manifest
        self.record: CompiledGraph = load_plan(package.members["plan.pkl"])
        self._specs = package.manifest["placeholders"]
        self._inputs = [s for s in self._specs if s["kind"] == "input"]
        self._symbols: dict[str, dict[str, Any]] = package.manifest.get("symbols", {})
        self.binaries: str | None = None  # on a GPU: whether the package's compiled kernels serve it
        self._weights: dict[str, torch.Tensor] | None = None
        if package.manifest["weights_included"]:
            self._weights = torch.load(io.BytesIO(package.members["weights.pt"]), weights_only=True)
        self._tree = _pytree.treespec_loads(package.manifest["output_tree"])
        graph = define(package.text("graph.py"), package.manifest["graph_globals"], f"<fusec package {self.path}>")
        self._graph = graph
        self._run: Callable[[list[Any]], Any] = lambda args: graph(*args)
        if self.record.plan is None:  # fusec could not plan it at export: torch runs it, as fusec.compile would
            log.warning("fusec: %s runs through torch: %s", self.path, self.record.fallback)
            return
        self.record.execution = execution_mode(self.record.device, options)
        announce(self.record.execution)
        if self.record.execution == TORCH:
            return
        if self.record.execution == TRITON:
            self.binaries = install_binaries(package)
        self.record.runtime = self._runtime(options)
        self._run = self.record.runtime

    def _runtime(self, options: Options) -> Runtime:
        plan = self.record.plan
        callables = {target: torch_callable(target) for target in extern_targets(plan)}
        run, _ = build_runtime(plan, self.record.execution != TRITON, options, callables, self._graph,
                               on_broken=self._broken)
        return run

    def _broken(self, reason: str) -> None:
        self.record.fallback, self.record.execution = reason, TORCH

    def __call__(self, *inputs: Any) -> Any:
        if self._weights is None:
            raise RuntimeError(f"{self.path} was exported without its weights: give them first with "
                               "runner.load_state_dict(model.state_dict())")
        args = iter(self._checked(inputs))
        flat = [self._weights[s["name"]] if s["kind"] == "weight" else next(args) for s in self._specs]
        with torch.no_grad():
            outputs = self._run(flat)
        return _pytree.tree_unflatten(list(outputs), self._tree)

    forward = __call__

    def _checked(self, inputs: tuple[Any, ...]) -> list[torch.Tensor]:
        if len(inputs) != len(self._inputs):
            raise TypeError(f"{self.path} takes {len(self._inputs)} input(s) "
                            f"({', '.join(s['name'] for s in self._inputs)}), got {len(inputs)}")
        names = [f"input {i} ({spec['name']})" for i, spec in enumerate(self._inputs, start=1)]
        for name, x in zip(names, inputs, strict=True):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        values = bind_symbols(inputs, self._inputs, names, self._symbols) if self._symbols else {}
        return [_as_exported(x, _at(spec, values), name) for x, spec, name in zip(inputs, self._inputs, names)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._weights is None:
            raise RuntimeError(f"{self.path} holds no weights yet: runner.load_state_dict gives them")
        return dict(self._weights)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take the weights from `state` (a model's state_dict): every name the package needs, with
        its exported shape and dtype; copied into the exported layout and device."""
        wanted = [s for s in self._specs if s["kind"] == "weight"]
        missing = [s["name"] for s in wanted if s["name"] not in state]
        if missing:
            raise KeyError(f"load_state_dict: {', '.join(missing)} missing (the package needs every one of "
                           f"{', '.join(s['name'] for s in wanted)})")
        device = self.manifest["device"]
        self._weights = {s["name"]: _as_exported(torch.as_tensor(state[s["name"]]).to(device), {**s, "device": device},
                                                   s["name"])
                         for s in wanted}

    def report(self) -> Report:
        """The report of the stored plan (as `fusec.report_of` gives for a live model), with what ran."""
        return Report([self.record])


def install_binaries(package: Package) -> str:
    """The package's compiled kernels put into Triton's cache when they were made for this GPU
    (the first call then compiles nothing); what was done, in words."""
    made = package.manifest.get("binaries")
    if not made or not made["kernels"]:
        return "the package holds no compiled kernels: they compile from their sources at load"
    try:
        here = current_target()
        if made["target"] != here:
            said = f"compiled for {made['target']}, this GPU is {here}: the kernels compile from their sources at load"
            log.info("fusec: %s was %s", package.path, said)
            return said
        count = install(package.members)
    except Exception as exc:  # an unwritable cache, another Triton's API: the kernels compile, as without binaries
        log.debug("fusec: %s: compiled kernels not installed (%s: %s)", package.path, type(exc).__name__, exc)
        return f"its compiled kernels could not be installed ({exc}): they compile from their sources at load"
    return f"{count} compiled kernel(s) for {here} installed into Triton's cache"


def _at(spec: dict[str, Any], values: dict[str, int]) -> dict[str, Any]:
    """The spec with its symbolic sizes and strides evaluated at the call's symbol values."""
    if not values:
        return spec
    return {**spec, "shape": [size_at(d, values) for d in spec["shape"]],
            "strides": [size_at(d, values) for d in spec["strides"]], "exported": spec["shape"]}


def _as_exported(x: Any, spec: dict[str, Any], name: str) -> torch.Tensor:
    """`x` if it is what the package was exported for; a copy if only its strides differ."""
    got = tensor_spec(x)
    if got["shape"] != spec["shape"]:
        if "exported" in spec:
            raise ValueError(f"{name} has shape {tuple(got['shape'])}; the package serves "
                             f"({', '.join(map(str, spec['exported']))}), at this call's sizes {tuple(spec['shape'])}")
        raise ValueError(f"{name} has shape {tuple(got['shape'])}; the package was exported for "
                         f"{tuple(spec['shape'])} (this package's shapes are static: export again with this "
                         "shape, or with dynamic_shapes=)")
    if got["dtype"] != spec["dtype"]:
        raise ValueError(f"{name} is {got['dtype']}; the package was exported for {spec['dtype']}")
    if x.device.type != spec["device"]:
        raise ValueError(f"{name} is on {x.device.type}; the package was exported for {spec['device']} tensors")
    long_dims = [d for d, size in enumerate(spec["shape"]) if size > 1]
    if all(got["strides"][d] == spec["strides"][d] for d in long_dims):
        return x
    out = torch.empty_strided(spec["shape"], spec["strides"], dtype=DTYPES[spec["dtype"]], device=x.device)
    return out.copy_(x)
