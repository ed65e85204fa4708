"""TFLite / LiteRT converter: numerics per precision, layout option, signature, errors.

The network here is a small stand-in assembled from the operators the
deployable ESPNet/ESPNetv2 graphs use, so the conversions take seconds; the
full-size models are covered by the parity step.
"""

from __future__ import annotations

import builtins
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from converters.base import ConversionError, ConversionRequest, MissingBackendError
from converters.tflite import conversion as tflite_conversion
from converters.tflite import passes as tflite_passes

tflite = pytest.importorskip("converters.tflite")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

SIZE = 64
NUM_CLASSES = 6


class _ConvBNPReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding=(k // 2) * dilation, dilation=dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class TinySegNet(nn.Module):
    """Every operator kind of the deployable graphs, at 64x64."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvBNPReLU(3, 12, 3, stride=2)  # 32x32
        self.down = nn.Conv2d(12, 12, 3, stride=2, padding=1)  # strided, 16x16
        self.grouped = _ConvBNPReLU(24, 24, 3, groups=4)
        self.dilated_dw = nn.Conv2d(24, 24, 3, padding=2, dilation=2, groups=24)
        self.gate = nn.Conv2d(24, 24, 1)
        self.bn = nn.BatchNorm2d(24)  # BN that follows an add, not a conv
        self.act = nn.PReLU(24)
        self.merge = _ConvBNPReLU(24, 24, 3, groups=6)
        self.head = nn.Conv2d(24, 12, 1)
        self.up = nn.ConvTranspose2d(12, 12, 2, stride=2)  # 32 -> 64
        self.merge_bn = nn.BatchNorm2d(24)  # BN + PReLU right after a concat
        self.merge_act = nn.PReLU(24)
        self.classifier = nn.Conv2d(24, NUM_CLASSES, 1)
        g = torch.Generator().manual_seed(1)
        self.register_buffer("mix_w", torch.softmax(torch.randn(32, 32, generator=g), dim=1))
        self.register_buffer("mix_h", torch.softmax(torch.randn(32, 32, generator=g), dim=1))
        for m in self.modules():  # non-trivial statistics and slopes, as in trained weights
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.data.uniform_(0.5, 1.5, generator=g)
                m.bias.data.uniform_(-0.3, 0.3, generator=g)
            elif isinstance(m, nn.PReLU):
                m.weight.data.uniform_(-0.2, 0.6, generator=g)
        self.merge.act.weight.data[0] = 1.5  # a slope above 1 takes the longer PReLU rewrite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pooled = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)  # explicit zero pad, then pool
        y = torch.cat([self.down(x), pooled], dim=1)
        y = y + self.dilated_dw(self.grouped(y))
        y = y * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(y, 1)))
        y = self.act(self.bn(y))
        y = y.reshape(1, 4, 6, 16, 16).transpose(1, 2).reshape(1, 24, 16, 16)  # channel shuffle
        y = self.merge(y)
        y = F.interpolate(y, size=(32, 32), mode="bilinear", align_corners=True)
        y = F.linear(y, self.mix_w)  # constant matrix on W
        y = F.linear(y.permute(0, 1, 3, 2), self.mix_h).permute(0, 1, 3, 2)  # and on H
        y = self.up(self.head(y))
        skip = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
        return self.classifier(self.merge_act(self.merge_bn(torch.cat([y, skip], dim=1))))


def _images(n: int, seed: int) -> list[torch.Tensor]:
    """Smooth random 'photos' in [0, 1]: low-resolution noise upsampled, plus a little grain."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        coarse = torch.rand(1, 3, 8, 8, generator=g)
        img = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        out.append((img + 0.05 * torch.rand(1, 3, SIZE, SIZE, generator=g)).clamp(0, 1))
    return out


@pytest.fixture(scope="module")
def net() -> TinySegNet:
    torch.manual_seed(0)
    return TinySegNet().eval()


@pytest.fixture(scope="module")
def example() -> torch.Tensor:
    return _images(1, seed=99)[0]


@pytest.fixture(scope="module")
def eval_images() -> list[torch.Tensor]:
    return _images(4, seed=7)


def _request(net: nn.Module, example: torch.Tensor, precision: str, out: Path, **kw) -> ConversionRequest:
    return ConversionRequest(module=net, example_input=example, precision=precision, out_path=out,
                             model_id="tiny", **kw)


@pytest.fixture(scope="module")
def converted(net, example, tmp_path_factory) -> dict:
    """Each precision converted once (calibration for int8 on images unlike the test images)."""
    out_dir = tmp_path_factory.mktemp("tflite")
    cache: dict = {}

    def get(precision: str, **options):
        key = (precision, tuple(sorted(options.items())))
        if key not in cache:
            suffix = "_".join(f"{k}" for k in options)
            path = out_dir / f"tiny_{precision}{'_' + suffix if suffix else ''}.tflite"
            calibration = _images(12, seed=3) if precision == "int8" else None
            cache[key] = tflite.convert(_request(net, example, precision, path, calibration=calibration,
                                                 options=options))
        return cache[key]

    return get


def _eager(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net(x).numpy()


def test_fp32_matches_eager(net, eval_images, converted):
    result = converted("fp32")
    assert result.path.is_file() and result.target == "tflite" and result.precision == "fp32"
    assert result.report["float_ops"]  # a float model: every op computes in float
    for x in eval_images:
        ref = _eager(net, x)
        out = tflite.run_tflite(result.path, x.numpy())
        assert out.dtype == np.float32 and out.shape == ref.shape
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_float_prelus_are_one_op_with_the_same_output(net, eval_images, converted, precision, tmp_path):
    """litert-torch writes each PReLU as RELU, MUL, MUL, SUB; the converter makes it one PRELU, bit-exact.

    The GPU artifact keeps the four ops (the LiteRT GPU accelerator takes no PRELU), and only
    it claims the GPU.
    """
    result = converted(precision)
    assert result.report["native_prelu"] == 5  # every PReLU of TinySegNet
    stock = tflite.convert(_request(net, eval_images[0], precision, tmp_path / "gpu.tflite",
                                    options={"delegate": "gpu"}))
    assert "native_prelu" not in stock.report
    assert result.compute_units == ["cpu"] and stock.compute_units == ["cpu", "gpu"]
    ops, stock_ops = Counter(result.report["ops"]), Counter(stock.report["ops"])
    assert ops["PRELU"] == 5 and stock_ops["PRELU"] == 0
    assert (stock_ops - ops) == Counter({"RELU": 5, "SUB": 5, "MUL": 10})
    for x in eval_images:
        np.testing.assert_array_equal(tflite.run_tflite(result.path, x.numpy()),
                                      tflite.run_tflite(stock.path, x.numpy()))


def test_fp16_is_close_and_smaller(net, eval_images, converted):
    fp16, fp32 = converted("fp16"), converted("fp32")
    assert fp16.report["ops"].get("DEQUANTIZE", 0) > 0  # float16 weights, dequantized for compute
    assert fp16.path.stat().st_size < fp32.path.stat().st_size
    for x in eval_images:
        ref = _eager(net, x)
        out = tflite.run_tflite(fp16.path, x.numpy())
        assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99


@pytest.mark.slow  # the int8 conversion of even this small graph takes ~30 s
def test_int8_is_full_integer_with_float_io(converted):
    result = converted("int8")
    report = result.report
    assert report["quantization"] == "pt2e-ptq" and report["calibration_samples"] == 12
    assert report["float_ops"] == {}, f"ops left in float: {report['float_ops']}"
    assert report["ops"].get("DEQUANTIZE") == 1  # only at the output
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(result.path)).get_signature_runner("segment")
    (inp,) = runner.get_input_details().values()
    (out,) = runner.get_output_details().values()
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32


@pytest.mark.slow  # the int8 conversion of even this small graph takes ~30 s
def test_int8_argmax_agrees_with_eager(net, eval_images, converted):
    path = converted("int8").path
    agreement = [
        (tflite.run_tflite(path, x.numpy()).argmax(1) == _eager(net, x).argmax(1)).mean()
        for x in eval_images
    ]
    assert min(agreement) >= 0.97, agreement


@pytest.mark.slow  # the int8 conversion of even this small graph takes ~30 s
def test_int8_file_is_smaller_than_fp32(converted):
    assert converted("int8").path.stat().st_size < converted("fp32").path.stat().st_size


def _quantization_params(model_bytes: bytes) -> list[tuple]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    params = []
    for tensor in model.subgraphs[0].tensors:
        q = tensor.quantization
        params.append(None if q is None else (
            None if q.scale is None else q.scale.tolist(),
            None if q.zeroPoint is None else q.zeroPoint.tolist(), q.quantizedDimension))
    return params


@pytest.mark.slow  # the int8 conversion of even this small graph takes ~30 s
def test_int8_shares_quantization_vectors_without_changing_them(eval_images, converted, tmp_path):
    """The written file stores each distinct scale / zero-point vector once; a plain repack does not."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    result = converted("int8")
    shared = result.path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(bytearray(shared), 0)
    builder = flatbuffers.Builder(len(shared))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    plain = bytes(builder.Output())
    assert len(shared) < len(plain)
    assert len(plain) - len(shared) == result.report["shared_quantization_bytes"]
    assert _quantization_params(shared) == _quantization_params(plain)
    plain_path = tmp_path / "plain.tflite"
    plain_path.write_bytes(plain)
    x = eval_images[0].numpy()
    assert np.array_equal(tflite.run_tflite(result.path, x), tflite.run_tflite(plain_path, x))
    assert tflite.share_quantization_vectors(converted("fp32").path.read_bytes()) == \
        converted("fp32").path.read_bytes()  # a float model has nothing to share


def test_signature_names(converted):
    from ai_edge_litert.interpreter import Interpreter

    path = converted("fp32").path
    assert Interpreter(model_path=str(path)).get_signature_list() == {
        "segment": {"inputs": ["image"], "outputs": ["logits"]}
    }
    report = converted("fp32").report
    assert report["signature"] == "segment" and report["input"]["name"] == "image"
    assert report["input"]["layout"] == "NCHW" and report["input"]["shape"] == [1, 3, SIZE, SIZE]


def test_nhwc_input(net, eval_images, converted):
    result = converted("fp32", nhwc=True)
    assert result.report["input"]["layout"] == "NHWC"
    assert result.report["input"]["shape"] == [1, SIZE, SIZE, 3]
    x = eval_images[0]
    ref = _eager(net, x)
    out = tflite.run_tflite(result.path, x.permute(0, 2, 3, 1).numpy())
    assert out.shape == ref.shape  # logits stay NCHW
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    with pytest.raises(ValueError, match="does not match"):
        tflite.run_tflite(result.path, x.numpy())  # NCHW into an NHWC artifact


def test_result_metadata(converted):
    result = converted("fp32")
    versions = result.tool_versions
    assert set(versions) == {"torch", "litert-torch", "ai-edge-litert"}
    assert versions["torch"] == torch.__version__
    assert result.executable_here and result.compute_units
    assert result.report["bytes"] == result.path.stat().st_size


def test_unknown_precision_lists_valid_ones(net, example, tmp_path):
    out = tmp_path / "x.tflite"
    with pytest.raises(ConversionError, match=r"fp32, fp16, int8"):
        tflite.convert(_request(net, example, "int4", out))
    assert not out.exists()


def test_int8_without_data_names_the_fix(net, example, tmp_path):
    with pytest.raises(ConversionError, match=r"--calibration DIR.*--qat-checkpoint PATH"):
        tflite.convert(_request(net, example, "int8", tmp_path / "x.tflite"))


def test_bad_calibration_shape(net, example, tmp_path):
    with pytest.raises(ConversionError, match=r"calibration tensor 0 has shape"):
        tflite.convert(_request(net, example, "int8", tmp_path / "x.tflite",
                                calibration=[torch.rand(1, 3, 32, 32)]))


def test_missing_backend_names_the_install(net, example, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_litert(name, *args, **kwargs):
        if name == "litert_torch" or name.startswith("litert_torch."):
            raise ImportError("No module named 'litert_torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    with pytest.raises(MissingBackendError, match=r"pip install litert-torch==0\.10\.0"):
        tflite.convert(_request(net, example, "fp32", tmp_path / "x.tflite"))


def test_failed_conversion_leaves_no_file(example, tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x[0, 0])  # complex output: not convertible

    out = tmp_path / "broken.tflite"
    with pytest.raises(ConversionError):
        tflite.convert(_request(Broken().eval(), example, "fp32", out))
    assert list(tmp_path.iterdir()) == []


def test_run_tflite_rejects_unknown_accelerator(converted):
    with pytest.raises(ValueError, match="cpu, cpu_reference, gpu"):
        tflite.run_tflite(converted("fp32").path, np.zeros((1, 3, SIZE, SIZE), np.float32),
                          accelerator="npu")


def test_run_tflite_reference_kernels_agree(eval_images, converted):
    path = converted("fp32").path
    x = eval_images[1].numpy()
    a = tflite.run_tflite(path, x)
    b = tflite.run_tflite(path, x, accelerator="cpu_reference")
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_quantizer_ties_same_scale_ops_to_one_observer(net, example):
    """Regression for "quantization parameters violate the same scale constraint" on a TRANSPOSE.

    Every single-input data-movement op (reshape, transpose, pad, pooling,
    resize) must read and write through one observer, so TFLite sees equal
    input and output scales.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    gm = prepare_pt2e(torch.export.export(net, (example,), strict=False).module(), tflite.get_quantizer())
    for x in _images(2, seed=5):
        gm(x)
    checked = set()
    for node in gm.graph.nodes:
        name = getattr(node.target, "__name__", "")
        if node.op != "call_function" or not name.startswith(
                ("transpose", "reshape", "avg_pool2d", "pad", "upsample_bilinear2d", "permute")):
            continue
        before, (after,) = node.args[0], node.users
        assert before.op == "call_module" and after.op == "call_module", node.name
        assert getattr(gm, before.target) is getattr(gm, after.target), node.name
        checked.add(name.split(".")[0])
    assert {"transpose", "reshape", "avg_pool2d", "pad", "upsample_bilinear2d", "permute"} <= checked


def test_quantizer_rewrites_are_exact(net, example):
    """Each graph rewrite done before annotation changes no numbers."""
    gm = torch.export.export(net, (example,), strict=False).module()
    ref = gm(example)
    steps = [  # (rewrite, how many places it applies to in TinySegNet)
        (tflite_passes._rewrite_eval_batch_norm, 5),  # all 5 here: conv-BN folding runs in prepare_pt2e
        (tflite_passes._unshare_constants, None),
        (tflite_passes._split_affine_after_cat, 1),  # cat -> BN -> PReLU before the classifier
        # The three conv -> BN pairs (prepare_pt2e would have folded them already); not the BN
        # after the add, nor the split affines (one reads a transposed conv, one a PReLU).
        (lambda g: tflite_passes._fold_affine_into_conv(g, max_gain=None), 3),
        (tflite_passes._decompose_prelu, 6),  # 5 PReLUs, the one after the concat now split in two
    ]
    for rewrite, expected in steps:
        n = rewrite(gm)
        if expected is not None:
            assert n == expected, rewrite.__name__
        torch.testing.assert_close(gm(example), ref, rtol=1e-5, atol=1e-5, msg=getattr(rewrite, "__name__", ""))
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert not any(k in t for t in targets for k in ("prelu", "batch_norm"))


def test_affines_fold_through_resizes_into_the_conv_that_feeds_them():
    """A pyramid-pool branch: conv -> resize -> row/column pooling -> BatchNorm -> PReLU.

    The BatchNorm folds into the conv (it commutes with the resizes and the pooling,
    which map constants to themselves); it does not fold where the conv has another
    reader, or where its gain would take a conv into a float island.
    """

    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(3)
            self.folds = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
            self.shared = nn.Conv2d(6, 6, 3, padding=1, groups=6)
            self.loud = nn.Conv2d(6, 6, 3, padding=1, groups=6)
            self.bns = nn.ModuleList(nn.BatchNorm2d(6) for _ in range(3))
            self.act = nn.PReLU(6)
            for bn in self.bns:
                bn.running_mean.uniform_(-0.3, 0.3, generator=g)
                bn.running_var.uniform_(0.5, 2.0, generator=g)
                bn.weight.data.uniform_(-1.5, 1.5, generator=g)  # negative scales too
                bn.bias.data.uniform_(-0.3, 0.3, generator=g)
            self.bns[2].running_var.fill_(1e-7)  # gain ~1/sqrt(eps)
            self.register_buffer("rows", torch.softmax(torch.randn(12, 16, generator=g), dim=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = F.interpolate(self.folds(x), size=(16, 16), mode="bilinear", align_corners=False)
            a = F.linear(a.transpose(2, 3), self.rows).transpose(2, 3)  # 16 -> 12 rows
            a = F.avg_pool2d(self.bns[0](a), 2)
            s = self.shared(x)
            b = F.avg_pool2d(self.bns[1](s) + s, 2)
            c = F.avg_pool2d(self.bns[2](self.loud(x)), 2)
            return self.act(a[..., :4, :4] + b + c)

    x = torch.randn(1, 6, 8, 8)
    gm = torch.export.export(Branches().eval(), (x,), strict=False).module()
    ref = gm(x)
    assert tflite_passes._rewrite_eval_batch_norm(gm) == 3
    affines = lambda: sum(  # noqa: E731
        tflite_passes._is_pointwise_depthwise(gm, n, 6) for n in gm.graph.nodes if n.op == "call_function")
    assert affines() == 3
    assert tflite_passes._fold_affine_into_conv(gm, max_gain=100.0) == 1
    assert affines() == 2  # the shared conv's and the high-gain one remain
    torch.testing.assert_close(gm(x), ref, rtol=1e-5, atol=1e-5)
    assert tflite_passes._fold_affine_into_conv(gm, max_gain=None) == 1  # no gain limit: the loud one too
    torch.testing.assert_close(gm(x), ref, rtol=1e-4, atol=1e-4 * float(ref.detach().abs().max()))


def test_prelu_slopes_of_narrow_tensors_are_tiled_along_the_width():
    class TwoPReLUs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.narrow, self.wide = nn.PReLU(8), nn.PReLU(tflite_passes.PRELU_TILE_MAX_CHANNELS)
            for m in (self.narrow, self.wide):
                m.weight.data.uniform_(-0.3, 0.6)
            self.narrow.weight.data[0] = 1.5  # a slope above 1: the rewrite with a second scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.wide(self.narrow(x).repeat(1, tflite_passes.PRELU_TILE_MAX_CHANNELS // 8, 1, 1))

    x = torch.randn(1, 8, 6, 10)
    gm = torch.export.export(TwoPReLUs().eval(), (x,), strict=False).module()
    ref = gm(x)
    assert tflite_passes._decompose_prelu(gm) == 2
    shapes = {name.rstrip("0123456789"): tuple(b.shape) for name, b in gm.named_buffers()
              if name.startswith("_prelu_")}
    # NCHW [1, C, 1, W] is NHWC [1, 1, W, C]: one contiguous run per image row instead of per pixel.
    # The narrow PReLU (a slope above 1) is -1 * x (a scalar), ReLU, then the tiled factor 1 - a.
    assert shapes == {"_prelu_minus_one_": (1, 1, 1, 1), "_prelu_factor_": (1, 8, 1, 10),
                      "_prelu_slope_": (1, tflite_passes.PRELU_TILE_MAX_CHANNELS, 1, 1)}
    torch.testing.assert_close(gm(x), ref, rtol=1e-6, atol=1e-6)


class HighGainNet(nn.Module):
    """A depth-wise conv whose BatchNorm has a near-zero running variance (gain > 100), between PReLUs.

    ESPNetv2's decoder has such layers; in int8 they amplify the rounding of their int8 input.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(4)
        with torch.random.fork_rng():  # the same weights whichever tests ran before
            torch.manual_seed(4)
            self.stem = _ConvBNPReLU(3, 8, 3)
            self.amplify = _ConvBNPReLU(8, 8, 3, groups=8)
            self.classifier = nn.Conv2d(8, NUM_CLASSES, 1)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
            elif isinstance(m, nn.PReLU):
                m.weight.data.uniform_(0.1, 0.4, generator=g)
        with torch.no_grad():  # a collapsed running variance: BatchNorm multiplies by ~1/sqrt(eps)
            self.amplify.bn.running_var.fill_(1e-7)
            self.amplify.conv.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.amplify(self.stem(x)))


def test_quantizer_keeps_high_gain_convs_and_their_prelus_in_float(example):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    net = HighGainNet().eval()
    converted = {}
    for gain in (tflite_conversion.DEFAULT_MAX_WEIGHT_GAIN, None):
        quantizer = tflite.get_quantizer(max_weight_gain=gain)
        gm = prepare_pt2e(torch.export.export(net, (example,), strict=False).module(), quantizer)
        for x in _images(2, seed=5):
            gm(x)
        converted[gain] = (convert_pt2e(gm, fold_quantize=False), quantizer.float_islands)
    gm, islands = converted[tflite_conversion.DEFAULT_MAX_WEIGHT_GAIN]
    assert [v["module"] for v in islands.values()] == ["amplify.conv"]
    assert next(iter(islands.values()))["gain"] > 100
    convs = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.conv2d.default]
    stem, amplify, classifier = convs
    assert "dequantize" in str(stem.args[1].target) and "dequantize" in str(classifier.args[1].target)
    assert amplify.args[1].op == "get_attr"  # float weight
    # Its input comes straight from the stem's PReLU (computed in float), and its output feeds a float PReLU.
    assert amplify.args[0].target == torch.ops.aten.add.Tensor
    assert all("quantize" not in str(u.target) for u in amplify.users)
    gm_int8, islands_int8 = converted[None]
    assert islands_int8 == {}

    def slope_shapes(module: torch.fx.GraphModule) -> list[tuple[int, ...]]:
        return sorted(tuple(b.shape) for name, b in module.named_buffers() if name.startswith("_prelu_slope_"))

    # Width-tiled slopes (an int8 kernel's need) go back to one value per channel in float PReLUs.
    assert slope_shapes(gm) == [(1, 8, 1, 1)] * 2
    assert slope_shapes(gm_int8) == [(1, 8, 1, SIZE)] * 2
    convs = [n for n in gm_int8.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.conv2d.default]
    assert all("dequantize" in str(c.args[1].target) for c in convs)


@pytest.mark.slow  # two int8 conversions
def test_int8_high_gain_conv_runs_in_float_and_agrees_better(eval_images, example, tmp_path):
    net = HighGainNet().eval()
    calibration = _images(12, seed=3)
    results = {}
    for gain in (tflite_conversion.DEFAULT_MAX_WEIGHT_GAIN, None):
        results[gain] = tflite.convert(_request(net, example, "int8", tmp_path / f"gain_{gain}.tflite",
                                                calibration=calibration,
                                                options={"int8_max_weight_gain": gain}))
    kept = results[tflite_conversion.DEFAULT_MAX_WEIGHT_GAIN]
    assert list(v["module"] for v in kept.report["float_convs"].values()) == ["amplify.conv"]
    assert kept.report["float_ops"].get("DEPTHWISE_CONV_2D") == 1
    assert results[None].report["float_ops"] == {}

    def agreement_and_error(path: Path) -> tuple[float, float]:
        pairs = [(tflite.run_tflite(path, x.numpy()), _eager(net, x)) for x in eval_images]
        agree = float(np.mean([(out.argmax(1) == ref.argmax(1)).mean() for out, ref in pairs]))
        return agree, float(np.mean([np.abs(out - ref).mean() for out, ref in pairs]))

    (with_float, float_err), (all_int8, int8_err) = agreement_and_error(kept.path), agreement_and_error(
        results[None].path)
    # Over five weight seeds the island cut the mean logit error by 1.1-1.4x.
    assert with_float >= 0.97 and with_float >= all_int8 and float_err < int8_err, (
        with_float, all_int8, float_err, int8_err)


@pytest.mark.slow
def test_int8_from_qat_module(net, example, eval_images, tmp_path):
    """A module prepared with prepare_qat_pt2e + get_quantizer(qat=True) converts to the same contract."""
    import copy

    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    train_net = copy.deepcopy(net).train()  # QAT graphs are captured in training mode
    gm = torch.export.export(train_net, (example,), strict=False).module()
    qat = prepare_qat_pt2e(gm, tflite.get_quantizer(qat=True))
    # Stand-in for fine-tuning: let the fake-quant observers see data, BatchNorm statistics frozen.
    move_exported_model_to_eval(qat)
    with torch.no_grad():
        for x in _images(8, seed=11):
            qat(x)
    result = tflite.convert(_request(net, example, "int8", tmp_path / "qat.tflite", qat_module=qat))
    assert result.report["quantization"] == "pt2e-qat"
    for x in eval_images[:2]:
        out = tflite.run_tflite(result.path, x.numpy())
        assert (out.argmax(1) == _eager(net, x).argmax(1)).mean() >= 0.95


class FanOutConcatNet(nn.Module):
    """ESPNet's reinforced skip in small: one concat read by a strided conv and by a later concat.

    The concat's second input has the wider range, so an observer of the concat's output
    and one of its first input give different scales.
    """

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(6)
            self.stem = _ConvBNPReLU(3, 8, 3, stride=2)  # 32x32
            self.small = nn.Conv2d(8, 4, 1)
            self.large = nn.Conv2d(8, 4, 1)
            self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)  # 16x16: the converter adds a PAD
            self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)  # back to 32x32
            self.head = nn.Conv2d(16, NUM_CLASSES, 1)
        with torch.no_grad():
            self.large.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        merged = torch.cat([self.small(x), self.large(x)], dim=1)
        y = self.up(self.down(merged))
        return self.head(torch.cat([y, merged], dim=1))


def test_quantizer_gives_each_concat_one_observer_for_all_its_consumers(example):
    """Every consumer of a concat reads one observed tensor (none reads it in float).

    Before: no concat was annotated (the stock annotator looks for source partitions,
    which a non-strict export does not record), the strided conv observed the concat
    on its own edge and the second concat read it in float.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    net = FanOutConcatNet().eval()
    gm = prepare_pt2e(torch.export.export(net, (example,), strict=False).module(), tflite.get_quantizer())
    for x in _images(2, seed=5):
        gm(x)
    cats = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.cat.default]
    assert len(cats) == 2
    for cat in cats:
        users = list(cat.users)
        assert users and all(u.op == "call_module" for u in users), (cat.name, [u.name for u in users])
        assert len({id(getattr(gm, u.target)) for u in users}) == 1, cat.name
    first = cats[0]
    assert len(next(iter(first.users)).users) == 2  # the strided conv and the second concat


def test_int8_concat_read_by_strided_conv_and_concat_converts(eval_images, tmp_path):
    """Regression: "'tfl.pad' op quantization parameters violate the same scale constraint" (~3 s)."""
    net = FanOutConcatNet().eval()
    result = tflite.convert(_request(net, eval_images[0], "int8", tmp_path / "fanout.tflite",
                                     calibration=_images(8, seed=3)))
    assert result.report["float_ops"] == {}
    assert result.report["ops"]["PAD"] >= 1 and result.report["ops"]["CONCATENATION"] == 2
    agree = np.mean([(tflite.run_tflite(result.path, x.numpy()).argmax(1) == _eager(net, x).argmax(1)).mean()
                     for x in eval_images])
    assert agree >= 0.95, agree


@pytest.mark.slow  # ~45 s: the real ESPNet graph at 176x240
def test_int8_espnet_camvid_with_reinforced_skip_converts(weights_dir, datasets_dir, tmp_path):
    """The authors' CamVid ESPNet (its decoder reads the reinforced level-1 concat) converts to int8."""
    import espnet_mobile as em
    from espnet_mobile.convert import calibration_inputs
    from espnet_mobile.deploy import make_deployable
    from tests.conftest import checkpoint_path

    model_id, h, w = "espnet_p_2_q_8_camvid", 176, 240
    model = em.create_model(model_id, weights=checkpoint_path(weights_dir, model_id))
    deployable = make_deployable(model, model_id, height=h, width=w)
    frames = sorted((datasets_dir / "camvid" / "train").glob("*.png"))[:8]
    calibration, _ = calibration_inputs(frames, h, w)  # each frame and its mirror image
    result = tflite.convert(_request(deployable, calibration[0].reshape(1, 3, h, w), "int8",
                                     tmp_path / "camvid.tflite", calibration=calibration))
    assert result.report["ops"]["PAD"] >= 1
    x = calibration[1].reshape(1, 3, h, w)
    agree = (tflite.run_tflite(result.path, x.numpy()).argmax(1) == _eager(deployable, x).argmax(1)).mean()
    assert agree >= 0.9, agree
