"""``python -m espnet_mobile.parity``: records, thresholds, the manifest, a forced failure, bad input, the page.

A small TFLite bundle is converted once per module from random weights (ESPNet
p=2,q=3 at 32x64, fp32) and checked on the LiteRT CPU interpreter plus one
device-only runtime (``--only``), on two synthetic labelled scenes. A second
artifact, converted from the same weights with ONE decoder convolution scaled
by 5, is swapped into a copy of the bundle (manifest hashes updated, as a
miscompiling converter would leave it): its check must fail and name that layer.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import espnet_mobile as em
from espnet_mobile import bundle as B
from espnet_mobile import convert, parity

IN_CI = os.environ.get("CI", "").lower() == "true"
MODEL = "espnet_p_2_q_3"  # ESPNet with its decoder: small graph, quick to convert
SIZE = "32x64"
H, W = 32, 64
ARTIFACT = f"{MODEL}_tflite_fp32.tflite"
PERTURBED = "combine_l2_l3.1.d2.conv"  # a dilated conv of the decoder's ESP module (as in test_culprit)
ONLY = "litert-cpu,litert-npu-device"  # one runtime that executes here, one that only runs on a device
SAMPLES = 2
SYNTHETIC = ("--synthetic", str(SAMPLES))
RECORD_FIELDS = {"artifact", "target", "precision", "runtime", "compute_unit", "executed", "reason", "metrics",
                 "thresholds", "passed"}
EXTRA_FIELDS = {"delegate", "label", "judged_as", "failures", "culprit", "device_steps"}
METRIC_FIELDS = {"pixel_agreement", "miou_vs_reference", "miou_vs_labels", "max_abs_error", "mean_abs_error",
                 "sqnr_db", "latency_ms"}
PASS_RGB, FAIL_RGB, NA_RGB = (0x2E, 0x9D, 0x4A), (0xC8, 0x32, 0x2D), (0xD9, 0xD9, 0xD9)  # report.py's cell colours


@dataclass
class Run:
    """One ``parity.main`` call: its bundle, report folder, exit code and output."""

    bundle: Path
    report: Path
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads((self.report / "parity.json").read_text())

    def record(self, runtime: str) -> dict:
        [rec] = [r for r in self.json()["records"] if r["runtime"] == runtime]
        return rec


def run_parity(bundle: Path, report: Path, *, weights: Path | None, source: tuple[str, ...] = SYNTHETIC,
               only: str | None = ONLY) -> Run:
    """Call the command in-process, capturing stdout and stderr."""
    argv = [str(bundle), *source, "--report", str(report)]
    argv += ["--only", only] if only else []
    argv += ["--weights", str(weights)] if weights else []
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = parity.main(argv)
    return Run(bundle, report, code, out.getvalue(), err.getvalue())


def reference_model(weights: Path) -> nn.Module:
    model = em.build_model(em.get_entry(MODEL))
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> SimpleNamespace:
    """Random weights, the same with one conv x5, and a TFLite fp32 bundle converted from each."""
    from PIL import Image

    from espnet_mobile.data import synthetic

    tmp = tmp_path_factory.mktemp("parity_build")
    torch.manual_seed(0)
    model = em.build_model(em.get_entry(MODEL)).eval()
    with torch.no_grad():  # per-channel PReLU slopes, as trained models have
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
    weights, bad_weights = tmp / "random.pth", tmp / "random_conv_x5.pth"
    torch.save(model.state_dict(), weights)
    bad = copy.deepcopy(model.state_dict())
    bad[f"{PERTURBED}.weight"] = bad[f"{PERTURBED}.weight"] * 5.0
    torch.save(bad, bad_weights)
    photos = tmp / "photos"  # golden vectors from fixed photos, whatever $ESPNET_MOBILE_IMAGES holds
    photos.mkdir()
    for i, (rgb, _) in enumerate(synthetic.scenes(4, H + 8, W + 8, 20)):
        Image.fromarray(rgb).save(photos / f"scene{i}.png")
    for name, w in (("good", weights), ("bad", bad_weights)):
        assert convert.main(["--model", MODEL, "--weights", str(w), "--input-size", SIZE, "--out", str(tmp / name),
                             "--target", "tflite", "--precision", "fp32", "--images", str(photos)]) == 0
    return SimpleNamespace(bundle=tmp / "good" / MODEL, bad_artifact=tmp / "bad" / MODEL / ARTIFACT,
                           weights=weights, bad_weights=bad_weights)


def copy_bundle(src: Path, root: Path) -> Path:
    dest = root / MODEL
    shutil.copytree(src, dest)
    return dest


@pytest.fixture(scope="module")
def passing(built, tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("parity_pass")
    return run_parity(copy_bundle(built.bundle, root), root / "report", weights=built.weights)


@pytest.fixture(scope="module")
def failing(built, tmp_path_factory) -> Run:
    """The good bundle with its artifact replaced by the perturbed one, hashes updated to match."""
    root = tmp_path_factory.mktemp("parity_fail")
    bundle = copy_bundle(built.bundle, root)
    shutil.copyfile(built.bad_artifact, bundle / ARTIFACT)
    manifest = B.load_manifest(bundle, verify_files=False)
    [art] = manifest["artifacts"]
    art["sha256"], art["bytes"] = B.sha256_path(bundle / ARTIFACT), B.size_bytes(bundle / ARTIFACT)
    B.write_manifest(bundle, manifest)
    return run_parity(bundle, root / "report", weights=built.weights)


@pytest.fixture(scope="module")
def independent(built) -> SimpleNamespace:
    """The same comparison done by hand: LiteRT's Interpreter against the PyTorch model on the same scenes."""
    from ai_edge_litert.interpreter import Interpreter

    from espnet_mobile import metrics as M
    from espnet_mobile.data import synthetic
    from espnet_mobile.deploy import reference_forward
    from espnet_mobile.preprocess import preprocess

    entry = em.get_entry(MODEL)
    model = reference_model(built.weights)
    runner = Interpreter(model_path=str(built.bundle / ARTIFACT)).get_signature_runner()
    [in_name] = runner.get_input_details()
    outs, refs, labels = [], [], []
    for i in range(SAMPLES):
        rgb, label = synthetic.scene(i, H, W, entry.num_classes)  # the scenes of --synthetic N (split val)
        x = preprocess(rgb, H, W)
        refs.append(reference_forward(model, entry, torch.from_numpy(x)).numpy())
        [y] = runner(**{in_name: x}).values()
        outs.append(np.asarray(y, dtype=np.float32))
        labels.append(label)
    masks, ref_masks = [o.argmax(1)[0] for o in outs], [r.argmax(1)[0] for r in refs]
    c = entry.num_classes
    return SimpleNamespace(
        agreement=float(np.mean([np.mean(a == b) for a, b in zip(masks, ref_masks, strict=True)])),
        max_abs=max(float(np.abs(o.astype(np.float64) - r).max()) for o, r in zip(outs, refs, strict=True)),
        mean_abs=float(np.mean([np.abs(o.astype(np.float64) - r).mean() for o, r in zip(outs, refs, strict=True)])),
        miou_ref=M.miou(sum(M.confusion(m, r, c) for m, r in zip(masks, ref_masks, strict=True))),
        peak=max(float(np.abs(r).max()) for r in refs),
        miou_labels=M.miou(sum(M.confusion(m, lab, c) for m, lab in zip(masks, labels, strict=True))),
        ref_miou_labels=M.miou(sum(M.confusion(m, lab, c) for m, lab in zip(ref_masks, labels, strict=True))),
        distinct_classes=len(np.unique(np.stack(ref_masks))))


