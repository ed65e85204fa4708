"""Exact rewrites that give the LiteRT GPU accelerator a graph it runs correctly (see gpu_runtime.py for
the accelerator limits they avoid): grouped convs as dense, depth-wise + sum or padded convs, channel
shuffles as 1x1 permutation convs. The tflite-gpu artifact is converted from gpu_friendly(module)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def _needs_dense(conv: nn.Conv2d, align: int | None) -> bool:
    if conv.groups <= 1:
        return False
    in_per_group = conv.in_channels // conv.groups
    out_per_group = conv.out_channels // conv.groups
    if in_per_group == 1:
        return False  # depth-wise: DEPTHWISE_CONV_2D, handled by the GPU
    if align is None:
        return True
    return in_per_group % align != 0 or out_per_group % align != 0


def dense_from_grouped(conv: nn.Conv2d) -> nn.Conv2d:
    """An ungrouped ``nn.Conv2d`` computing exactly what grouped ``conv`` computes.

    Its weight is block-diagonal: output channels of group g see only the input
    channels of group g, every other tap is an exact zero, so outputs differ from
    the grouped conv only by float summation order.
    """
    g = conv.groups
    ig, og = conv.in_channels // g, conv.out_channels // g
    dense = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=1, bias=conv.bias is not None,
                      padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        dense.weight.zero_()
        for k in range(g):
            dense.weight[k * og:(k + 1) * og, k * ig:(k + 1) * ig] = conv.weight[k * og:(k + 1) * og]
        if conv.bias is not None:
            dense.bias.copy_(conv.bias)
    dense.weight.requires_grad_(conv.weight.requires_grad)
    return dense.train(conv.training)


def _selection_weight(n_in: int, pick: list[int]) -> torch.Tensor:
    """(len(pick), n_in, 1, 1) 0/1 weight whose output k copies input channel pick[k]."""
    weight = torch.zeros(len(pick), n_in, 1, 1)
    weight[torch.arange(len(pick)), torch.as_tensor(pick)] = 1.0
    return weight


class DepthwiseBlockSum(nn.Module):
    """A grouped conv with one output per group, as a depth-wise conv (one tap set per input
    channel) followed by a 1x1 conv with 0/1 weights summing each group's channels."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        g, ig = conv.groups, conv.in_channels // conv.groups
        self.depthwise = nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, stride=conv.stride,
                                   padding=conv.padding, dilation=conv.dilation, groups=conv.in_channels,
                                   bias=False, padding_mode=conv.padding_mode)
        self.sum = nn.Conv2d(conv.in_channels, g, 1, bias=conv.bias is not None)
        with torch.no_grad():
            # input channel c = k*ig + j of group k uses conv.weight[k, j]
            self.depthwise.weight.copy_(conv.weight.reshape(conv.in_channels, 1, *conv.kernel_size))
            self.sum.weight.zero_()
            for k in range(g):
                self.sum.weight[k, k * ig:(k + 1) * ig] = 1.0
            if conv.bias is not None:
                self.sum.bias.copy_(conv.bias)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sum(self.depthwise(x))


class PaddedGroupedConv(nn.Module):
    """A grouped conv whose outputs per group are padded with zero-weight channels up to a
    multiple of 4 (a shape the GPU handles), then a 0/1 1x1 conv keeps the real channels."""

    def __init__(self, conv: nn.Conv2d, out_per_group: int) -> None:
        super().__init__()
        g, og = conv.groups, conv.out_channels // conv.groups
        self.conv = nn.Conv2d(conv.in_channels, g * out_per_group, conv.kernel_size, stride=conv.stride,
                              padding=conv.padding, dilation=conv.dilation, groups=g,
                              bias=conv.bias is not None, padding_mode=conv.padding_mode)
        keep = [k * out_per_group + j for k in range(g) for j in range(og)]
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[keep] = conv.weight
            if conv.bias is not None:
                self.conv.bias.zero_()
                self.conv.bias[keep] = conv.bias
        self.conv.weight.requires_grad_(False)
        self.register_buffer("select", _selection_weight(g * out_per_group, keep))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(self.conv(x), self.select)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def gpu_conv_rewrite(conv: nn.Conv2d, align: int = 4, strategy: str = "cheapest", *,
                     allow_grouped: bool = True) -> tuple[nn.Module, str]:
    """An exact GPU-friendly replacement for grouped ``conv`` and the name of the form chosen.

    Forms (MACs per output pixel, k = kernel taps, g groups, ig/og channels per group):
    ``dense`` block-diagonal conv (out*in*k); ``depthwise+sum`` when og == 1
    (in*k + out*in); ``padded`` outputs when ig is a multiple of ``align``
    (g*og'*ig*k + out*g*og', og' = og rounded up). ``strategy="cheapest"`` picks the
    form with the fewest MACs, ``"dense"`` always the dense one; ``allow_grouped=False``
    excludes the padded form (which keeps a grouped conv).
    """
    g = conv.groups
    ig, og = conv.in_channels // g, conv.out_channels // g
    taps = int(conv.kernel_size[0] * conv.kernel_size[1])
    costs = {"dense": conv.out_channels * conv.in_channels * taps}
    if strategy != "dense":
        if og == 1:
            costs["depthwise+sum"] = conv.in_channels * taps + conv.out_channels * conv.in_channels
        if ig % align == 0 and allow_grouped:
            padded = g * _round_up(og, align)
            costs["padded"] = padded * ig * taps + conv.out_channels * padded
    form = min(costs, key=lambda name: (costs[name], name != "dense"))
    if form == "depthwise+sum":
        return DepthwiseBlockSum(conv).train(conv.training), form
    if form == "padded":
        return PaddedGroupedConv(conv, _round_up(og, align)).train(conv.training), form
    return dense_from_grouped(conv), form


