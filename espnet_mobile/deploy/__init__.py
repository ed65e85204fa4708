"""Deployable graph: the reference model rewritten so every mobile backend can lower it whole.

The reference models stay exactly as the authors wrote them. This module
builds, for one fixed input size, an export-ready copy whose numbers are the
same (up to float summation order) and whose operators are ones ExecuTorch,
Core ML and LiteRT lower fully:

* the zoo's colour order and normalization are baked into a 1x1 convolution,
  so the artifact takes RGB in [0, 1] (or uint8 in [0, 255]) NCHW;
* 3x3/stride-2/pad-1 average pooling with ``count_include_pad=True`` becomes
  a depth-wise convolution with weights 1/9 and zero padding: the padding
  semantics are explicit and identical on every backend;
* adaptive average pooling becomes plain pooling where the sizes divide, and
  a product with a small constant matrix per axis where they do not;
* BatchNorm that does not follow a convolution becomes a depth-wise 1x1
  convolution with bias (a per-channel affine every backend fuses or runs);
* every size (resize targets, pyramid levels) is a constant computed here,
  so the graph carries no shape arithmetic;
* the pyramid pool's channel shuffle is folded into the grouped 3x3 conv
  after it, which becomes one dense conv (see :func:`shuffle_into_grouped_conv`);
* the image pyramid for input reinforcement is computed once and shared.

Each rewrite is checked against the reference in ``tests/test_deploy.py``.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from espnet_mobile.models.blocks import BNPReLU
from espnet_mobile.models.espnet import ESPModule, ESPNet, ESPNetEncoder
from espnet_mobile.models.espnetv2 import (
    EfficientPointwiseConv,
    EfficientPyramidPool,
    ESPNetv2Segmentation,
    StridedEESP,
    pyramid_size,
)
from espnet_mobile.zoo import Normalization, ZooEntry, get_entry

INPUT_DTYPES = ("float32", "uint8")
HEADS = ("logits", "mask")


@dataclass(frozen=True)
class DeployConfig:
    """What the exported graph takes and returns."""

    height: int
    width: int
    input_dtype: str = "float32"  # "float32": RGB in [0,1]; "uint8": RGB in [0,255]
    head: str = "logits"  # "logits": (1,C,H,W) float; "mask": (1,H,W) int32 argmax

    def __post_init__(self) -> None:
        if self.input_dtype not in INPUT_DTYPES:
            raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {self.input_dtype!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")


# --------------------------------------------------------------------------- rewrites


class InputNormalization(nn.Module):
    """RGB in [0,1] (or uint8 [0,255]) -> the authors' normalized input, as one 1x1 conv.

    The conv's weight is a scaled permutation (RGB -> BGR for ESPNet v1) and
    its bias the shifted mean, so ``conv(x) == (x[order] * range - mean) / std / divide_after``.
    """

    def __init__(self, norm: Normalization, input_dtype: str = "float32") -> None:
        super().__init__()
        self.uint8 = input_dtype == "uint8"
        pixel_scale = 1.0 / 255.0 if self.uint8 else 1.0
        order = {"RGB": (0, 1, 2), "BGR": (2, 1, 0)}[norm.color_order]
        weight = torch.zeros(3, 3, 1, 1, dtype=torch.float64)
        bias = torch.zeros(3, dtype=torch.float64)
        for out_c, in_c in enumerate(order):
            denom = norm.std[out_c] * norm.divide_after
            weight[out_c, in_c, 0, 0] = pixel_scale * norm.pixel_range / denom
            bias[out_c] = -norm.mean[out_c] / denom
        self.conv = nn.Conv2d(3, 3, 1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(weight.float())
            self.conv.bias.copy_(bias.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8:
            x = x.to(torch.float32)
        return self.conv(x)


def normalize_reference(x: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """The authors' normalization in float64 steps, for RGB [0,1] input (the reference path)."""
    order = {"RGB": [0, 1, 2], "BGR": [2, 1, 0]}[norm.color_order]
    x = x[:, order].double() * norm.pixel_range
    mean = torch.tensor(norm.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x - mean) / std / norm.divide_after).float()


