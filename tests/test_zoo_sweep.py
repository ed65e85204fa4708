"""``python -m espnet_mobile.zoo.sweep``: model filters, the table and its merging across runs, bad input.

The fast tests sweep nothing: ``sweep_model`` is replaced by a fake that returns made-up
figures (one model failing), so they check what the command does with results. The slow
test sweeps one model of each family at 128x256 for ExecuTorch and LiteRT, then sweeps
again and checks that nothing is converted twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from espnet_mobile.errors import UserError
from espnet_mobile.zoo import ZOO
from espnet_mobile.zoo import sweep as S


def test_families_select_their_models_in_zoo_order() -> None:
    v2 = S.select_models(["espnetv2"])
    assert len(v2) == 16 and all(ZOO[k].arch == "espnetv2" for k in v2)
    v1 = S.select_models(["espnet"])
    assert {ZOO[k].arch for k in v1} == {"espnet", "espnet_c"} and len(v1) == 7
    assert S.select_models(["espnetc"]) == [k for k in v1 if k.startswith("espnetc")]
    mixed = S.select_models(["espnet_p_2_q_8_camvid", "espnetv2_s_0.5_*", "espnet_p_2_q_8_camvid"])
    assert mixed == [k for k in ZOO if k in set(mixed)] and len(mixed) == 5
    assert S.select_models(["all"]) == list(ZOO)
    with pytest.raises(UserError, match="families"):
        S.select_models(["espnetv3"])


@pytest.mark.parametrize("argv, message", [
    (["--models", "nope"], "--models"),
    (["--targets", "onnx"], "--targets"),
    (["--limit", "0"], "--limit"),
    (["--input-size", "big"], "--input-size"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path) -> None:
    assert S.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing written


def _fake(model_id: str, opts: S.SweepOptions, log) -> S.ModelResult:
    """Figures that differ per model, for the requested targets; the first espnetc model fails in conversion."""
    if model_id.startswith("espnetc"):
        return S.ModelResult(model_id, "512x1024", "2026-12-05", "abc1234", errors=["convert: ConversionError: boom"])
    rank = list(ZOO).index(model_id)
    backends = [S.BackendResult("executorch", 0.99 - rank / 1000, 1.0, 60.0, 0.0),
                S.BackendResult("tflite", 0.90, 1.0, None, 0.0123, ["body.x.conv"], None),
                S.BackendResult("coreml", 0.95, 1.0, 59.5, 0.0, date="2026-12-06", commit="def5678")]
    backends = [b for b in backends if b.target in opts.targets]
    bench = (50.0, 20.0) if "executorch" in opts.targets else (None, None)
    return S.ModelResult(model_id, "360x480", "2026-12-05", "abc1234", "4 CamVid val frames", backends, 61.0,
                         "CamVid val, 4 photos", *bench, fp32_noise_floor=0.9876,
                         noise_floor_measured="2026-12-05 abc1234")


def test_table_states_figures_failures_and_what_is_left(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(S, "sweep_model", _fake)
    table, out = tmp_path / "docs" / "zoo.md", tmp_path / "art"
    first = ["espnet_p_2_q_8_camvid", "espnetc_p_2_q_3"]
    assert S.main(["--models", ",".join(first), "--targets", "executorch,tflite", "--out", str(out),
                   "--table", str(table)]) == 1  # one failed
    text = table.read_text()
    rank = list(ZOO).index("espnet_p_2_q_8_camvid")
    assert f"{0.99 - rank / 1000:.2%} |" in text  # above the target: no mark
    assert "90.00%* |" in text  # below it: marked
    assert "61.00 -> 60.00" in text and "1.23%" in text and "20.0 vs 50.0 ms (2.50x)" in text
    assert "| 98.76% |" in text and "**fp32 noise floor**" in text  # beside each backend's int8 agreement
    assert "failed: convert: ConversionError: boom" in text
    assert "python -m espnet_mobile.zoo.sweep --models espnet_p_2_q_8_camvid,espnetc_p_2_q_3" in text
    assert "## How each figure was measured" in text and S.git_commit() in text
    left = text.split("## Not swept yet")[1].split("##")[0]
    assert all(f"`{k}`" in left for k in ZOO if k not in first) and "`espnetc_p_2_q_3`" not in left
    # The results are kept beside the table (to be committed with it), written atomically: no temporaries left.
    assert sorted(p.name for p in table.parent.iterdir()) == ["zoo.json", "zoo.md"] and not out.exists()

    # A second run over another model keeps the first run's rows and lists both runs.
    assert S.main(["--models", "espnet_p_2_q_3", "--targets", "executorch,tflite", "--out", str(out),
                   "--table", str(table)]) == 0
    merged = json.loads(table.with_suffix(".json").read_text())
    assert set(merged["models"]) == {*first, "espnet_p_2_q_3"} and len(merged["runs"]) == 2
    text = table.read_text()
    assert "| espnet_p_2_q_8_camvid |" in text and "| espnet_p_2_q_3 |" in text
    assert text.count("\n- 20") == 2  # the two runs, each with its date

    # A third run adds one backend to a swept model: its other rows, latency and mIoU stay, with their dates.
    assert S.main(["--models", "espnet_p_2_q_8_camvid", "--targets", "coreml", "--out", str(out),
                   "--table", str(table)]) == 0
    rows = [line for line in table.read_text().splitlines() if line.startswith("| espnet_p_2_q_8_camvid |")]
    assert [row.split(" | ")[2] for row in rows] == ["ExecuTorch XNNPACK", "LiteRT CPU", "Core ML (MIL interpreter)"]
    assert "20.0 vs 50.0 ms (2.50x)" in rows[0] and rows[0].endswith("2026-12-05 abc1234 |")
    assert "61.00 -> 59.50" in rows[2] and rows[2].endswith("2026-12-06 def5678 |")


def test_noise_floor_only_adds_the_floor_to_swept_models_and_changes_nothing_else(monkeypatch, tmp_path) -> None:
    table, out = tmp_path / "docs" / "zoo.md", tmp_path / "art"

    def without_floor(model_id, opts, log):
        return S.replace(_fake(model_id, opts, log), input_size=S._input_size(model_id, opts), fp32_noise_floor=None,
                         noise_floor_measured="")

    monkeypatch.setattr(S, "sweep_model", without_floor)
    assert S.main(["--models", "espnet_p_2_q_3", "--targets", "executorch,tflite", "--out", str(out),
                   "--table", str(table)]) == 0
    before = json.loads(table.with_suffix(".json").read_text())["models"]["espnet_p_2_q_3"]
    assert before["fp32_noise_floor"] is None

    def floor(model_id, opts, log):
        assert opts.noise_floor_only
        return S.ModelResult(model_id, "512x1024", "2026-12-07", "fed0987", fp32_noise_floor=0.9687,
                             noise_floor_measured="2026-12-07 fed0987")

    monkeypatch.setattr(S, "sweep_model", lambda *a: pytest.fail("--noise-floor-only converted a model"))
    monkeypatch.setattr(S, "noise_floor_model", floor)
    lines: list[str] = []
    # espnet_p_2_q_8 was never swept: skipped with a reason, not given a row of its own.
    swept = S.run(S.parse_args(["--models", "espnet_p_2_q_3,espnet_p_2_q_8", "--noise-floor-only", "--out",
                                str(out), "--table", str(table)]), log=lines.append)
    assert list(swept) == ["espnet_p_2_q_3"] and any("skipped" in line and "sweep it first" in line for line in lines)
    data = json.loads(table.with_suffix(".json").read_text())
    after = data["models"]["espnet_p_2_q_3"]
    assert set(data["models"]) == {"espnet_p_2_q_3"}
    assert after["fp32_noise_floor"] == 0.9687 and after["noise_floor_measured"] == "2026-12-07 fed0987"
    assert {k: v for k, v in after.items() if not k.startswith(("fp32_noise", "noise_floor"))} == \
        {k: v for k, v in before.items() if not k.startswith(("fp32_noise", "noise_floor"))}
    text = table.read_text()
    assert text.count("| 96.87% |") == 2 and "noise floor measured 2026-12-07 fed0987" in text

    # A floor measured on other photos than the row's agreement is not comparable with it: dropped, and said so.
    monkeypatch.setattr(S, "noise_floor_model", lambda model_id, opts, log: S.replace(
        floor(model_id, opts, log), fp32_noise_floor=0.5, photos="3 Cityscapes frames"))
    lines.clear()
    S.run(S.parse_args(["--models", "espnet_p_2_q_3", "--noise-floor-only", "--out", str(out), "--table",
                        str(table)]), log=lines.append)
    assert json.loads(table.with_suffix(".json").read_text())["models"]["espnet_p_2_q_3"]["fp32_noise_floor"] == 0.9687
    assert any("floor not recorded" in line and "3 Cityscapes frames" in line for line in lines)

    # A later full sweep that could not measure the floor keeps the one measured.
    monkeypatch.setattr(S, "sweep_model", without_floor)
    assert S.main(["--models", "espnet_p_2_q_3", "--targets", "executorch", "--out", str(out),
                   "--table", str(table)]) == 0
    assert json.loads(table.with_suffix(".json").read_text())["models"]["espnet_p_2_q_3"]["fp32_noise_floor"] == 0.9687


def test_an_interrupted_run_lists_only_the_models_it_finished(monkeypatch, tmp_path: Path) -> None:
    table = tmp_path / "docs" / "zoo.md"

    def stopped(model_id, opts, log):
        if model_id == "espnetc_p_2_q_3":
            raise KeyboardInterrupt
        return _fake(model_id, opts, log)

    monkeypatch.setattr(S, "sweep_model", stopped)
    assert S.main(["--models", "espnet_p_2_q_3,espnetc_p_2_q_3", "--targets", "executorch", "--out",
                   str(tmp_path / "art"), "--table", str(table)]) == 130
    merged = json.loads(table.with_suffix(".json").read_text())
    assert [r["models"] for r in merged["runs"]] == [["espnet_p_2_q_3"]]
    assert "(espnet_p_2_q_3)" in table.read_text() and "`espnetc_p_2_q_3`" in table.read_text().split(
        "## Not swept yet")[1]


def test_parallel_sweeps_keep_each_others_rows(monkeypatch, tmp_path: Path) -> None:
    """Two sweeps sharing one results file (one per core): a row the other wrote while this one
    was converting survives this one's write."""
    table, out = tmp_path / "docs" / "zoo.md", tmp_path / "art"

    def meanwhile(model_id, opts, log):
        if model_id == "espnet_p_2_q_8_camvid":  # the other sweep finishes while this one converts
            monkeypatch.setattr(S, "sweep_model", _fake)
            assert S.main(["--models", "espnet_p_2_q_3", "--targets", "executorch", "--out", str(out),
                           "--table", str(table)]) == 0
            monkeypatch.setattr(S, "sweep_model", meanwhile)
        return _fake(model_id, opts, log)

    monkeypatch.setattr(S, "sweep_model", meanwhile)
    assert S.main(["--models", "espnet_p_2_q_8_camvid", "--targets", "executorch", "--out", str(out),
                   "--table", str(table)]) == 0
    merged = json.loads(table.with_suffix(".json").read_text())
    assert set(merged["models"]) == {"espnet_p_2_q_8_camvid", "espnet_p_2_q_3"}
    assert [r["models"] for r in merged["runs"]] == [["espnet_p_2_q_3"], ["espnet_p_2_q_8_camvid"]]
    text = table.read_text()
    assert "| espnet_p_2_q_8_camvid |" in text and "| espnet_p_2_q_3 |" in text
    assert sorted(p.name for p in table.parent.iterdir()) == ["zoo.json", "zoo.md"]


