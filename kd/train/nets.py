"""The networks: Hinton's MLPs, a small CNN for 28x28 images, and CIFAR ResNets.

An architecture is named by one string (see kd/config/archs.py), so `-S teacher.arch=mlp:1200-1200` is a
complete change. All models take normalised float images (N, C, H, W) and return logits.
"""

from __future__ import annotations

import torch
from torch import nn

from kd.config.archs import ARCH_HELP, parse_arch
from kd.train.fixed_order import BatchNorm2d, Conv2d


class MLP(nn.Module):
    """Flatten -> [dropout] -> (Linear -> ReLU -> dropout) per hidden width -> Linear."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], classes: int,
                 input_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Per entry of `channels`: conv3x3 -> BN -> maxpool2 -> ReLU; then dropout -> 256 -> classes.

    Pooling before the ReLU computes what the usual BN -> ReLU -> pool does, to the bit: max and
    ReLU commute, and where a window's maximum is not positive both orders pass no gradient. It
    runs the ReLU and its backward on a quarter of the values.
    """

    def __init__(self, in_shape: tuple[int, int, int], channels: tuple[int, ...], classes: int,
                 dropout: float = 0.0, memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.memory_format = memory_format
        c, h, w = in_shape
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [Conv2d(c, out, 3, padding=1, bias=False), BatchNorm2d(out),
                       nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * h * w, 256), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(256, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.contiguous(memory_format=self.memory_format)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = BatchNorm2d(cout)
        self.conv2 = Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = BatchNorm2d(cout)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(Conv2d(cin, cout, 1, stride, bias=False),
                                      BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    """CIFAR ResNet with (depth-2)/6 basic blocks per stage and 4x widths (RepDistiller's 'x4')."""

    def __init__(self, in_channels: int, depth: int, classes: int,
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.memory_format = memory_format
        n = (depth - 2) // 6
        widths = (32, 64, 128, 256)
        layers: list[nn.Module] = [Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                   BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        cin = widths[0]
        for i, cout in enumerate(widths[1:]):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        layers += [GlobalAvgPool()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x.contiguous(memory_format=self.memory_format)))


class GlobalAvgPool(nn.Module):
    """(N, C, H, W) -> (N, C), the mean over each map. Not nn.AdaptiveAvgPool2d(1): its CUDA
    backward adds with atomics, which deterministic algorithms refuse; a mean's backward does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def build(arch: str, in_shape: tuple[int, int, int], classes: int,
          input_dropout: float = 0.0, dropout: float = 0.0,
          memory_format: torch.memory_format = torch.channels_last) -> nn.Module:
    """Build a model from a resolved architecture string (not `auto`).

    Convolutional nets run channels-last (NHWC), weights and activations alike (their forward
    converts the input), which oneDNN's CPU convolutions, kd/train/fixed_order.py's layers and the
    GPU's tensor cores prefer; `memory_format` is for benchmarks that compare layouts.
    """
    parsed = parse_arch(arch)
    if parsed is None:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {ARCH_HELP}")
    kind, sizes = parsed
    if kind == "mlp":
        c, h, w = in_shape
        return MLP(c * h * w, sizes, classes, input_dropout, dropout)
    if kind == "cnn":
        net = CNN(in_shape, sizes, classes, dropout, memory_format)
    else:
        net = ResNet(in_shape[0], sizes[0], classes, memory_format)
    return net.to(memory_format=memory_format)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """Hinton/Srivastava max-norm: cap the L2 norm of each unit's incoming weight vector.

    Applied after every optimiser step to the hidden Linear layers, not the output layer (the
    constraint is there to let dropout nets use large learning rates without hidden units blowing up).
    """
    if max_norm <= 0:
        return
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in linears[:-1]:
        layer.weight.renorm_(2, 0, max_norm)
