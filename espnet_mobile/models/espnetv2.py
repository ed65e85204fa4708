"""ESPNetv2 for semantic segmentation.

Mehta et al., "ESPNetv2: A Light-weight, Power Efficient, and General Purpose
Convolutional Neural Network", CVPR 2019. https://arxiv.org/abs/1811.11431

The encoder is the ImageNet ESPNetv2 without its last level: EESP modules
(grouped 1x1 reduce, depth-wise dilated 3x3 branches fused hierarchically,
grouped 1x1 expand) and strided EESP modules that concatenate an average-pooled
copy of their input and add a projection of the down-sampled image (input
reinforcement). The decoder is the one the authors released in EdgeNets:
efficient pyramid pooling (EPP) at each level and efficient point-wise
convolutions (EPC) that merge the encoder's skip features, with bilinear
(align_corners=True) upsampling in between.

The width multiplier ``s`` scales the channel counts. BatchNorm uses
PyTorch's default eps (1e-5), as the released checkpoints were trained with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from espnet_mobile.models.blocks import BNPReLU, Conv, ConvBN, ConvBNPReLU

# Output channels of level1..level5 (and the classification head) per width multiplier.
CHANNELS: dict[float, tuple[int, ...]] = {
    0.5: (16, 32, 64, 128, 256, 1024),
    1.0: (32, 64, 128, 256, 512, 1024),
    1.25: (32, 80, 160, 320, 640, 1024),
    1.5: (32, 96, 192, 384, 768, 1024),
    2.0: (32, 128, 256, 512, 1024, 1280),
}
BRANCHES = 4
# Largest receptive field (as an effective kernel size) allowed at each level.
RECEPTIVE_LIMITS = (13, 11, 9, 7, 5)
EESP_REPEATS = {"level3": 3, "level4": 7}
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
DECODER_BASE_CHANNELS = 16
IMAGE_CHANNELS = 3


def branch_dilations(branches: int, receptive_limit: int) -> list[int]:
    """Dilations of the depth-wise 3x3 branches of an EESP module, in ascending order.

    Branch i would cover an effective kernel of 3 + 2i; past the level's
    receptive limit it falls back to a plain 3x3 (dilation 1).
    """
    kernels = sorted(k if k <= receptive_limit else 3 for k in (3 + 2 * i for i in range(branches)))
    return [(k - 1) // 2 for k in kernels]


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid module.

    With ``stride == 2`` it is the strided variant used inside
    :class:`StridedEESP`: it returns the expanded features before the
    residual and the activation, which the caller applies after merging.
    """

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1, branches: int = BRANCHES,
                 receptive_limit: int = 7) -> None:
        super().__init__()
        width = c_out // branches
        if width * branches != c_out:
            raise ValueError(f"EESP output channels {c_out} must divide into {branches} branches")
        self.stride = stride
        self.proj_1x1 = ConvBNPReLU(c_in, width, 1, groups=branches)
        self.spp_dw = nn.ModuleList(
            Conv(width, width, 3, stride=stride, dilation=d, groups=width)
            for d in branch_dilations(branches, receptive_limit)
        )
        self.conv_1x1_exp = ConvBN(c_out, c_out, 1, groups=branches)
        self.br_after_cat = BNPReLU(c_out)
        # Present (and trained) in every published EESP, used only at stride 1.
        self.module_act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        outputs = [self.spp_dw[0](reduced)]
        for branch in self.spp_dw[1:]:
            outputs.append(outputs[-1] + branch(reduced))
        expanded = self.conv_1x1_exp(self.br_after_cat(torch.cat(outputs, dim=1)))
        if self.stride == 2:
            return expanded
        if expanded.shape == x.shape:
            expanded = expanded + x
        return self.module_act(expanded)


class StridedEESP(nn.Module):
    """Down-sampling unit: [avg-pool(x), strided EESP(x)] + projection of the pooled image."""

    def __init__(self, c_in: int, c_out: int, *, branches: int = BRANCHES,
                 receptive_limit: int = 9, reinforce: bool = True) -> None:
        super().__init__()
        self.eesp = EESP(c_in, c_out - c_in, stride=2, branches=branches,
                         receptive_limit=receptive_limit)
        self.avg = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        if reinforce:
            self.inp_reinf = nn.Sequential(
                ConvBNPReLU(IMAGE_CHANNELS, IMAGE_CHANNELS, 3),
                ConvBN(IMAGE_CHANNELS, c_out, 1),
            )
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.avg(x)
        out = torch.cat([pooled, self.eesp(x)], dim=1)
        if image is not None and hasattr(self, "inp_reinf"):
            # Pool the full-resolution image by 2 until it matches this level's height.
            while image.shape[2] != pooled.shape[2]:
                image = F.avg_pool2d(image, kernel_size=3, stride=2, padding=1)
            out = out + self.inp_reinf(image)
        return self.act(out)


