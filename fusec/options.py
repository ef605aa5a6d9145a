"""Options: read once at the API boundary, checked there, passed down frozen."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

CPU_MODES = ("torch", "interpret")
REMAT = ("auto", "none", "aggressive")  # fusec.partition's settings


def _default_cache_dir() -> Path:
    return Path(os.environ.get("FUSEC_CACHE_DIR") or Path.home() / ".cache" / "fusec")


@dataclass(frozen=True)
class Options:
    """What a user can set on `fusec.compile` / `fusec.inspect`.

    fuse: fuse ops into kernels (off: one kernel per op, for bisecting).
    fuel: cap on the number of fusion merges (to bisect a miscompile).
    dump_dir: write the graph after each pass there (FUSEC_DUMP).
    cache_dir: where generated kernel sources, and matmul choices timed on a GPU, are kept
      (FUSEC_CACHE_DIR).
    streams: CUDA streams for independent kernels: "auto" (the cost model decides,
      at most 4), a cap N (1: off), or None (no cap: as many as the DAG is wide).
    horizontal: launch independent small pointwise kernels together (combo kernels).
    matmul: a fused matmul runs as fusec's template with its epilogue ("template"),
      as torch's matmul plus an epilogue kernel ("library"), or whichever of the two
      is faster, timed once per shape on a GPU ("auto"; the template on a CPU).
    strict: raise instead of running through torch: fusec's own internal errors, graphs
      it cannot take (Unsupported) and inputs whose strides differ from the compiled
      ones (FUSEC_STRICT=1; for tests and bug reports).
    cudagraphs: on a GPU, record each inference graph's launches into a CUDA graph
      and replay it (one launch per call); outputs are valid until the next call.
      `mode="reduce-overhead"` (torch.compile's spelling) turns it on.
    cpu: how a graph on CPU tensors runs (FUSEC_CPU). "torch" (the default): planned,
      fused and reported exactly as on a GPU, then run through torch at eager speed.
      "interpret": the generated kernels run in Triton's interpreter, 100-500x slower
      than eager; it checks the generated code without a GPU (tests, debugging).
      CUDA graphs always run fusec's compiled kernels.
    remat: what a training graph saves for its backward (fusec.partition). "auto" (the
      default): the min cut, recomputing cheap ops the backward's kernels read the inputs of;
      "none": save every value the backward reads; "aggressive": recompute every cheap op.
      Random ops (dropout) and matmuls, convolutions and attention are never recomputed.
    freeze: an inference graph's parameters and buffers are constants (under torch.no_grad() or
      torch.inference_mode()): pointwise ops with a per-channel constant (eval BatchNorm) fold into
      the convolution or matmul before them, and what reads weights only is computed once. A weight
      replaced or written in place after compile is seen at the next call and folded again.
    native: the generated launcher's per-call head (each input's layout check and address, a
      call's seed) in C++, built once per machine into cache_dir with the compiler torch's
      extensions use (FUSEC_NATIVE=0: off). Until it is built, or where it cannot be (no
      compiler), the head is Python lines computing the same: a few tenths of a µs more per call.
    dynamic: sizes as symbols, as torch.compile's `dynamic=`. None (the default): the first
      call compiles for its shapes, a call with other shapes recompiles once with the dims
      that changed symbolic, and that graph serves every later size; True: symbolic from
      the first call; False: every new shape compiles anew.
    """

    fuse: bool = True
    fuel: int | None = None
    dump_dir: Path | None = None
    cache_dir: Path = Path()
    streams: int | str | None = "auto"
    horizontal: bool = True
    matmul: str = "auto"
    strict: bool = False
    cudagraphs: bool = False
    cpu: str = "torch"
    remat: str = "auto"
    dynamic: bool | None = None
    freeze: bool = False
    native: bool = True

    @classmethod
    def from_user(cls, **kwargs: Any) -> Options:
        """Options from keyword arguments, the environment filling what they leave out."""
        known = {f.name for f in fields(cls)} | {"mode"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"fusec: unknown option(s) {', '.join(unknown)}; "
                            f"valid options are {', '.join(sorted(known))}")
        mode = kwargs.pop("mode", None)
        if mode not in (None, "default", "reduce-overhead"):
            _bad("mode", "None, 'default' or 'reduce-overhead' (CUDA graphs)", mode)
        if mode == "reduce-overhead":
            kwargs.setdefault("cudagraphs", True)
        for name in ("dump_dir", "cache_dir"):
            _check_path(name, kwargs.get(name))  # before the environment fills in, and before Path() converts
        dump = kwargs.pop("dump_dir", None) or os.environ.get("FUSEC_DUMP") or None
        cache = kwargs.pop("cache_dir", None) or _default_cache_dir()
        if "strict" not in kwargs:
            kwargs["strict"] = os.environ.get("FUSEC_STRICT", "") not in ("", "0")
        if "native" not in kwargs:
            kwargs["native"] = os.environ.get("FUSEC_NATIVE", "1") != "0"
        if "cpu" not in kwargs and os.environ.get("FUSEC_CPU"):
            kwargs["cpu"] = os.environ["FUSEC_CPU"]
            if kwargs["cpu"] not in CPU_MODES:
                raise OptionError(f"fusec: FUSEC_CPU must be {' or '.join(map(repr, CPU_MODES))}, "
                                 f"got {kwargs['cpu']!r}")
        return replace(cls(), dump_dir=Path(dump) if dump else None, cache_dir=Path(cache), **kwargs)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every option's type and range, with a message naming the option and what it accepts."""
        if self.dynamic not in (None, True, False):
            _bad("dynamic", "None (automatic), True or False", self.dynamic)
        for name in ("fuse", "horizontal", "strict", "cudagraphs", "freeze", "native"):
            if not isinstance(getattr(self, name), bool):
                _bad(name, "True or False", getattr(self, name))
        if self.matmul not in ("auto", "template", "library"):
            _bad("matmul", "'auto', 'template' or 'library'", self.matmul)
        if self.fuel is not None and (not _is_int(self.fuel) or self.fuel < 0):
            _bad("fuel", "a non-negative integer or None", self.fuel)
        if not (self.streams in ("auto", None) or (_is_int(self.streams) and self.streams >= 1)):
            _bad("streams", "a positive integer, 'auto' or None", self.streams)
        if self.cpu not in CPU_MODES:
            _bad("cpu", "'torch' (run CPU graphs through torch) or 'interpret' (Triton's interpreter)", self.cpu)
        if self.remat not in REMAT:
            _bad("remat", "'auto' (the min cut), 'none' (save what the backward reads) or 'aggressive' "
                 "(recompute every cheap op)", self.remat)
        for name in ("dump_dir", "cache_dir"):
            _check_path(name, getattr(self, name))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_path(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        _bad(name, "a path (str or os.PathLike) or None", value)


class OptionError(TypeError, ValueError):
    """An option of the wrong type or out of range (either `except` catches it)."""


def _bad(name: str, allowed: str, value: Any) -> None:
    raise OptionError(f"fusec: {name} must be {allowed}, got {value!r}")
