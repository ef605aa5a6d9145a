"""PyTorch's own elementwise OpInfo samples through fusec: never wrong, and most in generated kernels."""

from __future__ import annotations

import pytest

pytest.importorskip("expecttest", reason="PyTorch's OpInfo database needs expecttest (the dev extra installs it)")

from fusec.bench.ops import markdown, per_op, sweep
from fusec.cli import main

# Ops whose every sample ran in generated kernels when this floor was set (`fusec bench --ops`):
# raise it when ops are added; a drop means an op went back to torch.
KERNEL_OPS_FLOOR = 146


@pytest.mark.fallback_expected  # ops fusec does not generate code for run through torch, as it says
def test_every_elementwise_opinfo_sample_equals_eager():
    results = sweep(per_op=1)
    bad = [r for r in results if r.cls in ("wrong", "error")]
    assert not bad, markdown(bad, 0)
    ops = per_op(results)
    assert len(ops) >= 150  # the database was read (166 ops in torch 2.13)
    kernel_ops = sorted(op for op, cls in ops.items() if cls == "kernel")
    assert len(kernel_ops) >= KERNEL_OPS_FLOOR, kernel_ops
    for op in ("add", "div.floor_rounding", "remainder", "nn.functional.silu", "logaddexp", "round", "atan2",
               "lgamma", "special.i0e", "signbit", "erfinv", "special.ndtri", "special.bessel_j0",
               "special.bessel_y1", "special.airy_ai"):
        assert ops[op] == "kernel", (op, ops[op])


@pytest.mark.fallback_expected
def test_bench_ops_prints_the_classes(capsys, tmp_path):
    out = tmp_path / "ops.md"
    assert main(["bench", "--ops", "--op", "add", "igamma", "--markdown", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("2 elementwise ops (2 samples") and "1 kernel" in table and "1 torch" in table
    assert "| kernel | `add` |" in table and "| torch | `igamma` |" in table
    assert "samples: 1 of 2 lowered (50.0%" in table
    assert out.read_text().strip() == table.strip()
