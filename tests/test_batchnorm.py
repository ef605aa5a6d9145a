"""BatchNorm: inference is a per-channel affine fused with its neighbours; training
reduces per channel over N and the spatial dims; results, gradients and running stats
equal eager's."""

import pytest
import torch
from torch import nn

import fusec
from fusec.report import Report
from tests.eager import assert_ran, check
from tests.test_training import check_training


def randomized(bn: nn.Module) -> nn.Module:
    """`bn` with weights and running statistics far from their defaults (in place)."""
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


def conv_bn_relu(cin=3, cout=8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), randomized(nn.BatchNorm2d(cout)), nn.ReLU())


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-bn-relu-conv-bn, the residual added, relu."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = randomized(nn.BatchNorm2d(c))
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = randomized(nn.BatchNorm2d(c))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def _stats(model, x) -> tuple[int, int]:
    stats = fusec.inspect(model, x).stats
    return stats["kernels"], stats["extern_calls"]


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_bn_relu_inference_is_conv_and_one_kernel(channels_last):
    model = conv_bn_relu().eval()
    x = torch.randn(2, 3, 8, 8)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        check(model, x, kernels=1, externs=1)


def test_basic_block_inference_is_two_convs_and_two_kernels():
    torch.manual_seed(0)
    model = BasicBlock().eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        check(model, x, kernels=2, externs=2)
    assert _stats(model, x) == (2, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_batch_norm_inference_dtypes(dtype):
    bn = randomized(nn.BatchNorm2d(5)).eval().to(dtype)
    x = torch.randn(3, 5, 4, 7).to(dtype)

    def f(x):
        return torch.relu(bn(x)) * 2

    with torch.no_grad():
        check(f, x, kernels=1, externs=0)


def test_batch_norm_inference_1d_and_3d():
    bn1, bn3 = randomized(nn.BatchNorm1d(6)).eval(), randomized(nn.BatchNorm3d(4)).eval()
    with torch.no_grad():
        check(bn1, torch.randn(5, 6), kernels=1, externs=0)
        check(bn1, torch.randn(5, 6, 9), kernels=1, externs=0)
        check(bn3, torch.randn(2, 4, 3, 3, 5), kernels=1, externs=0)


def test_batch_norm_inference_zero_size_batch():
    bn = randomized(nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        check(lambda x: torch.relu(bn(x)), torch.randn(0, 4, 3, 3))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_training_matches_eager_with_running_stats(channels_last, momentum):
    torch.manual_seed(0)
    eager, compiled = (randomized(nn.BatchNorm2d(6, momentum=momentum)).train() for _ in range(2))
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(4, 6, 5, 3)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    fn = fusec.compile(compiled)
    for _ in range(2):  # running stats feed the next call
        torch.testing.assert_close(fn(x), eager(x), rtol=1e-5, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(compiled, name), getattr(eager, name), rtol=1e-5, atol=1e-6)
    if momentum is not None:  # None: BatchNorm reads float(num_batches_tracked), and Dynamo runs it eagerly
        assert_ran(fn)


def test_batch_norm_training_gradients_equal_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), randomized(nn.BatchNorm2d(6)), nn.ReLU()).train()
    report = check_training(model, torch.randn(4, 3, 6, 6), rtol=1e-4, atol=1e-4)
    forward, backward = (Report([g]).stats for g in report.graphs)
    # Forward: the convolution, then one kernel for the per-channel mean/var over (N, H, W),
    # the normalized output, its relu and the running stats; the batch counter is a second.
    assert (forward["kernels"], forward["extern_calls"]) == (2, 1), report.summary()
    stats_kernel = next(k for k in report.graphs[0].plan.kernels if "var" in k.members)
    assert "relu" in stats_kernel.members
    assert backward["extern_calls"] == 1, report.summary()  # convolution_backward alone


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_batch_norm_training_16_bit(dtype):
    torch.manual_seed(0)
    eager, compiled = (randomized(nn.BatchNorm2d(6)).train().to(dtype) for _ in range(2))
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(4, 6, 5, 3).to(dtype)
    fn = fusec.compile(compiled)
    torch.testing.assert_close(fn(x), eager(x), rtol=2e-2, atol=2e-2)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(compiled, name), getattr(eager, name), rtol=1e-2, atol=1e-2)
    assert_ran(fn)


def test_basic_block_channels_last_inference():
    torch.manual_seed(0)
    model = BasicBlock().eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)
    with torch.no_grad():
        check(model, x, kernels=2, externs=2)


def _backward_kernels(report) -> list[tuple[str, ...]]:
    return [k.members for k in report.graphs[1].plan.kernels]


@pytest.mark.parametrize("remat", ["none", "auto", "aggressive"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_backward_is_one_kernel(remat, channels_last):
    # The per-channel sums of the gradient, the per-channel scale and the input gradient all in one
    # kernel: the [C] -> [1,C,1,1] views between them keep every channel on its own row.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), randomized(nn.BatchNorm2d(6)), nn.ReLU()).train()
    x = torch.randn(4, 3, 6, 5)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    report = check_training(model, x, remat=remat, rtol=1e-4, atol=1e-4)
    backward = Report([report.graphs[1]]).stats
    assert (backward["kernels"], backward["extern_calls"]) == (1, 1), report.summary()  # + convolution_backward
    (members,) = _backward_kernels(report)
    # The two gradient sums (aggressive also recomputes the batch mean there, from the convolution's output).
    assert sum(report.graphs[1].graph[m].op == "sum" for m in members) == (3 if remat == "aggressive" else 2)
    assert not any("between the rows" in e["reason"] for e in report.edges())


@pytest.mark.parametrize("bn,shape", [(nn.BatchNorm1d, (6, 5)), (nn.BatchNorm1d, (4, 5, 7)),
                                      (nn.BatchNorm3d, (2, 5, 3, 4, 3))])
def test_batch_norm_1d_and_3d_backward_is_one_kernel(bn, shape):
    torch.manual_seed(0)
    model = nn.Sequential(randomized(bn(5)), nn.ReLU()).train()
    report = check_training(model, torch.randn(shape), rtol=1e-4, atol=1e-4)
    assert Report([report.graphs[1]]).stats["kernels"] == 1, report.summary()


@pytest.mark.parametrize("remat,kernels", [("none", 3), ("auto", 4)])
def test_basic_block_training_backward_is_one_kernel_per_batch_norm(remat, kernels):
    torch.manual_seed(0)
    report = check_training(BasicBlock().train(), torch.randn(2, 8, 6, 6), remat=remat, rtol=1e-4, atol=1e-4)
    backward = Report([report.graphs[1]]).stats
    # Each BatchNorm's backward (with its ReLU's mask) is one kernel, and the residual's gradient
    # add a third; the two convolution backwards run through torch. "auto" saves the first ReLU's
    # output no more: a fourth kernel recomputes it for the second convolution's weight gradient.
    assert (backward["kernels"], backward["extern_calls"]) == (kernels, 2), report.summary()
    graph = report.graphs[1].graph
    with_sums = [k.members for k in report.graphs[1].plan.kernels if any(graph[m].op == "sum" for m in k.members)]
    assert [sum(graph[m].op == "sum" for m in members) for members in with_sums] == [2, 2]
