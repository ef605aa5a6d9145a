"""The `.fusec` file: one zip holding an exported graph's plan, kernels, torch graph and weights.

Members (all listed, with their SHA-256, in `manifest.json`):

    manifest.json   format, fusec/torch/Triton versions, device, input and output specs
    plan.pkl        the planned graph (fusec's IR, plan and kernel sources), pickled
    graph.py        the exported ATen graph as Python (what torch runs: cpu="torch", fallback)
    weights.pt      parameters, buffers and constants (torch.save; read with weights_only=True)
    launcher.py     the launcher fusec generates from the plan (to read; regenerated at load)
    kernels/*.py    each kernel's Triton source (to read; the plan holds what runs)
    binaries/<key>/ exported on a GPU: each kernel compiled there, Triton's cache entry (metadata
                    JSON, cubin, IRs) under its key; `manifest["binaries"]` names the target

Every member is checked against the manifest before any of it is unpickled or
executed. The manifest's own SHA-256 is the package's digest: `fusec.load(path,
sha256=...)` pins it, which is what protects against a package rewritten whole.
`plan.pkl` is read by an unpickler that builds fusec's IR and plan classes and
nothing else.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
MANIFEST = "manifest.json"


class PackageError(Exception):
    """A `.fusec` file that cannot be used here: damaged, changed, or made for another setup."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Package:
    """A package's manifest and members, every member checked against the manifest."""

    path: str
    manifest: dict[str, Any]
    members: dict[str, bytes]
    digest: str  # SHA-256 of manifest.json: the package's identity

    def text(self, name: str) -> str:
        return self.members[name].decode("utf-8")


def write(path: str | Path, manifest: dict[str, Any], members: dict[str, bytes]) -> str:
    """Write the package (atomically: a crash leaves no half file); its digest."""
    manifest = {**manifest, "format": FORMAT, "members": {name: sha256(data) for name, data in members.items()}}
    head = json.dumps(manifest, indent=2, sort_keys=True).encode()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, head)
            for name, data in members.items():
                zf.writestr(name, data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sha256(head)


def read(path: str | Path, expected: str | None = None) -> Package:
    """The package at `path`, after checking every member's SHA-256 (and the digest, if `expected`)."""
    try:
        with zipfile.ZipFile(path) as zf:
            files = {info.filename: zf.read(info) for info in zf.infolist()}
    except FileNotFoundError:
        raise PackageError(f"no package at {path}: give the path fusec.export wrote") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"{path} is not a fusec package ({exc}): give a file written by fusec.export") from None
    if MANIFEST not in files:
        raise PackageError(f"{path} has no {MANIFEST}: it is not a fusec package (fusec.export writes one)")
    head = files.pop(MANIFEST)
    digest = sha256(head)
    if expected is not None and digest != expected:
        raise PackageError(f"{path} has SHA-256 {digest}, not the expected {expected}: "
                           "it is another package or was changed since export")
    try:
        manifest = json.loads(head)
        listed = dict(manifest["members"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PackageError(f"{path}: its {MANIFEST} is damaged ({exc}); export the model again") from None
    if manifest.get("format") != FORMAT:
        raise PackageError(f"{path} is in package format {manifest.get('format')}, this fusec reads format "
                           f"{FORMAT}: export the model again with this fusec")
    for name in sorted(set(listed) | set(files)):
        if name not in files:
            raise PackageError(f"{path}: member {name} is missing; the file is damaged: export the model again")
        if name not in listed:
            raise PackageError(f"{path}: member {name} is not in the manifest (added after export); "
                               "refusing to use the package: export the model again")
        if sha256(files[name]) != listed[name]:
            raise PackageError(f"{path}: member {name} does not match its SHA-256 in the manifest (changed or "
                               "damaged after export); refusing to use the package: export the model again")
    return Package(str(path), manifest, files, digest)


# What plan.pkl may name: fusec's IR and plan, the networkx graph inside it, torch's dtypes
# and devices (in op arguments), the SymPy terms of symbolic sizes (dynamic shapes).
# Anything else in it means it was not written by fusec.export.
_ALLOWED = {
    "fusec.compiler": {"CompiledGraph"},
    "fusec.ir": {"Graph", "Node", "Ref", "Kind"},
    "fusec.plan": {"Plan", "Kernel", "Extern", "KernelKind", "LaunchExtra"},
    "fusec.streams": {"StreamDecision"},
    "fusec.passes.cost": {"DeviceModel"},
    "fusec.passes.refusal": {"Refusal"},
    "networkx.classes.digraph": {"DiGraph"},
    "networkx.classes.coreviews": {"AdjacencyView", "AtlasView", "FilterAtlas", "FilterAdjacency"},
    "networkx.classes.reportviews": {"NodeView", "OutEdgeView", "InEdgeView", "EdgeView", "DegreeView",
                                     "InDegreeView", "OutDegreeView"},
    "sympy.core.symbol": {"Symbol"},
    "sympy.core.numbers": {"Integer", "Zero", "One", "NegativeOne"},
    "sympy.core.add": {"Add"},
    "sympy.core.mul": {"Mul"},
    "sympy.core.power": {"Pow"},
    "sympy.functions.elementary.miscellaneous": {"Min", "Max"},
    "torch.utils._sympy.functions": {"FloorDiv", "CleanDiv", "PythonMod", "Mod", "ModularIndexing", "Min", "Max"},
    "torch.serialization": {"_get_layout"},
    # A memory format pickles by its dotted name under torch._utils (`torch._utils.torch.channels_last`).
    "torch._utils": {"torch.contiguous_format", "torch.channels_last", "torch.channels_last_3d",
                     "torch.preserve_format"},  # a layout by its name (`torch.strided`), as torch pickles one
    "builtins": {"set", "frozenset", "slice", "complex", "object", "getattr"},
    "copyreg": {"_reconstructor"},
    "torch": {"device", "layout", "memory_format", "strided", "contiguous_format", "channels_last",
              "preserve_format", "bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16",
              "float32", "float64", "complex64", "complex128"},
}


class _PlanUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise PackageError(f"plan.pkl names {module}.{name}, which a fusec plan never holds: "
                           "refusing to load it (export the model again)")


def dump_plan(record: Any) -> bytes:
    """The record pickled; refused here, at export, if the loader would refuse it."""
    data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    load_plan(data)
    return data


def load_plan(data: bytes) -> Any:
    return _PlanUnpickler(io.BytesIO(data)).load()
