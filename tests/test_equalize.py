"""Int8 equalization: an exact rewrite that evens out channel ranges, and what it buys on the real model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import espnet_mobile as em
from espnet_mobile.deploy import equalize as EQ
from espnet_mobile.deploy import make_deployable
from tests.conftest import checkpoint_path

SIZE = 64
DEFAULT = "espnetv2_s_2.0_pascal_256x256"


def _random_deployable(model_id: str, seed: int = 0) -> torch.nn.Module:
    """Random weights with BatchNorm variances spread over two decades, so channel ranges differ."""
    torch.manual_seed(seed)
    entry = em.get_entry(model_id)
    model = em.build_model(entry)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(10 ** (torch.rand(m.num_features, generator=gen) * 2 - 1))
    return make_deployable(model.eval(), entry, height=SIZE, width=SIZE).eval()


def _inputs(n: int, seed: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The deployable graph has batch-1 shapes: one input at a time."""
    with torch.no_grad():
        return torch.cat([model(s[None]) for s in x])


def _input_peaks(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    sites = EQ._sites(model.body)
    return EQ._input_peaks(model, sites, x, batch=1)


def test_equalization_keeps_the_output_and_evens_channel_ranges() -> None:
    model = _random_deployable("espnetv2_s_0.5_pascal_256x256")
    x = _inputs(4)
    before = _run(model, x)
    peaks_before = _input_peaks(model, x)
    report = EQ.equalize_for_int8(model, x)
    after = _run(model, x)
    # Every rescaled tensor: 4 pyramid pools, 13 EESP blocks, 3 decoder sums.
    assert report["by_kind"] == {"pyramid_pool": 4, "eesp": 13, "decoder_sum": 3}
    assert report["tensors"] == 20 and report["largest_factor"] > 1.0
    torch.testing.assert_close(after, before, rtol=0, atol=EQ.EXACTNESS * float(before.abs().max()))
    assert not torch.equal(after, before)  # weights really changed (float rounding shows it)
    # The weakest channel of each tensor now reaches a larger share of the tensor's range
    # (exactly 1 where the cap allows; EESP channels are tied across branches by the sums).
    peaks_after = _input_peaks(model, x)
    improved = 0
    for pb, pa in zip(peaks_before, peaks_after, strict=True):
        live = pb > 0
        share_before = (pb[live] / pb.max()).min()
        share_after = (pa[live] / pa.max()).min()
        assert share_after >= share_before * (1 - 1e-5)
        improved += bool(share_after > 1.5 * share_before)
    assert improved >= 15, improved


def test_the_cap_limits_every_factor() -> None:
    model = _random_deployable("espnetv2_s_0.5_pascal_256x256")
    report = EQ.equalize_for_int8(model, _inputs(2), max_scale=4.0)
    assert report["largest_factor"] <= 4.0 and report["max_scale"] == 4.0


def test_kinds_select_what_is_rescaled() -> None:
    model = _random_deployable("espnetv2_s_0.5_pascal_256x256")
    pools = [m.stages[0].weight.detach().clone() for m in model.modules() if hasattr(m, "stages")]
    report = EQ.equalize_for_int8(model, _inputs(2), kinds=("eesp",))
    assert report["by_kind"] == {"eesp": 13}
    assert all(torch.equal(p, m.stages[0].weight) for p, m in
               zip(pools, [m for m in model.modules() if hasattr(m, "stages")], strict=True))
    with pytest.raises(ValueError, match="unknown equalization kinds"):
        EQ.equalize_for_int8(model, _inputs(2), kinds=("eesp", "everything"))


def test_espnet_v1_rescales_its_esp_modules_and_level_concatenations() -> None:
    model = _random_deployable("espnet_p_2_q_3")
    x = _inputs(3)
    before = _run(model, x)
    peaks_before = _input_peaks(model, x)
    residual = {n: copy.deepcopy(m.state_dict()) for n, m in model.body.named_modules()
                if type(m).__name__ == "ESPModule" and m.residual}
    report = EQ.equalize_for_int8(model, x)
    # level2_0, level3_0 and the decoder's ESP module; the b2 and b3 concatenations.
    assert report["by_kind"] == {"esp": 3, "esp_concat": 2}, report
    after = _run(model, x)
    torch.testing.assert_close(after, before, rtol=0, atol=EQ.EXACTNESS * float(before.abs().max()))
    # Each rescaled channel now peaks at the tensor's peak, or at 64x its old peak where the cap binds.
    # In a strided ESP module the sums tie channel j of the last four branches: their largest peak does.
    for (pb, pa), site in zip(zip(peaks_before, _input_peaks(model, x), strict=True), EQ._sites(model.body),
                              strict=True):
        if site["kind"] == "esp":
            first, width = site["module"].d1.conv.out_channels, site["module"].d2.conv.out_channels
            pb = torch.cat([pb[:first], pb[first:].view(4, width).amax(0)])
            pa = torch.cat([pa[:first], pa[first:].view(4, width).amax(0)])
        part = site.get("channels", slice(None))
        expected = torch.minimum(pb.max().expand_as(pb[part]), EQ.DEFAULT_MAX_SCALE * pb[part])
        torch.testing.assert_close(pa[part], expected, rtol=1e-4, atol=0, msg=site["name"])
        assert pa.max() == pytest.approx(float(pb.max()), rel=1e-5)
    # Residual blocks are left alone, except the last of each level, whose affine feeds a concatenation.
    changed = [n for n, s in residual.items()
               if any(not torch.equal(v, dict(model.body.named_modules())[n].state_dict()[k]) for k, v in s.items())]
    assert changed == ["encoder.level2.1", "encoder.level3.2"], changed


def test_a_rewrite_that_changes_the_output_is_refused_and_undone(monkeypatch) -> None:
    model = _random_deployable("espnetv2_s_0.5_pascal_256x256")
    state = copy.deepcopy(model.state_dict())
    original = EQ._apply

    def forgets_to_compensate(site, peaks, max_scale):
        weight = site["affine"].weight.detach().clone()
        factors = original(site, peaks, max_scale)
        with torch.no_grad():
            site["affine"].weight.copy_(weight)  # the upstream factor is no longer divided out
        return factors

    monkeypatch.setattr(EQ, "_apply", forgets_to_compensate)
    with pytest.raises(RuntimeError, match="changed the output"):
        EQ.equalize_for_int8(model, _inputs(2))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.slow
def test_post_training_int8_of_the_default_model_reaches_97_percent(weights_dir: Path, images_dir: Path) -> None:
    """XNNPACK PT2E int8 (quantize/dequantize simulated in PyTorch), calibrated on 12 photos and
    scored on 4 others: equalization must lift argmax agreement with fp32 to at least 97%."""
    from converters.executorch import quantize_pt2e
    from espnet_mobile.convert import calibration_inputs
    from espnet_mobile.zoo.weights import load_into, load_state_dict

    entry = em.get_entry(DEFAULT)
    model = em.build_model(entry)
    load_into(model, load_state_dict(checkpoint_path(weights_dir, DEFAULT)), source=DEFAULT)
    tensors, _ = calibration_inputs(images_dir, 256, 256)  # each photo and its mirror image
    x = torch.cat([t.reshape(1, 3, 256, 256) for t in tensors])
    photo = np.arange(len(x)) // 2
    held = torch.from_numpy(photo % 4 == 1)
    calibration, scored = x[~held], x[held][::2]
    assert len(scored) >= 4
    base = make_deployable(model.eval(), entry, height=256, width=256).eval()
    with torch.no_grad():
        reference = [base(s[None]).argmax(1) for s in scored]

    def agreement(module: torch.nn.Module) -> float:
        program, _ = quantize_pt2e(module, calibration[:1], calibration=list(calibration))
        q = program.module()
        with torch.no_grad():
            return float(np.mean([(q(s[None]).argmax(1) == r).float().mean().item()
                                  for s, r in zip(scored, reference, strict=True)]))

    plain = agreement(copy.deepcopy(base))
    equalized = copy.deepcopy(base)
    EQ.equalize_for_int8(equalized, calibration)
    better = agreement(equalized)
    assert better >= 0.97, (plain, better)
    assert better > plain, (plain, better)
