"""What a kernel compiled for an H100 (sm_90) is made of, read from its PTX and from
`ptxas -v`: the widths of its global loads and stores, its registers and spills.

A pipelined loop (a matmul's K loop) reads global memory with asynchronous copies
into shared memory (`cp.async`), not `ld.global`: they count as loads of their size. A TMA
copy (`cp.async.bulk.tensor`) moves a whole box of a tensor in 128-byte lines: it counts as a
full 128-bit vector, the widest load a thread makes."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

H100 = (90, 32)  # compute capability, warp size
_ACCESS = re.compile(r"\b(ld|st)\.global[\w:.]*?(?:\.v(\d))?\.[bfsu](\d+)\b")
# cp.async.cg.shared.global [dst], [src], 16, ...: the third operand is the bytes copied.
_TMA_COPY = re.compile(r"\bcp\.async\.bulk\.tensor\.\dd\.shared[\w:.]*\.global\b")
_COPY = re.compile(r"\bcp\.async\.c[ag]\.shared\.global[\w:.]*\s*\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)")


def widest(ptx: str, op: str, pick: Any = max) -> int:
    """Bits moved by the widest (or with `pick=min` the narrowest) global `op` ("ld" or "st") in the PTX."""
    bits = [int(n or 1) * int(width) for o, n, width in _ACCESS.findall(ptx) if o == op]
    if op == "ld":
        bits += [8 * int(size, 0) for size in _COPY.findall(ptx)]
        bits += [128] * len(_TMA_COPY.findall(ptx))
    return pick(bits, default=0)


def ptxas_usage(ptx: str) -> tuple[int | None, int | None]:
    """Registers and spill bytes, from `ptxas -v` on the PTX (None when ptxas is missing)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(H100[0]).path
    except Exception:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "k.ptx")
        path.write_text(ptx)
        out = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", str(path), "-o", str(path.with_suffix(".cubin"))],
                             capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores", text)
    return (int(regs[-1]) if regs else None), (int(spills[-1]) if spills else None)