class PermutationConv(nn.Module):
    """A fixed channel permutation as a 1x1 convolution with a 0/1 weight (exact, 4-D only)."""

    def __init__(self, permutation: Any) -> None:
        super().__init__()
        perm = torch.as_tensor(permutation, dtype=torch.long)
        n = int(perm.numel())
        weight = torch.zeros(n, n, 1, 1)
        weight[torch.arange(n), perm] = 1.0
        self.register_buffer("weight", weight)
        self.register_buffer("permutation", perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.weight)


def _shuffle_permutation(module: Any) -> list[int] | None:
    """Input channel feeding each output channel of a fixed channel shuffle, or None."""
    split = getattr(module, "split_shape", None)
    out = getattr(module, "out_shape", None)
    if split is None or out is None or len(split) != 5:
        return None
    groups, per_group = int(split[1]), int(split[2])
    # out channel j*groups + i  <-  in channel i*per_group + j
    return [i * per_group + j for j in range(per_group) for i in range(groups)]


def gpu_friendly(module: nn.Module, *, align: int | None = 4, inplace: bool = False,
                 strategy: str = "cheapest") -> nn.Module:
    """Rewrite a deployable module so that the LiteRT GPU accelerator runs all of it, exactly.

    * ``nn.Conv2d`` with ``groups > 1`` (not depth-wise) whose channels per group
      are not multiples of ``align`` (``align=None``: every such conv, leaving no
      grouped conv at all) is replaced by the cheapest exact form of
      :func:`gpu_conv_rewrite` (``strategy="dense"``: always a dense conv with a
      block-diagonal weight, :func:`dense_from_grouped`);
    * a fixed 5-D channel shuffle (``espnet_mobile.deploy.ChannelShuffleFixed``)
      becomes a :class:`PermutationConv`.

    All are exact up to float summation order (<= 1e-6 relative): the extra
    weights are exact zeros and ones. Returns the
    rewritten module (a deep copy unless ``inplace``); ``module.gpu_rewrites``
    lists what was replaced.
    """
    target = module if inplace else copy.deepcopy(module)
    rewrites: list[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}{name}"
            if isinstance(child, nn.Conv2d) and _needs_dense(child, align):
                replacement, form = gpu_conv_rewrite(child, align or 4, strategy, allow_grouped=align is not None)
                setattr(parent, name, replacement)
                rewrites.append(f"{path}: grouped conv {child.in_channels}->{child.out_channels} "
                                f"k={tuple(child.kernel_size)} groups={child.groups} -> {form}")
                continue
            perm = _shuffle_permutation(child)
            if perm is not None and type(child).__name__.startswith("ChannelShuffle"):
                setattr(parent, name, PermutationConv(perm))
                rewrites.append(f"{path}: 5-D channel shuffle ({len(perm)} channels) -> 1x1 permutation conv")
                continue
            visit(child, f"{path}.")

    visit(target, "")
    target.gpu_rewrites = rewrites
    return target


def gpu_unfriendly(module: nn.Module, *, align: int | None = 4) -> list[str]:
    """What :func:`gpu_friendly` would rewrite (module paths with a reason), without changing anything."""
    found = []
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d) and _needs_dense(child, align):
            found.append(f"{name}: grouped conv {child.in_channels // child.groups} in / "
                         f"{child.out_channels // child.groups} out per group")
        elif _shuffle_permutation(child) is not None and type(child).__name__.startswith("ChannelShuffle"):
            found.append(f"{name}: 5-D reshape/transpose channel shuffle")
    return found


