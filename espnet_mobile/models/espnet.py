"""ESPNet (v1): Efficient Spatial Pyramid of dilated convolutions.

Mehta et al., "ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for
Semantic Segmentation", ECCV 2018. https://arxiv.org/abs/1803.06815

The paper builds the network up in four steps, all available here:

* ESPNet-A: a plain stack of ESP modules;
* ESPNet-B: adds concatenations between the strided ESP module and the last
  ESP module of each level;
* ESPNet-C: adds input reinforcement (average-pooled copies of the image
  concatenated at each level); its output is at 1/8 resolution;
* ESPNet: ESPNet-C plus a light-weight decoder with transposed-convolution
  upsampling; output at input resolution.

``p`` and ``q`` are the paper's alpha_2 and alpha_3: the number of ESP modules
at 1/4 and 1/8 resolution. The published checkpoints use BatchNorm eps 1e-3.
"""

from __future__ import annotations

import torch
from torch import nn

from espnet_mobile.models.blocks import BNPReLU, Conv, ConvBNPReLU, ImagePyramidPool

BN_EPS = 1e-3
VARIANTS = ("A", "B", "C")


class ESPModule(nn.Module):
    """Reduce - split - transform - merge, with hierarchical feature fusion.

    A 1x1 (or strided 3x3 when ``downsample``) convolution reduces to ``n``
    channels; five 3x3 convolutions with dilations 1, 2, 4, 8, 16 run in
    parallel; the dilated outputs are summed cumulatively (which removes
    gridding artefacts) and concatenated back to ``c_out`` channels.
    """

    DILATIONS = (1, 2, 4, 8, 16)

    def __init__(self, c_in: int, c_out: int, *, residual: bool = True,
                 downsample: bool = False) -> None:
        super().__init__()
        n = c_out // 5
        n_first = c_out - 4 * n
        if downsample:
            self.c1 = Conv(c_in, n, 3, stride=2)
        else:
            self.c1 = Conv(c_in, n, 1)
        self.d1 = Conv(n, n_first, 3, dilation=1)
        self.d2 = Conv(n, n, 3, dilation=2)
        self.d4 = Conv(n, n, 3, dilation=4)
        self.d8 = Conv(n, n, 3, dilation=8)
        self.d16 = Conv(n, n, 3, dilation=16)
        self.residual = residual and not downsample and c_in == c_out
        self.downsample = downsample
        if downsample:
            # The published strided module keeps BN and PReLU as direct children.
            self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
            self.act = nn.PReLU(c_out)
        else:
            self.bn = BNPReLU(c_out, bn_eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        first = self.d1(reduced)
        fused = [self.d2(reduced)]
        for branch in (self.d4, self.d8, self.d16):
            fused.append(fused[-1] + branch(reduced))
        out = torch.cat([first, *fused], dim=1)
        if self.residual:
            out = out + x
        if self.downsample:
            return self.act(self.bn(out))
        return self.bn(out)


class ESPNetEncoder(nn.Module):
    """ESPNet-A, -B or -C: the encoder, producing class logits at 1/8 resolution."""

    def __init__(self, num_classes: int = 20, p: int = 2, q: int = 3, variant: str = "C") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown ESPNet variant {variant!r}; expected one of {VARIANTS}")
        if p < 1 or q < 1:
            raise ValueError(f"p and q must be at least 1, got p={p}, q={q}")
        self.variant = variant
        reinforce = variant == "C"
        concat = variant in ("B", "C")
        image_channels = 3 if reinforce else 0

        self.level1 = ConvBNPReLU(3, 16, 3, stride=2, bn_eps=BN_EPS)
        if reinforce:
            self.sample1 = ImagePyramidPool(1)
            self.sample2 = ImagePyramidPool(2)
            self.b1 = BNPReLU(16 + image_channels, bn_eps=BN_EPS)
        self.level2_0 = ESPModule(16 + image_channels, 64, downsample=True)
        self.level2 = nn.ModuleList(ESPModule(64, 64) for _ in range(p))
        level2_out = (128 if concat else 64) + image_channels
        if concat:
            self.b2 = BNPReLU(level2_out, bn_eps=BN_EPS)
        self.level3_0 = ESPModule(level2_out, 128, downsample=True)
        self.level3 = nn.ModuleList(ESPModule(128, 128) for _ in range(q))
        level3_out = 256 if concat else 128
        if concat:
            self.b3 = BNPReLU(level3_out, bn_eps=BN_EPS)
        self.classifier = Conv(level3_out, num_classes, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the features the decoder reuses.

        (1/2 level output, the same after input reinforcement, 1/4 output, 1/8 output).
        """
        level1 = self.level1(x)
        merged1 = level1
        if self.variant == "C":
            merged1 = self.b1(torch.cat([level1, self.sample1(x)], dim=1))
        down2 = self.level2_0(merged1)
        out2 = down2
        for block in self.level2:
            out2 = block(out2)
        if self.variant == "C":
            out2 = self.b2(torch.cat([out2, down2, self.sample2(x)], dim=1))
        elif self.variant == "B":
            out2 = self.b2(torch.cat([out2, down2], dim=1))
        down3 = self.level3_0(out2)
        out3 = down3
        for block in self.level3:
            out3 = block(out3)
        if self.variant in ("B", "C"):
            out3 = self.b3(torch.cat([down3, out3], dim=1))
        return level1, merged1, out2, out3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)[3])


class ESPNet(nn.Module):
    """ESPNet-C encoder with the paper's light-weight decoder (full resolution logits).

    The decoder lifts the 1/8 logits with 2x2 transposed convolutions, merging
    a projection of the 1/4 features and then the 1/2 features on the way up.
    The released Cityscapes checkpoints merge the 16 level-1 channels; the
    CamVid checkpoint merges them after input reinforcement (19 channels):
    ``reinforced_skip=True``.
    """

    def __init__(self, num_classes: int = 20, p: int = 2, q: int = 3, *,
                 reinforced_skip: bool = False) -> None:
        super().__init__()
        c = num_classes
        self.reinforced_skip = reinforced_skip
        skip_channels = 16 + 3 if reinforced_skip else 16
        self.encoder = ESPNetEncoder(num_classes, p, q, variant="C")
        self.level3_C = Conv(128 + 3, c, 1)
        self.br = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv = ConvBNPReLU(skip_channels + c, c, 3, bn_eps=BN_EPS)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BNPReLU(2 * c, bn_eps=BN_EPS),
                                           ESPModule(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False),
                                   BNPReLU(c, bn_eps=BN_EPS))
        self.classifier = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level1, merged1, level2, level3 = self.encoder.features(x)
        up3 = self.up_l3(self.br(self.encoder.classifier(level3)))
        merged = self.combine_l2_l3(torch.cat([self.level3_C(level2), up3], dim=1))
        up2 = self.up_l2(merged)
        return self.classifier(self.conv(torch.cat([up2, merged1 if self.reinforced_skip else level1], dim=1)))