def thresholds_json() -> dict:
    return json.loads((Path(em.__file__).parent / "parity" / "thresholds.json").read_text())


# --------------------------------------------------------------------------- a passing bundle


def test_one_record_per_artifact_runtime_and_unit(passing: Run) -> None:
    assert passing.code == 0, passing.err
    data = passing.json()
    keys = [(r["artifact"], r["runtime"], r["compute_unit"]) for r in data["records"]]
    assert sorted(keys) == [(ARTIFACT, "litert-cpu", "CPU"), (ARTIFACT, "litert-npu-device", "NPU")]  # --only
    for rec in data["records"]:
        assert set(rec) == RECORD_FIELDS | EXTRA_FIELDS, rec
        assert (rec["target"], rec["precision"]) == ("tflite", "fp32")
    metrics = passing.record("litert-cpu")["metrics"]
    assert set(metrics) == METRIC_FIELDS
    assert all(isinstance(metrics[k], float) and np.isfinite(metrics[k]) for k in METRIC_FIELDS)
    summary = dict(data["summary"])
    assert isinstance(summary.pop("reference_miou_vs_labels"), float)  # synthetic scenes are labelled
    assert summary == {"data": f"synthetic:{SAMPLES}", "samples": SAMPLES, "executed": 1, "passed": 1, "failed": 0,
                       "not_executed": 1}
    assert "1 checks executed: 1 passed, 0 failed; 1 not executable here" in passing.out


