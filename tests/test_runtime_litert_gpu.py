"""LiteRT GPU accelerator (WebGPU on Vulkan) through Mesa's lavapipe, against the CPU interpreter.

Needs lavapipe unpacked by converters/tflite/setup_lavapipe.sh (the
bootstrap does it). Without it the GPU tests skip with the reason; under
CI=true that is a failure. The graph-rewrite exactness tests need no GPU.

Tolerances (max |GPU - CPU| / max |CPU|): fp16 (the accelerator's default)
1e-2, enforced fp32 1e-4 (see litert_gpu.FP16_REL_TOL / FP32_REL_TOL).
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
from converters.tflite import gpu_rewrites
from converters.tflite import gpu_runtime as litert_gpu
from espnet_mobile.deploy import AvgPool3x3s2, ChannelShuffleFixed

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def lavapipe() -> Path:
    ok, why = litert_gpu.lavapipe_status()
    if not ok:
        if IN_CI:
            pytest.fail(f"CI=true but the LiteRT GPU path cannot run: {why}")
        pytest.skip(why)
    return litert_gpu.lavapipe_dir()


def _convert(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """Convert as the bundle's GPU artifact is (the CPU artifacts' PRELU ops do not run on this GPU)."""
    tflite.convert(ConversionRequest(module=module.eval(), example_input=x, precision="fp32", out_path=path,
                                     options={"delegate": "gpu"}))
    return path


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


class _SmallSeg(nn.Module):
    """The op mix of the deployable graphs: conv, PReLU, dilated depth-wise conv, the depth-wise
    3x3/s2 average (zero-padded borders), a GPU-safe grouped conv, concat, bilinear resize."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.act = nn.PReLU(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16)
        self.pool = AvgPool3x3s2(16)
        self.grouped = nn.Conv2d(16, 16, 1, groups=2)  # 8 in / 8 out per group: fine on the GPU
        self.cls = nn.Conv2d(32, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.stem(x))
        a = self.dw(y)
        b = nn.functional.interpolate(self.grouped(self.pool(y)), size=a.shape[-2:], mode="bilinear",
                                      align_corners=False)
        y = self.cls(torch.cat([a, b], 1))
        return nn.functional.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)


