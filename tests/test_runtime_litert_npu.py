"""LiteRT NPU dispatch through the Intel OpenVINO plugin on OpenVINO's CPU graph backend.

These tests exercise the NPU dispatch code path (compiler plugin partitions,
DispatchDelegate, OpenVINO invocation context), not NPU numerics: the
partitions run on OpenVINO's CPU plugin. They need the ``openvino`` wheel whose
version matches the one ai-edge-litert's vendor libraries link (2026.3.1 for
ai-edge-litert 2.3.0; the bootstrap installs it). Without it they skip with the
exact reason; under CI=true that is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert.compiled_model", reason="ai-edge-litert is not installed")
pytest.importorskip("litert_torch", reason="litert-torch is not installed")

from converters import tflite
from converters.base import ConversionRequest
from converters.tflite import npu_runtime as litert_npu

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def npu_dispatch() -> None:
    ok, why = litert_npu.npu_dispatch_status()
    if not ok:
        if IN_CI:
            pytest.fail(f"CI=true but the LiteRT NPU dispatch path cannot run: {why}")
        pytest.skip(why)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.act = nn.PReLU(12)
        self.grouped = nn.Conv2d(12, 12, 1, groups=3)
        self.dw = nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12)
        self.cls = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        y = self.cls(self.dw(self.grouped(y)) + y)
        return nn.functional.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)


@pytest.fixture(scope="session")
def small_tflite(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("npu") / "small.tflite"
    tflite.convert(ConversionRequest(module=_Small().eval(), example_input=torch.rand(1, 3, 32, 40),
                                     precision="fp32", out_path=path))
    return path


def test_npu_dispatch_path_matches_cpu(npu_dispatch, small_tflite: Path) -> None:
    x = np.random.default_rng(0).random((1, 3, 32, 40), dtype=np.float32)
    cpu = tflite.run_tflite(small_tflite, x)
    with litert_npu.load_runner(small_tflite) as run:
        assert run.label == litert_npu.LABEL and "not NPU numerics" in run.label
        assert run.info["label"] == litert_npu.LABEL and run.info["openvino_device"] == "CPU"
        # Every op went to the compiler plugin and through the dispatch library.
        assert run.partition["npu_selected"] == run.partition["npu_total"] > 0
        assert run.partition["ops_on_cpu"] == 0
        out = run(x)
        np.testing.assert_array_equal(run(x), out)
    assert out.shape == cpu.shape == (1, 4, 64, 80)
    assert _rel(out, cpu) <= litert_npu.FP32_REL_TOL


def test_default_openvino_precision_is_close(npu_dispatch, small_tflite: Path) -> None:
    """Without the fp32 cap OpenVINO's CPU plugin may compute in bf16; still close to the CPU."""
    x = np.random.default_rng(1).random((1, 3, 32, 40), dtype=np.float32)
    report = litert_npu.compare_with_cpu(small_tflite, x, exact_fp32=False)
    assert report["label"] == litert_npu.LABEL
    assert report["max_rel_error"] <= litert_npu.DEFAULT_PRECISION_REL_TOL
    assert report["argmax_agreement"] >= 0.99


def test_vendor_libraries_name_the_openvino_they_need() -> None:
    libs = litert_npu.vendor_libraries()
    needed = litert_npu.required_openvino_sonames(libs["dispatch"])
    assert any(n.startswith("libopenvino.so.") for n in needed)


def test_missing_openvino_is_an_exact_reason(monkeypatch, small_tflite: Path) -> None:
    real = litert_npu.importlib.util.find_spec
    monkeypatch.setattr(litert_npu.importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    ok, why = litert_npu.npu_dispatch_status()
    assert not ok and "pip install openvino==" in why
    with pytest.raises(litert_npu.NpuDispatchUnavailableError, match="openvino package is not installed"):
        litert_npu.load_runner(small_tflite)


def test_wrong_openvino_version_is_an_exact_reason(monkeypatch, tmp_path: Path) -> None:
    fake = tmp_path / "openvino"
    (fake / "libs").mkdir(parents=True)
    (fake / "libs" / "libopenvino.so.2400").touch()
    spec = type("Spec", (), {})()
    spec.submodule_search_locations = [str(fake)]
    real = litert_npu.importlib.util.find_spec
    monkeypatch.setattr(litert_npu.importlib.util, "find_spec",
                        lambda name, *a: spec if name == "openvino" else real(name, *a))
    ok, why = litert_npu.npu_dispatch_status()
    assert not ok
    assert "libopenvino.so.2400" in why and "needs libopenvino" in why


@pytest.mark.slow
def test_npu_dispatch_runs_deployable_espnetv2(npu_dispatch, tmp_path: Path) -> None:
    """The real deployable graph (random weights, 64x64) goes through the dispatch path whole."""
    import espnet_mobile as em
    from espnet_mobile.deploy import make_deployable

    torch.manual_seed(0)
    model_id = "espnetv2_s_0.5_pascal_256x256"
    module = make_deployable(em.create_model(model_id), model_id, height=64, width=64)
    path = tmp_path / "espnetv2.tflite"
    tflite.convert(ConversionRequest(module=module, example_input=torch.rand(1, 3, 64, 64), precision="fp32",
                                     out_path=path))
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    report = litert_npu.compare_with_cpu(path, x)
    assert report["partition"]["npu_selected"] == report["partition"]["npu_total"]
    assert report["max_rel_error"] <= litert_npu.FP32_REL_TOL
