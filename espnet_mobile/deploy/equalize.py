"""Exact per-channel rescaling that lets int8 activations keep every channel's signal.

XNNPACK, LiteRT and Core ML quantize an activation with one scale for all of
its channels. In ESPNetv2 three kinds of tensor feed a per-channel affine (a
BatchNorm that cannot be folded into a convolution, a depth-wise 1x1 conv in
the deployable graph) and have channels whose range is a small fraction of
the tensor's: the concatenated levels of each pyramid pool, the concatenated
hierarchical sums of each EESP block, and the decoder's encoder + upsampled
decoder sums. Int8 leaves those channels a few integer steps (some none) and
the affine after them multiplies the rounding error by up to several hundred.

Every tensor here is produced by operations that are linear per channel or
positively homogeneous (bias-free depth-wise convs, sums, bilinear resizes,
BatchNorm followed by PReLU), so multiplying channel ``c`` upstream by
``s_c > 0`` and dividing the affine's weight for ``c`` by ``s_c`` computes
the same function. We choose ``s_c`` so that each channel reaches the
tensor's largest range (capped at ``max_scale``), measured on calibration
inputs. The model's output is unchanged up to float rounding, which
:func:`equalize_for_int8` checks.

ESPNet (v1) has two kinds of such tensor: the concatenated hierarchical sums
of its ESP modules that have no residual connection (the strided ones and the
decoder's), and the encoder's level concatenations (``b2``, ``b3``), where the
last ESP block's output shares one int8 range with a tensor several times
larger; that block's output is rescaled through its own BatchNorm (before its
PReLU). Its residual ESP blocks are left alone: rescaling them ties every block
of a level together and made int8 worse when tried.

What each backend gains is noted at :data:`KINDS`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from espnet_mobile.models.espnetv2 import EESP

#: Largest factor applied to one channel for post-training quantization.
DEFAULT_MAX_SCALE = 64.0
#: QAT trains the rescaled weights: larger factors leave tiny affine weights fed by large
#: activations, which the optimizer cannot move (SGD diverges, Adam's steps swamp them).
QAT_MAX_SCALE = 16.0
#: Bumped whenever the rewrite changes, so cached int8 artifacts are rebuilt.
VERSION = 2
#: The rescalable tensors, by kind (all are rescaled unless asked otherwise).
#: Measured on espnetv2_s_2.0_pascal_256x256, PTQ int8 artifacts vs fp32, argmax agreement on the 16
#: sample photos (without -> with): ExecuTorch XNNPACK 94.82% -> 98.72%, Core ML (MIL interpreter)
#: 93.31% -> 97.47%, LiteRT 95.64% -> 95.77% (LiteRT's quantizer already splits each affine after a
#: concat into one per input; rescaling only the EESP sums gave it 95.60%).
#: ESPNet (v1) p=2, q=8 at 256x512, XNNPACK PT2E int8 simulated in PyTorch, argmax agreement with fp32 on
#: 8 sample photos: 54.1% -> 67.9% (both v1 kinds; ESP modules alone 59.2%, level concatenations alone 62.7%).
KINDS = ("pyramid_pool", "eesp", "decoder_sum", "esp", "esp_concat")
#: Largest |change| of the output allowed, relative to max |output|, before the rewrite is refused.
EXACTNESS = 1e-4


def _affine(module: nn.Module) -> nn.Conv2d | None:
    """The depth-wise 1x1 conv the deployable graph made of a BatchNorm, or None."""
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == module.in_channels \
            and module.in_channels == module.out_channels and module.bias is not None:
        return module
    return None


def _sites(body: nn.Module) -> list[dict[str, Any]]:
    """Every tensor this module rescales: where it enters its affine and what produces its channels."""
    from espnet_mobile.deploy import DeployPyramidPool

    sites: list[dict[str, Any]] = []
    for name, m in body.named_modules():
        if isinstance(m, DeployPyramidPool):
            first = m.merge_layer[0]
            affine = _affine(first.br[0]) if hasattr(first, "br") else None
            if affine is not None and all(s.bias is None for s in m.stages):
                sites.append({"kind": "pyramid_pool", "name": name, "affine": affine, "module": m})
        elif isinstance(m, EESP):
            affine = _affine(m.br_after_cat.bn)
            if affine is not None and all(b.conv.bias is None for b in m.spp_dw):
                sites.append({"kind": "eesp", "name": name, "affine": affine, "module": m})
    sites += _espnet_sites(body)
    # Decoder sums: merge_enc_dec_lk(encoder) + upsample(bu_dec_l(k-1)(...)) -> bu_br_lk.
    for k, previous in ((2, "bu_dec_l1"), (3, "bu_dec_l2"), (4, "bu_dec_l3")):
        br, merge, dec = (getattr(body, n, None) for n in (f"bu_br_l{k}", f"merge_enc_dec_l{k}", previous))
        if br is None or merge is None or dec is None or getattr(dec, "br", None) is None:
            continue
        affine = _affine(br[0])
        encoder_bn = merge.expansion_layer.cbr[1]
        decoder_affine = _affine(dec.br.br[0])
        if affine is not None and decoder_affine is not None and isinstance(encoder_bn, nn.BatchNorm2d):
            sites.append({"kind": "decoder_sum", "name": f"bu_br_l{k}", "affine": affine,
                          "encoder_bn": encoder_bn, "decoder_affine": decoder_affine})
    return sites


def _espnet_sites(body: nn.Module) -> list[dict[str, Any]]:
    """ESPNet (v1): ESP modules without a residual, and the encoder's level concatenations."""
    from espnet_mobile.deploy import DeployESPNetEncoder
    from espnet_mobile.models.espnet import ESPModule

    sites: list[dict[str, Any]] = []
    for name, m in body.named_modules():
        if isinstance(m, ESPModule) and not m.residual:
            affine = _affine(m.bn if m.downsample else m.bn.bn)
            branches = [m.d1, m.d2, m.d4, m.d8, m.d16]
            if affine is not None and all(b.conv.bias is None for b in branches):
                sites.append({"kind": "esp", "name": name, "affine": affine, "module": m})
    encoder = getattr(body, "encoder", body)
    if isinstance(encoder, DeployESPNetEncoder):
        # b2 = BR(cat[out2, down2(, image)]) and b3 = BR(cat[down3, out3]): out2 and out3 are the
        # last ESP block of their level, read by nothing but the concatenation.
        for level, b_name, first in (("level2", "b2", True), ("level3", "b3", False)):
            b, blocks = getattr(encoder, b_name, None), getattr(encoder, level, None)
            if b is None or not blocks:
                continue
            affine, source = _affine(b.bn), _affine(blocks[-1].bn.bn)
            if affine is None or source is None:
                continue
            width = source.out_channels
            offset = 0 if first else affine.out_channels - width
            sites.append({"kind": "esp_concat", "name": f"encoder.{b_name}", "affine": affine,
                          "source": source, "channels": slice(offset, offset + width)})
    return sites