def test_executed_fp32_check_passes_the_thresholds_of_thresholds_json(passing: Run, independent) -> None:
    fp32 = thresholds_json()["fp32"]
    rec = passing.record("litert-cpu")
    assert rec["executed"] is True and rec["reason"] is None
    assert rec["judged_as"] == "fp32" and rec["thresholds"] == fp32
    assert rec["passed"] is True and rec["failures"] == [] and rec["culprit"] is None
    m = rec["metrics"]
    assert independent.distinct_classes >= 5  # the masks compared are not trivially one class
    assert m["pixel_agreement"] >= fp32["min_pixel_agreement"] >= 0.999
    assert m["max_abs_error"] <= fp32["max_rel_abs_error"] * independent.peak
    assert m["sqnr_db"] > 60 and m["latency_ms"] > 0 and m["mean_abs_error"] <= m["max_abs_error"]


def test_metrics_agree_with_an_independent_run(passing: Run, independent) -> None:
    rec, summary = passing.record("litert-cpu"), passing.json()["summary"]
    m = rec["metrics"]
    assert m["pixel_agreement"] == pytest.approx(independent.agreement, abs=1 / (H * W))
    assert m["max_abs_error"] == pytest.approx(independent.max_abs, rel=1e-6)  # pooled over samples
    assert m["mean_abs_error"] == pytest.approx(independent.mean_abs, rel=1e-6)
    assert m["miou_vs_reference"] == pytest.approx(independent.miou_ref, abs=1e-9)
    assert m["miou_vs_labels"] == pytest.approx(independent.miou_labels, abs=0.1)
    assert summary["reference_miou_vs_labels"] == pytest.approx(independent.ref_miou_labels, abs=1e-9)


def test_device_only_record_is_not_executed_and_says_why(passing: Run) -> None:
    rec = passing.record("litert-npu-device")
    assert rec["executed"] is False and rec["passed"] is None and rec["metrics"] is None
    assert isinstance(rec["reason"], str) and "NPU" in rec["reason"]
    assert "android_demo" in rec["device_steps"]
    assert f"{ARTIFACT} on litert-npu-device (NPU): {rec['reason']}" in (passing.report / "report.md").read_text()


def test_manifest_receives_the_parity_result(built, passing: Run) -> None:
    manifest = B.load_manifest(passing.bundle)  # still valid against the schema, every sha256 intact
    before = B.load_manifest(built.bundle)
    assert before["parity"] is None
    assert manifest["parity"]["summary"] == passing.json()["summary"]
    assert manifest["parity"]["records"] == passing.json()["records"]
    assert manifest["parity"]["report"] == str(passing.report)
    assert {k: v for k, v in manifest.items() if k != "parity"} == {k: v for k, v in before.items() if k != "parity"}


def test_html_report_has_one_cell_per_record_and_each_photo_once(passing: Run) -> None:
    page = (passing.report / "report.html").read_text()
    assert page.count('class="cell pass"') == 1 and page.count('class="cell na"') == 1
    assert 'class="cell fail"' not in page
    agreement = passing.record("litert-cpu")["metrics"]["pixel_agreement"]
    overlays = page.count("reference (PyTorch fp32) over the photo")
    differing = page.count("% of pixels differ</figcaption>")
    assert overlays == SAMPLES  # each photo once
    if agreement == 1.0:  # nothing differs: no artifact masks, and all but one photo folded away
        assert differing == 0 and "every executed check matches the reference" in page
        assert f"{SAMPLES - 1} more photos on which every executed check matches" in page
    else:
        assert 1 <= differing <= SAMPLES
    assert page.count("<img src='data:image/png;base64,") == overlays + differing


