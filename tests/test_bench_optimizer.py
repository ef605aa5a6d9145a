"""`fusec bench --optimizer`: AdamW over a GPT-2-shaped parameter list under each system."""

from __future__ import annotations

import math

from fusec.bench import optimizer
from fusec.cli.bench import main


def test_gpt2_small_has_148_parameter_tensors_and_124m_parameters():
    shapes = optimizer.gpt2_shapes(*optimizer.SHAPES["full"])
    assert len(shapes) == 148
    assert sum(math.prod(s) for s in shapes) == 124_439_808


def test_fusec_steps_in_two_launches_where_eager_foreach_needs_one_per_op(monkeypatch, tmp_path):
    monkeypatch.setitem(optimizer.SHAPES, "tiny", (1, 8, 16, 8))  # 16 tensors: a short interpreter run
    rows = optimizer.measure("cpu", "tiny", systems=("eager foreach", "eager fused", "fusec"))
    by = {r.system: r for r in rows}
    assert by["fusec"].tensors == 16
    assert by["fusec"].launches_per_step == 2  # the step counts and bias corrections, then one combo
    assert by["eager foreach"].launches_per_step > 10
    assert by["fusec"].max_abs_error < 1e-6 and by["eager fused"].max_abs_error < 1e-6
    text = optimizer.markdown(rows, "cpu")
    assert "| fusec | 2 |" in text and "16 GPT-2-shaped parameter tensors" in text


def test_the_optimizer_table_from_the_command_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(optimizer.SHAPES, "tiny", (1, 4, 8, 4))
    monkeypatch.setattr(optimizer, "SYSTEMS", ("eager foreach", "fusec"))
    out = tmp_path / "optimizer.md"
    assert main(["--optimizer", "--device", "cpu", "--quick", "--markdown", str(out)]) == 0
    assert "| fusec | 2 |" in out.read_text()
