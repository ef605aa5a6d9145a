"""The training partition: what the forward saves for the backward under each remat setting."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rich.console import Console
from torch import nn

import fusec
from fusec.bench.memory import fusec_partitioned, saved_storages
from fusec.options import REMAT, OptionError
from fusec.report.data import collect
from fusec.report.terminal import print_report

FLOAT = 4


def partition_of(model, x, remat):
    report = fusec.inspect(model, x.requires_grad_(), training=True, options={"remat": remat})
    forward = report.graphs[0]
    assert forward.name.startswith("forward") and forward.partition is not None
    return report, forward.partition


def activations(partition):
    return [v for v in partition.saved if v.op != "input"]


def measured(model, x, remat):
    """Activation bytes autograd really saves when fusec's partitioned graphs run."""
    torch._dynamo.reset()
    compiled = fusec_partitioned(model, remat)
    compiled(x)
    return saved_storages(compiled, (x,), [x, *model.parameters()])[1]


def gelu_between_matmuls():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)), torch.randn(8, 32)


def test_gelu_between_matmuls_saves_its_input_not_its_output():
    model, x = gelu_between_matmuls()
    _, auto = partition_of(model, x, "auto")
    # The first matmul's product: GELU is recomputed from it (bias add included) where its gradient is formed.
    assert [(v.op, v.shape) for v in activations(auto)] == [("mm", (8, 64))]
    assert auto.saved_bytes == 8 * 64 * FLOAT
    assert any(v.op == "erf" for v in auto.recomputed)
    _, none = partition_of(model, x, "none")
    assert none.method == "default"
    assert auto.default_saved_bytes == none.saved_bytes > auto.saved_bytes
    assert measured(model, x, "auto") == auto.saved_bytes
    assert measured(model, x, "none") == none.saved_bytes


def test_layer_norm_saves_mean_and_rstd_not_the_normalized_tensor():
    model, x = nn.LayerNorm(48), torch.randn(16, 48)
    _, auto = partition_of(model, x, "auto")
    assert [v.shape for v in activations(auto)] == [(16, 1), (16, 1)]
    assert auto.saved_bytes == 2 * 16 * FLOAT
    assert measured(model, x, "auto") == auto.saved_bytes


def test_batch_norm_saves_the_convolution_and_per_channel_stats_not_its_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()).train()
    x = torch.randn(4, 3, 6, 6)
    _, auto = partition_of(model, x, "auto")
    # The normalized output and its ReLU are recomputed in the backward kernel that reads the convolution anyway.
    assert sorted((v.op, v.shape) for v in activations(auto)) == [
        ("convolution", (4, 6, 6, 6)), ("div", (1, 6, 1, 1)), ("rsqrt", (1, 6, 1, 1))]
    assert {"relu", "sub", "mul"} <= {v.op for v in auto.recomputed}
    assert measured(model, x, "auto") == auto.saved_bytes == (4 * 6 * 6 * 6 + 2 * 6) * FLOAT


def test_aggressive_recomputes_cheap_reductions_never_matmuls():
    model, x = gelu_between_matmuls()
    _, aggressive = partition_of(nn.Sequential(model, nn.LayerNorm(16)), x, "aggressive")
    assert {v.op for v in activations(aggressive)} == {"mm"}
    assert not {"mm", "addmm", "bmm"} & {v.op for v in aggressive.recomputed}
    assert {"sum", "rsqrt"} <= {v.op for v in aggressive.recomputed}


def test_saved_values_carry_reasons_and_the_report_shows_them():
    model, x = gelu_between_matmuls()
    report, auto = partition_of(model, x, "auto")
    assert report.stats["saved_bytes"] == auto.saved_bytes
    assert activations(auto)[0].reason.startswith("expensive")
    assert all(v.reason for v in auto.saved + auto.recomputed)
    data = collect(report, "mlp", True, [], {})
    assert data["graphs"][0]["partition"]["saved_bytes"] == auto.saved_bytes
    console = Console(record=True, width=200)
    print_report(data, console)
    text = console.export_text()
    assert "saves for backward (min-cut, remat=auto): 2.0 KiB in 1 tensors" in text
    assert "saved for backward" in text


@pytest.mark.parametrize("value", ["sometimes", None, True])
def test_remat_option_is_checked(value):
    with pytest.raises(OptionError, match="remat must be 'auto'"):
        fusec.compile(nn.Linear(2, 2), remat=value)


# --- random training graphs ------------------------------------------------------------------------------------

UNARY = {"sin": torch.sin, "exp": lambda a: torch.exp(a.clamp(max=3)), "tanh": torch.tanh, "gelu": F.gelu,
         "relu": torch.relu, "sigmoid": torch.sigmoid, "softmax": lambda a: torch.softmax(a, -1),
         "layer_norm": lambda a: F.layer_norm(a, (a.shape[-1],)), "rowsum": lambda a: a.sum(-1, keepdim=True) * a}
BINARY = {"add": torch.add, "mul": torch.mul}
STEP = st.one_of(st.tuples(st.sampled_from(sorted(UNARY)), st.integers(0, 9)),
                 st.tuples(st.sampled_from(sorted(BINARY)), st.integers(0, 9), st.integers(0, 9)),
                 st.tuples(st.just("matmul"), st.integers(0, 9), st.integers(0, 2)))


class Program(nn.Module):
    """A random DAG of pointwise ops, reductions, norms and matmuls over one input."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(16, 16) / 4) for _ in range(3))

    def forward(self, x):
        values = [x]
        for op, *refs in self.steps:
            a = values[refs[0] % len(values)]
            if op == "matmul":
                values.append(a @ self.weights[refs[1]])
            elif op in BINARY:
                values.append(BINARY[op](a, values[refs[1] % len(values)]))
            else:
                values.append(UNARY[op](a))
        return values[-1] + values[len(values) // 2]


def gradients(fn, model, x):
    model.zero_grad()
    x = x.detach().requires_grad_()
    fn(x).square().sum().backward()
    return [x.grad, *(p.grad for p in model.parameters())]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, min_size=2, max_size=8))
@example([("add", 1, 5), ("mul", 8, 3), ("gelu", 4), ("rowsum", 7), ("mul", 0, 4), ("matmul", 1, 0), ("sigmoid", 9),
          ("matmul", 4, 0)])  # gradients near 1e4, and elements that cancel to ~0
def test_random_training_graphs_partition_validly_and_save_no_more_than_default(steps):
    torch.manual_seed(0)
    model, x = Program(steps), torch.randn(8, 16)
    expected = gradients(model, model, x)
    saved = {}
    for remat in REMAT:
        torch._dynamo.reset()
        backend = fusec.frontend.Backend(fusec.Options.from_user(remat=remat), launch=False)
        compiled = torch.compile(model, backend=backend, dynamic=False)
        # The backward runs from what the forward saved: right gradients mean a valid partition.
        for got, want in zip(gradients(compiled, model, x), expected, strict=True):
            # Gradients reach 1e4 here: an element that cancels to ~0 keeps the rounding of its terms.
            scale = 1.0 if want is None else max(1.0, float(want.abs().max()))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)
        partition = backend.records[0].partition
        assert partition.saved_bytes <= partition.default_saved_bytes
        xr = x.clone().requires_grad_()
        saved[remat] = saved_storages(compiled, (xr,), [xr, *model.parameters()])[1]
        assert saved[remat] == partition.saved_bytes
    assert saved["auto"] <= saved["none"] and saved["aggressive"] <= saved["none"]