class _Unfriendly(nn.Module):
    """ESPNetv2's GPU-hostile shapes in miniature: a grouped 1x1 conv with 8 in / 6 out channels
    per group (aborts the WebGPU accelerator), the 5-D channel shuffle (rejected by it), and
    grouped 3x3 convs with 4 in / 1 out and 4 in / 3 out per group (wrong results or aborts).
    gpu_friendly turns them into a dense conv, a permutation conv, depthwise+sum and padded."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(32, 24, 1, groups=4)
        self.shuffle = ChannelShuffleFixed(4, 24, (16, 16))
        self.one_out = nn.Conv2d(24, 6, 3, padding=1, groups=6)
        self.three_out = nn.Conv2d(24, 18, 3, padding=1, groups=6)
        self.out = nn.Conv2d(24, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(self.grouped(x))
        return self.out(torch.cat([self.one_out(y), self.three_out(y)], 1))


@pytest.fixture(scope="session")
def small_tflite(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _convert(_SmallSeg(), torch.rand(1, 3, 48, 64), tmp_path_factory.mktemp("gpu") / "small.tflite")


@pytest.mark.parametrize("enforce_fp32,tol", [(False, litert_gpu.FP16_REL_TOL), (True, litert_gpu.FP32_REL_TOL)],
                         ids=["fp16", "fp32"])
def test_gpu_matches_cpu(lavapipe: Path, small_tflite: Path, enforce_fp32: bool, tol: float) -> None:
    x = np.random.default_rng(0).random((1, 3, 48, 64), dtype=np.float32)
    cpu = tflite.run_tflite(small_tflite, x)
    with litert_gpu.load_runner(small_tflite, enforce_fp32=enforce_fp32) as run:
        gpu = run(x)
        assert run.fully_accelerated, run.partition
        again = run(x)  # the compiled model is reused across calls
    assert gpu.shape == cpu.shape == (1, 6, 48, 64)
    assert _rel(gpu, cpu) <= tol
    np.testing.assert_array_equal(gpu, again)
    if enforce_fp32:
        return
    # fp16 really is lower precision than the enforced-fp32 path (the option takes effect).
    with litert_gpu.load_runner(small_tflite, enforce_fp32=True) as run32:
        assert _rel(run32(x), cpu) < _rel(gpu, cpu)


def test_zero_padded_average_borders_agree(lavapipe: Path, tmp_path: Path) -> None:
    """The deployable graph's 3x3/s2 average is a depth-wise conv: GPU and CPU agree on the borders
    (the PAD + AVERAGE_POOL_2D form disagreed there)."""
    torch.manual_seed(0)
    path = _convert(nn.Sequential(AvgPool3x3s2(8)), torch.rand(1, 8, 17, 23), tmp_path / "avg.tflite")
    x = np.random.default_rng(1).random((1, 8, 17, 23), dtype=np.float32) + 1.0
    cpu = tflite.run_tflite(path, x)
    gpu = litert_gpu.run_tflite_gpu(path, x, enforce_fp32=True)
    assert _rel(gpu[..., 0, :], cpu[..., 0, :]) <= litert_gpu.FP32_REL_TOL  # top border row
    assert _rel(gpu[..., :, 0], cpu[..., :, 0]) <= litert_gpu.FP32_REL_TOL  # left border column
    assert _rel(gpu, cpu) <= litert_gpu.FP32_REL_TOL


@pytest.mark.parametrize("conv,cheapest", [
    (nn.Conv2d(32, 24, 1, groups=4), "dense"),
    (nn.Conv2d(50, 10, 3, padding=1, groups=10), "depthwise+sum"),
    (nn.Conv2d(256, 64, 3, padding=2, dilation=2, groups=64, bias=False), "depthwise+sum"),
    (nn.Conv2d(128, 48, 3, padding=1, groups=16), "padded"),
    (nn.Conv2d(12, 18, 3, stride=2, padding=1, groups=3), "padded"),
], ids=lambda v: v if isinstance(v, str) else f"{v.in_channels}-{v.out_channels}-g{v.groups}")
def test_grouped_conv_rewrites_are_exact(conv: nn.Conv2d, cheapest: str) -> None:
    torch.manual_seed(0)
    nn.init.normal_(conv.weight)
    x = torch.randn(1, conv.in_channels, 13, 11)
    with torch.no_grad():
        ref = conv(x)
        for strategy in ("dense", "cheapest"):
            new, form = gpu_rewrites.gpu_conv_rewrite(conv, strategy=strategy)
            assert form == ("dense" if strategy == "dense" else cheapest)
            got = new(x)
            assert got.shape == ref.shape
            assert float((ref - got).abs().max() / ref.abs().max()) <= 1e-6
            convs = [m for m in new.modules() if isinstance(m, nn.Conv2d)]
            # Whatever stays grouped has channels per group the GPU handles (multiples of 4, or depth-wise).
            assert all(m.groups == 1 or m.groups == m.in_channels
                       or (m.in_channels // m.groups % 4 == 0 and m.out_channels // m.groups % 4 == 0)
                       for m in convs)


def test_permutation_conv_is_bit_exact() -> None:
    shuffle = ChannelShuffleFixed(5, 50, (7, 9))
    x = torch.randn(1, 50, 7, 9)
    friendly = gpu_rewrites.gpu_friendly(nn.Sequential(shuffle))
    assert isinstance(friendly[0], gpu_rewrites.PermutationConv)
    assert torch.equal(friendly(x), shuffle(x))  # a 0/1 permutation is exact, bit for bit


def test_gpu_friendly_leaves_supported_convs_alone() -> None:
    module = nn.Sequential(nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 32, 1, groups=2),
                           nn.Conv2d(32, 8, 1))
    friendly = gpu_rewrites.gpu_friendly(module)
    assert friendly.gpu_rewrites == []
    assert [m.groups for m in friendly] == [16, 2, 1]
    every = gpu_rewrites.gpu_friendly(module, align=None)  # align=None: no grouped conv may remain
    assert every[1].groups == 1 and every[0].groups == 16


def test_gpu_friendly_is_exact_on_deployable_espnetv2() -> None:
    import espnet_mobile as em
    from espnet_mobile.deploy import make_deployable

    torch.manual_seed(0)
    model_id = "espnetv2_s_0.5_pascal_256x256"
    module = make_deployable(em.create_model(model_id), model_id, height=64, width=64)
    friendly = gpu_rewrites.gpu_friendly(module)
    kinds = " ".join(friendly.gpu_rewrites)
    # The pyramid pools' shuffle and one-output-per-group merge convs are already one dense conv in
    # the deployable graph (deploy.shuffle_into_grouped_conv); the grouped 1x1 and 3x3 convs remain.
    assert "-> dense" in kinds and "permutation conv" not in kinds and "depthwise+sum" not in kinds
    assert gpu_rewrites.gpu_unfriendly(friendly) == []
    assert len(gpu_rewrites.gpu_unfriendly(module)) == len(friendly.gpu_rewrites)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref, got = module(x), friendly(x)
    assert float((ref - got).abs().max() / ref.abs().max()) <= 1e-6
    # The original is untouched.
    assert any(isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels for m in module.modules())


def test_rewrite_makes_the_gpu_run_work(lavapipe: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _Unfriendly().eval()
    x_t = torch.rand(1, 32, 16, 16)
    bad = _convert(module, x_t, tmp_path / "unfriendly.tflite")
    with pytest.raises(litert_gpu.GpuRunError):
        # Either the accelerator aborts on the grouped conv (SIGILL in the child) or compilation
        # fails on the 5-D shuffle; both are caught in the child and reported here.
        with litert_gpu.load_runner(bad) as run:
            run(x_t.numpy())
    friendly = gpu_rewrites.gpu_friendly(module)
    with torch.no_grad():
        assert float((friendly(x_t) - module(x_t)).abs().max()) <= 1e-6 * float(module(x_t).abs().max())
    good = _convert(friendly, x_t, tmp_path / "friendly.tflite")
    x = x_t.numpy()
    cpu = tflite.run_tflite(good, x)
    with litert_gpu.load_runner(good, enforce_fp32=True) as run:
        assert run.fully_accelerated, run.partition
        assert _rel(run(x), cpu) <= litert_gpu.FP32_REL_TOL
    assert _rel(tflite.run_tflite(bad, x), cpu) <= 1e-5  # same function on the CPU


def test_missing_lavapipe_is_a_clear_error(tmp_path: Path, small_tflite: Path) -> None:
    ok, why = litert_gpu.lavapipe_status(tmp_path / "nowhere")
    assert not ok and "setup_lavapipe.sh" in why
    with pytest.raises(litert_gpu.GpuUnavailableError, match="lavapipe is not set up"):
        litert_gpu.load_runner(small_tflite, lavapipe=tmp_path / "nowhere")


@pytest.mark.slow
def test_gpu_runs_deployable_espnetv2_after_rewrite(lavapipe: Path, tmp_path: Path) -> None:
    """The real deployable graph (random weights, 64x64), made GPU-friendly, runs fully on the GPU."""
    import espnet_mobile as em
    from espnet_mobile.deploy import make_deployable

    torch.manual_seed(0)
    model_id = "espnetv2_s_0.5_pascal_256x256"
    module = gpu_rewrites.gpu_friendly(make_deployable(em.create_model(model_id), model_id, height=64, width=64))
    path = _convert(module, torch.rand(1, 3, 64, 64), tmp_path / "espnetv2_gpu.tflite")
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    cpu = tflite.run_tflite(path, x)
    for enforce_fp32, tol in [(False, litert_gpu.FP16_REL_TOL), (True, litert_gpu.FP32_REL_TOL)]:
        with litert_gpu.load_runner(path, enforce_fp32=enforce_fp32) as run:
            assert run.fully_accelerated, run.partition
            assert _rel(run(x), cpu) <= tol
