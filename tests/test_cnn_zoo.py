"""The CNN zoo's launch counts: every conv's BN, activation, residual add and the pools
around it share one kernel; ResNet-18 and a squeeze-excite block equal eager."""

import torch
from torch import nn

from fusec.bench.cnn_zoo import InvertedResidual, launches, resnet18
from tests.eager import check


def test_resnet18_launches_one_kernel_per_conv_group():
    # 20 convolutions; 17 kernels after them (the stem's max pool fused into its BN + ReLU),
    # and the classifier's matmul with its bias.
    assert launches("resnet18", size=32) == {"kernels": 18, "extern_calls": 20}


def test_resnet18_equals_eager():
    torch.manual_seed(0)
    model = resnet18(classes=10).eval()
    with torch.no_grad():
        check(model, torch.randn(1, 3, 32, 32), kernels=18, externs=20, rtol=1e-4, atol=1e-4)


def test_squeeze_excite_block_is_five_kernels_around_five_convs():
    # expand BN+act | depthwise BN+act with the pool | ReLU | hardsigmoid scale | project BN+residual
    torch.manual_seed(0)
    block = InvertedResidual(8, 5, 24, 8, True, nn.Hardswish, 1).eval()
    with torch.no_grad():
        check(block, torch.randn(2, 8, 6, 6), kernels=5, externs=5, rtol=1e-4, atol=1e-4)
