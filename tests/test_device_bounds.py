"""Indices checked on the device: a GPU kernel's gather fails a device-side assert on an index
out of range, as eager's CUDA indexing does, so no call reads a flag back from the GPU; in
Triton's interpreter the kernel still sets a flag the runtime reads, to raise eager's IndexError."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fusec
from fusec.bench import static as bench_static
from fusec.compiler import render_plan
from fusec.kernels.kinds import static_launch
from fusec.launcher_text import launcher_source
from fusec.plan import LaunchExtra
from tests.eager import assert_raises_as_eager, check

ROOT = Path(__file__).resolve().parent.parent


def embed(ids, table, pos):
    return F.layer_norm(F.embedding(ids, table) + pos, (32,))


def gather(x, idx):
    return x.gather(1, idx) * 2


def _plan(fn, *args):
    return fusec.inspect(fn, *args).graphs[0].plan


def test_interpreted_kernels_still_raise_eagers_index_error():
    table, pos = torch.randn(50, 32), torch.randn(7, 32)
    ids = torch.randint(0, 50, (3, 7))
    check(embed, ids, table, pos, kernels=1)
    ids[1, 4] = 50
    assert_raises_as_eager(embed, ids, table, pos)
    x = torch.randn(4, 9)
    assert_raises_as_eager(gather, x, torch.tensor([[0], [9], [1], [2]]), error=RuntimeError)
    assert_raises_as_eager(gather, x, torch.tensor([[0], [-1], [1], [2]]), error=RuntimeError)


def test_gpu_kernels_assert_on_the_device_and_take_no_flag():
    plan = _plan(gather, torch.randn(4, 9), torch.randint(0, 9, (4, 5)))
    interpreted = render_plan(plan, interpret=True)
    gpu = render_plan(plan, interpret=False)
    [kernel], [flagged] = gpu.kernels, interpreted.kernels
    assert LaunchExtra.BAD_INDEX in flagged.extras and "p_bad_index" in flagged.params
    assert LaunchExtra.BAD_INDEX not in kernel.extras and "p_bad_index" not in kernel.params
    assert kernel.asserts and "tl.device_assert(" in kernel.source and "@triton.jit(debug=True)" in kernel.source
    # Debug keeps the asserts; the overflow checks it would add to all 32-bit integer math are off.
    assert static_launch(gpu.graph, kernel, interpret=False).constants["sanitize_overflow"] is False
    # Nothing per call reads the GPU back: no flag buffer, no .item(), no bounds check on the host.
    host = launcher_source(gpu)
    assert "flag" not in host and ".item()" not in host and "BOUNDS" not in host
    assert "flag = torch.zeros" in launcher_source(interpreted)


def test_device_asserts_reach_the_sm90_binary(tmp_path):
    pytest.importorskip("triton.backends.nvidia.compiler")
    plan = _plan(embed, torch.randint(0, 50, (3, 7)), torch.randn(50, 32), torch.randn(7, 32))
    [kernel] = plan.kernels
    binary = bench_static.compile_sm90(plan.graph, kernel, tmp_path)
    messages = _assert_messages(binary.asm["ptx"])
    # The device-side assert is compiled in, and it is the only one: no overflow check on the 32-bit math.
    assert set(messages) == {"index out of bounds"} and "__assertfail" in binary.asm["ptx"]


def _assert_messages(ptx: str) -> list[str]:
    """The assert messages of a PTX module (`.b8 assertMessage_0[20] = {105, 110, ...}`)."""
    found = re.findall(r"assertMessage_\d+\[\d+\] = \{([\d, ]+)\}", ptx)
    return ["".join(chr(int(b)) for b in bytes_.split(",")).rstrip("\0") for bytes_ in found]


_OUT_OF_RANGE = textwrap.dedent("""
    import torch, torch.nn.functional as F, fusec
    table = torch.randn(50, 32, device="cuda")
    f = fusec.compile(lambda ids, t: F.embedding(ids, t) * 2)
    ids = torch.randint(0, 50, (3, 7), device="cuda")
    f(ids, table)
    torch.cuda.synchronize()
    ids[1, 4] = 50
    f(ids, table)
    torch.cuda.synchronize()
""")


@pytest.mark.cuda
def test_on_a_gpu_no_call_syncs_and_an_index_out_of_range_fails_a_device_assert():
    table, pos = torch.randn(50, 32, device="cuda"), torch.randn(7, 32, device="cuda")
    ids = torch.randint(0, 50, (3, 7), device="cuda")
    compiled = fusec.compile(embed)
    torch.testing.assert_close(compiled(ids, table, pos), embed(ids, table, pos))
    torch.cuda.set_sync_debug_mode("error")  # a host sync (a flag's .item()) now raises
    try:
        out = compiled(ids, table, pos)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out, embed(ids, table, pos))
    # A failed device-side assert ends the CUDA context: in a process of its own.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _OUT_OF_RANGE], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode != 0 and "device-side assert" in done.stderr, done.stderr[-2000:]
