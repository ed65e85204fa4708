"""convert / package / bench: the bundle contract, failure handling, and quick accuracy checks.

Conversions run once per session on a small model at a small input size
(``--input-size``) and are shared by the tests through a fixture.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import espnet_mobile as em
from converters.base import MissingBackendError
from espnet_mobile import bundle as B
from espnet_mobile import convert, package

MODEL = "espnetv2_s_0.5_pascal_256x256"
SIZE = "64x64"


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.manual_seed(0)
    torch.save(em.build_model(em.get_entry(MODEL)).state_dict(), path)
    return path


def _convert(out: Path, weights: Path, *args: str) -> int:
    return convert.main(["--model", MODEL, "--weights", str(weights), "--input-size", SIZE, "--out", str(out),
                         *args])


@pytest.fixture(scope="session")
def tflite_bundle(tmp_path_factory, random_weights, photos) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    assert _convert(out, random_weights, "--target", "tflite", "--precision", "fp32", "--calibration",
                    str(photos)) == 0
    return out / MODEL


def test_bundle_layout_and_manifest(tflite_bundle: Path) -> None:
    manifest = B.load_manifest(tflite_bundle)  # validates the schema and every sha256
    assert manifest["input"]["shape"] == [1, 3, 64, 64] and manifest["input"]["normalization"] == "baked_in"
    assert manifest["labels"][15] == "person" and len(manifest["palette"]) == 21
    [art] = manifest["artifacts"]
    assert art["file"] == f"{MODEL}_tflite_fp32.tflite" and art["bytes"] == (tflite_bundle / art["file"]).stat().st_size
    assert manifest["golden"]["source"] == "photos" and len(manifest["golden"]["items"]) == 4
    logits = B.read_tensor(tflite_bundle, manifest["golden"]["items"][0]["logits"])
    assert logits.shape == (1, 21, 64, 64) and logits.dtype == np.float16


def test_fp32_quick_check_matches_reference(tflite_bundle: Path) -> None:
    [art] = B.load_manifest(tflite_bundle)["artifacts"]
    assert art["quick_check"]["max_rel_abs_error"] <= 1e-4
    assert art["quick_check"]["pixel_agreement"] >= 0.999


def test_rerun_skips_up_to_date_and_force_reconverts(tflite_bundle, random_weights, photos, capsys) -> None:
    out = tflite_bundle.parent
    artifact = tflite_bundle / f"{MODEL}_tflite_fp32.tflite"
    before = artifact.stat().st_mtime_ns
    assert _convert(out, random_weights, "--target", "tflite", "--precision", "fp32",
                    "--calibration", str(photos)) == 0
    assert "up to date" in capsys.readouterr().out
    assert artifact.stat().st_mtime_ns == before


def test_package_zip_holds_what_the_manifest_lists(tflite_bundle: Path, tmp_path: Path) -> None:
    assert package.main([str(tflite_bundle), "--zip", "--out", str(tmp_path / "b.zip")]) == 0
    names = set(zipfile.ZipFile(tmp_path / "b.zip").namelist())
    manifest = json.loads(zipfile.ZipFile(tmp_path / "b.zip").read("manifest.json"))
    assert {a["file"] for a in manifest["artifacts"]} <= names
    assert all(item["input"]["file"] in names for item in manifest["golden"]["items"])


def test_altered_artifact_is_refused(tflite_bundle: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / MODEL
    shutil.copytree(tflite_bundle, copy)
    art = copy / f"{MODEL}_tflite_fp32.tflite"
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle of the file
    art.write_bytes(bytes(data))
    assert package.main([str(copy), "--zip"]) == 2
    assert "was altered" in capsys.readouterr().err
    assert not (tmp_path / f"{MODEL}.zip").exists()


def test_bench_runs_reference_and_artifact(tflite_bundle: Path, random_weights: Path) -> None:
    from espnet_mobile.bench import benchmark

    rows, _ = benchmark(tflite_bundle, rounds=3, warmup=1, weights=str(random_weights))
    assert [r.name for r in rows] == ["pytorch eager (reference)", "tflite"]
    assert all(len(r.times_ms) == 3 and r.median_ms > 0 for r in rows)


def test_bench_names_a_busy_machine_and_shows_spread() -> None:
    from espnet_mobile.bench import BUSY_CORES, Row, format_table, load_warning

    assert load_warning(None, 2) is None and load_warning(BUSY_CORES, 2) is None
    warning = load_warning(1.65, 2)
    assert warning.startswith("warning: other processes kept 1.65 of 2 cores busy before the run")
    assert "--threads 1" in warning
    # 11 rounds: the 10th and 90th percentiles are the 2nd and 10th sorted times.
    steady = Row("pytorch eager (reference)", "fp32", None, None, [10.0] * 9 + [10.5, 10.5])
    noisy = Row("tflite", "int8", 1_000_000, 12.0, [9.0, 5.0, 5.0, 4.0, 5.0, 5.0, 6.0, 5.0, 5.0, 3.0, 5.0])
    assert steady.spread == pytest.approx(0.05) and noisy.spread == pytest.approx(0.4)
    budgeted = Row("executorch", "int8", 900_000, 30.0, [2.5] * 11, float_share=0.0123, float_layers=3)
    table = format_table([steady, noisy, budgeted]).splitlines()
    assert table[0].split()[-7:-5] == ["spread", "speed-up"] and table[0].split()[-1] == "float"
    assert table[2].split()[-5:-3] == ["5%", "1.00x"] and table[3].split()[-5:-3] == ["40%", "2.00x"]
    assert table[3].split()[-1] == "-" and table[4].split()[-1] == "1.23%/3"


def test_bench_sees_another_process_keep_a_core_busy() -> None:
    from espnet_mobile.bench import busy_cores

    if busy_cores(0.05) is None:
        pytest.skip("no /proc/stat: CPU time is read on Linux only")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)
        assert busy_cores(1.0) >= 0.6  # one spinning process is about one core
    finally:
        spin.kill()
        spin.wait()


def test_int8_without_data_is_a_one_line_error(tmp_path, random_weights, capsys, monkeypatch) -> None:
    monkeypatch.delenv("ESPNET_MOBILE_IMAGES", raising=False)
    assert _convert(tmp_path, random_weights, "--target", "tflite", "--precision", "int8") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: int8 needs calibration") and "--calibration DIR" in err and "\n" not in err
    assert not (tmp_path / MODEL).exists()


def test_unknown_precision_for_target_names_valid_ones(tmp_path, random_weights, capsys) -> None:
    assert _convert(tmp_path, random_weights, "--target", "executorch", "--precision", "fp16") == 2
    assert "executorch has no fp16 artifact; choose from fp32,int8" in capsys.readouterr().err


def test_default_precisions_leave_out_int8_without_data(monkeypatch) -> None:
    monkeypatch.delenv("ESPNET_MOBILE_IMAGES", raising=False)
    opts = convert.ConvertOptions(targets=["coreml"], model_id=MODEL)
    jobs, notes = convert.plan_jobs(opts, have_int8_data=False)
    assert [j.precision for j in jobs] == ["fp32", "fp16"] and "int8 skipped" in notes[0]
    jobs, _ = convert.plan_jobs(opts, have_int8_data=True)
    assert [j.precision for j in jobs] == ["fp32", "fp16", "int8"]


def test_missing_backend_disables_only_its_target(tmp_path, random_weights, photos, monkeypatch, capsys) -> None:
    import dataclasses

    import converters

    real = converters.backend

    def missing(_req):
        raise MissingBackendError("coremltools is not installed: pip install coremltools==9.0")

    monkeypatch.setattr(converters, "backend",
                        lambda t: dataclasses.replace(real(t), convert=missing) if t == "coreml" else real(t))
    code = _convert(tmp_path, random_weights, "--target", "coreml", "--precision", "fp32",
                    "--calibration", str(photos), "--jobs", "1")
    out = capsys.readouterr()
    assert code == 2 and "skipped - coremltools is not installed" in out.out
    assert B.load_manifest(tmp_path / MODEL)["artifacts"] == []


def test_killed_conversion_leaves_previous_bundle_intact(tflite_bundle, random_weights, photos, tmp_path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(tflite_bundle, out / MODEL)
    before = (out / MODEL / "manifest.json").read_text()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "espnet_mobile.convert", "--model", MODEL, "--weights", str(random_weights),
         "--input-size", SIZE, "--out", str(out), "--target", "tflite", "--precision", "fp32,fp16",
         "--calibration", str(photos), "--force"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    deadline = time.time() + 300
    for line in proc.stdout:  # kill it while it converts
        if "converting" in line or time.time() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = B.load_manifest(out / MODEL)  # still valid, every listed file intact
    assert manifest["artifacts"] and json.loads(before)["model_id"] == manifest["model_id"]
    leftovers = [p.name for p in (out / MODEL).iterdir() if p.name.startswith(".")]
    assert all(p.startswith(".") for p in leftovers)  # only hidden temporaries, never a half artifact


def test_console_keeps_library_info_records_out_even_when_a_library_sets_root_to_info() -> None:
    # ExecuTorch's Vulkan modules call logging.getLogger("").setLevel(logging.INFO) at import.
    code = ("import logging; from espnet_mobile.console import quiet_third_party; quiet_third_party(); "
            "logging.getLogger('').setLevel(logging.INFO); logging.info('partitioner chatter'); "
            "logging.warning('a real warning')")
    env = {k: v for k, v in os.environ.items() if k != "ESPNET_MOBILE_VERBOSE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "a real warning" in done.stderr
    assert "partitioner chatter" not in done.stderr


@pytest.mark.slow
def test_jobs_2_writes_the_same_bytes_as_jobs_1(tmp_path, small_lowering_weights, photos) -> None:
    """Worker processes (their own hash seeds) must not change an artifact: Core ML metadata order,
    package identifiers and int8 calibration statistics all had been process- or thread-dependent.
    On the small-lowering model: six int8 conversions of ESPNetv2 took 10 minutes."""
    from espnet_mobile.files import sha256_path
    from tests.conftest import SMALL_LOWERING_MODEL as model

    shas = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        assert convert.main(["--model", model, "--weights", str(small_lowering_weights), "--input-size", "64x128",
                             "--out", str(out),
                             "--target", "all", "--precision", "int8", "--no-extra-delegates",
                             "--calibration", str(photos), "--jobs", jobs]) in (0, 2)
        bundle = out / model
        shas[jobs] = {a["file"]: sha256_path(bundle / a["file"]) for a in B.load_manifest(bundle)["artifacts"]}
    assert len(shas["1"]) == 3 and shas["1"] == shas["2"]


def test_a_poor_int8_artifact_gets_a_hint_of_what_to_try() -> None:
    from converters import range_refinement

    job = convert.Job("executorch", "int8")
    poor, good = {"pixel_agreement": 0.5832}, {"pixel_agreement": 0.981}
    hint = convert._int8_hint(job, poor, ptq=True, options={})
    assert "58.32%" in hint and "--int8-refine-ranges" in hint and "--int8-budget" in hint
    refined = convert._int8_hint(job, poor, ptq=True, options={range_refinement.OPTION: True})
    assert "--int8-refine-ranges" not in refined and "--int8-budget" in refined  # already tried
    assert convert._int8_hint(job, good, ptq=True, options={}) is None
    assert convert._int8_hint(job, poor, ptq=False, options={}) is None  # a QAT artifact: not a PTQ problem
    assert convert._int8_hint(convert.Job("executorch", "fp32"), poor, ptq=True, options={}) is None