class AvgPool3x3s2(nn.Module):
    """3x3 average pooling, stride 2, zero padding 1, padding counted in the divisor.

    Written as a depth-wise convolution with constant weights 1/9: convolution
    zero padding is the same on every backend, unlike pooling's pad handling.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / 9.0)
        self.conv.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix equal to 1-D adaptive average pooling from n_in to n_out.

    Output i averages inputs floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out)-1.
    """
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m.float()


class FixedAdaptiveAvgPool2d(nn.Module):
    """Adaptive average pooling between two fixed sizes, as pooling or constant matrix products."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.in_hw, self.out_hw = tuple(in_hw), tuple(out_hw)
        (h, w), (oh, ow) = self.in_hw, self.out_hw
        self.pool_kernel: tuple[int, int] | None = None
        self.rows: nn.Linear | None = None
        self.cols: nn.Linear | None = None
        if h % oh == 0 and w % ow == 0:
            self.pool_kernel = (h // oh, w // ow)
        else:
            if w != ow:
                self.cols = self._fixed_linear(adaptive_pool_matrix(w, ow))
            if h != oh:
                self.rows = self._fixed_linear(adaptive_pool_matrix(h, oh))

    @staticmethod
    def _fixed_linear(matrix: torch.Tensor) -> nn.Linear:
        layer = nn.Linear(matrix.shape[1], matrix.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(matrix)
        layer.weight.requires_grad_(False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_kernel is not None:
            if self.pool_kernel == (1, 1):
                return x
            return F.avg_pool2d(x, self.pool_kernel, self.pool_kernel)
        if self.cols is not None:
            x = self.cols(x)
        if self.rows is not None:
            x = self.rows(x.transpose(2, 3)).transpose(2, 3)
        return x


class FixedResize(nn.Module):
    """Bilinear resize (align_corners=True) to a constant size."""

    def __init__(self, out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=True)


def batchnorm_as_conv(bn: nn.BatchNorm2d) -> nn.Conv2d:
    """An eval-mode BatchNorm as the equivalent depth-wise 1x1 convolution with bias."""
    c = bn.num_features
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.detach().double() - bn.running_mean.double() * scale
    conv = nn.Conv2d(c, c, 1, groups=c, bias=True)
    with torch.no_grad():
        conv.weight.copy_(scale.view(c, 1, 1, 1).float())
        conv.bias.copy_(shift.float())
    return conv


class ChannelShuffleFixed(nn.Module):
    """Channel shuffle with the tensor shape fixed at build time."""

    def __init__(self, groups: int, channels: int, hw: tuple[int, int]) -> None:
        super().__init__()
        self.split_shape = (1, groups, channels // groups, hw[0], hw[1])
        self.out_shape = (1, channels, hw[0], hw[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.split_shape).transpose(1, 2).reshape(self.out_shape)


def _replace_standalone_batchnorms(module: nn.Module) -> None:
    """Swap every BatchNorm that does not directly follow a conv for a depth-wise 1x1 conv.

    Those are the BN of BN-PReLU pairs (after a concatenation or a sum) and
    of ESPNet's strided ESP module; BN right after a conv is left for the
    converters to fold.
    """
    for child in list(module.modules()):
        if isinstance(child, BNPReLU) or (isinstance(child, ESPModule) and child.downsample):
            child.bn = batchnorm_as_conv(child.bn)
        elif isinstance(child, nn.Sequential) and len(child) == 2 and \
                isinstance(child[0], nn.BatchNorm2d) and isinstance(child[1], nn.PReLU):
            child[0] = batchnorm_as_conv(child[0])


# --------------------------------------------------------------------------- ESPNetv2


#: Bumped whenever make_deployable's graph changes, so cached artifacts are rebuilt
#: (part of the converter's cache key). 2: 2x2 pooling no longer folded into a 6x6 conv.
#: 3: the pyramid pool's channel shuffle folded into its merge conv.
GRAPH_VERSION = 3

#: Largest depth-wise kernel (taps) that a pool is folded into. XNNPACK's depth-wise kernels
#: go up to 25 taps in one pass; a larger one (2x2 pooling folded into a 3x3 conv is 6x6,
#: 36 taps) runs as a grouped GEMM with one channel per group, which took ~4% of ESPNetv2's
#: run time on four tiny tensors, in float and in int8 alike.
MAX_FUSED_DEPTHWISE_TAPS = 25


class BoxPoolAsDepthwise(nn.Module):
    """k_h x k_w average pooling at stride k, as a depth-wise convolution with constant weights."""

    def __init__(self, channels: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, stride=kernel, groups=channels, bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / (kernel[0] * kernel[1]))
        self.conv.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def pool_then_depthwise(pool: tuple[int, int], conv: nn.Conv2d) -> nn.Conv2d:
    """One depth-wise conv equal to k_h x k_w average pooling (stride = kernel) then a 3x3 depth-wise conv.

    Output (u, v) reads pooled cells u-1..u+1, i.e. inputs k*u - k .. k*u + 2k - 1:
    a (3 k_h) x (3 k_w) kernel at stride k with padding k, tap (i, j) = w[i // k_h, j // k_w] / (k_h k_w).
    Exact when the input size is a multiple of the pool (the zero padding lines up).
    """
    kh, kw = pool
    c = conv.in_channels
    weight = conv.weight.detach().repeat_interleave(kh, dim=2).repeat_interleave(kw, dim=3) / (kh * kw)
    fused = nn.Conv2d(c, c, (3 * kh, 3 * kw), stride=(kh, kw), padding=(kh, kw), groups=c, bias=False)
    with torch.no_grad():
        fused.weight.copy_(weight)
    return fused


def depthwise_then_pool(conv: nn.Conv2d, pool: tuple[int, int]) -> nn.Conv2d:
    """One depth-wise conv equal to a 3x3 depth-wise conv (padding 1) then k_h x k_w average pooling.

    The kernel is the 3x3 weight convolved with a k_h x k_w box / (k_h k_w): (k_h + 2) x (k_w + 2)
    taps at stride k, padding 1. Exact when the input size is a multiple of the pool.
    """
    kh, kw = pool
    c = conv.in_channels
    w = conv.weight.detach()
    weight = torch.zeros(c, 1, kh + 2, kw + 2, dtype=w.dtype)
    for dy in range(kh):
        for dx in range(kw):
            weight[:, :, dy:dy + 3, dx:dx + 3] += w
    fused = nn.Conv2d(c, c, (kh + 2, kw + 2), stride=(kh, kw), padding=1, groups=c, bias=False)
    with torch.no_grad():
        fused.weight.copy_(weight / (kh * kw))
    return fused


def shuffle_into_grouped_conv(shuffle_groups: int, conv: nn.Conv2d) -> nn.Conv2d:
    """One dense conv equal to a channel shuffle of ``shuffle_groups`` blocks, then the grouped ``conv``.

    The shuffle puts input channel ``b * p + c`` (block ``b`` of ``p`` channels) at
    position ``c * shuffle_groups + b``; the dense weight reads each original channel
    where the grouped conv read its shuffled position, and is zero elsewhere.

    Why: EfficientPyramidPool merges its levels with a shuffle (three transposes of the
    whole tensor in NHWC runtimes) and a grouped conv with one output channel per group,
    which XNNPACK runs as one GEMM per group, each filling 1 column of a 16-wide tile.
    The dense conv does ``groups`` times the nominal MACs but fewer tile MACs than those
    GEMMs and no transposes. For ESPNetv2 at 256x256, measured in one run: LiteRT int8
    18.88 -> 17.71 ms and fp32 24.78 -> 23.46 ms; ExecuTorch XNNPACK int8 16.40 -> 15.18 ms
    and fp32 19.52 -> 18.45 ms.
    """
    c_in, c_out, groups = conv.in_channels, conv.out_channels, conv.groups
    if c_in % shuffle_groups:
        raise ValueError(f"{c_in} channels do not split into {shuffle_groups} shuffle blocks")
    block, per_group_in, per_group_out = c_in // shuffle_groups, c_in // groups, c_out // groups
    w = conv.weight.detach()
    dense = torch.zeros(c_out, c_in, *w.shape[2:], dtype=w.dtype)
    for o in range(c_out):
        for j in range(per_group_in):
            position = (o // per_group_out) * per_group_in + j
            c, b = divmod(position, shuffle_groups)
            dense[o, b * block + c] = w[o, j]
    fused = nn.Conv2d(c_in, c_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, bias=conv.bias is not None)
    with torch.no_grad():
        fused.weight.copy_(dense)
        if conv.bias is not None:
            fused.bias.copy_(conv.bias.detach())
    return fused


class DeployPyramidPool(nn.Module):
    """EfficientPyramidPool at a fixed input size, with fixed-size resizes and pools.

    Where a pyramid level's pooling is plain (sizes divide), it is folded into
    the level's depth-wise conv when the result has at most
    :data:`MAX_FUSED_DEPTHWISE_TAPS` taps, and otherwise runs as a depth-wise conv
    of its own, so no average-pooling op remains (int8 average pooling has no
    XNNPACK kernel in LiteRT and splits delegation). The merge's channel shuffle
    is folded into its grouped conv (:func:`shuffle_into_grouped_conv`).
    """

    def __init__(self, ref: EfficientPyramidPool, hw: tuple[int, int]) -> None:
        super().__init__()
        self.projection_layer = ref.projection_layer
        h, w = hw
        self.before = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.after = nn.ModuleList()
        for scale, stage in zip(ref.scales, ref.stages, strict=True):
            size = (pyramid_size(h, scale), pyramid_size(w, scale))
            before: nn.Module = nn.Identity()
            after: nn.Module = nn.Identity()
            if scale < 1.0:
                pool = FixedAdaptiveAvgPool2d((h, w), size)
                kernel = pool.pool_kernel
                if kernel is not None and kernel != (1, 1):
                    if 9 * kernel[0] * kernel[1] <= MAX_FUSED_DEPTHWISE_TAPS:
                        stage = pool_then_depthwise(kernel, stage)
                    else:
                        before = BoxPoolAsDepthwise(stage.in_channels, kernel)
                else:
                    before = pool
                after = FixedResize((h, w))
            elif scale > 1.0:
                before = FixedResize(size)
                pool = FixedAdaptiveAvgPool2d(size, (h, w))
                if pool.pool_kernel is not None and pool.pool_kernel != (1, 1):
                    stage = depthwise_then_pool(stage, pool.pool_kernel)
                else:
                    after = pool
            self.before.append(before)
            self.stages.append(stage)
            self.after.append(after)
        merge = ref.merge_layer
        merge[2].cbr[0] = shuffle_into_grouped_conv(len(ref.scales), merge[2].cbr[0])
        self.merge_layer = nn.Sequential(merge[0], merge[2], merge[3])
        self.br = None if ref.last else ref.br

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        levels = [after(stage(before(x)))
                  for before, stage, after in zip(self.before, self.stages, self.after, strict=True)]
        out = self.merge_layer(torch.cat(levels, dim=1))
        return out if self.br is None else self.br(out)


class DeployPointwiseConv(nn.Module):
    """EfficientPointwiseConv with its global pooling as a spatial mean."""

    def __init__(self, ref: EfficientPointwiseConv) -> None:
        super().__init__()
        self.gate = ref.wt_layer[1]
        self.expansion_layer = ref.expansion_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.gate(x.mean(dim=(2, 3), keepdim=True)))
        return self.expansion_layer(x) * weights


class DeployStridedEESP(nn.Module):
    """StridedEESP fed the matching level of the shared image pyramid."""

    def __init__(self, ref: StridedEESP) -> None:
        super().__init__()
        self.avg = AvgPool3x3s2(ref.eesp.proj_1x1.conv.in_channels)
        self.eesp = ref.eesp
        self.inp_reinf = ref.inp_reinf
        self.act = ref.act

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.avg(x), self.eesp(x)], dim=1)
        return self.act(out + self.inp_reinf(image))


class DeployESPNetv2(nn.Module):
    def __init__(self, ref: ESPNetv2Segmentation, hw: tuple[int, int]) -> None:
        super().__init__()
        enc = ref.base_net
        sizes = [hw]
        for _ in range(4):
            sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
        self.image_pool = AvgPool3x3s2(3)
        self.level1 = enc.level1
        self.level2_0 = DeployStridedEESP(enc.level2_0)
        self.level3_0 = DeployStridedEESP(enc.level3_0)
        self.level3 = enc.level3
        self.level4_0 = DeployStridedEESP(enc.level4_0)
        self.level4 = enc.level4
        self.bu_dec_l1 = DeployPyramidPool(ref.bu_dec_l1, sizes[4])
        self.bu_dec_l2 = DeployPyramidPool(ref.bu_dec_l2, sizes[3])
        self.bu_dec_l3 = DeployPyramidPool(ref.bu_dec_l3, sizes[2])
        self.bu_dec_l4 = DeployPyramidPool(ref.bu_dec_l4, sizes[1])
        self.merge_enc_dec_l2 = DeployPointwiseConv(ref.merge_enc_dec_l2)
        self.merge_enc_dec_l3 = DeployPointwiseConv(ref.merge_enc_dec_l3)
        self.merge_enc_dec_l4 = DeployPointwiseConv(ref.merge_enc_dec_l4)
        self.bu_br_l2, self.bu_br_l3, self.bu_br_l4 = ref.bu_br_l2, ref.bu_br_l3, ref.bu_br_l4
        self.up_to_l3 = FixedResize((2 * sizes[4][0], 2 * sizes[4][1]))
        self.up_to_l2 = FixedResize((2 * sizes[3][0], 2 * sizes[3][1]))
        self.up_to_l1 = FixedResize((2 * sizes[2][0], 2 * sizes[2][1]))
        self.up_to_input = FixedResize(hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Image pyramid pyr[k] at 1/2^k; the strided unit reaching 1/2^k adds a projection of pyr[k].
        pyr = [x]
        for _ in range(4):
            pyr.append(self.image_pool(pyr[-1]))
        out1 = self.level1(x)
        out2 = self.level2_0(out1, pyr[2])
        out3 = self.level3_0(out2, pyr[3])
        for block in self.level3:
            out3 = block(out3)
        out4 = self.level4_0(out3, pyr[4])
        for block in self.level4:
            out4 = block(out4)
        y = self.bu_dec_l1(out4)
        y = self.bu_dec_l2(self.bu_br_l2(self.merge_enc_dec_l2(out3) + self.up_to_l3(y)))
        y = self.bu_dec_l3(self.bu_br_l3(self.merge_enc_dec_l3(out2) + self.up_to_l2(y)))
        y = self.bu_dec_l4(self.bu_br_l4(self.merge_enc_dec_l4(out1) + self.up_to_l1(y)))
        return self.up_to_input(y)


# --------------------------------------------------------------------------- ESPNet (v1)


class DeployESPNetEncoder(nn.Module):
    """ESPNet-C with the shared image pyramid and pooling as convolution."""

    def __init__(self, ref: ESPNetEncoder) -> None:
        super().__init__()
        if ref.variant != "C":
            raise ValueError("only ESPNet-C and ESPNet have deployable graphs (they have checkpoints)")
        self.image_pool = AvgPool3x3s2(3)
        self.level1 = ref.level1
        self.b1, self.b2, self.b3 = ref.b1, ref.b2, ref.b3
        self.level2_0, self.level2 = ref.level2_0, ref.level2
        self.level3_0, self.level3 = ref.level3_0, ref.level3
        self.classifier = ref.classifier

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        half = self.image_pool(x)
        quarter = self.image_pool(half)
        level1 = self.level1(x)
        merged1 = self.b1(torch.cat([level1, half], dim=1))
        down2 = self.level2_0(merged1)
        out2 = down2
        for block in self.level2:
            out2 = block(out2)
        out2 = self.b2(torch.cat([out2, down2, quarter], dim=1))
        down3 = self.level3_0(out2)
        out3 = down3
        for block in self.level3:
            out3 = block(out3)
        out3 = self.b3(torch.cat([down3, out3], dim=1))
        return level1, merged1, out2, out3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)[3])


class DeployESPNet(nn.Module):
    def __init__(self, ref: ESPNet) -> None:
        super().__init__()
        self.encoder = DeployESPNetEncoder(ref.encoder)
        self.reinforced_skip = ref.reinforced_skip
        self.level3_C, self.br, self.conv = ref.level3_C, batchnorm_as_conv(ref.br), ref.conv
        self.up_l3, self.combine_l2_l3, self.up_l2 = ref.up_l3, ref.combine_l2_l3, ref.up_l2
        self.classifier = ref.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level1, merged1, level2, level3 = self.encoder.features(x)
        up3 = self.up_l3(self.br(self.encoder.classifier(level3)))
        merged = self.combine_l2_l3(torch.cat([self.level3_C(level2), up3], dim=1))
        up2 = self.up_l2(merged)
        skip = merged1 if self.reinforced_skip else level1
        return self.classifier(self.conv(torch.cat([up2, skip], dim=1)))


# --------------------------------------------------------------------------- assembly


class DeployableModel(nn.Module):
    """Normalization + rewritten network + optional argmax head, for one fixed input size."""

    def __init__(self, normalize: InputNormalization, body: nn.Module, config: DeployConfig,
                 model_id: str) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.config = config
        self.model_id = model_id

    def example_input(self) -> torch.Tensor:
        shape = (1, 3, self.config.height, self.config.width)
        if self.config.input_dtype == "uint8":
            return torch.randint(0, 256, shape, dtype=torch.uint8)
        return torch.rand(shape)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.body(self.normalize(image))
        if self.config.head == "mask":
            return torch.argmax(logits, dim=1).to(torch.int32)
        return logits


def make_deployable(model: nn.Module, entry: ZooEntry | str, *, height: int | None = None,
                    width: int | None = None, input_dtype: str = "float32",
                    head: str = "logits") -> DeployableModel:
    """Build the export-ready module for ``model`` (a reference model of ``entry``'s architecture).

    The reference model is deep-copied and never modified.
    """
    if isinstance(entry, str):
        entry = get_entry(entry)
    config = DeployConfig(height or entry.input_height, width or entry.input_width, input_dtype, head)
    ref = copy.deepcopy(model).eval()
    _replace_standalone_batchnorms(ref)
    hw = (config.height, config.width)
    if isinstance(ref, ESPNetv2Segmentation):
        if config.height % 16 or config.width % 16:
            raise ValueError(f"ESPNetv2 needs input sides divisible by 16, got {hw}")
        body: nn.Module = DeployESPNetv2(ref, hw)
    elif isinstance(ref, ESPNet):
        if config.height % 8 or config.width % 8:
            raise ValueError(f"ESPNet needs input sides divisible by 8, got {hw}")
        body = DeployESPNet(ref)
    elif isinstance(ref, ESPNetEncoder):
        body = DeployESPNetEncoder(ref)
    else:
        raise TypeError(f"no deployable graph for {type(model).__name__}")
    return DeployableModel(InputNormalization(entry.normalization, input_dtype), body, config,
                           entry.model_id).eval()


def reference_forward(model: nn.Module, entry: ZooEntry, rgb01: torch.Tensor) -> torch.Tensor:
    """The reference model on RGB [0,1] input, normalized the authors' way."""
    with torch.no_grad():
        return model(normalize_reference(rgb01, entry.normalization))


def export(module: DeployableModel, example: torch.Tensor | None = None) -> torch.export.ExportedProgram:
    """torch.export with the fixed example input (static shapes)."""
    example = module.example_input() if example is None else example
    with torch.no_grad():
        return torch.export.export(module, (example,), strict=False)


def exported_op_counts(program: torch.export.ExportedProgram) -> Counter[str]:
    """Count the ATen operators of an exported graph by name (e.g. ``aten.conv2d.default``)."""
    counts: Counter[str] = Counter()
    for node in program.graph.nodes:
        if node.op == "call_function":
            counts[str(node.target)] += 1
    return counts


def format_op_counts(counts: Counter[str]) -> str:
    width = max((len(k) for k in counts), default=10)
    lines = [f"{name:<{width}}  {n:>5}" for name, n in counts.most_common()]
    lines.append(f"{'total':<{width}}  {sum(counts.values()):>5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command, ``python -m espnet_mobile.deploy`` (see ``__main__.py``)."""
    from espnet_mobile.deploy.__main__ import main as command

    return command(argv)
