"""The differential fuzzer's programs on a CUDA GPU: compiled Triton, not the interpreter.

The interpreter hides what only the GPU compiler does (vector widths, masks, fp16/bf16
arithmetic, integer overflow in index math), so the same random programs run again on
CUDA tensors with every input's layout (strides, offset, expansion) kept as drawn.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_fuzz import KNOWN_BUGS, Builder, RandomSource, check_program

SEEDS = range(1_000_000, 1_000_240)


def to_cuda(t: torch.Tensor) -> torch.Tensor:
    """`t` on the GPU with the same sizes, strides and storage offset (views and expansions kept)."""
    storage = torch.as_strided(t, (t.untyped_storage().nbytes() // t.element_size(),), (1,), 0)
    return torch.as_strided(storage.to("cuda"), t.size(), t.stride(), t.storage_offset())


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore:.*degrees of freedom:UserWarning")
@pytest.mark.parametrize("seed", SEEDS)
def test_random_programs_match_eager_on_cuda(seed: int) -> None:
    prog = Builder(RandomSource(seed), avoid=KNOWN_BUGS).build()
    prog.tensors = [to_cuda(t) for t in prog.tensors]
    print(prog.repro())
    check_program(prog)
