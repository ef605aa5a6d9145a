"""fusec: a graph-level operator fusion compiler for PyTorch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def _mount_source_tree() -> None:
    # In the source tree, passes/, kernels/ and bench/ sit beside fusec/;
    # installed, they are fusec/passes, fusec/kernels and fusec/bench. Mount them
    # under fusec when running from a checkout, so `fusec.passes` resolves the
    # same either way.
    here = Path(__file__).resolve().parent
    for sub in ("passes", "kernels", "bench"):
        name = f"{__name__}.{sub}"
        if (here / sub).is_dir() or name in sys.modules:
            continue
        init = here.parent / sub / "__init__.py"
        if not init.exists():
            raise ImportError(f"fusec: cannot find {sub}/ beside {here}; reinstall fusec")
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        setattr(sys.modules[__name__], sub, module)


_mount_source_tree()

from fusec.options import Options  # noqa: E402
from fusec.report import Report  # noqa: E402
from fusec.runner import load  # noqa: E402

# Capturing (compile, inspect) imports Dynamo and AOTAutograd, exporting torch.export: seconds
# that a process serving a package (`fusec.load`) never needs. They are imported when first used.
_LAZY = {"compile": "fusec.api", "inspect": "fusec.api", "report_of": "fusec.api", "export": "fusec.exporter"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fusec' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    _register()
    globals()[name] = value = getattr(module, name)
    return value


def _register() -> None:
    # backend="fusec" without the package's entry point installed (a source checkout on the path).
    from fusec.frontend import register

    register()


if "torch._dynamo" in sys.modules:  # already paid for: make backend="fusec" known at once
    _register()

__all__ = ["compile", "inspect", "report_of", "export", "load", "Options", "Report"]
__version__ = "0.1.0"
