"""How a compiled graph runs: fusec's compiled kernels, the same kernels in Triton's interpreter, or torch."""

from __future__ import annotations

import functools
import logging

from fusec.options import Options

log = logging.getLogger("fusec")

TRITON = "triton"  # the generated kernels, compiled by Triton for the GPU
INTERPRETER = "interpreter"  # the generated kernels, run by Triton's interpreter on the CPU
TORCH = "torch"  # torch runs the graph (CPU graphs with cpu="torch", and graphs fusec cannot take)
MODES = (TRITON, INTERPRETER, TORCH)

_SAID = {
    INTERPRETER: (logging.WARNING,
                  "fusec: the generated kernels of CPU graphs run in Triton's interpreter, typically 100-500x "
                  "slower than eager PyTorch (it checks fusec's code without a GPU); for speed, put the model on a "
                  "CUDA GPU, or pass cpu='torch' (FUSEC_CPU=torch) to keep fusec's plan and report while torch "
                  "runs CPU graphs at eager speed"),
    TORCH: (logging.INFO,
            "fusec: CPU graphs are planned and fused as on a GPU (fusec.report_of shows it) and run through torch "
            "at eager speed; a CUDA GPU runs fusec's compiled kernels, and cpu='interpret' (FUSEC_CPU=interpret) "
            "runs them in Triton's interpreter, 100-500x slower than eager"),
}


def execution_mode(device: str, options: Options) -> str:
    """How a graph planned on `device` runs under `options`."""
    if device != "cpu":
        return TRITON
    return INTERPRETER if options.cpu == "interpret" else TORCH


@functools.cache
def announce(mode: str) -> None:
    """Say once per process how CPU graphs run, since that decides their speed."""
    if mode in _SAID:
        level, message = _SAID[mode]
        log.log(level, message)
