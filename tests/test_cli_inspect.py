"""`fusec inspect`: the CLI on bundled examples and user files, its outputs, and every error a person can get."""

from __future__ import annotations

import ast
import itertools
import json
import re
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import networkx as nx
import pytest
from rich.console import Console

import fusec
from fusec.cli import inspect as cmd_inspect
from fusec.cli import main
from fusec.cli.targets import UsageError
from fusec.compiler import CompiledGraph
from fusec.examples import EXAMPLES, build
from fusec.report import STATS_KEYS, Report
from fusec.report.data import collect, is_op
from fusec.report.draw import BOX_W, layered_positions
from fusec.report.html import to_html
from fusec.report.svg import to_dot, to_svg
from fusec.report.terminal import print_report

REPO = Path(__file__).resolve().parent.parent
HAS_DOT = shutil.which("dot") is not None

MODEL_FILE = """
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, width=32):
            super().__init__()
            self.up = nn.Linear(width, 2 * width)
            self.norm = nn.LayerNorm(2 * width)

        def forward(self, x):
            h = torch.relu(self.norm(torch.nn.functional.gelu(self.up(x))))
            return h * 0.5 + h.mean(0)  # a mean over the batch: an edge fusion refuses


    class NeedsWidth(nn.Module):
        def __init__(self, width, depth):
            super().__init__()


    def make():
        return Block(16), (torch.randn(4, 16),)


    def make_wrong():
        return 42


    def second_wrong(x, y):
        return torch.sigmoid(x) * 2 + y.reshape(4, 8)


    NOT_A_MODEL = 3
"""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL_FILE))
    return path