class ESPNetv2Encoder(nn.Module):
    """Levels 1-4 of ESPNetv2 (1/2 to 1/16 resolution), with input reinforcement."""

    def __init__(self, s: float) -> None:
        super().__init__()
        if s not in CHANNELS:
            raise ValueError(f"unsupported width multiplier s={s}; expected one of {sorted(CHANNELS)}")
        ch = CHANNELS[s]
        lim = RECEPTIVE_LIMITS
        self.channels = ch
        self.level1 = ConvBNPReLU(IMAGE_CHANNELS, ch[0], 3, stride=2)
        self.level2_0 = StridedEESP(ch[0], ch[1], receptive_limit=lim[0])
        self.level3_0 = StridedEESP(ch[1], ch[2], receptive_limit=lim[1])
        self.level3 = nn.ModuleList(EESP(ch[2], ch[2], receptive_limit=lim[2])
                                    for _ in range(EESP_REPEATS["level3"]))
        self.level4_0 = StridedEESP(ch[2], ch[3], receptive_limit=lim[2])
        self.level4 = nn.ModuleList(EESP(ch[3], ch[3], receptive_limit=lim[3])
                                    for _ in range(EESP_REPEATS["level4"]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out1 = self.level1(x)
        out2 = self.level2_0(out1, x)
        out3 = self.level3_0(out2, x)
        for block in self.level3:
            out3 = block(out3)
        out4 = self.level4_0(out3, x)
        for block in self.level4:
            out4 = block(out4)
        return out1, out2, out3, out4


class _SeqConvBNPReLU(nn.Module):
    """Conv-BN-PReLU stored as ``cbr.0/1/2`` (the decoder's checkpoint layout)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size, padding=(kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.PReLU(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class _SeqBNPReLU(nn.Module):
    """BN-PReLU stored as ``br.0/1`` (the decoder's checkpoint layout)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` equal channel blocks (ShuffleNet's channel shuffle)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(n, c, h, w)


def pyramid_size(size: int, scale: float) -> int:
    """Side of one pyramid level: ceil(size * scale), never below 5 (as released)."""
    return max(int(math.ceil(size * scale)), 5)


class EfficientPyramidPool(nn.Module):
    """EPP: project, filter at several scales with depth-wise 3x3, merge with a grouped 3x3.

    Scales below 1 average-pool to the smaller size, filter and upsample back;
    scales above 1 upsample, filter and average-pool back.
    """

    def __init__(self, c_in: int, c_proj: int, c_out: int, *, last: bool = False,
                 scales: tuple[float, ...] = PYRAMID_SCALES) -> None:
        super().__init__()
        self.scales = tuple(sorted(scales, reverse=True))
        self.projection_layer = _SeqConvBNPReLU(c_in, c_proj, 1)
        self.stages = nn.ModuleList(
            nn.Conv2d(c_proj, c_proj, 3, padding=1, groups=c_proj, bias=False) for _ in self.scales
        )
        k = len(self.scales)
        self.merge_layer = nn.Sequential(
            _SeqBNPReLU(c_proj * k),
            ChannelShuffle(k),
            _SeqConvBNPReLU(c_proj * k, c_proj, 3, groups=c_proj),
            nn.Conv2d(c_proj, c_out, 1, bias=last),
        )
        self.last = last
        if not last:
            self.br = _SeqBNPReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        h, w = x.shape[2], x.shape[3]
        levels = []
        for scale, stage in zip(self.scales, self.stages, strict=True):
            size = (pyramid_size(h, scale), pyramid_size(w, scale))
            if scale < 1.0:
                y = stage(F.adaptive_avg_pool2d(x, size))
                y = F.interpolate(y, (h, w), mode="bilinear", align_corners=True)
            elif scale > 1.0:
                y = stage(F.interpolate(x, size, mode="bilinear", align_corners=True))
                y = F.adaptive_avg_pool2d(y, (h, w))
            else:
                y = stage(x)
            levels.append(y)
        out = self.merge_layer(torch.cat(levels, dim=1))
        return out if self.last else self.br(out)


class EfficientPointwiseConv(nn.Module):
    """EPC: grouped 3x3 Conv-BN-PReLU gated by a squeeze-and-excitation-like global weight."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.Sigmoid(),
        )
        self.expansion_layer = _SeqConvBNPReLU(c_in, c_out, 3, groups=math.gcd(c_in, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """The decoder's 2x bilinear upsampling (align_corners=True)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ESPNetv2Segmentation(nn.Module):
    """ESPNetv2 encoder + EdgeNets decoder; logits at input resolution."""

    def __init__(self, num_classes: int = 21, s: float = 2.0) -> None:
        super().__init__()
        self.base_net = ESPNetv2Encoder(s)
        enc = self.base_net.channels
        base = DECODER_BASE_CHANNELS
        dec = (4 * base, 3 * base, 2 * base, num_classes)
        proj = min(num_classes // 2, base)
        self.bu_dec_l1 = EfficientPyramidPool(enc[3], proj, dec[0])
        self.bu_dec_l2 = EfficientPyramidPool(dec[0], proj, dec[1])
        self.bu_dec_l3 = EfficientPyramidPool(dec[1], proj, dec[2])
        self.bu_dec_l4 = EfficientPyramidPool(dec[2], proj, dec[3], last=True)
        self.merge_enc_dec_l2 = EfficientPointwiseConv(enc[2], dec[0])
        self.merge_enc_dec_l3 = EfficientPointwiseConv(enc[1], dec[1])
        self.merge_enc_dec_l4 = EfficientPointwiseConv(enc[0], dec[2])
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(dec[0]), nn.PReLU(dec[0]))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(dec[1]), nn.PReLU(dec[1]))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(dec[2]), nn.PReLU(dec[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1, out2, out3, out4 = self.base_net(x)
        y = self.bu_dec_l1(out4)
        y = self.bu_dec_l2(self.bu_br_l2(self.merge_enc_dec_l2(out3) + upsample2x(y)))
        y = self.bu_dec_l3(self.bu_br_l3(self.merge_enc_dec_l3(out2) + upsample2x(y)))
        y = self.bu_dec_l4(self.bu_br_l4(self.merge_enc_dec_l4(out1) + upsample2x(y)))
        return F.interpolate(y, size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=True)


__all__ = [
    "CHANNELS",
    "EESP",
    "ChannelShuffle",
    "ESPNetv2Segmentation",
    "EfficientPointwiseConv",
    "EfficientPyramidPool",
    "StridedEESP",
]
