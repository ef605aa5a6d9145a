"""`fusec bench --memory`: bytes saved for backward, measured with saved-tensor hooks."""

import json

import torch

from fusec.bench.memory import measure, saved_storages
from fusec.cli.bench import main

FLOAT = 4


def test_hooks_count_each_storage_once_and_leave_out_what_the_caller_holds():
    x = torch.randn(64, requires_grad=True)
    # exp saves its output; mul saves both operands: y twice (one storage) and x (held).
    total, activations = saved_storages(lambda a: torch.exp(a) * a, (x,), [x])
    assert (total, activations) == (2 * 64 * FLOAT, 64 * FLOAT)


def test_cli_measures_each_system(tmp_path):
    out = tmp_path / "memory.json"
    assert main(["--memory", "--device", "cpu", "--quick", "--workload", "bias_gelu", "--json", str(out)]) == 0
    rows = {r["system"]: r["activation_bytes"] for r in json.loads(out.read_text())["rows"]}
    rows_cols = 64 * 256 * FLOAT
    # Eager's GELU saves its input x + bias; a partition that recomputes it saves nothing beyond the inputs.
    assert rows == {"eager": rows_cols, "torch.compile": 0, "fusec remat=auto": 0,
                    "fusec remat=none": rows_cols, "fusec remat=aggressive": 0}


def test_transformer_block_saves_no_more_than_inductor_and_under_0_7_of_eager():
    rows = {r.system: r.activation_bytes for r in measure("transformer_block_train", "cpu", quick=True)}
    assert rows["fusec remat=auto"] <= rows["torch.compile"]
    assert rows["fusec remat=auto"] <= 0.7 * rows["eager"]
    assert rows["fusec remat=aggressive"] <= rows["fusec remat=auto"] <= rows["fusec remat=none"]


def test_a_workload_that_cannot_train_is_refused(capsys):
    assert main(["--memory", "--device", "cpu", "--workload", "adam"]) == 2
    assert "adam cannot train here" in capsys.readouterr().err
