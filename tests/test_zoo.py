"""Zoo data and its command line."""

from __future__ import annotations

import json

import pytest

import espnet_mobile as em
from espnet_mobile import zoo
from espnet_mobile.zoo.flops import profile_model

DESIGN_IDS = (
    [f"espnetv2_s_{s}_{d}" for s in ("0.5", "1.0", "1.5", "2.0")
     for d in ("pascal_256x256", "pascal_384x384", "city_512x256", "city_1024x512")]
    + [f"espnet_p_2_q_{q}" for q in (3, 5, 8)] + ["espnet_p_2_q_8_camvid"]
    + [f"espnetc_p_2_q_{q}" for q in (3, 5, 8)]
)


def test_zoo_has_exactly_the_published_checkpoints() -> None:
    assert sorted(em.ZOO) == sorted(DESIGN_IDS)
    assert em.DEFAULT_MODEL_ID == "espnetv2_s_2.0_pascal_256x256"


@pytest.mark.parametrize("model_id", DESIGN_IDS)
def test_entry_is_consistent_with_its_file_name(model_id: str) -> None:
    e = em.get_entry(model_id)
    assert e.checkpoint == f"{model_id}.pth" and len(e.sha256) == 64
    assert len(e.data.classes) == len(e.data.palette) == e.num_classes
    assert e.url.startswith("https://") and e.url.endswith(".pth") and "/" in e.repo_path
    if e.arch == "espnetv2":
        w, h = (int(v) for v in model_id.rsplit("_", 1)[1].split("x"))
        assert (e.input_width, e.input_height) == (w, h)
        assert e.normalization.color_order == "RGB" and e.normalization.pixel_range == 1.0
    else:
        assert e.normalization.color_order == "BGR" and e.normalization.pixel_range == 255.0


def test_class_counts_per_dataset() -> None:
    assert em.get_entry("espnetv2_s_1.0_pascal_256x256").num_classes == 21
    assert em.get_entry("espnetv2_s_1.0_city_512x256").num_classes == 20
    assert em.get_entry("espnet_p_2_q_8_camvid").num_classes == 12
    assert em.get_entry("espnet_p_2_q_8").data.classes[:3] == ("road", "sidewalk", "building")


def test_voc_palette_known_colours() -> None:
    palette = em.get_entry("espnetv2_s_1.0_pascal_256x256").data.palette
    assert palette[0] == (0, 0, 0) and palette[1] == (128, 0, 0) and palette[15] == (192, 128, 128)


def test_cli_table_and_json(capsys) -> None:
    assert zoo.main([]) == 0
    table = capsys.readouterr().out
    assert all(model_id in table for model_id in DESIGN_IDS) and "(default)" in table
    assert zoo.main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["espnet_p_2_q_8"]["normalization"]["divide_after"] == 255.0
    assert data["espnetv2_s_2.0_pascal_256x256"]["paper"]["mflops"] == 337.58


def test_cli_unknown_id_exits_2(capsys) -> None:
    assert zoo.main(["--profile", "nope"]) == 2
    assert "valid ids" in capsys.readouterr().err


def test_profile_cli_prints_paper_comparison(capsys) -> None:
    assert zoo.main(["--profile", "espnetv2_s_0.5_pascal_256x256"]) == 0
    out = capsys.readouterr().out
    assert "80,353" in out and "paper: 74.88 M" in out and "convention" in out


@pytest.mark.parametrize("model_id", [
    k if k.endswith("256x256") else pytest.param(k, marks=pytest.mark.slow)
    for k, e in em.ZOO.items() if e.paper.mflops])
def test_flops_match_published_within_5_percent(model_id: str) -> None:
    profile = profile_model(em.get_entry(model_id))
    assert abs(profile.flops_ratio - 1.0) <= 0.05, f"{profile.conv_mflops:.2f} vs {profile.entry.paper.mflops}"
    assert round(profile.params / 1e6, 2) == profile.entry.paper.params_m
