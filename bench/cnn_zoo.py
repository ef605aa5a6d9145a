"""Three CNN families written in plain torch (the layer structure of torchvision's
ResNet-18 and MobileNetV3-small and timm's ConvNeXt-atto, random weights), and the
launches per forward of each under eager, torch.compile and fusec (bench/zoo.py counts them).

    python bench/cnn_zoo.py            # eval-mode forward, batch 1, 64x64 images
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, act=None))
        self.down = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def resnet18(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeezed, 1), nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(torch.relu(self.fc1(scale))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, expanded: int, cout: int, se: bool, act: type, stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [] if expanded == cin else [_conv_bn(cin, expanded, 1, act=act)]
        layers.append(_conv_bn(expanded, expanded, k, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcite(expanded, max(8, (expanded // 4 + 4) // 8 * 8)))
        layers.append(_conv_bn(expanded, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


_MOBILENET_V3_SMALL = [  # kernel, expanded, out, squeeze-excite, activation, stride
    (3, 16, 16, True, nn.ReLU, 2), (3, 72, 24, False, nn.ReLU, 2), (3, 88, 24, False, nn.ReLU, 1),
    (5, 96, 40, True, nn.Hardswish, 2), (5, 240, 40, True, nn.Hardswish, 1), (5, 240, 40, True, nn.Hardswish, 1),
    (5, 120, 48, True, nn.Hardswish, 1), (5, 144, 48, True, nn.Hardswish, 1), (5, 288, 96, True, nn.Hardswish, 2),
    (5, 576, 96, True, nn.Hardswish, 1), (5, 576, 96, True, nn.Hardswish, 1),
]


def mobilenet_v3_small(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [_conv_bn(3, 16, 3, 2, act=nn.Hardswish)]
    cin = 16
    for k, expanded, cout, se, act, stride in _MOBILENET_V3_SMALL:
        layers.append(InvertedResidual(cin, k, expanded, cout, se, act, stride))
        cin = cout
    layers += [_conv_bn(cin, 576, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, classes)]
    return nn.Sequential(*layers)


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of an NCHW tensor (through channels-last, as timm's)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


def convnext_atto(classes: int = 1000) -> nn.Module:
    dims, depths = (40, 80, 160, 320), (2, 2, 6, 2)
    layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
    for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        if i:
            layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
        layers += [ConvNeXtBlock(dim) for _ in range(depth)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], classes)]
    return nn.Sequential(*layers)


ZOO = {"resnet18": resnet18, "mobilenet_v3_small": mobilenet_v3_small, "convnext_atto": convnext_atto}


def missing() -> str:
    """Why the zoo cannot run here: it needs torch alone."""
    return ""


def example(name: str, size: int = 64) -> tuple[nn.Module, torch.Tensor]:
    """(model, input) for one zoo model: random weights (seed 0), eval mode, batch 1."""
    torch.manual_seed(0)
    return ZOO[name]().eval(), torch.randn(1, 3, size, size)


def launches(name: str, size: int = 64, freeze: bool = False) -> dict[str, int]:
    """fusec's planned kernels and extern calls for one eval-mode forward of a zoo model."""
    import fusec

    torch.manual_seed(0)
    model = ZOO[name]().eval()
    with torch.no_grad():
        stats = fusec.inspect(model, torch.randn(1, 3, size, size), options={"freeze": freeze}).stats
    return {"kernels": stats["kernels"], "extern_calls": stats["extern_calls"]}


if __name__ == "__main__":
    import sys

    from fusec.bench.zoo import run

    run({"cnn": sys.modules[__name__]})
