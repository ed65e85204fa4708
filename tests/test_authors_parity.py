"""Our models against fingerprints of the authors' released implementations.

``tests/data/authors_logits.json`` was produced by running the authors' own
code (sacmehta/ESPNet test/Model.py - train/Model.py for the CamVid
checkpoint - and sacmehta/EdgeNets model/segmentation/espnetv2.py) with the
published checkpoints on a seeded random input: 48 logits at fixed positions,
the logit sum, the largest |logit| and the argmax histogram per model. The
authors' code is not part of this repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import espnet_mobile as em
from tests.conftest import checkpoint_path

GOLDEN = json.loads((Path(__file__).parent / "data" / "authors_logits.json").read_text())
QUICK = {"espnetv2_s_2.0_pascal_256x256", "espnet_p_2_q_8", "espnet_p_2_q_8_camvid", "espnetc_p_2_q_8"}


@pytest.mark.weights
@pytest.mark.parametrize("model_id", [k if k in QUICK else pytest.param(k, marks=pytest.mark.slow)
                                      for k in sorted(GOLDEN)])
def test_logits_equal_authors_implementation(weights_dir, model_id: str) -> None:
    golden = GOLDEN[model_id]
    entry = em.get_entry(model_id)
    model = em.create_model(model_id, weights=checkpoint_path(weights_dir, model_id))
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1234))
    if entry.normalization.divide_after > 1:
        x = x / 255
    with torch.no_grad():
        y = model(x)[0]
    assert list(y.shape) == golden["shape"]
    values = y.flatten()[torch.tensor(golden["flat_indices"])]
    max_err = (values - torch.tensor(golden["values"])).abs().max().item()
    assert max_err <= 1e-4 * golden["abs_max"], f"max error {max_err:.3e} vs |logit| {golden['abs_max']:.3f}"
    assert abs(y.double().sum().item() - golden["sum"]) <= 1e-4 * golden["abs_max"] * y.numel() ** 0.5
    histogram = torch.bincount(y.argmax(0).flatten(), minlength=y.shape[0]).tolist()
    assert sum(abs(a - b) for a, b in zip(histogram, golden["argmax_histogram"], strict=True)) <= 2