def _input_peaks(model: nn.Module, sites: list[dict[str, Any]], inputs: torch.Tensor,
                 batch: int) -> list[torch.Tensor]:
    """Per-channel max |x| of the tensor entering each site's affine, over ``inputs``."""
    peaks: list[torch.Tensor | None] = [None] * len(sites)
    hooks = []
    for i, site in enumerate(sites):
        def hook(_m: nn.Module, args: tuple, i: int = i) -> None:
            p = args[0].detach().abs().amax(dim=(0, 2, 3))
            peaks[i] = p if peaks[i] is None else torch.maximum(peaks[i], p)
        hooks.append(site["affine"].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch):
                model(inputs[start:start + batch])
    finally:
        for h in hooks:
            h.remove()
    return [p if p is not None else torch.zeros(0) for p in peaks]


def _channel_scales(peaks: torch.Tensor, max_scale: float) -> torch.Tensor:
    return _channel_scales_against(peaks, peaks.max(), max_scale)


def _channel_scales_against(peaks: torch.Tensor, top: torch.Tensor, max_scale: float) -> torch.Tensor:
    """Factors that bring each channel's peak up to ``top`` (the whole tensor's), at most ``max_scale``."""
    return (top / peaks.clamp_min(1e-30)).clamp(1.0, max_scale)


