"""What `fusec inspect` is pointed at: a TARGET string or bundled example, and --input specs.

A TARGET is `path/to/file.py:NAME` or `package.module:NAME`. NAME may be:
- an nn.Module subclass, built with no arguments;
- an nn.Module instance;
- a function with no required parameters: a factory, called once, that
  returns a module or `(model, example_args)`;
- a function with required parameters: the model itself, called on the
  --input tensors.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusec.examples import EXAMPLES, build


class UsageError(Exception):
    """A mistake in what the user asked for: reported as one line, exit status 2."""


@dataclass
class Target:
    """A model to inspect, the example arguments it brought (None: it brought none), and its name."""

    model: Callable
    args: tuple[Any, ...] | None
    label: str


_DTYPE_ALIASES = {"half": "float16", "float": "float32", "double": "float64", "long": "int64", "int": "int32"}


# torch indexes with int64: no dimension or tensor can be larger.
_MAX_DIM = 2**63 - 1
# What --input may allocate unless --max-input-gib says otherwise.
DEFAULT_MAX_INPUT_GIB = 4.0


def parse_input_spec(spec: str) -> tuple[tuple[int, ...], torch.dtype]:
    """`8x128x768:float16` -> ((8, 128, 768), torch.float16); the dtype defaults to float32."""
    shape_text, _, dtype_text = spec.partition(":")
    dims = shape_text.split("x")
    if not shape_text or not all(d.isascii() and d.isdigit() for d in dims):
        raise UsageError(f"bad --input {spec!r}: the shape must be non-negative integers joined by 'x', "
                         "e.g. --input 8x128x768:float16")
    shape = tuple(int(d) for d in dims)
    if math.prod(shape) > _MAX_DIM:
        raise UsageError(f"bad --input {spec!r}: {math.prod(shape)} elements are more than torch can index "
                         f"({_MAX_DIM}); use smaller sizes")
    name = _DTYPE_ALIASES.get(dtype_text, dtype_text or "float32")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or dtype.is_complex:
        raise UsageError(f"bad --input {spec!r}: unknown dtype {dtype_text!r}; use a torch dtype name "
                         "such as float32, float16, bfloat16, int64 or bool")
    try:
        with warnings.catch_warnings():  # quantized dtypes warn that they are deprecated before failing
            warnings.simplefilter("ignore")
            _random((1,), dtype, torch.Generator())
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        raise UsageError(f"bad --input {spec!r}: torch cannot fill {name} tensors with random values; "
                         "use a float, integer or bool dtype such as float32, int64 or bool") from exc
    return shape, dtype


def input_bytes(parsed: list[tuple[tuple[int, ...], torch.dtype]]) -> int:
    """What the --input tensors take in memory, computed without allocating them."""
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in parsed)


def make_inputs(specs: list[str], training: bool,
                max_gib: float = DEFAULT_MAX_INPUT_GIB) -> tuple[torch.Tensor, ...]:
    """Random tensors for the --input specs, refused up front when they would take more than `max_gib`.

    Integer inputs hold values in [0, 8), so they are valid indices into any
    table of 8 or more rows. With `training`, floating inputs require grad, so
    a model without parameters still has a backward graph to inspect.
    """
    parsed = [parse_input_spec(spec) for spec in specs]
    needed = input_bytes(parsed)
    if needed > max_gib * 2**30:
        raise UsageError(f"the --input tensors would take {needed / 2**30:,.1f} GiB ({needed} bytes), more than "
                         f"the {max_gib:g} GiB limit; use smaller shapes, or raise the limit with --max-input-gib")
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for spec, (shape, dtype) in zip(specs, parsed, strict=True):
        try:
            t = _random(shape, dtype, generator)
        except (MemoryError, RuntimeError) as exc:  # within the limit, but more than this machine has
            raise UsageError(f"cannot allocate --input {spec!r}: {one_line(exc)}; use smaller shapes") from exc
        tensors.append(t.requires_grad_(training) if dtype.is_floating_point else t)
    return tuple(tensors)


def _random(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    return torch.randint(0, 8, shape, generator=generator, dtype=dtype)


def example_target(name: str) -> Target:
    if name not in EXAMPLES:
        raise UsageError(f"no bundled example named {name!r}; choose one of: {', '.join(EXAMPLES)} "
                         "(fusec inspect --list-examples)")
    model, args = build(name)
    return Target(model=model, args=tuple(args), label=f"example {name}")


def resolve_target(text: str) -> Target:
    """The model a TARGET string names, built and with its example args if it brings them."""
    where, sep, name = text.rpartition(":")
    if not sep or not where or not name:
        raise UsageError(f"TARGET {text!r} must be path/to/file.py:NAME or package.module:NAME")
    module = _load_file(where) if where.endswith(".py") or "/" in where else _import(where)
    obj = _lookup(module, name, where)
    return _build(obj, name, label=text)


def _load_file(path_text: str) -> Any:
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"no file {path_text}; TARGET must be path/to/file.py:NAME with an existing file")
    module_name = f"fusec_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before running, as a normal import would be: dataclasses and
    # pickling look a module up in sys.modules. The file's folder is on the
    # path while it runs, so it can import modules that sit beside it.
    folder = str(path.resolve().parent)
    sys.modules[module_name] = module
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UsageError(f"running {path_text} failed: {one_line(exc)}; fix the file and try again") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and f"{module_name}.".startswith(f"{exc.name}."):
            raise UsageError(f"no module named {exc.name!r}; check the spelling, install it, or give a "
                             "path/to/file.py:NAME instead") from exc
        raise UsageError(f"importing {module_name} failed: {one_line(exc)}") from exc
    except Exception as exc:
        raise UsageError(f"importing {module_name} failed: {one_line(exc)}; fix the module and try again") from exc


def _lookup(module: Any, name: str, where: str) -> Any:
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            candidates = [n for n, v in vars(module).items()
                          if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
                          and (inspect.isfunction(v) or _is_module_class(v))]
            hint = f"it defines {', '.join(candidates)}" if candidates else "it defines no module or function"
            raise UsageError(f"{where} has no {name!r}; {hint}")
        obj = getattr(obj, part)
    return obj


def _is_module_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _build(obj: Any, name: str, label: str) -> Target:
    if isinstance(obj, nn.Module):
        return Target(model=obj, args=None, label=label)
    if _is_module_class(obj):
        needed = _required_parameters(obj)
        if needed:
            raise UsageError(f"{name} cannot be built without arguments (it needs {', '.join(needed)}); "
                             f"write a function that returns {name}(...) and name that instead")
        return Target(model=_call(obj, f"building {name}()"), args=None, label=label)
    if not callable(obj):
        raise UsageError(f"{name} is not a model (its type is {type(obj).__name__}); name an nn.Module subclass, "
                         "a function that returns a module or (model, example_args), or a function of tensors")
    if _required_parameters(obj):
        return Target(model=obj, args=None, label=label)
    return _from_factory(_call(obj, f"calling {name}()"), name, label)


def _from_factory(result: Any, name: str, label: str) -> Target:
    if isinstance(result, nn.Module):
        return Target(model=result, args=None, label=label)
    if isinstance(result, tuple) and len(result) == 2 and callable(result[0]):
        model, args = result
        args = (args,) if isinstance(args, torch.Tensor) else args
        if isinstance(args, (tuple, list)):
            return Target(model=model, args=tuple(args), label=label)
    raise UsageError(f"{name}() returned {type(result).__name__}; it must return an nn.Module "
                     "or a pair (model, example_args)")


def _required_parameters(fn: Callable) -> list[str]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _call(fn: Callable, what: str) -> Any:
    try:
        return fn()
    except Exception as exc:
        raise UsageError(f"{what} failed: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def describe_inputs(args: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Shape and dtype of each tensor argument, as the report shows them."""
    return [{"shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch.")} if isinstance(a, torch.Tensor)
            else {"value": repr(a)} for a in args]


def signature_hint(model: Callable) -> str:
    """`forward(x, residual)`: what a user must pass --input for."""
    fn = model.forward if isinstance(model, nn.Module) else model
    return f"{getattr(fn, '__name__', 'model')}({', '.join(_required_parameters(fn))})"
