"""Every report view (terminal, JSON, DOT, SVG, HTML) drawn for every bundled example, every bench workload
and Hugging Face models, inference and training: one identity per kernel across all of them."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from typing import Any

import pytest
import torch
from rich.console import Console

import fusec
from fusec.bench.workloads import WORKLOADS
from fusec.examples import EXAMPLES, build
from fusec.report import draw as report_draw
from fusec.report.data import collect, is_op
from fusec.report.html import reason_pattern, to_html
from fusec.report.overview import launched
from fusec.report.svg import to_dot, to_svg
from fusec.report.terminal import print_report
from tests import hf_models
from tests.test_cli_inspect import parse_html

HAS_DOT = shutil.which("dot") is not None
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
NO_TRANSFORMERS = "Hugging Face transformers is not installed (pip install -e '.[models]')"


def needs_dot() -> None:
    """Graphviz is optional for users, not for CI: .ci/run installs it, so there a missing `dot` fails."""
    if HAS_DOT:
        return
    if os.environ.get("CI"):
        pytest.fail("Graphviz dot is missing in CI; .ci/run installs it")
    pytest.skip("Graphviz dot is not installed (apt-get install graphviz)")


def _example(name: str) -> Callable[[], tuple[Any, tuple]]:
    return lambda: build(name)


def _workload(name: str) -> Callable[[], tuple[Any, tuple]]:
    def make() -> tuple[Any, tuple]:
        torch.manual_seed(0)
        case = WORKLOADS[name].case("tiny", torch.device("cpu"), torch.float32)
        return case.fn, case.args
    return make


def _training_args(args: tuple) -> tuple:
    return tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)


CASES = {f"example-{name}": (_example(name), False) for name in EXAMPLES}
CASES |= {f"example-{name}-training": (_example(name), True) for name in EXAMPLES}
CASES |= {f"bench-{name}": (_workload(name), name.endswith("_train")) for name in WORKLOADS}


def inspect_data(make: Callable[[], tuple[Any, tuple]], training: bool, label: str) -> dict[str, Any]:
    model, args = make()
    if isinstance(model, torch.nn.Module):
        model.train(training)
    report = fusec.inspect(model, *(_training_args(args) if training else args), training=training)
    return collect(report, label, training, [], {})


def check_identity(data: dict[str, Any]) -> None:
    """Every node names the kernel that launches it, that kernel is in the list, and edges and the
    critical path name launched steps."""
    kernels = {(k["graph"], k["id"]): k for k in data["kernels"]}
    nodes = {(n["graph"], n["name"]): n for n in data["nodes"]}
    for n in data["nodes"]:
        if n["kernel"] is not None:
            assert (n["graph"], n["kernel"]) in kernels, n
            assert n["name"] in kernels[(n["graph"], n["kernel"])]["members"], n
    for k in data["kernels"]:
        assert all(nodes[(k["graph"], m)]["kernel"] == k["id"] for m in k["members"]), k["id"]
    steps = {(g, s) for g in {n["graph"] for n in data["nodes"]} for s in (*launched(data, g),
                                                                            *(e["id"] for e in data["extern_calls"]))}
    for e in data["edges"]:
        for end in ("src", "dst"):
            assert (e["graph"], e[f"{end}_kernel"]) in steps or (e["graph"], e[end]) in nodes, e


def check_views(data: dict[str, Any]) -> None:
    check_identity(data)
    assert json.loads(json.dumps(data)) == data
    out = io.StringIO()
    print_report(data, Console(file=out, width=160))
    for k in data["kernels"]:
        assert k["id"] in out.getvalue()
    dot = to_dot(data)
    assert len(re.findall(r'^\s*"[^"]+" -> "[^"]+"', dot, re.M)) == sum(len(n["inputs"]) for n in data["nodes"])
    kernel_of_ops = {f"kernel-{n['kernel']}" for n in data["nodes"] if n["kernel"] and is_op(n)}
    for layout in ("layered", "dot") if HAS_DOT else ("layered",):
        svg = parse_html(to_svg(data, layout=layout))
        ops = svg.with_class("op")
        assert len(ops) == data["stats"]["nodes"]
        assert {c for a in ops for c in a["class"].split() if c.startswith("kernel-")} == kernel_of_ops
    check_page(to_html(data), data)


def check_page(page_text: str, data: dict[str, Any]) -> None:
    """The HTML: one box per launch, every op once in the full graph, a drill-down per kernel, and
    every in-page link lands on an element of the page."""
    page = parse_html(page_text)
    assert len(page.with_class("op")) == data["stats"]["nodes"]
    assert len(page.with_class("kernel-source")) == data["stats"]["kernels"]
    launches = sum(len(launched(data, g["name"])) for g in data["graphs"] if g.get("ops") is not None)
    assert len(page.with_class("step")) == launches
    ids = {a["id"] for _, a in page.tags if "id" in a}
    for step in page.with_class("step"):
        if "kernel" in step["class"].split():
            assert step["id"].replace(":step:", ":kernel:") in ids, step["id"]
    links = [a["href"][1:] for t, a in page.tags if t == "a" and a.get("href", "").startswith("#")]
    assert not [link for link in links if link not in ids and not _is_view_step(data, link)]
    for _, attrs in page.tags:
        for key in ("src", "href", "xlink:href"):
            assert not attrs.get(key, "").startswith(("http:", "https:", "//")), attrs


def _is_view_step(data: dict[str, Any], link: str) -> bool:
    """A critical path may pass a view (no launch, so no box): its link has nothing to land on."""
    graph, _, step = link.partition(":step:")
    return any(e["graph"] == graph and e["id"] == step and not e["counted"] for e in data["extern_calls"])


@pytest.mark.parametrize("case", list(CASES))
def test_every_view_of_every_example_and_workload(case: str) -> None:
    make, training = CASES[case]
    data = inspect_data(make, training, case)
    assert data["kernels"], "each example and workload has at least one generated kernel"
    check_views(data)


def test_combo_kernel_is_one_kernel_in_every_view() -> None:
    """The Adam step's small pointwise kernels launch as one combo: its members name the combo."""
    data = inspect_data(_workload("adam"), False, "adam")
    (combo,) = data["kernels"]
    assert combo["kind"] == "combo" and "+" in combo["id"]
    assert {n["kernel"] for n in data["nodes"] if is_op(n)} == {combo["id"]}
    assert {n["part"] for n in data["nodes"] if is_op(n)} == set(combo["id"].split("+"))
    check_views(data)


