"""The Android app's pure Kotlin core against golden vectors written by the Python pipeline.

Writes a small bundle (golden vectors only: synthetic scenes through a randomly initialised
ESPNetv2 s=0.5, so no checkpoint is needed), then compiles and runs the Kotlin core's JUnit
tests with ``android_demo/core/run_tests.sh`` on it. The Kotlin preprocessing must reproduce
the float32 inputs, its argmax the masks and its nearest resize the full-size mask PNGs.

Needs kotlinc (``bash .ci/bootstrap.sh`` puts it in .venv/tools/kotlinc), a JDK and the Debian
junit4 + libhamcrest-java jars, and Debian's libandroid-json-java (the org.json that Android ships,
which the core reads the manifest with); without them the test skips with the reason, and fails under
CI=true. Slow: the first kotlinc compilation takes over a minute on a small machine (later runs
reuse android_demo/core/build/kotlinc while the Kotlin sources are unchanged).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_TESTS = REPO / "android_demo" / "core" / "run_tests.sh"
MODEL_ID = "espnetv2_s_0.5_pascal_256x256"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing_tools() -> list[str]:
    missing = []
    bootstrapped = REPO / ".venv/tools/kotlinc/bin/kotlinc"
    if not (os.environ.get("KOTLINC") or bootstrapped.exists() or shutil.which("kotlinc")):
        missing.append("kotlinc (bash .ci/bootstrap.sh installs it into .venv/tools/kotlinc)")
    if not (os.environ.get("JUNIT_JAR") or Path("/usr/share/java/junit4.jar").is_file()):
        missing.append("JUnit 4 (apt-get install junit4)")
    if not (os.environ.get("HAMCREST_JAR") or Path("/usr/share/java/hamcrest-core.jar").is_file()
            or Path("/usr/share/java/hamcrest.jar").is_file()):
        missing.append("hamcrest (apt-get install libhamcrest-java)")
    if not (os.environ.get("ANDROID_JSON_JAR") or Path("/usr/share/java/com.android.json.jar").is_file()
            or Path("/usr/share/java/json.jar").is_file()):
        missing.append("org.json (apt-get install libandroid-json-java)")
    if not shutil.which("java"):
        missing.append("java (JDK 17+)")
    return missing


def _require_tools() -> None:
    missing = _missing_tools()
    if missing:
        message = "Kotlin core tests need " + ", ".join(missing)
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)


@pytest.fixture(scope="module")
def golden_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    import espnet_mobile as em
    from espnet_mobile import bundle as B

    entry = em.get_entry(MODEL_ID)
    torch.manual_seed(0)
    model = em.build_model(entry).eval()
    out = tmp_path_factory.mktemp("android_core") / entry.model_id
    manifest = B.new_manifest(entry, entry.sha256, height=entry.input_height, width=entry.input_width)
    source, items = B.make_golden(entry, model, None)
    manifest["golden"] = B.write_golden(out, entry, source, items)
    section = _accuracy_section(list(manifest["labels"]))
    if section is not None:
        manifest["accuracy"] = section
    B.write_manifest(out, manifest)
    return out


def _accuracy_section(labels: list[str]) -> dict | None:
    """An ``accuracy`` section written by the pipeline's own code (espnet_mobile.evaluate), so the Kotlin
    reader is checked against what Python writes; None where that code or the schema's section is not in
    this checkout yet (then the Kotlin test says "accuracy section: none")."""
    from espnet_mobile import bundle as B

    try:  # the module, not the package's evaluate() function of the same name
        ev = importlib.import_module("espnet_mobile.evaluate")
        record, evaluation = ev.EvalRecord, ev.Evaluation
    except (ImportError, AttributeError):
        return None
    if "accuracy" not in B.schema().get("properties", {}):
        return None  # the writer exists but the bundle schema does not know the section yet
    records = [
        record(artifact=ev.REFERENCE, target=None, precision="fp32", runtime="pytorch", compute_unit="cpu",
               miou=70.1234567, pixel_accuracy=91.5, images=4, seconds=1.5,
               class_iou={c: (None if i == 1 else 40.0 + i) for i, c in enumerate(labels)}),
        record(artifact="m_tflite_int8.tflite", target="tflite", precision="int8", runtime="litert-cpu",
               compute_unit="cpu", images=0, error="the runtime refused it", sha256="a" * 64),
    ]
    result = evaluation(model_id="m", dataset="voc", dataset_title="PASCAL VOC 2012", split="val", images=4,
                        classes=list(labels), records=records, date="2026-12-05T10:00:00Z",
                        tool_versions=ev.tool_versions())
    return result.accuracy_section()


@pytest.mark.slow
def test_kotlin_core_reproduces_the_golden_vectors(golden_bundle: Path) -> None:
    _require_tools()
    env = dict(os.environ, ESPNET_MOBILE_BUNDLE=str(golden_bundle))
    proc = subprocess.run(["bash", str(RUN_TESTS)], env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    if proc.returncode == 3 and "MISSING TOOL" in log:
        message = log.strip().splitlines()[-1]
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    assert proc.returncode == 0, f"run_tests.sh exited {proc.returncode}:\n{log[-6000:]}"

    summary = re.search(r"^SUMMARY tests=(\d+) passed=(\d+) failed=(\d+) skipped=(\d+) seconds=([\d.]+)$", log, re.M)
    assert summary, f"no SUMMARY line in the output:\n{log[-3000:]}"
    tests, passed, failed, skipped = (int(summary.group(i)) for i in range(1, 5))
    assert re.search(rf"^OK \({tests} tests\)$", log, re.M), "JUnit did not report OK"
    assert failed == 0
    assert skipped == 0, "the golden-vector tests were skipped although ESPNET_MOBILE_BUNDLE was set:\n" + \
        "\n".join(line for line in log.splitlines() if line.startswith("TEST SKIP"))
    assert passed == tests >= 48

    # The figures the golden-vector tests print, one line per golden item.
    items = 4
    diffs = [float(x) for x in re.findall(r"input \d+x\d+ -> \d+x\d+: max \|diff\| ([\d.e+-]+)", log)]
    assert len(diffs) == items and max(diffs) <= 1e-5, diffs
    assert len(re.findall(r"vs mask: 0 mismatches", log)) == items
    assert len(re.findall(r"-> \d+x\d+, 0 mismatches with golden/", log)) == items
    assert "self-parity: agreement 1.000000, mIoU 100.000000" in log
    # The manifest is read with org.json, and its optional accuracy section is understood, including
    # the one the pipeline's own evaluate code writes (when that code is in this checkout).
    assert re.search(r"TEST PASS AccuracySectionTest\.readsEveryFieldOfTheSection ", log)
    if _accuracy_section(["a", "b"]) is not None:
        assert "accuracy section: dataset=voc split=val images=4 results=2 reference mIoU=70.1235" in log, \
            "\n".join(line for line in log.splitlines() if "accuracy" in line)
    else:
        assert "accuracy section: none" in log
