"""The installed tool: a wheel built from the checkout, installed in a fresh venv, run from outside the checkout.

The fresh venv sees the project venv's third-party packages (torch, the toolchains) through a
``.pth`` path entry - which does not run that venv's own ``.pth`` files, so the editable install of
this checkout stays invisible - and gets espnet-mobile only from the wheel. Everything the code reads
at run time (manifest schema, thresholds, runner sources) must therefore be in the wheel.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import espnet_mobile as em

REPO = Path(__file__).resolve().parents[1]
MODEL = "espnet_p_2_q_3"


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, REPO],
         cwd=out)
    [built] = out.glob("espnet_mobile-*.whl")
    return built


def test_wheel_carries_every_file_the_code_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("espnet_mobile/bundle/schemas/manifest.schema.json", "espnet_mobile/parity/thresholds.json",
                   "converters/tflite/setup_lavapipe.sh", "converters/executorch/cpp_runner/CMakeLists.txt",
                   "converters/executorch/cpp_runner/et_runner.cpp", "espnet_mobile/__main__.py"):
        assert needed in names, needed
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "espnet-mobile = espnet_mobile.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_installed_wheel_converts_a_model_from_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    fresh_site = Path(_run([py, "-c", "import site; print(site.getsitepackages()[0])"], cwd=tmp_path).stdout.strip())
    (fresh_site / "project_venv_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([py, "-m", "pip", "install", "--no-deps", "-q", wheel], cwd=tmp_path)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ESPNET_MOBILE_VERBOSE")}
    where = _run([py, "-c", "import espnet_mobile, converters; print(espnet_mobile.__file__, converters.__file__)"],
                 cwd=outside, env=env).stdout
    assert str(REPO) not in where and str(fresh_site) in where, where
    help_text = _run([venv / "bin" / "espnet-mobile", "--help"], cwd=outside, env=env).stdout
    assert "convert" in help_text and "evaluate" in help_text

    torch.manual_seed(0)
    weights = tmp_path / "random.pth"
    torch.save(em.build_model(em.get_entry(MODEL)).state_dict(), weights)
    done = _run([venv / "bin" / "espnet-mobile", "convert", "--model", MODEL, "--weights", weights,
                 "--input-size", "32x64", "--target", "tflite", "--precision", "fp32", "--out", outside / "artifacts"],
                cwd=outside, env=env)
    assert "argmax agreement 100.00%" in done.stdout, done.stdout
    manifest = outside / "artifacts" / MODEL / "manifest.json"
    assert manifest.is_file() and (outside / "artifacts" / MODEL / f"{MODEL}_tflite_fp32.tflite").is_file()
    # the installed package validates its own manifest (schema read from the wheel)
    _run([py, "-c", f"from espnet_mobile import bundle; bundle.load_manifest(__import__('pathlib').Path("
                    f"{str(manifest.parent)!r}))"], cwd=outside, env=env)