def inspect_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["inspect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


class Elements(HTMLParser):
    """Every start tag with its attributes, to count SVG nodes and check links."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.tags if name in a.get("class", "").split()]


def parse_html(text: str) -> Elements:
    parser = Elements()
    parser.feed(text)
    parser.close()
    return parser


def check_page(text: str, data: dict) -> Elements:
    page = parse_html(text)
    tags = [t for t, _ in page.tags]
    assert "svg" in tags
    assert len(page.with_class("op")) == data["stats"]["nodes"]
    assert len(page.with_class("kernel-source")) == data["stats"]["kernels"]
    for _, attrs in page.tags:  # self-contained: nothing to fetch
        for key in ("src", "href", "xlink:href"):
            assert not attrs.get(key, "").startswith(("http:", "https:", "//")), attrs
    return page


@pytest.fixture(scope="module")
def transformer_data() -> dict:
    model, args = build("transformer")
    report = fusec.inspect(model, *args)
    return collect(report, "example transformer", False, [], {})


# --- success paths -------------------------------------------------------------------------


def test_examples_cover_the_kinds_of_graph_fusec_handles(capsys: pytest.CaptureFixture) -> None:
    assert {"mlp", "transformer", "inception", "norm"} <= set(EXAMPLES)
    code, out, _ = inspect_cli(capsys, "--list-examples")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == list(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_writes_json_with_stats(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = inspect_cli(capsys, "--example", name, "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    assert list(data["stats"]) == list(STATS_KEYS)
    assert data["schema"] == 1
    assert data["stats"]["kernels"] == len(data["kernels"]) > 0
    assert data["stats"]["nodes"] == sum(is_op(n) for n in data["nodes"])
    assert all(k["source"].startswith("import triton") for k in data["kernels"])
    assert re.search(rf"^\s*kernels\s+{data['stats']['kernels']}\s*$", out, re.M)


def test_terminal_shows_kernels_critical_path_and_every_reason(model_file: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    code, out, _ = inspect_cli(capsys, f"{model_file}:Block", "--input", "8x32", "--json", str(tmp_path / "r.json"))
    data = json.loads((tmp_path / "r.json").read_text())
    assert code == 0
    for key in ("ops", "extern calls", "DAG width", "cross-stream waits", "compile time"):
        assert re.search(rf"^\s*{key}\s+\S", out, re.M), key
    graph = data["graphs"][0]
    assert f"{graph['ops']} ops, {graph['kernels']} kernels" in out
    assert "critical path" in out and " → ".join(graph["critical_path"]["steps"]) in out
    assert f"not fused: {len(data['edges'])} edges" in out
    lines = out.splitlines()
    for edge in data["edges"]:
        assert any(line.strip().startswith(f"{edge['src_kernel']} → {edge['dst_kernel']}")
                   and line.endswith(edge["reason"]) for line in lines), edge
    assert data["edges"], "the Linear runs through torch, so its edges cannot be fused"


def test_model_file_html_kernels_dot_svg(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "out"
    code, _, err = inspect_cli(capsys, f"{model_file}:Block", "--input", "8x32", "--json", str(out_dir / "r.json"),
                               "--html", str(out_dir / "r.html"), "--dot", str(out_dir / "g.dot"),
                               "--svg", str(out_dir / "g.svg"), "--kernels", str(out_dir / "kernels"))
    assert code == 0, err
    data = json.loads((out_dir / "r.json").read_text())
    assert data["inputs"] == [{"shape": [8, 32], "dtype": "float32"}]
    check_page((out_dir / "r.html").read_text(), data)
    svg = parse_html((out_dir / "g.svg").read_text())
    assert len(svg.with_class("op")) == data["stats"]["nodes"]
    assert (out_dir / "g.dot").read_text().startswith("digraph fusec {")
    files = sorted((out_dir / "kernels").iterdir())
    assert [f.name for f in files] == sorted(f"{k['id']}.py" for k in data["kernels"])
    for f in files:
        compile(f.read_text(), str(f), "exec")


def test_training_inspects_forward_and_backward(model_file: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    code, _, err = inspect_cli(capsys, f"{model_file}:make", "--training", "--json", str(tmp_path / "r.json"),
                               "--kernels", str(tmp_path / "k"))
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["training"] is True
    kinds = {g["name"].split("_")[0] for g in data["graphs"]}
    assert kinds == {"forward", "backward"}
    names = {p.name for p in (tmp_path / "k").iterdir()}
    assert names == {f"{k['graph']}.{k['id']}.py" for k in data["kernels"]}
    for name in names:
        ast.parse((tmp_path / "k" / name).read_text())


@pytest.mark.parametrize("argv", [
    ["fusec.examples:MLPBlock", "--input", "2x128"],  # package.module:NAME, a class
    ["fusec.examples:_norm", "--streams", "2"],  # a factory bringing (model, args)
])
def test_module_targets(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    code, out, err = inspect_cli(capsys, *argv)
    assert code == 0, err
    assert "summary" in out


def test_function_of_tensors_target(model_file: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = inspect_cli(capsys, f"{model_file}:second_wrong", "--input", "4x8", "--input", "32")
    assert code == 0, err
    assert re.search(r"^\s*kernels\s+[1-9]", out, re.M)


def test_graph_that_falls_back_to_torch_is_shown_with_its_reason(capsys: pytest.CaptureFixture) -> None:
    report = Report([CompiledGraph(name="inference_7", device="cpu", fallback="tensors on several devices (cpu, cuda)",
                                   fallback_ops=3)])
    data = collect(report, "t.py:M", False, [], {})
    print_report(data, Console(width=200))
    out = capsys.readouterr().out
    assert "runs through torch entirely (3 ops): tensors on several devices (cpu, cuda)" in out
    assert "tensors on several devices" in to_html(data)
    assert data["stats"]["extern_calls"] == 3


def test_html_escapes_what_the_model_and_compiler_say(transformer_data: dict) -> None:
    data = json.loads(json.dumps(transformer_data))
    data["edges"][0]["reason"] = "<script>alert(1)</script>"
    data["kernels"][0]["source"] += "\n# </pre><script>x</script>"
    data["target"] = "<b>model.py</b>:M"
    page = to_html(data, layout="layered")
    assert page.count("<script") == 1 and "<b>" not in page  # the page's own script, and nothing injected
    check_page(page, data)


def test_schema_doc_names_every_field(transformer_data: dict) -> None:
    doc = (REPO / "docs" / "report-schema.md").read_text()
    rows = {"top level": transformer_data, "stats": transformer_data["stats"]}
    rows |= {name: transformer_data[name][0] for name in ("graphs", "nodes", "kernels", "extern_calls", "edges",
                                                           "streams")}
    for where, row in rows.items():
        missing = [key for key in row if f"`{key}`" not in doc]
        assert not missing, f"docs/report-schema.md does not describe {where} fields {missing}"


# --- graph drawing -------------------------------------------------------------------------


def test_layered_layout_keeps_edges_downward_and_boxes_apart() -> None:
    dag = nx.DiGraph([("a", "c"), ("b", "c"), ("c", "d"), ("c", "e"), ("w", "e"), ("d", "f"), ("e", "f")])
    pos = layered_positions(dag)
    assert all(pos[u][1] < pos[v][1] for u, v in dag.edges)
    assert pos["w"][1] == pos["e"][1] - 1  # a source sits just above its consumer, not on the top row
    rows: dict[int, list[float]] = {}
    for x, row in pos.values():
        rows.setdefault(row, []).append(x)
    for xs in rows.values():
        xs.sort()
        assert all(b - a >= BOX_W for a, b in itertools.pairwise(xs))


@pytest.mark.parametrize("layout", ["layered", pytest.param("dot", marks=pytest.mark.skipif(
    not HAS_DOT, reason="Graphviz dot is optional and not installed"))])
def test_svg_has_one_element_per_op_with_kernel_and_stream(layout: str, transformer_data: dict) -> None:
    svg = parse_html(to_svg(transformer_data, layout=layout))
    ops = svg.with_class("op")
    assert len(ops) == transformer_data["stats"]["nodes"]
    kernel_classes = {c for a in ops for c in a["class"].split() if c.startswith("kernel-")}
    assert kernel_classes == {f"kernel-{k['id']}" for k in transformer_data["kernels"]}
    assert all(any(c.startswith("stream-") for c in a["class"].split()) for a in svg.with_class("kernel-k0"))
    check_page(to_html(transformer_data, layout=layout), transformer_data)


def test_dot_quotes_names_and_clusters_kernels(transformer_data: dict) -> None:
    dot = to_dot(transformer_data)
    graph = transformer_data["graphs"][0]["name"]
    assert f'subgraph "cluster_{graph}_k0"' in dot
    edges = re.findall(r'^\s*"[^"]+" -> "[^"]+"', dot, re.M)
    assert len(edges) == sum(len(n["inputs"]) for n in transformer_data["nodes"])


# --- errors a person gets --------------------------------------------------------------------


ERRORS = {
    "missing file": (["nowhere/model.py:Block"], "no file nowhere/model.py"),
    "missing name": (["{file}:Missing"], "has no 'Missing'; it defines Block, NeedsWidth, make"),
    "needs arguments": (["{file}:NeedsWidth"], "NeedsWidth cannot be built without arguments (it needs width, depth)"),
    "not a model": (["{file}:NOT_A_MODEL"], "NOT_A_MODEL is not a model (its type is int)"),
    "bad factory": (["{file}:make_wrong"], "make_wrong() returned int; it must return an nn.Module"),
    "no colon": (["{file}"], "must be path/to/file.py:NAME or package.module:NAME"),
    "missing module": (["no_such_package.models:Block"], "no module named 'no_such_package'"),
    "no inputs": (["{file}:Block"], "pass --input SHAPE[:DTYPE] once per argument of forward(x)"),
    "bad shape spec": (["{file}:Block", "--input", "8xabc"], "bad --input '8xabc': the shape must be"),
    "bad dtype": (["{file}:Block", "--input", "8x32:float99"], "unknown dtype 'float99'"),
    "wrong input shape": (["{file}:Block", "--input", "8x100"],
                          "input 1 (shape 8x100, float32): mat1 and mat2 shapes cannot be multiplied"),
    "second input wrong": (["{file}:second_wrong", "--input", "4x8", "--input", "3x3"],
                           "input 2 (shape 3x3, float32): shape '[4, 8]' is invalid"),
    "unknown example": (["--example", "resnet"], "no bundled example named 'resnet'"),
    "nothing to inspect": ([], "give either a TARGET"),
    "both targets": (["{file}:Block", "--example", "mlp"], "give either a TARGET"),
    "bad streams": (["--example", "mlp", "--streams", "0"], "bad --streams: streams must be a positive integer"),
    "unwritable output": (["--example", "pointwise", "--json", "{file}/r.json"], "cannot write"),
    "output under /proc": (["--example", "pointwise", "--json", "/proc/nope/x.json"],
                           "cannot write --json /proc/nope/x.json: cannot create its folder /proc/nope"),
    "kernels into a file": (["--example", "pointwise", "--kernels", "{file}"], "cannot write --kernels"),
    "negative size": (["{file}:Block", "--input", "-8x32"], "bad --input '-8x32': the shape must be non-negative"),
    "unfillable dtype": (["{file}:Block", "--input", "8x32:qint8"],
                         "bad --input '8x32:qint8': torch cannot fill qint8 tensors with random values"),
    "beyond int64": (["{file}:Block", "--input", "99999999999999999999x2"],
                     "bad --input '99999999999999999999x2': 199999999999999999998 elements are more than torch"),
    "too many bytes": (["{file}:Block", "--input", "100000x100000"],
                       "would take 37.3 GiB (40000000000 bytes), more than the 4 GiB limit; use smaller shapes, "
                       "or raise the limit with --max-input-gib"),
    "own limit": (["{file}:Block", "--input", "1024x1024", "--max-input-gib", "0.001"], "more than the 0.001 GiB"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_with_exit_2(case: str, model_file: Path, capsys: pytest.CaptureFixture) -> None:
    argv, expected = ERRORS[case]
    code, _, err = inspect_cli(capsys, *(a.format(file=model_file) for a in argv))
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fusec inspect: error: ")
    assert expected in err


def test_outputs_are_checked_before_the_model_runs(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model ran before the outputs were checked")
    monkeypatch.setattr(cmd_inspect, "check_runs_eagerly", refuse)
    code, _, err = inspect_cli(capsys, "--example", "pointwise", "--html", "/proc/nope/r.html")
    assert code == 2 and err.startswith("fusec inspect: error: cannot write --html /proc/nope/r.html"), err


def test_zero_size_inputs_are_allowed(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = inspect_cli(capsys, f"{model_file}:Block", "--input", "0x32", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["inputs"] == [{"shape": [0, 32], "dtype": "float32"}] and data["stats"]["kernels"] >= 1


@pytest.mark.parametrize(("argv", "expected"), [
    (["--example", "mlp", "--bogus"], "fusec: error: unrecognized arguments: --bogus (see fusec --help)"),
    (["--example", "mlp", "--input"], "fusec inspect: error: argument --input: expected one argument"),
    (["--example", "mlp", "--max-input-gib", "lots"], "fusec inspect: error: argument --max-input-gib: invalid"),
])
def test_command_line_mistakes_are_one_line(argv: list[str], expected: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith(expected), err


@pytest.mark.parametrize(("cpu", "shown"), [("interpret", "kernels in Triton's interpreter"),
                                             ("torch", "through torch")])
def test_report_says_how_each_graph_runs(cpu: str, shown: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("FUSEC_CPU", cpu)
    code, out, err = inspect_cli(capsys, "--example", "pointwise", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    mode = {"interpret": "interpreter", "torch": "torch"}[cpu]
    assert data["stats"]["execution"] == mode and [g["execution"] for g in data["graphs"]] == [mode]
    assert re.search(rf"^\s*runs\s+{re.escape(shown)}\s*$", out, re.M), out
    assert f"inference_0 (cpu, {shown})" in out


def test_help_says_the_target_runs_and_the_model_is_called_twice(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "runs the TARGET's file" in out and "calls the model twice" in out
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "runs the target's file" in readme and "calls the model twice" in readme


def test_file_that_fails_to_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "broken.py").write_text("import torch\nraise ValueError('the config is missing\\nsecond line')\n")
    code, _, err = inspect_cli(capsys, f"{tmp_path / 'broken.py'}:M")
    assert code == 2
    assert err.strip().endswith("failed: ValueError: the config is missing; fix the file and try again")


def test_model_that_cannot_be_traced(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Dynamo hit something it cannot trace\nwith a long explanation")
    monkeypatch.setattr(cmd_inspect.fusec, "inspect", refuse)
    code, _, err = inspect_cli(capsys, "--example", "pointwise")
    assert code == 2
    assert err == ("fusec inspect: error: fusec could not trace example pointwise: RuntimeError: Dynamo hit "
                   "something it cannot trace; run with --debug for the traceback\n")


def test_compiler_bug_is_one_line_with_exit_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def broken_render(plan: object, **options: object) -> None:
        raise TypeError("float() argument must be a string or a real number, not 'tuple'")
    monkeypatch.setattr(fusec.compiler, "render_plan", broken_render)
    code, _, err = inspect_cli(capsys, "--example", "pointwise")
    assert code == 1
    assert len(err.splitlines()) == 1
    assert re.match(r"fusec inspect: error: fusec failed while planning example pointwise: TypeError: float\(\) "
                    r".* \(at fusec/compiler\.py:\d+\); this is a bug in fusec", err), err


def test_debug_shows_the_traceback(model_file: Path) -> None:
    with pytest.raises(UsageError):
        main(["inspect", f"{model_file}:NeedsWidth", "--debug"])


# --- as a person runs it ---------------------------------------------------------------------


def test_command_line_process(model_file: Path, tmp_path: Path) -> None:
    """The real process: success writes a JSON, a bad input shape prints one line and no traceback."""
    def fusec_cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fusec", "inspect", *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    done = fusec_cli("--example", "norm", "--training", "--json", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert set(json.loads((tmp_path / "r.json").read_text())["stats"]) == set(STATS_KEYS)
    done = fusec_cli(f"{model_file}:Block", "--input", "-8x32")
    assert (done.returncode, len(done.stderr.splitlines())) == (2, 1), done.stderr
    done = fusec_cli(f"{model_file}:Block", "--input", "8x100")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "fusec inspect: error: input 1 (shape 8x100, float32): mat1 and mat2 shapes cannot be multiplied "
        "(8x100 and 32x64)"]


def test_launcher_file_holds_each_graphs_generated_launcher(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = inspect_cli(capsys, "--example", "mlp", "--training", "--launcher", str(tmp_path / "l.py"))
    assert code == 0, err
    text = (tmp_path / "l.py").read_text()
    compile(text, "l.py", "exec")  # Python, as the compiled callable runs it
    assert text.count("def call(inputs):") == 2  # the forward's and the backward's
    assert "# graph forward_" in text and "# graph backward_" in text
    assert "k0_aligned" in text and "empty_strided(" in text
