"""The ExecuTorch C++ runner (et_runner) against the Python runtime.

et_runner is built from converters/executorch/cpp_runner against the installed
executorch wheel. Without cmake / a compiler / the wheel's C++ files the tests
skip with the reason, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch.exir", reason="executorch is not installed")

from converters import executorch as cx
from converters.base import ConversionRequest
from converters.executorch import cpp_runtime as ecpp

IN_CI = os.environ.get("CI", "").lower() == "true"
#: C++ and Python run the same kernels; outputs must agree to float32 rounding.
REL_TOL = 1e-5


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.fixture(scope="session")
def runner_binary() -> Path:
    try:
        return ecpp.build_runner()
    except ecpp.RunnerBuildError as exc:
        if IN_CI:
            pytest.fail(f"CI=true but et_runner cannot be built: {exc}")
        pytest.skip(f"et_runner cannot be built here: {exc}")


class _Toy(nn.Module):
    """Conv, PReLU, a depthwise conv, bilinear upsampling: a segmentation head in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.PReLU(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.cls = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cls(self.dw(self.act(self.conv(x))))
        return nn.functional.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)


@pytest.fixture(scope="session")
def toy_program(tmp_path_factory) -> tuple[Path, Path, torch.Tensor]:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("et_cpp") / "toy.pte"
    x = torch.rand(1, 3, 24, 32)
    cx.convert(ConversionRequest(module=_Toy().eval(), example_input=x, precision="fp32", out_path=out,
                                 options={"bundle": True}))
    return out, out.with_suffix(".bpte"), x


def test_build_is_cached(runner_binary: Path) -> None:
    assert runner_binary.is_file() and os.access(runner_binary, os.X_OK)
    mtime = runner_binary.stat().st_mtime_ns
    assert ecpp.build_runner() == runner_binary
    assert runner_binary.stat().st_mtime_ns == mtime, "an up-to-date build must not be redone"


def test_cpp_output_equals_python_runtime(runner_binary: Path, toy_program) -> None:
    pte, _, _ = toy_program
    x = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(1))
    expected = cx.run_pte(pte, x).numpy()
    result = ecpp.run_file(pte, x.numpy(), binary=runner_binary, warmup=1, repeat=3)
    assert result.shape == expected.shape == (1, 5, 48, 64)
    assert result.output.dtype == np.float32
    assert _rel_err(result.output, expected) <= REL_TOL
    assert result.latency_ms > 0 and result.load_ms > 0


def test_load_runner_is_a_runtime_runner(runner_binary: Path, toy_program) -> None:
    pte, bpte, x = toy_program
    run = ecpp.load_runner(pte, binary=runner_binary)
    expected = cx.run_pte(pte, x).numpy()
    assert _rel_err(run(x.numpy()), expected) <= REL_TOL
    # The program inside a .bpte runs just the same.
    run_bundled = ecpp.load_runner(bpte, binary=runner_binary)
    assert _rel_err(run_bundled(x.numpy()), expected) <= REL_TOL


def test_bundled_verification_passes(runner_binary: Path, toy_program) -> None:
    _, bpte, _ = toy_program
    report = ecpp.verify_bundled(bpte, atol=1e-5, rtol=1e-5, binary=runner_binary)
    assert report.passed, report.stdout
    assert len(report.cases) == 1 and report.cases[0].max_abs_error <= 1e-5


def test_bundled_verification_fails_on_perturbed_expectation(runner_binary: Path, toy_program,
                                                             tmp_path: Path) -> None:
    pte, _, x = toy_program
    good = cx.run_pte(pte, x)
    x2 = torch.rand_like(x)
    bad = cx.run_pte(pte, x2).clone()
    bad[0, 2, 5, 7] += 0.05  # one element off by far more than the tolerance
    path = cx.write_bundled_program(pte, [x, x2], [good, bad], tmp_path / "perturbed.bpte")
    report = ecpp.verify_bundled(path, atol=1e-4, rtol=1e-4, binary=runner_binary)
    assert not report.passed
    assert report.returncode == ecpp.EXIT_VERIFY_FAILED
    assert [c.passed for c in report.cases] == [True, False]
    assert report.cases[1].max_abs_error == pytest.approx(0.05, rel=1e-3)
    # A tolerance wider than the perturbation lets it through.
    assert ecpp.verify_bundled(path, atol=0.1, rtol=0, binary=runner_binary).passed


def test_wrong_shape_and_plain_pte_verification_are_errors(runner_binary: Path, toy_program) -> None:
    pte, _, _ = toy_program
    with pytest.raises(ecpp.RunnerError, match="expects an input of shape"):
        ecpp.run_file(pte, np.zeros((1, 3, 32, 32), np.float32), binary=runner_binary)
    with pytest.raises(ecpp.RunnerError, match="needs a bundled program"):
        ecpp.verify_bundled(pte, binary=runner_binary)


def test_corrupt_bundle_is_an_error(runner_binary: Path, toy_program, tmp_path: Path) -> None:
    _, bpte, _ = toy_program
    data = bpte.read_bytes()
    broken = tmp_path / "broken.bpte"
    broken.write_bytes(data[:64])  # keeps the BP08 identifier, loses the rest
    with pytest.raises(ecpp.RunnerError):
        ecpp.verify_bundled(broken, binary=runner_binary)


def test_missing_build_pieces_are_named(monkeypatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(ecpp.shutil, "which", lambda name: None if name == "cmake" else real_which(name))
    with pytest.raises(ecpp.RunnerBuildError, match="no cmake found"):
        ecpp.build_runner(tmp_path / "b1")

    monkeypatch.setattr(ecpp.shutil, "which", real_which)
    fake = tmp_path / "executorch"
    (fake / "lib").mkdir(parents=True)

    spec = type("Spec", (), {})()
    spec.submodule_search_locations = [str(fake)]
    monkeypatch.setattr(ecpp.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ecpp.RunnerBuildError, match="no C\\+\\+ headers"):
        ecpp.build_runner(tmp_path / "b2")


@pytest.mark.slow
def test_cpp_matches_python_on_deployable_espnetv2(runner_binary: Path, tmp_path: Path) -> None:
    """The real deployable graph (random weights, 64x64): XNNPACK partitions, PReLU, resize."""
    import espnet_mobile as em
    from espnet_mobile.deploy import make_deployable

    torch.manual_seed(0)
    model_id = "espnetv2_s_0.5_pascal_256x256"
    module = make_deployable(em.create_model(model_id), model_id, height=64, width=64)
    x = torch.rand(1, 3, 64, 64)
    pte = tmp_path / "espnetv2.pte"
    cx.convert(ConversionRequest(module=module, example_input=x, precision="fp32", out_path=pte))
    expected = cx.run_pte(pte, x).numpy()
    got = ecpp.load_runner(pte, binary=runner_binary)(x.numpy())
    assert got.shape == expected.shape
    assert _rel_err(got, expected) <= REL_TOL
