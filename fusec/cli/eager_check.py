"""Run a model eagerly once, so inputs it rejects give torch's own message, naming the input to blame.

Under Dynamo a shape mismatch surfaces as a tracing error many frames deep;
eagerly it is one clear line from the op that failed. To say which argument
it was, every tensor computed during the run remembers which arguments it was
computed from (a TorchFunctionMode sees every torch call); the call that
fails blames the arguments its tensor operands came from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from fusec.cli.targets import UsageError


class _Provenance(TorchFunctionMode):
    """Tracks, for each tensor, the set of argument positions it was computed from."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        super().__init__()
        self.sources = WeakIdKeyDictionary()
        for i, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                self.sources[arg] = frozenset({i})
        self.blamed: frozenset[int] | None = None

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        operands = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        sources = frozenset().union(*(self.sources.get(t, frozenset()) for t in operands))
        try:
            out = func(*args, **kwargs)
        except Exception:
            # The last failure is the one that escapes: a model may catch and recover from earlier ones.
            self.blamed = sources
            raise
        if sources:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.sources[t] = self.sources.get(t, frozenset()) | sources
        return out


def check_runs_eagerly(model: Callable, args: tuple[Any, ...]) -> None:
    """Call `model(*args)` once without autograd; a failure becomes a UsageError naming the input(s)."""
    mode = _Provenance(args)
    try:
        with mode, torch.no_grad():
            model(*args)
    except Exception as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        message = lines[0] if lines else type(exc).__name__
        raise UsageError(f"{_blame(args, mode.blamed)}: {message}") from exc


def _blame(args: tuple[Any, ...], blamed: frozenset[int] | None) -> str:
    """`input 1 (shape 8x128, float32)`; inputs are numbered from 1, in --input order."""
    if blamed:
        parts = [f"{i + 1} ({_shape_of(args[i])})" for i in sorted(blamed)]
        return f"input {parts[0]}" if len(parts) == 1 else f"inputs {', '.join(parts[:-1])} and {parts[-1]}"
    if not args:
        return "the model, called with no inputs, failed"
    # The failure came from Python code (a shape unpacked, an assert), not a
    # torch op: any input may be the one to blame.
    listed = ", ".join(f"{i + 1}: {_shape_of(a)}" for i, a in enumerate(args))
    return f"the model failed on its inputs ({listed})"


def _shape_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        shape = "x".join(map(str, value.shape)) or "scalar"
        return f"shape {shape}, {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__
