"""One report schema: `Report.to_dict` is what `--json` writes; each graph keeps its passes and device model."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

import fusec
from fusec.passes.cost import H100
from fusec.passes.refusal import CODES

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "report-schema.md"


def _softmax_of_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(torch.nn.functional.gelu(x) * 2, -1)


def _documented_keys(section: str) -> set[str]:
    """The keys a table of docs/report-schema.md lists under `## section`."""
    text = SCHEMA_DOC.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {key for row in re.findall(r"^\| (`[^|]+)\|", text, re.M) for key in re.findall(r"`(\w+)`", row)}


def test_to_dict_is_the_documented_schema():
    report = fusec.inspect(_softmax_of_gelu, torch.randn(8, 32))
    data = report.to_dict()
    assert data["target"] == "model" and data["runs_eagerly"] is None and data["schema"] == 1
    assert set(data) == _documented_keys("Top level")
    assert set(data["graphs"][0]) <= _documented_keys("`graphs[]`")
    assert json.loads(report.to_json())["kernels"][0]["id"] == data["kernels"][0]["id"]


def test_each_graph_keeps_the_graph_after_every_pass():
    report = fusec.inspect(_softmax_of_gelu, torch.randn(8, 32))
    (name,) = [g.name for g in report.graphs]
    history = report.passes(name)
    assert [p for p, _ in history] == ["capture", "cleanup", "private_constants", "fuse", "view_outputs", "horizontal"]
    # Before fusion every op stands alone; after it the gelu, the scale and the softmax are one group.
    groups = [len({n.group for n in g.op_nodes() if n.group}) for _, g in history]
    assert groups[0] == 0 and groups[-1] == report.stats["kernels"] == 1
    assert history[-1][1] is report.graphs[0].graph
    rows = report.to_dict()["graphs"][0]["history"]
    assert [r["pass"] for r in rows] == [p for p, _ in history]
    assert rows[-1]["groups"] == 1 and rows[0]["ops"] >= rows[-1]["ops"]
    with pytest.raises(KeyError, match="no graph named 'backward_0'"):
        report.passes("backward_0")


def test_the_report_models_times_with_the_device_model_the_planner_used():
    report = fusec.inspect(_softmax_of_gelu, torch.randn(8, 32))
    record = report.graphs[0]
    assert record.device_model == H100  # a CPU plans with an H100's datasheet
    before = report.to_dict()
    slow = dataclasses.replace(H100, name="half an H100", bandwidth=H100.bandwidth / 2)
    record.device_model = slow
    after = report.to_dict()
    assert after["cost_model"]["name"] == after["graphs"][0]["cost_model"]["name"] == "half an H100"
    # A memory-bound kernel takes longer on the slower model, launch overhead aside.
    assert after["kernels"][0]["seconds"] > before["kernels"][0]["seconds"]


def test_html_shows_the_passes():
    page = fusec.inspect(_softmax_of_gelu, torch.randn(8, 32)).to_html()
    passes = page.split("<h3>Passes</h3>", 1)[1].split("</table>", 1)[0]
    for name in ("capture", "cleanup", "fuse", "horizontal"):
        assert f"<td>{name}</td>" in passes


def test_edges_carry_the_refusal_code():
    def f(x, w):
        h = x @ w
        return torch.softmax(h, -1).sum(0)  # a matmul, then a reduction: refused by rule
    data = fusec.inspect(f, torch.randn(16, 32), torch.randn(32, 32)).to_dict()
    codes = {e["code"] for e in data["edges"]}
    assert "matmul-reduction" in codes or "library-matmul" in codes, data["edges"]
    assert all(e["code"] in CODES for e in data["edges"])


def test_an_output_neither_per_element_nor_per_row_is_refused_as_shapes():
    # A slice of a row-wise result: its 3 columns are neither the rows' 8 elements nor one per row.
    torch._dynamo.reset()
    data = fusec.inspect(lambda x: (x - x.amax(-1, keepdim=True))[:, :3], torch.randn(4, 8)).to_dict()
    (edge,) = [e for e in data["edges"] if "neither an element nor a row" in e["reason"]]
    assert edge["code"] == "shapes", edge
