"""Training: forward and backward graphs compile and fuse; gradients match eager."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusec
from fusec.examples import TransformerBlock
from fusec.options import REMAT
from tests.eager import assert_ran


def grads(model, inputs, compiled=False, **options):
    for p in model.parameters():
        p.grad = None
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    fn = fusec.compile(model, **options) if compiled else model
    out = fn(*xs)
    (out.float() * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    result = [out.detach()] + [x.grad for x in xs if x.grad is not None] + [p.grad for p in model.parameters()]
    return result, (assert_ran(fn) if compiled else None)


def check_training(model, *inputs, kernels=None, remat="auto", **tol):
    torch.manual_seed(0)
    expected, _ = grads(model, inputs)
    got, report = grads(model, inputs, compiled=True, remat=remat)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, **(tol or dict(rtol=1e-4, atol=1e-5)))
    names = [g.name.split("_")[0] for g in report.graphs]
    assert names == ["forward", "backward"], names
    if kernels is not None:
        assert [len(g.plan.kernels) for g in report.graphs] == kernels, report.summary()
    return report


class Lambda(nn.Module):
    def __init__(self, fn, width=32):
        super().__init__()
        self.fn = fn
        self.weight = nn.Parameter(torch.randn(width))
        self.bias = nn.Parameter(torch.randn(width))

    def forward(self, x):
        return self.fn(self, x)


def test_layer_norm_forward_and_backward_fuse():
    model = nn.LayerNorm(48)
    with torch.no_grad():
        model.weight.uniform_(0.5, 1.5)
        model.bias.uniform_(-0.5, 0.5)
    report = check_training(model, torch.randn(16, 48))
    forward, backward = (len(g.plan.kernels) for g in report.graphs)
    assert forward == 1
    # Row-wise grad_input, then the batch-wise weight and bias grads share a second kernel.
    assert backward == 2


def test_softmax_backward_is_one_kernel():
    report = check_training(Lambda(lambda m, x: torch.softmax(x * m.weight, -1)), torch.randn(8, 32))
    assert len(report.graphs[0].plan.kernels) == 1


def test_gelu_with_bias_gradient():
    report = check_training(Lambda(lambda m, x: F.gelu(x + m.bias)), torch.randn(64, 32))
    forward, backward = report.graphs
    assert len(forward.plan.kernels) == 1
    assert len(backward.plan.kernels) <= 2  # gelu backward; the bias grad sums over the batch


def test_cross_entropy_training():
    torch.manual_seed(1)
    head = nn.Linear(16, 50)
    target = torch.randint(0, 50, (12,))
    model = Lambda(lambda m, x: F.cross_entropy(head(x), target).reshape(1), width=1)
    model.head = head
    check_training(model, torch.randn(12, 16))


def test_dropout_keep_rate_and_backward_agree():
    drop = nn.Dropout(0.25).train()
    compiled = fusec.compile(drop)
    x = torch.ones(300, 200, requires_grad=True)
    torch.manual_seed(0)
    y = compiled(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, y != 0)
    torch.manual_seed(0)
    assert torch.equal(compiled(x), y)  # torch.manual_seed makes it repeatable
    assert not torch.equal(compiled(x), y)  # and each call draws new numbers
    assert assert_ran(compiled).graphs[0].plan.kernels[0].members[0] == "rand_like"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_mixed_precision(dtype):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.LayerNorm(64))
    x = torch.randn(8, 32)
    compiled = fusec.compile(model)
    with torch.autocast("cpu", dtype=dtype):
        expected = model(x)
        got = compiled(x)
    assert_ran(compiled)
    assert got.dtype == expected.dtype
    # About 3x the error measured, max |got - eager| / (1 + |eager|): 7.2e-3 (bf16), 8.8e-4 (fp16).
    tol = {torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


class MLP(nn.Module):
    """Linear, GELU, Linear, LayerNorm: what remat chooses between (matmul outputs, GELU, norm statistics)."""

    def __init__(self, width=32, hidden=64):
        super().__init__()
        self.up, self.down, self.norm = nn.Linear(width, hidden), nn.Linear(hidden, width), nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(self.down(F.gelu(self.up(x))) + x)


@pytest.mark.parametrize("remat", REMAT)
@pytest.mark.parametrize("model", ["layer_norm", "softmax", "gelu", "mlp", "transformer"])
def test_gradients_match_eager_with_each_remat(model, remat):
    torch.manual_seed(3)
    make = {"layer_norm": lambda: (nn.LayerNorm(48), torch.randn(16, 48)),
            "softmax": lambda: (Lambda(lambda m, x: torch.softmax(x * m.weight, -1)), torch.randn(8, 32)),
            "gelu": lambda: (Lambda(lambda m, x: F.gelu(x + m.bias)), torch.randn(64, 32)),
            "mlp": lambda: (MLP(), torch.randn(8, 32)),
            "transformer": lambda: (TransformerBlock(32, 2), torch.randn(1, 8, 32))}
    module, x = make[model]()
    report = check_training(module, x, remat=remat, rtol=1e-4, atol=1e-4)
    forward, backward = report.graphs
    assert forward.partition is backward.partition and forward.partition.remat == remat
    assert forward.partition.saved_bytes <= forward.partition.default_saved_bytes


@pytest.mark.parametrize("remat", REMAT)
def test_dropout_backward_uses_the_forward_mask(remat):
    # sin is cheap: "aggressive" recomputes it in the backward; the mask must be the forward's.
    model = Lambda(lambda m, x: F.dropout(torch.sin(x) * m.weight, p=0.3, training=True) * 2)
    compiled = fusec.compile(model, remat=remat)
    x = torch.randn(64, 32, requires_grad=True)
    y = compiled(x)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert 0.6 < kept.float().mean().item() < 0.8
    expected = kept * torch.cos(x.detach()) * model.weight.detach() * 2 / 0.7
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-5)
    assert_ran(compiled)
    partition = fusec.report_of(compiled).graphs[0].partition
    assert not [v for v in partition.recomputed if v.op in ("rand_like", "rand", "bernoulli", "native_dropout")]
    assert [v.dtype for v in partition.saved if "random" in v.reason] == ["bool"]  # the mask, not the numbers


@pytest.mark.parametrize("remat", REMAT)
def test_convolutions_are_never_recomputed(remat):
    torch.manual_seed(4)
    # GELU's gradient reads its input: the first convolution's output, which is saved, not recomputed.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh())
    report = check_training(model, torch.randn(1, 3, 6, 6), remat=remat, rtol=1e-4, atol=1e-4)
    partition = report.graphs[0].partition
    assert "convolution" not in {v.op for v in partition.recomputed}
    assert {v.op for v in partition.saved if v.reason.startswith("expensive")} == {"convolution"}
