"""freeze=True: an inference graph's weights are constants. Eval BatchNorm folds into the
convolution or Linear before it, what reads weights only is computed once at compile time,
results equal eager's, and a weight changed after compile is seen at the next call."""

import logging

import pytest
import torch
from torch import nn

import fusec
from fusec.bench.cnn_zoo import ConvNeXtBlock, example, launches
from fusec.freezing import Weight
from fusec.frozen import Frozen, FrozenCall
from tests.eager import assert_ran
from tests.test_batchnorm import randomized as _randomized


def conv_bn(cin=4, cout=8, act=True, **conv) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(cin, cout, 3, padding=1, **conv), _randomized(nn.BatchNorm2d(cout))]
    return nn.Sequential(*layers, *([nn.ReLU()] if act else [])).eval()


def run_frozen(model, *args, rtol=1e-5, atol=1e-5) -> fusec.Report:
    """Compile with freeze=True, compare with eager under no_grad, assert fusec ran it; the report."""
    compiled = fusec.compile(model, freeze=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), model(*args), rtol=rtol, atol=atol)
    return assert_ran(compiled)


def counts(model, *args, freeze: bool) -> tuple[int, int, int]:
    """(kernels, extern calls, op nodes) fusec plans for an inference call."""
    with torch.no_grad():
        stats = fusec.inspect(model, *args, options={"freeze": freeze}).stats
    return stats["kernels"], stats["extern_calls"], stats["nodes"]


@pytest.mark.parametrize("conv", [{}, {"bias": False}, {"groups": 2}, {"groups": 4}],
                         ids=["bias", "no-bias", "grouped", "depthwise"])
def test_conv_bn_relu_folds_to_the_conv_and_its_relu(conv):
    model = conv_bn(cout=8 if conv.get("groups") != 4 else 4, **conv)
    x = torch.randn(2, 4, 6, 6)
    assert counts(model, x, freeze=False)[:2] == (1, 1)
    kernels, externs, nodes = counts(model, x, freeze=True)
    assert (kernels, externs, nodes) == (1, 1, 2)  # the convolution, then ReLU: BN is in the weights
    report = run_frozen(model, x)
    assert report.stats["kernels"] == 1


def test_conv_bn_is_the_conv_alone():
    model, x = conv_bn(act=False), torch.randn(2, 4, 6, 6)
    assert counts(model, x, freeze=False)[:2] == (1, 1)
    assert counts(model, x, freeze=True)[:2] == (0, 1)
    run_frozen(model, x)


def test_channels_last_input_and_weights():
    model = conv_bn().to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last)
    compiled = fusec.compile(model, freeze=True)
    with torch.no_grad():
        got, expected = compiled(x), model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.stride() == expected.stride()
    assert_ran(compiled)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_bn1d_folds_into_the_matmul(bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8, bias=bias), _randomized(nn.BatchNorm1d(8)), nn.ReLU()).eval()
    x = torch.randn(4, 16)
    unfrozen, frozen = counts(model, x, freeze=False), counts(model, x, freeze=True)
    assert frozen[:2] == unfrozen[:2] == (1, 0)  # the matmul with its epilogue either way
    assert frozen[2] == 3  # matmul, bias add, ReLU: BN's ops and the math on its constants are gone
    assert unfrozen[2] > 10
    run_frozen(model, x)


def test_a_linear_with_nothing_to_fold_reads_its_weights_live(caplog):
    model, x = nn.Sequential(nn.Linear(16, 8), nn.ReLU()).eval(), torch.randn(4, 16)
    with caplog.at_level(logging.INFO, logger="fusec"):
        run_frozen(model, x)
    assert "nothing to freeze" in caplog.text  # no constant, so no check at each call


def test_batch_norm_without_a_conv_before_it_reads_its_scale_and_shift_folded():
    torch.manual_seed(0)
    model = nn.Sequential(_randomized(nn.BatchNorm2d(8)), nn.ReLU()).eval()
    x = torch.randn(2, 8, 5, 5)
    assert counts(model, x, freeze=True)[:2] == (1, 0)
    assert counts(model, x, freeze=True)[2] < counts(model, x, freeze=False)[2]
    run_frozen(model, x)


