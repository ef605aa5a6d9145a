"""The package's layers hold: each module imports only its own layer and those below, no import
cycle, torch and triton only where they belong, and no module over 450 lines.

Imports are read with `ast` from every module (imports inside functions count; those under
`if TYPE_CHECKING:` are for annotations only and do not). A `from a import b` where `a.b` is a
module counts as importing `a.b`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folders and the package each installs as (pyproject.toml's package-dir).
FOLDERS = {"fusec": "fusec", "passes": "fusec.passes", "kernels": "fusec.kernels", "bench": "fusec.bench"}

# Lowest first: a module may import its own layer and any layer below it.
LAYERS = [
    ("base", ["fusec.ir", "fusec.sizes", "fusec.options", "fusec.execution"]),
    ("passes", ["fusec.passes"]),
    ("plan", ["fusec.plan", "fusec.streams", "fusec.device", "fusec.stores"]),
    ("kernels", ["fusec.kernels"]),
    ("compiler", ["fusec.compiler", "fusec.runtime", "fusec.launcher", "fusec.launcher_text", "fusec.size_reads",
                  "fusec.cudagraphs", "fusec.pipeline",
                  "fusec.lowering", "fusec.lowering_ops", "fusec.lowering_bits", "fusec.lowering_index",
                  "fusec.lowering_scan", "fusec.lowering_sizes", "fusec.lowering_host", "fusec.decompositions",
                  "fusec.decompositions_elementwise", "fusec.decompositions_trig", "fusec.decompositions_bessel",
                  "fusec.decompositions_special", "fusec.decompositions_foreach", "fusec.decompositions_pool",
                  "fusec.decompositions_norm", "fusec.decompositions_index", "fusec.decompositions_scatter",
                  "fusec.decompositions_masked", "fusec.decompositions_routing", "fusec.lowering_sort",
                  "fusec.partition", "fusec.frontend", "fusec.freezing", "fusec.frozen", "fusec.package",
                  "fusec.graph_source", "fusec.pointers", "fusec.torch_calls", "fusec.split_rows",
                  "fusec.direct_launch", "fusec.launcher_code", "fusec.tuning", "fusec.native"]),
    ("api", ["fusec.api", "fusec.exporter", "fusec.export_sizes", "fusec.runner"]),
    # The package's own __init__ (the public names) and `python -m fusec` sit with the tools.
    ("tools", ["fusec.report", "fusec.cli", "fusec.bench", "fusec.examples", "fusec", "fusec.__main__"]),
]
# (importer, imported) -> why the layers are crossed
KNOWN_CROSSINGS = {
    ("fusec.api", "fusec.report"): "report_of and inspect return the Report they build (the public API's type)",
    ("fusec.runner", "fusec.report"): "a loaded package's report() is the Report of its stored plan",
}

# Layers whose modules import no torch. kernels/call.py is the kernel launch code (it turns
# tensors into Triton's arguments); the rest of kernels/ renders source text from the IR.
NO_TORCH = ("fusec.ir", "fusec.passes", "fusec.kernels")
TORCH_ALLOWED = {"fusec.kernels.call"}
# Triton is imported by the kernels (rendering, compiling, launching) and the bench suite only.
TRITON_ALLOWED = ("fusec.kernels", "fusec.bench")

MAX_LINES = 450
# name -> why it is longer
LONG_MODULES: dict[str, str] = {}


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [*FOLDERS[folder].split("."), *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of the imports under `if TYPE_CHECKING:` (annotations only: not run)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno")}
    return lines


def imports_of(name: str) -> set[str]:
    """Every module `name` imports, anywhere in its file (full dotted names)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> int:
    """The layer of a module: the longest prefix named in LAYERS decides."""
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if _within(name, prefix)]
    assert matches, f"{name} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return max(matches)[1]


def package_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    for name in MODULES:
        graph.add_edges_from((name, dep) for dep in imports_of(name) if dep in MODULES)
    return graph


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_module_imports_a_layer_above_its_own():
    crossings = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                 for a, b in package_graph().edges if layer_of(b) > layer_of(a) and (a, b) not in KNOWN_CROSSINGS]
    assert not crossings, "\n".join(crossings)
    stale = [pair for pair in KNOWN_CROSSINGS if pair not in package_graph().edges]
    assert not stale, f"no longer imported, take them out of KNOWN_CROSSINGS: {stale}"


def test_no_import_cycle():
    cycles = list(nx.simple_cycles(package_graph()))
    assert not cycles, "\n".join(" -> ".join([*c, c[0]]) for c in cycles)


@pytest.mark.parametrize("library, allowed, exceptions", [
    ("torch", tuple(m for m in MODULES if not any(_within(m, p) for p in NO_TORCH)), TORCH_ALLOWED),
    ("triton", TRITON_ALLOWED, set()),
])
def test_heavy_libraries_only_where_they_belong(library, allowed, exceptions):
    wrong = sorted(name for name in MODULES
                   if any(_within(dep, library) for dep in imports_of(name))
                   and not any(_within(name, p) for p in allowed) and name not in exceptions)
    assert not wrong, f"{library} imported by {wrong}"


def test_modules_stay_short():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES and name not in LONG_MODULES}
    assert not long, f"over {MAX_LINES} lines (split them, or say why in LONG_MODULES): {long}"
    stale = [name for name in LONG_MODULES if len(MODULES[name].read_text().splitlines()) <= MAX_LINES]
    assert not stale, f"no longer long, take them out of LONG_MODULES: {stale}"


def test_the_reader_sees_what_it_should():
    """The import reader itself: a function-level import counts, a TYPE_CHECKING one does not,
    and `from fusec.report import format` is the module fusec.report.format."""
    assert "fusec.report.format" in imports_of("fusec.report.terminal")
    assert "fusec.bench.compile" in imports_of("fusec.cli.bench")  # imported inside a function
    assert "fusec.report" not in imports_of("fusec.report.data")  # only under TYPE_CHECKING
    assert layer_of("fusec.passes.fuse") == 1 and layer_of("fusec.report.data") == len(LAYERS) - 1


def test_ir_questions_are_answered_by_the_ir():
    """The planner and the cost model ask the IR (is_constant, inlined, finals), not the fusion pass."""
    for name in ("fusec.plan", "fusec.passes.cost", "fusec.streams", "fusec.report.data"):
        assert "fusec.passes.fuse" not in imports_of(name), name
