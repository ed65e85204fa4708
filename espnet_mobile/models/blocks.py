"""Small convolution blocks shared by ESPNet and ESPNetv2.

Attribute names (``conv``, ``bn``, ``act``) are fixed by the authors' published
checkpoints, whose state-dict keys must load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size for an odd kernel at stride 1."""
    return (kernel_size - 1) // 2 * dilation


class Conv(nn.Module):
    """Bias-free convolution with 'same' padding (optionally strided, dilated or grouped)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride,
                              padding=same_padding(kernel_size, dilation),
                              dilation=dilation, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvBN(nn.Module):
    """Convolution followed by BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride,
                              padding=same_padding(kernel_size), groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvBNPReLU(nn.Module):
    """Convolution, BatchNorm and per-channel PReLU: the workhorse of both papers."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride,
                              padding=same_padding(kernel_size), groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps)
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BNPReLU(nn.Module):
    """BatchNorm then per-channel PReLU, applied after a concatenation or a sum."""

    def __init__(self, channels: int, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=bn_eps)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class ImagePyramidPool(nn.Module):
    """Average-pools the image ``times`` times by 3x3/stride 2/pad 1 (input reinforcement).

    Padding counts as zeros in the average (PyTorch's ``count_include_pad=True``),
    which is what the published checkpoints were trained with.
    """

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.times):
            x = nn.functional.avg_pool2d(x, kernel_size=3, stride=2, padding=1)
        return x