def test_float_share_counts_the_macs_of_float_layers() -> None:
    macs = {"body.a": (300.0, False), "body.b": (100.0, False), "body.up": (600.0, True)}
    et = {"report": {"quantization": {"fp32_nodes": {"conv2d_1": {"module": "body.b", "reason": "x"}}}}}
    assert S.float_share(et, macs) == (0.1, ["body.b"])
    lite = {"report": {"quantization": "pt2e-ptq", "float_convs": {"c": {"module": "body.a", "gain": 150.0}}}}
    assert S.float_share(lite, macs) == (0.3, ["body.a"])
    assert S.float_share({"report": {}}, macs) == (0.0, [])


def test_narrowed_ranges_are_read_from_each_backends_report() -> None:
    et = {"report": {"quantization": {"range_refinement": {"narrowed": {"a": 0.5, "b": 0.8}}}}}
    lite = {"report": {"quantization": "pt2e-ptq", "range_refinement": {"narrowed": {}}}}
    assert S.narrowed_ranges(et) == 2
    assert S.narrowed_ranges(lite) == 0  # refined, nothing narrowed
    assert S.narrowed_ranges({"report": {"quantization": {"fp32_nodes": {}}}}) is None  # not refined


def test_the_refine_flag_reaches_convert(monkeypatch, tmp_path: Path) -> None:
    from converters import range_refinement
    from espnet_mobile import convert

    seen = []

    def fake_run(options, log=print):
        seen.append(options.options)
        raise RuntimeError("stop after convert's options are seen")

    monkeypatch.setattr(convert, "run", fake_run)
    S.main(["--models", "espnetc_p_2_q_3", "--targets", "executorch", "--out", str(tmp_path / "a"),
            "--table", str(tmp_path / "zoo.md"), "--int8-refine-ranges"])
    S.main(["--models", "espnetc_p_2_q_3", "--targets", "executorch", "--out", str(tmp_path / "a"),
            "--table", str(tmp_path / "zoo.md")])
    assert seen == [{range_refinement.OPTION: True}, {}]