def test_a_returned_view_of_a_weight_that_a_fold_reads():
    """The returned transpose is no constant (each call returns a new view), so neither is what reads it."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(16, 48)

        def forward(self, x):
            wt = self.l.weight.t()
            return self.l(x), wt, (wt * 2).sum()

    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(3, 16)
    compiled = fusec.compile(model, freeze=True)
    with torch.no_grad():
        for got, want in zip(compiled(x), model(x), strict=True):
            torch.testing.assert_close(got, want)


def test_weight_math_is_computed_once():
    # A cast and a transpose of a weight: neither is a kernel of the frozen graph.
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 16))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

        def forward(self, x):
            return torch.tanh(x @ (self.w.t() * 2).to(x.dtype))

    x = torch.randn(4, 16, dtype=torch.float64)
    assert counts(Model(), x, freeze=False)[:2] == (2, 1)  # the weight's scale and cast: a kernel
    assert counts(Model(), x, freeze=True) == (1, 1, 2)  # the float64 matmul (torch's), then tanh
    run_frozen(Model(), x, rtol=1e-7, atol=1e-7)


def _changes():
    def in_place(model):
        model[1].running_var.mul_(3)

    def replaced(model):
        model[0].weight = nn.Parameter(torch.randn_like(model[0].weight))

    def loaded(model):
        state = {k: v + 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.load_state_dict(state)
    return [in_place, replaced, loaded]


@pytest.mark.parametrize("change", _changes(), ids=lambda f: f.__name__)
def test_a_changed_weight_is_seen_at_the_next_call(change, caplog):
    model, x = conv_bn(), torch.randn(2, 4, 6, 6)
    compiled = fusec.compile(model, freeze=True)
    with torch.no_grad():
        before = compiled(x)
        change(model)
        with caplog.at_level(logging.WARNING, logger="fusec"):
            after = compiled(x)
        torch.testing.assert_close(after, model(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)
    assert "frozen weights changed since they were folded" in caplog.text
    assert_ran(compiled)


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x):
        return torch.tanh(x * self.scale.exp())


def test_a_weight_of_another_size_compiles_anew():
    model, x = Scale(), torch.randn(4, 8)
    compiled = fusec.compile(model, freeze=True)
    with torch.no_grad():
        compiled(x)
        model.scale = nn.Parameter(torch.rand(1) + 0.5)  # broadcasts: eager still runs
        torch.testing.assert_close(compiled(x), model(x))
    assert len(assert_ran(compiled).graphs) == 2  # Dynamo guards on the weight's size


def test_unchanged_weights_fold_nothing_again(caplog):
    model, x = conv_bn(), torch.randn(2, 4, 6, 6)
    compiled = fusec.compile(model, freeze=True)
    with torch.no_grad(), caplog.at_level(logging.DEBUG, logger="fusec"):
        compiled(x)
        compiled(x)
    assert "folded again" not in caplog.text


def test_grad_enabled_runs_unfrozen_and_says_so(caplog):
    model, x = conv_bn(), torch.randn(2, 4, 6, 6)
    compiled = fusec.compile(model, freeze=True)
    with caplog.at_level(logging.WARNING, logger="fusec"):
        out = compiled(x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    assert "runs unfrozen" in caplog.text and "torch.no_grad()" in caplog.text
    out.sum().backward()
    assert model[0].weight.grad is not None


def test_training_mode_keeps_the_running_statistics_it_writes(caplog):
    train, reference = conv_bn().train(), conv_bn().train()
    x = torch.randn(2, 4, 6, 6)
    compiled = fusec.compile(train, freeze=True)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="fusec"):
        torch.testing.assert_close(compiled(x), reference(x), rtol=1e-5, atol=1e-5)
    assert "1.running_mean" in caplog.text and "model.eval()" in caplog.text
    torch.testing.assert_close(train[1].running_mean, reference[1].running_mean)
    torch.testing.assert_close(train[1].running_var, reference[1].running_var)


def test_torch_compile_takes_freeze_as_an_option():
    model, x = conv_bn(), torch.randn(2, 4, 6, 6)
    compiled = torch.compile(model, backend="fusec", options={"freeze": True})
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_freeze_must_be_a_bool():
    with pytest.raises(TypeError, match="freeze must be True or False"):
        fusec.compile(conv_bn(), freeze="yes")


# Launches per forward (kernels + extern calls) at 32x32, frozen: MobileNetV3's projection
# convolutions' BatchNorms had no kernel to join; ResNet's and ConvNeXt's joined one anyway.
ZOO_FROZEN = {"resnet18": 38, "mobilenet_v3_small": 101, "convnext_atto": 68}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_zoo_model_frozen_equals_eager(name):
    model, x = example(name, size=32)
    report = run_frozen(model, x, rtol=1e-4, atol=1e-4)
    assert report.stats["kernels"] + report.stats["extern_calls"] == ZOO_FROZEN[name], report.summary()


def test_convnext_frozen_block_equals_eager_and_model_launches():
    # The whole model runs for minutes in the interpreter: one block (depthwise conv, LayerNorm,
    # MLP, layer scale, residual) runs, the model is planned.
    torch.manual_seed(0)
    block = ConvNeXtBlock(16).eval()
    with torch.no_grad():
        block.gamma.uniform_(0.5, 1.5)  # not 1e-6: the block's output must depend on its MLP
    run_frozen(block, torch.randn(1, 16, 6, 6), rtol=1e-4, atol=1e-4)
    assert sum(launches("convnext_atto", size=32, freeze=True).values()) == ZOO_FROZEN["convnext_atto"]


def test_mobilenet_frozen_launches_fewer_than_unfrozen():
    assert ZOO_FROZEN["mobilenet_v3_small"] < sum(launches("mobilenet_v3_small", size=32).values())


def test_inference_mode_and_dynamic_batch():
    model = conv_bn()
    compiled = fusec.compile(model, freeze=True, dynamic=True)
    with torch.inference_mode():
        for batch in (2, 3):
            x = torch.randn(batch, 4, 6, 6)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    report = assert_ran(compiled)
    assert len(report.graphs) == 1 and report.stats["kernels"] == 1


def test_export_refuses_freeze(tmp_path):
    with pytest.raises(TypeError, match=r"freeze=True is fusec\.compile's"):
        fusec.export(conv_bn(), torch.randn(1, 4, 6, 6), path=tmp_path / "m.fusec", freeze=True)


def test_an_output_computed_from_weights_alone_is_a_new_tensor_each_call():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8))

        def forward(self, x):
            return x * self.w, self.w * 2

    model, x = Model(), torch.randn(4, 8)
    compiled = fusec.compile(model, freeze=True)
    with torch.no_grad():
        first = compiled(x)[1]
        first.zero_()  # the caller owns what it got
        torch.testing.assert_close(compiled(x), model(x))
    assert_ran(compiled)


@pytest.mark.fallback_expected
def test_constants_that_no_longer_fit_the_compiled_graph_run_it_unfrozen(caplog):
    # Dynamo guards a weight's size, so this is a last line of defence: a refold whose
    # constants differ in layout from the compiled ones runs the unfrozen graph instead.
    weight = torch.ones(4)
    frozen = Frozen(graph=None, constants_of=lambda w: (w * 2,), live=[1], weights=[Weight(0, "scale", weight)],
                    constants=[weight * 2], folded_ops=0)
    call = FrozenCall(frozen, compiled=lambda inputs: ("frozen", inputs), fallback=lambda args: ("unfrozen", args),
                      name="g")
    x = torch.zeros(4)
    assert call([weight, x])[0] == "frozen"
    with caplog.at_level(logging.WARNING, logger="fusec"):
        assert call([torch.ones(8), x])[0] == "unfrozen"
        assert call([weight, x])[0] == "unfrozen"  # from now on
    assert "runs through torch, unfrozen" in caplog.text and "scale" in caplog.text