# --------------------------------------------------------------------------- failing on purpose


def test_forced_failure_exits_1_and_names_the_culprit(failing: Run, independent) -> None:
    assert failing.code == 1, failing.err
    rec = failing.record("litert-cpu")
    assert rec["executed"] is True and rec["passed"] is False
    assert any(f.startswith("max abs error") for f in rec["failures"]), rec["failures"]
    assert rec["metrics"]["max_abs_error"] > rec["thresholds"]["max_rel_abs_error"] * independent.peak
    culprit = rec["culprit"]
    assert culprit["method"] == "tflite-intermediates", culprit
    assert culprit["layer"] == f"body.{PERTURBED}", culprit
    assert f"`body.{PERTURBED}`" in (failing.report / "report.md").read_text()
    assert f"culprit: body.{PERTURBED}" in failing.out
    assert failing.record("litert-npu-device")["passed"] is None  # not executed: neither pass nor fail
    manifest = B.load_manifest(failing.bundle)
    assert manifest["parity"]["summary"]["failed"] == 1 and manifest["parity"]["summary"]["passed"] == 0
    page = (failing.report / "report.html").read_text()
    assert 'class="cell fail"' in page and f"<code>body.{PERTURBED}</code>" in page
    assert not list(failing.report.glob(".*.tmp"))  # reports are renamed into place, no temporaries left


# --------------------------------------------------------------------------- bad input


def _drop_artifact(bundle: Path, tmp: Path) -> list[str]:
    (bundle / ARTIFACT).unlink()
    return [ARTIFACT, "is missing"]


def _flip_a_byte(bundle: Path, tmp: Path) -> list[str]:
    data = bytearray((bundle / ARTIFACT).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / ARTIFACT).write_bytes(bytes(data))
    return [ARTIFACT, "was altered"]


