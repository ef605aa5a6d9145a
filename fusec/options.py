"""Options: read once at the API boundary, passed down frozen."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


def _default_cache_dir() -> Path:
    return Path(os.environ.get("FUSEC_CACHE_DIR") or Path.home() / ".cache" / "fusec")


@dataclass(frozen=True)
class Options:
    """What a user can set on `fusec.compile` / `fusec.inspect`.

    fuse: fuse ops into kernels (off: one kernel per op, for bisecting).
    fuel: cap on the number of fusion merges (to bisect a miscompile).
    dump_dir: write the graph after each pass there (FUSEC_DUMP).
    cache_dir: where generated kernel sources are cached (FUSEC_CACHE_DIR).
    streams: CUDA streams for independent kernels: "auto" (the cost model decides,
      at most 4), a cap N (1: off), or None (no cap: as many as the DAG is wide).
    horizontal: launch independent small pointwise kernels together (combo kernels).
    matmul: a fused matmul runs as fusec's template with its epilogue ("template"),
      as torch's matmul plus an epilogue kernel ("library"), or whichever of the two
      is faster, timed once per shape on a GPU ("auto"; the template on a CPU).
    strict: raise instead of running through torch: fusec's own internal errors, graphs
      it cannot take (Unsupported) and inputs whose strides differ from the compiled
      ones (FUSEC_STRICT=1; for tests and bug reports).
    """

    fuse: bool = True
    fuel: int | None = None
    dump_dir: Path | None = None
    cache_dir: Path = Path()
    streams: int | str | None = "auto"
    horizontal: bool = True
    matmul: str = "auto"
    strict: bool = False

    @classmethod
    def from_user(cls, **kwargs: Any) -> Options:
        """Options from keyword arguments, the environment filling what they leave out."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"fusec: unknown option(s) {', '.join(unknown)}; "
                            f"valid options are {', '.join(sorted(known))}")
        dump = kwargs.pop("dump_dir", None) or os.environ.get("FUSEC_DUMP") or None
        cache = kwargs.pop("cache_dir", None) or _default_cache_dir()
        if "strict" not in kwargs:
            kwargs["strict"] = os.environ.get("FUSEC_STRICT", "") not in ("", "0")
        opts = replace(cls(), dump_dir=Path(dump) if dump else None, cache_dir=Path(cache), **kwargs)
        opts.validate()
        return opts

    def validate(self) -> None:
        if self.matmul not in ("auto", "template", "library"):
            raise ValueError(f"fusec: matmul must be 'auto', 'template' or 'library', got {self.matmul!r}")
        if self.fuel is not None and (not isinstance(self.fuel, int) or self.fuel < 0):
            raise ValueError(f"fusec: fuel must be a non-negative integer or None, got {self.fuel!r}")
        if not (self.streams in ("auto", None) or (isinstance(self.streams, int) and self.streams >= 1)):
            raise ValueError(f"fusec: streams must be a positive integer, 'auto' or None, got {self.streams!r}")