@torch.no_grad()
def _apply(site: dict[str, Any], peaks: torch.Tensor, max_scale: float) -> torch.Tensor:
    """Rescale one site in place; returns the factors of the channels it rescaled (the affine is divided by them)."""
    affine = site["affine"]
    if site["kind"] == "pyramid_pool":
        stages = site["module"].stages
        c = stages[0].out_channels
        per_level = peaks.view(len(stages), c)
        scales = _channel_scales(per_level, max_scale)  # one factor per (level, channel)
        for i, stage in enumerate(stages):
            stage.weight.mul_(scales[i].view(c, 1, 1, 1))
        flat = scales.flatten()
    elif site["kind"] == "eesp":
        branches = site["module"].spp_dw
        width = branches[0].conv.out_channels
        # The hierarchical sums tie channel c of every branch together: one factor per channel index.
        scales = _channel_scales(peaks.view(len(branches), width).amax(0), max_scale)
        for branch in branches:
            branch.conv.weight.mul_(scales.view(width, 1, 1, 1))
        flat = scales.repeat(len(branches))
    elif site["kind"] == "esp":
        m = site["module"]
        first, width = m.d1.conv.out_channels, m.d2.conv.out_channels
        # d1 stands alone; d2..d16 are summed cumulatively, so channel c of each shares one factor.
        lead = _channel_scales_against(peaks[:first], peaks.max(), max_scale)
        tied = _channel_scales_against(peaks[first:].view(4, width).amax(0), peaks.max(), max_scale)
        m.d1.conv.weight.mul_(lead.view(-1, 1, 1, 1))
        for branch in (m.d2, m.d4, m.d8, m.d16):
            branch.conv.weight.mul_(tied.view(-1, 1, 1, 1))
        flat = torch.cat([lead, tied.repeat(4)])
    elif site["kind"] == "esp_concat":
        # Only the last block's channels move: through its BatchNorm, which the PReLU after it commutes with.
        part = _channel_scales_against(peaks[site["channels"]], peaks.max(), max_scale)
        source = site["source"]
        source.weight.mul_(part.view(-1, 1, 1, 1))
        source.bias.mul_(part)
        affine.weight[site["channels"]] /= part.view(-1, 1, 1, 1)
        return part  # the other channels of the concatenation keep a factor of 1
    else:  # decoder_sum: scale both summands at their last per-channel affine before PReLU
        flat = _channel_scales(peaks, max_scale)
        bn, dec = site["encoder_bn"], site["decoder_affine"]
        bn.weight.mul_(flat)
        bn.bias.mul_(flat)
        dec.weight.mul_(flat.view(-1, 1, 1, 1))
        dec.bias.mul_(flat)
    affine.weight.div_(flat.view(-1, 1, 1, 1))
    return flat


def equalize_for_int8(deployable: nn.Module, inputs: torch.Tensor, *, max_scale: float = DEFAULT_MAX_SCALE,
                      kinds: tuple[str, ...] = KINDS, batch: int = 1) -> dict[str, Any]:
    """Rescale ``deployable`` in place (see the module docstring); returns what was done.

    ``inputs`` are model inputs (N, 3, H, W) representative of deployment
    (the calibration images); ``kinds`` selects which tensors (see
    :data:`KINDS`). The report counts rescaled tensors per kind and the
    largest and median factors. Raises ``RuntimeError`` (and leaves the
    model as it was) if the output moved by more than :data:`EXACTNESS`.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown equalization kinds {unknown}; valid: {', '.join(KINDS)}")
    body = getattr(deployable, "body", deployable)
    sites = [site for site in _sites(body) if site["kind"] in kinds]
    if not sites or len(inputs) == 0:
        return {"version": VERSION, "tensors": 0, "kinds": list(kinds)}
    was_training = deployable.training
    deployable.eval()
    try:
        backup = {k: v.clone() for k, v in deployable.state_dict().items()}
        probe = inputs[:1]
        with torch.no_grad():
            before = deployable(probe)
        peaks = _input_peaks(deployable, sites, inputs, batch)
        factors = [_apply(site, p, max_scale) for site, p in zip(sites, peaks, strict=True)]
        with torch.no_grad():
            after = deployable(probe)
        moved = float((after - before).abs().max() / before.abs().max().clamp_min(1e-30))
        if not moved <= EXACTNESS:
            deployable.load_state_dict(backup)
            raise RuntimeError(f"int8 equalization changed the output by {moved:.2e} of its range "
                               f"(allowed {EXACTNESS:g}); the model's structure is not what it expects")
    finally:
        deployable.train(was_training)
    every = torch.cat(factors)
    counts: dict[str, int] = {}
    for site in sites:
        counts[site["kind"]] = counts.get(site["kind"], 0) + 1
    return {"version": VERSION, "tensors": len(sites), "kinds": list(kinds), "by_kind": counts,
            "max_scale": max_scale,
            "largest_factor": round(float(every.max()), 2), "median_factor": round(float(every.median()), 2),
            "output_change": moved}