def _break_schema(bundle: Path, tmp: Path) -> list[str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["input"]["layout"] = "HWC"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return ["does not follow the manifest schema", "input/layout", "'HWC'"]


BAD_BUNDLES = {"missing artifact": _drop_artifact, "altered artifact": _flip_a_byte, "schema": _break_schema}


def assert_one_line_error(run: Run, manifest_before: bytes, *expected: str) -> None:
    """Exit code 2, one ``error:`` line naming the problem, nothing written."""
    assert run.code == 2, (run.out, run.err)
    err = run.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert all(e in err for e in expected), err
    assert not run.report.exists()
    assert (run.bundle / "manifest.json").read_bytes() == manifest_before


@pytest.mark.parametrize("spoil", BAD_BUNDLES.values(), ids=BAD_BUNDLES.keys())
def test_bad_bundle_is_a_one_line_error(built, tmp_path: Path, spoil) -> None:
    bundle = copy_bundle(built.bundle, tmp_path)
    expected = spoil(bundle, tmp_path)
    before = (bundle / "manifest.json").read_bytes()
    assert_one_line_error(run_parity(bundle, tmp_path / "report", weights=built.weights), before, *expected)


def test_image_folder_without_images_is_a_one_line_error(built, tmp_path: Path) -> None:
    bundle = copy_bundle(built.bundle, tmp_path)
    folder = tmp_path / "holiday"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a photo")
    before = (bundle / "manifest.json").read_bytes()
    run = run_parity(bundle, tmp_path / "report", weights=built.weights, source=("--images", str(folder)))
    assert_one_line_error(run, before, "no images", str(folder))


def test_unknown_only_name_is_a_one_line_error(built, tmp_path: Path) -> None:
    """A typo in --only used to select nothing and exit 0 with zero checks."""
    bundle = copy_bundle(built.bundle, tmp_path)
    before = (bundle / "manifest.json").read_bytes()
    run = run_parity(bundle, tmp_path / "report", weights=built.weights, only="litert-cpu,litert-cpuu")
    assert_one_line_error(run, before, "--only", "litert-cpuu", "choose from", "litert-cpu,", ARTIFACT)


def test_reference_checkpoint_must_be_the_bundles(built, tmp_path: Path) -> None:
    """Another checkpoint (or, by default, the published one) would make every check compare the wrong model."""
    bundle = copy_bundle(built.bundle, tmp_path)
    before = (bundle / "manifest.json").read_bytes()
    run = run_parity(bundle, tmp_path / "report", weights=built.bad_weights)
    assert_one_line_error(run, before, str(built.bad_weights), "is not the one", "--weights PATH")
    run = run_parity(bundle, tmp_path / "report", weights=None)
    assert_one_line_error(run, before, "other than the published one", "--weights PATH")


# --------------------------------------------------------------------------- the page, rendered


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        message = "chromium is not installed (Debian package chromium; .ci/bootstrap.sh installs it)"
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return exe


def screenshot(html: Path, out: Path, width: int, height: int, profile: Path) -> None:
    """Render ``html`` with headless Chromium into ``out``; its process group is killed on a timeout."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--force-device-scale-factor=1", f"--user-data-dir={profile}", f"--window-size={width},{height}",
           f"--screenshot={out}", html.resolve().as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("chromium did not render the report within 120 s")
    assert proc.returncode == 0 and out.is_file(), log[-2000:]


def colour_pixels(rgb: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.argwhere((rgb == np.array(colour, dtype=np.uint8)).all(-1))


def find_image(screen: np.ndarray, img: np.ndarray) -> tuple[int, int] | None:
    """Top-left corner where ``img`` appears in ``screen`` (each channel within 3 levels), or None."""
    h, w = img.shape[:2]
    first = np.abs(screen.astype(int) - img[0, 0].astype(int)).max(-1) <= 3
    for y, x in np.argwhere(first):
        patch = screen[y:y + h, x:x + w]
        if patch.shape == img.shape and np.abs(patch.astype(int) - img.astype(int)).max() <= 3:
            return int(y), int(x)
    return None


def first_figure(page: str) -> np.ndarray:
    import base64
    import re

    from PIL import Image

    data = re.search(r"<img src='data:image/png;base64,([^']+)'", page).group(1)
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("which", ["passing", "failing"])
def test_report_screenshot(which: str, request, tmp_path: Path) -> None:
    """What a person sees on a 1280x900 screen: the matrix with its cells, then the first photo."""
    from PIL import Image

    chromium()  # skip (or fail under CI) before building anything
    run: Run = request.getfixturevalue(which)
    page = run.report / "report.html"
    width, height = 1280, 900
    png = tmp_path / "report.png"
    screenshot(page, png, width, height, tmp_path / "profile")
    with Image.open(png) as img:
        assert img.size == (width, height)
        rgb = np.asarray(img.convert("RGB"))
    assert rgb.std() > 10  # not a blank page
    cell = (FAIL_RGB, PASS_RGB) if which == "failing" else (PASS_RGB, FAIL_RGB)
    shown, absent = colour_pixels(rgb, cell[0]), colour_pixels(rgb, cell[1])
    assert len(shown) > 1500 and len(absent) == 0  # the litert-cpu cell, on the first screen
    assert len(colour_pixels(rgb, NA_RGB)) > 1500  # the device-only cell
    # The first photo, with the reference over it, is on the first screen at its own size, below the matrix.
    photo = first_figure(page.read_text())
    where = find_image(rgb, photo)
    assert where is not None, "the first photo is not on the first screen"
    assert where[0] > shown[:, 0].max()
    # Nothing is laid out beyond 1280 px: rendered 1700 px wide, the columns past 1280 are empty.
    wide = tmp_path / "wide.png"
    screenshot(page, wide, 1700, height, tmp_path / "profile2")
    with Image.open(wide) as img:
        right = np.asarray(img.convert("RGB"))[:, 1280:]
    assert (right == 255).all(), "the report is wider than 1280 px"
