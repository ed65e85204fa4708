"""Parameter and FLOP counts at a zoo entry's input size, next to the paper's figures.

Counting convention (the one behind the ESPNetv2 model-zoo tables): FLOPs
are multiply-accumulates of ``nn.Conv2d`` layers only - for each output
element, k_h * k_w * C_in / groups multiply-adds, plus one add per output
element for a bias - reported in millions. Transposed convolutions, pooling,
resizing, BatchNorm, PReLU and element-wise sums are not counted; the
profile also reports the MACs of transposed convolutions separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from espnet_mobile.zoo import ZooEntry


@dataclass
class Profile:
    entry: ZooEntry
    params: int
    conv_mflops: float  # the authors' convention
    transposed_conv_mmacs: float

    @property
    def flops_ratio(self) -> float | None:
        """Our count divided by the paper's figure (None without a figure)."""
        paper = self.entry.paper.mflops
        return self.conv_mflops / paper if paper else None


def count_conv_macs(model: nn.Module, example: torch.Tensor) -> tuple[float, float]:
    """(Conv2d MACs, ConvTranspose2d MACs) of one forward pass on ``example``."""
    conv = transposed = 0.0
    for macs, is_transposed in conv_macs_by_module(model, example).values():
        if is_transposed:
            transposed += macs
        else:
            conv += macs
    return conv, transposed


def conv_macs_by_module(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[float, bool]]:
    """``{module path: (MACs, is transposed)}`` of every (transposed) convolution, so a share of them can be named."""
    found: dict[str, tuple[float, bool]] = {}

    def on_conv(name: str):
        def hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
            k_h, k_w = module.kernel_size
            per_output = k_h * k_w * module.in_channels / module.groups
            if module.bias is not None:
                per_output += 1
            found[name] = (found.get(name, (0.0, False))[0] + per_output * output.numel(), False)
        return hook

    def on_transposed(name: str):
        def hook(module: nn.ConvTranspose2d, inputs, _output) -> None:
            k_h, k_w = module.kernel_size
            macs = inputs[0].numel() * k_h * k_w * module.out_channels / module.groups
            found[name] = (found.get(name, (0.0, True))[0] + macs, True)
        return hook

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(on_conv(name)))
        elif isinstance(m, nn.ConvTranspose2d):
            handles.append(m.register_forward_hook(on_transposed(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return found


def profile_model(entry: ZooEntry, model: nn.Module | None = None) -> Profile:
    from espnet_mobile import build_model

    model = build_model(entry) if model is None else model
    params = sum(p.numel() for p in model.parameters())
    example = torch.zeros(1, 3, entry.input_height, entry.input_width)
    conv, transposed = count_conv_macs(model, example)
    return Profile(entry, params, conv / 1e6, transposed / 1e6)


def format_profile(p: Profile) -> str:
    e = p.entry
    paper = e.paper
    lines = [
        f"model          {e.model_id} ({e.arch}, {e.num_classes} classes)",
        f"input          1x3x{e.input_height}x{e.input_width}",
        f"parameters     {p.params:,}" + (f"   (paper: {paper.params_m} M)" if paper.params_m else ""),
        f"FLOPs          {p.conv_mflops:.2f} M"
        + (f"   (paper: {paper.mflops} M, ratio {p.flops_ratio:.4f})" if paper.mflops else "   (paper: -)"),
    ]
    if p.transposed_conv_mmacs:
        lines.append(f"transposed     {p.transposed_conv_mmacs:.2f} M MACs in ConvTranspose2d (not in FLOPs)")
    if paper.miou is not None:
        lines.append(f"paper mIoU     {paper.miou} ({paper.miou_split})")
    lines.append("convention     FLOPs = multiply-adds of Conv2d layers (+1 per output for a bias), "
                 "in millions; as in the EdgeNets model zoo")
    return "\n".join(lines)
