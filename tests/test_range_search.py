"""The fast int8 range search stops on the same bins as torchao's HistogramObserver search."""

from __future__ import annotations

import pytest
import torch

from espnet_mobile.qat.range_search import search_range


def _observer(x: torch.Tensor):
    from torchao.quantization.pt2e.observer import HistogramObserver

    obs = HistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_affine, quant_min=-128, quant_max=127)
    obs(x)
    return obs


def _samples() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(200_000, generator=g)
    return {
        "normal": normal,
        "relu cubed (half zeros, long tail)": torch.relu(normal) ** 3,
        "two far outliers": torch.cat([normal, torch.tensor([400.0, -90.0])]),
        "heavy tails": normal / (torch.rand(200_000, generator=g) + 1e-3),
        "a spike with a few wide values": torch.cat([torch.zeros(100_000), torch.randn(100, generator=g) * 10]),
        "uniform": torch.rand(10_000, generator=g),
        "two values": torch.tensor([0.0, 1.0]),
        "one value": torch.full((50,), 3.0),
        "a wide minority": torch.cat([normal[:50_000], torch.randn(1_000, generator=g) * 50]),
    }


@pytest.mark.parametrize("name", list(_samples()))
def test_same_range_as_torchao(name: str) -> None:
    obs = _observer(_samples()[name])
    expected = obs._non_linear_param_search()
    got = search_range(obs)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), (name, got, expected)


def test_long_walk() -> None:
    """A search that walks through most of the mass (a ReLU output whose range an outlier stretched,
    as in ESPNet v1's QAT calibration): the case the skipping exists for ends on the same bins."""
    g = torch.Generator().manual_seed(1)
    obs = _observer(torch.cat([torch.relu(torch.randn(400_000, generator=g)), torch.tensor([1e4])]))
    expected = obs._non_linear_param_search()
    got = search_range(obs)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_bad_histogram_is_refused() -> None:
    obs = _observer(torch.randn(100))
    obs.histogram = torch.zeros(obs.bins + 1)
    with pytest.raises(ValueError, match="bins"):
        search_range(obs)
