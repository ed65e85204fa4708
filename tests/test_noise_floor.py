"""``espnet_mobile.noise_floor``: the fp32 reference against itself under one-level input noise.

The toy models decide each pixel by comparing its red and green values, so where the two are
a fraction of a level apart the decision flips on noise and where they are far apart it
cannot: the floor must see the difference. The slow test measures a real model on photos.
"""

from __future__ import annotations

import pytest
import torch

from espnet_mobile import noise_floor as NF


def red_against_green(x: torch.Tensor) -> torch.Tensor:
    """Two-class logits per pixel: red, green."""
    return x[:, :2]


def test_perturb_moves_each_value_by_whole_levels_within_the_bound_and_stays_in_range() -> None:
    x = torch.rand(1, 3, 32, 32)
    x[..., :4] = 0.0
    x[..., -4:] = 1.0
    noisy = NF.perturb(x, 2, torch.Generator().manual_seed(0))
    steps = (noisy - x) * 255
    assert steps.abs().max() <= 2 + 1e-4
    inside = (x > 2 / 255) & (x < 1 - 2 / 255)  # away from the clamps every move is a whole level
    assert torch.allclose(steps[inside], steps[inside].round(), atol=1e-3)
    assert {int(v) for v in steps[inside].round().unique()} == {-2, -1, 0, 1, 2}
    assert noisy.min() >= 0 and noisy.max() <= 1
    again = NF.perturb(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)  # seeded: the same figure every run


def test_a_decision_a_fraction_of_a_level_away_flips_and_a_clear_one_does_not() -> None:
    clear = torch.full((1, 3, 16, 16), 0.5)
    clear[:, 1] = 0.2  # red ahead of green by 0.3: no one-level noise can change that
    pooled, per_input = NF.input_noise_agreement(red_against_green, [clear])
    assert pooled == 1.0 and per_input == [1.0]

    close = clear.clone()
    close[:, 1, :8] = 0.5 - 0.4 / 255  # the top half: red ahead by less than half a level
    pooled, per_input = NF.input_noise_agreement(red_against_green, [clear, close], seeds=3)
    assert per_input[0] == 1.0
    # In the top half red and green each move by -1, 0 or +1 levels; green wins in 3 of the 9 cases.
    assert 0.5 + 0.5 * 0.5 < per_input[1] < 1.0 - 0.5 * 0.2
    assert pooled == pytest.approx((1.0 + per_input[1]) / 2)


def test_four_levels_of_noise_flip_more_pixels_than_one() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32) * 0.1 + 0.45  # red and green within a few levels of each other
    one, _ = NF.input_noise_agreement(red_against_green, [x], levels=1, seeds=4)
    four, _ = NF.input_noise_agreement(red_against_green, [x], levels=4, seeds=4)
    assert four < one < 1.0


@pytest.mark.parametrize("argv, message", [
    (["--model", "nope"], "unknown model id"),
    (["--model", "espnet_p_2_q_3", "--levels", "0"], "--levels"),
    (["--model", "espnet_p_2_q_3", "--images", "/no/such/folder"], "--images"),
    (["--model", "espnet_p_2_q_3", "--input-size", "big"], "--input-size"),
    (["--model", "espnet_p_2_q_3", "--input-size", "0x512"], "--input-size"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys) -> None:
    assert NF.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


@pytest.mark.slow
def test_a_street_model_on_street_frames(weights_dir, images_dir, datasets_dir, capsys) -> None:
    """The small ESPNetv2 at a small size on 3 street frames: a floor below 100% but far above chance."""
    assert NF.main(["--model", "espnetv2_s_0.5_city_512x256", "--limit", "3", "--input-size", "128x256"]) == 0
    out = capsys.readouterr().out
    shares = [float(line.split("%")[0]) for line in out.splitlines()[1:-1]]
    assert len(shares) == 3 and all(50.0 < s <= 100.0 for s in shares)
    assert "fp32 argmax unchanged on" in out.splitlines()[-1]