# One of each family, the smallest: ESPNet, ESPNet-C, ESPNetv2. The large ESPNetv2 (s=2.0, the default model)
# is quantized in test_equalize (its 97% agreement) and converted in test_converter_coreml; sweeping it here
# too cost CI more than ten minutes.
SLOW_MODELS = ["espnet_p_2_q_3", "espnetc_p_2_q_3", "espnetv2_s_0.5_pascal_256x256"]


@pytest.mark.slow
def test_sweep_measures_each_family_and_reuses_the_cache(weights_dir, images_dir, datasets_dir, tmp_path) -> None:
    argv = ["--models", ",".join(SLOW_MODELS), "--targets", "executorch,tflite", "--input-size", "128x256",
            "--out", str(tmp_path / "art"), "--table", str(tmp_path / "zoo.md"), "--limit", "4", "--rounds", "3"]
    lines: list[str] = []
    opts = S.parse_args(argv)
    first = S.run(opts, log=lines.append)
    for model_id, result in first.items():
        assert not result.errors, (model_id, result.errors)
        for b in result.backends:
            assert b.error is None, (model_id, b.target, b.error)
            # fp32 must match the reference; int8 far above chance (1/20 classes), though not the 97% target
            # at this small size.
            assert 0.99 <= b.fp32_agreement <= 1.0, (model_id, b.target)
            assert 0.5 < b.int8_agreement <= 1.0, (model_id, b.target)
            assert 0.0 <= b.float_share < 0.5
        assert result.eager_ms > 0 and result.executorch_int8_ms > 0
        assert 0.5 < result.fp32_noise_floor <= 1.0, model_id  # measured on the same photos as the agreement
    files = sorted((tmp_path / "art").rglob("*_int8.*"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert len(files) >= 2 * len(SLOW_MODELS)

    lines.clear()
    again = S.run(opts, log=lines.append)
    assert not [line for line in lines if "converting ->" in line]
    assert sum("up to date" in line for line in lines) == 4 * len(SLOW_MODELS)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    for model_id, result in again.items():  # the same artifacts on the same photos: the same figures
        assert [b.int8_agreement for b in result.backends] == [b.int8_agreement for b in first[model_id].backends]