def test_module_paths_label_kernels() -> None:
    data = inspect_data(_example("transformer"), False, "transformer")
    modules = {k["module"] for k in data["kernels"]}
    assert {"ln1", "qkv", "mlp"} <= modules, modules  # mlp.up and its GELU: mlp
    # proj and ln2 share one kernel (LayerNorm in the projection's epilogue): labelled by their common module
    module_of = {n["name"]: n["module"] for n in data["nodes"]}
    assert any({"proj", "ln2"} <= {module_of.get(m) for m in k["members"]} and k["module"] == ""
               for k in data["kernels"]), data["kernels"]
    page = parse_html(to_html(data, layout="layered"))
    assert any("qkv" in a.get("data-search", "").split() for _, a in page.tags)


def test_refusals_group_by_reason() -> None:
    names = {"amax_3", "mm", "mm_1", "sum_2"}
    assert reason_pattern("would create a cycle through amax_3", names) == "would create a cycle through …"
    assert reason_pattern("matmuls mm and mm_1 do not share a left operand", names) == \
        "matmuls … and … do not share a left operand"
    assert reason_pattern("shapes differ: [8, 64] vs [8]", names) == "shapes differ: […] vs […]"
    data = inspect_data(_example("transformer"), True, "transformer")
    page = to_html(data, layout="layered")
    rows = re.findall(r'<tr data-search="[^"]*"><td class=num>(\d+)</td>', page.split('class="refusals"')[1])
    assert sum(map(int, rows)) >= len([e for e in data["edges"] if e["graph"] == data["graphs"][0]["name"]])


def test_graphviz_layout_is_used_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """"auto" draws with Graphviz where `dot` is installed and with the built-in layout where it is not."""
    needs_dot()
    data = inspect_data(_example("mlp"), False, "mlp")
    drawn_by_dot = parse_html(to_svg(data))
    assert len(drawn_by_dot.with_class("node")) == len(data["nodes"])  # Graphviz's own class on each box
    assert len(drawn_by_dot.with_class("op")) == data["stats"]["nodes"]
    monkeypatch.setattr(report_draw.shutil, "which", lambda name: None)
    built_in = parse_html(to_svg(data))
    assert not built_in.with_class("node")
    assert len(built_in.with_class("op")) == data["stats"]["nodes"]


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason=NO_TRANSFORMERS)
@pytest.mark.parametrize(("name", "training"), [("gpt2", False), ("bert", False), ("gpt2", True)])
def test_hugging_face_models(name: str, training: bool) -> None:
    data = inspect_data(getattr(hf_models, name), training, name)
    kinds = {k["kind"] for k in data["kernels"]}
    assert {"matmul", "reduction"} <= kinds
    for graph in data["graphs"]:  # forward and backward both: layer 0's kernels are labelled
        assert any(k["graph"] == graph["name"] and k["module"] and ".0." in f".{k['module']}."
                   for k in data["kernels"]), graph["name"]
    check_views(data)
