"""Core ML converter: ML program packages at fp32 / fp16 / int8, read back from disk.

Core ML cannot run on Linux, so every check reads the saved ``.mlpackage``
(spec, MIL operations, metadata) instead of predicting. The toy network uses
the operators of the deployable ESPNetv2 graph; the real model is converted
in the slow tests.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from converters.base import ConversionError, ConversionRequest, MissingBackendError
from converters.coreml import conversion as coreml_conversion
from converters.coreml import quantize as coreml_quantize

ct = pytest.importorskip("coremltools")
coreml = pytest.importorskip("converters.coreml")

SHAPE = (1, 3, 64, 64)
LABELS = ["background", "a", "b", "c", "d"]


class Toy(nn.Module):
    """The deployable graph's operators at toy size: (1,3,64,64) -> (1,5,64,64) logits."""

    def __init__(self, classes: int = len(LABELS)) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn_in = nn.BatchNorm2d(16)
        self.act_in = nn.PReLU(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.dilated_dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16, bias=False)
        self.bn_cat = nn.BatchNorm2d(32)  # after a concatenation: not foldable into a conv
        self.act_cat = nn.PReLU(32)
        self.plain = nn.Conv2d(32, 32, 3, padding=1)
        self.gate = nn.Conv2d(32, 32, 1)
        self.register_buffer("mix_w", torch.randn(16, 16) / 4)
        self.register_buffer("mix_h", torch.randn(16, 16) / 4)
        self.classifier = nn.Conv2d(32, classes, 1)
        self.up = nn.ConvTranspose2d(classes, classes, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_in(self.bn_in(self.conv_in(x)))  # (1,16,32,32)
        y = self.act_cat(self.bn_cat(torch.cat([self.grouped(x), self.dilated_dw(x)], dim=1)))
        y = self.plain(y) + y
        down = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2, padding=0)  # (1,16,16,16)
        y = F.avg_pool2d(F.pad(y, (1, 1, 1, 1)), 3, stride=2, padding=0)
        y = y + torch.cat([down, down], dim=1)
        y = y * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(y, 1)))
        y = y.reshape(1, 2, 16, 16, 16).transpose(1, 2).reshape(1, 32, 16, 16)  # channel shuffle
        y = F.linear(y, self.mix_w)  # constant matrix on W
        y = F.linear(y.permute(0, 1, 3, 2), self.mix_h).permute(0, 1, 3, 2)  # ... and on H
        y = self.up(self.classifier(y))  # (1,5,32,32)
        return F.interpolate(y, size=(64, 64), mode="bilinear", align_corners=True)


def make_toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    model = Toy()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.4)  # per-channel slopes, not one shared value
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def request(tmp: Path, precision: str, **kw) -> ConversionRequest:
    kw.setdefault("module", make_toy())
    kw.setdefault("example_input", torch.rand(SHAPE))
    kw.setdefault("out_path", tmp / f"toy_{precision}.mlpackage")
    kw.setdefault("model_id", "toy")
    kw.setdefault("labels", list(LABELS))
    return ConversionRequest(precision=precision, **kw)


def calibration(n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(SHAPE, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """fp32, fp16 and int8 packages of the toy, converted once for the module."""
    tmp = tmp_path_factory.mktemp("coreml")
    meta = {"author": "Test Author", "license": "MIT", "description": "toy segmenter", "version": "1.2.3"}
    return {
        "fp32": coreml.convert(request(tmp, "fp32", metadata=meta)),
        "fp16": coreml.convert(request(tmp, "fp16", options={"compute_units": "CPU_AND_NE"})),
        "int8": coreml.convert(request(tmp, "int8", calibration=calibration())),
    }


def load_spec(path: Path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def non_const_types(path: Path) -> set[str]:
    return {k for k in coreml.mil_op_counts(path) if k != "const"}


def weight_dtypes(path: Path) -> set[str]:
    """Element types of the ``weight`` operands feeding conv/linear ops."""
    names = ct.proto.MIL_pb2.DataType.Name
    ops = list(coreml.iter_mil_ops(path))
    dtype_of = {
        out.name: names(out.type.tensorType.dataType)
        for op in ops
        for out in op.outputs
        if out.type.WhichOneof("type") == "tensorType"
    }
    found = set()
    for op in ops:
        if op.type in ("conv", "conv_transpose", "linear"):
            for arg in op.inputs["weight"].arguments:
                if arg.WhichOneof("binding") == "name":
                    found.add(dtype_of[arg.name])
    return found


# --------------------------------------------------------------------------- packages


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_package_is_ios17_ml_program_with_image_in_logits_out(converted, precision: str) -> None:
    result = converted[precision]
    assert result.path.is_dir() and result.path.suffix == ".mlpackage"
    assert not list(result.path.parent.glob(".*"))  # no temporaries left by atomic_output
    spec = load_spec(result.path)
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == 8  # iOS17 / macOS14
    assert result.report["minimum_deployment_target"] == "iOS17"
    (inp,) = spec.description.input
    (out,) = spec.description.output
    assert inp.name == "image" and list(inp.type.multiArrayType.shape) == list(SHAPE)
    assert inp.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert out.name == "logits"
    assert out.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert result.report["output"]["shape"] == [1, len(LABELS), 64, 64]
    assert result.target == "coreml" and result.precision == precision
    assert set(result.tool_versions) >= {"torch", "coremltools"}
    assert result.tool_versions["coremltools"] == ct.__version__
    if sys.platform != "darwin":
        assert result.executable_here is False and "Apple" in result.not_executable_reason


def test_fp32_runs_every_op_in_float32(converted) -> None:
    path = converted["fp32"].path
    assert set(coreml.mil_dtype_counts(path, include_const=False)) == {"float32"}
    assert weight_dtypes(path) == {"FLOAT32"}
    assert converted["fp32"].report["compute_precision"] == "fp32"


def test_fp16_casts_at_the_edges_and_stores_fp16_weights(converted) -> None:
    path = converted["fp16"].path
    dtypes = coreml.mil_dtype_counts(path, include_const=False)
    assert set(dtypes) == {"float16", "float32"}
    assert dtypes["float32"] == 1  # only the final cast back to the fp32 output
    assert coreml.mil_op_counts(path)["cast"] == 2  # fp32 image in, fp32 logits out
    assert weight_dtypes(path) == {"FLOAT16"}


def test_int8_quantizes_weights_and_activations(converted) -> None:
    result = converted["int8"]
    counts = coreml.mil_op_counts(result.path)
    assert counts["quantize"] >= 10 and counts["dequantize"] >= 10  # int8 activations
    # every conv / linear / transposed conv weight is stored as int8
    assert counts["constexpr_affine_dequantize"] == counts["conv"] + counts["linear"] + counts["conv_transpose"]
    assert "batch_norm" not in counts  # the unfoldable one became a quantized depth-wise conv
    dtypes = coreml.mil_dtype_counts(result.path, include_const=False)
    assert dtypes["int8"] >= counts["quantize"]  # quantize outputs (plus reshapes moved into int8)
    q = result.report["quantization"]
    assert q["source"] == "calibration" and q["calibration_samples"] == 4
    assert q["float_ops"] == {}  # nothing left outside the int8 path
    agreement = q["observer_agreement"]  # both observers measured, the better kept
    assert set(agreement) == {"minmax", "histogram"} and q["observer_inputs"] == 4
    assert agreement[q["activation_observer"]] == max(agreement.values())
    assert result.report["compute_precision"] == "fp16"


def test_metadata_labels_descriptions_and_compute_units(converted) -> None:
    model = ct.models.MLModel(str(converted["fp32"].path), skip_model_load=True)
    assert model.author == "Test Author"
    assert model.license == "MIT"
    assert model.short_description == "toy segmenter"
    assert model.version == "1.2.3"
    user = model.user_defined_metadata
    assert json.loads(user["labels"]) == LABELS
    assert user["num_classes"] == str(len(LABELS))
    assert user["task"] == "semantic_segmentation"
    assert user["compute_units"] == "ALL" and converted["fp32"].compute_units == ["CPU", "GPU", "ANE"]
    assert "[0, 1]" in model.input_description["image"] and "(1, 3, 64, 64)" in model.input_description["image"]
    assert "(1, C, H, W)" in model.output_description["logits"]

    fp16 = ct.models.MLModel(str(converted["fp16"].path), skip_model_load=True)
    assert fp16.user_defined_metadata["compute_units"] == "CPU_AND_NE"
    assert converted["fp16"].compute_units == ["CPU", "ANE"]
    assert fp16.author and fp16.license and fp16.short_description  # defaults when not given


# --------------------------------------------------------------------------- op counts


def test_mil_op_counts_from_path_model_and_spec_agree(converted) -> None:
    path = converted["fp32"].path
    by_path = coreml.mil_op_counts(path)
    model = ct.models.MLModel(str(path), skip_model_load=True)
    assert coreml.mil_op_counts(model) == by_path
    assert coreml.mil_op_counts(model.get_spec()) == by_path
    assert coreml.mil_op_counts(str(path)) == by_path
    # 6 convolutions, the batch norm after the concatenation (kept in fp32), 1 transposed conv
    assert by_path["conv"] == 6 and by_path["conv_transpose"] == 1 and by_path["batch_norm"] == 1
    assert by_path["prelu"] == 2 and by_path["linear"] == 2 and by_path["upsample_bilinear"] == 1
    assert by_path["avg_pool"] == 2 and by_path["pad"] == 2
    assert converted["fp32"].report["mil_ops"] == by_path


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_no_op_expands(converted, precision: str) -> None:
    report = converted[precision].report
    assert report["mil_op_total_non_const"] <= coreml_conversion.MAX_OP_RATIO * report["exported_op_total"]
    assert report["mil_per_exported_op"] <= coreml_conversion.MAX_OP_RATIO


def test_op_counts_of_a_missing_package_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="no Core ML model"):
        coreml.mil_op_counts(tmp_path / "absent.mlpackage")


def test_reconverting_replaces_the_package(converted, tmp_path: Path) -> None:
    out = tmp_path / "same.mlpackage"
    first = coreml.convert(request(tmp_path, "fp32", out_path=out))
    second = coreml.convert(request(tmp_path, "fp32", out_path=out, options={"compute_units": "CPU_ONLY"}))
    assert first.path == second.path == out
    model = ct.models.MLModel(str(out), skip_model_load=True)
    assert model.user_defined_metadata["compute_units"] == "CPU_ONLY"
    assert [p.name for p in tmp_path.iterdir()] == ["same.mlpackage"]


def test_later_deployment_target(tmp_path: Path) -> None:
    result = coreml.convert(request(tmp_path, "fp16", options={"minimum_deployment_target": "iOS18"}))
    assert load_spec(result.path).specificationVersion == 9
    assert result.report["minimum_deployment_target"] == "iOS18"


# --------------------------------------------------------------------------- quantizer


def test_quantizer_keeps_the_toy_close_to_float() -> None:
    model, x = make_toy(), torch.rand(SHAPE)
    quantized, info = coreml.quantize_pt2e(model, x, calibration=calibration(8))
    assert info["quantize_ops"] > 0 and info["float_ops"] == {}
    with torch.no_grad():
        for t in calibration(3, seed=7):
            ref, got = model(t), quantized(t)
            assert (got - ref).abs().max() <= 0.05 * ref.abs().max()


class OneSided(nn.Module):
    """Conv -> PReLU with small slopes: a nearly non-negative activation, as after most ESPNet blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.PReLU(8, init=0.02)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x)))


def _quantize_node_after(quantized: torch.fx.GraphModule, producer: str) -> torch.fx.Node:
    return next(n for n in quantized.graph.nodes
                if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
                and "dequantize" not in str(n.target) and n.args[0].name == producer)


def _int8_codes_after(quantized: torch.fx.GraphModule, producer: str, value: torch.Tensor) -> torch.Tensor:
    """int8 codes that the quantize node after ``producer`` gives ``value``."""
    node = _quantize_node_after(quantized, producer)
    scale, zero_point, low, high = (float(a) for a in node.args[1:5])
    return torch.clamp(torch.round(value / scale) + zero_point, low, high)


def test_one_sided_activation_keeps_all_256_levels() -> None:
    # A symmetric scale leaves the negative half of int8 unused after a PReLU: one bit lost on
    # every such tensor, which cost ESPNet ~18 mIoU on CamVid in Core ML int8.
    torch.manual_seed(0)
    model = OneSided().eval()
    quantized, _ = coreml.quantize_pt2e(model, torch.rand(SHAPE), calibration=calibration(8))
    with torch.no_grad():
        activation = model.act(model.a(calibration(1, seed=7)[0]))
    assert activation.min() < 0 < activation.max() and -activation.min() < 0.05 * activation.max()
    codes = _int8_codes_after(quantized, "prelu", activation)
    assert codes.min() <= -120  # zero sits near the bottom of the int8 range, not in its middle
    assert codes.unique().numel() > 160


def test_histogram_ranges_trim_a_rare_outlier() -> None:
    # One input pixel 40x brighter than the rest: min/max ranges stretch to cover it, histogram
    # ranges trim it for the bulk of the values.
    torch.manual_seed(0)
    model = OneSided().eval()
    spiky = calibration(8)
    spiky[0][0, :, 5, 7] = 40.0
    scales = {}
    for observer in ("histogram", "minmax"):
        quantizer = coreml.coreml_quantizer(activation_observer=observer)
        quantized, _ = coreml.quantize_pt2e(model, torch.rand(SHAPE), calibration=spiky, quantizer=quantizer)
        scales[observer] = float(_quantize_node_after(quantized, "prelu").args[1])
    assert scales["histogram"] < 0.8 * scales["minmax"], scales


class _Answers(nn.Module):
    """A stand-in int8 graph whose argmax is right on the first ``right`` of the scored inputs."""

    def __init__(self, model: nn.Module, right: int) -> None:
        super().__init__()
        self.model, self.right, self.calls = model, right, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.model(x)
        return out if self.calls <= self.right else -out


@pytest.mark.parametrize("right, chosen", [({"minmax": 3, "histogram": 6}, "histogram"),
                                           ({"minmax": 6, "histogram": 3}, "minmax"),
                                           ({"minmax": 5, "histogram": 5}, "minmax")])  # a tie: the cheaper
def test_conversion_keeps_the_observer_that_agrees_best(monkeypatch, right: dict, chosen: str) -> None:
    # ESPNet on CamVid needs histogram ranges (69.25 against 68.22 mIoU), the default ESPNetv2 on
    # its photos min/max (98.94% against 96.02% agreement): neither default fits both.
    model = make_toy().eval()

    def fake_quantize(module, example, *, calibration=None, qat_module=None, quantizer=None, refine=None):
        return _Answers(module, right[quantizer.observer_name]), {"source": "calibration"}

    real = coreml_quantize.coreml_quantizer

    def named(**kw):
        q = real(**kw)
        q.observer_name = kw["activation_observer"]
        return q

    monkeypatch.setattr(coreml_quantize, "quantize_pt2e", fake_quantize)
    monkeypatch.setattr(coreml_quantize, "coreml_quantizer", named)
    graph, info = coreml_quantize.quantize_choosing_observer(model, torch.rand(SHAPE), calibration(10))
    assert info["activation_observer"] == chosen and graph.right == right[chosen]
    assert info["observer_agreement"] == {k: v / 8 * 100 for k, v in right.items()}  # the first 8 inputs
    assert info["observer_inputs"] == 8


def test_unknown_activation_observer_is_named() -> None:
    with pytest.raises(ConversionError, match="unknown activation_observer 'maxabs'; valid: histogram, minmax"):
        coreml.coreml_quantizer(activation_observer="maxabs")


def test_float_modules_stay_float() -> None:
    quantizer = coreml.coreml_quantizer(float_modules=["up"])
    _, info = coreml.quantize_pt2e(make_toy(), torch.rand(SHAPE), calibration=calibration(2), quantizer=quantizer)
    assert info["float_ops"] == {"aten.conv_transpose2d.input": 1}


def test_standalone_batch_norm_becomes_depthwise_conv() -> None:
    model = make_toy()
    gm = torch.export.export(model, (torch.rand(SHAPE),)).module()
    before = [n for n in gm.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    assert len(before) == 2
    assert coreml_quantize._batch_norms_to_depthwise(gm) == 2
    assert not [n for n in gm.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    x = torch.rand(SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


class SmallNoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.PReLU(8)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x)) + 0.5)


def _qat_module(model: nn.Module, steps: int = 3) -> torch.nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    gm = torch.export.export(model.train(), (torch.rand(SHAPE),)).module()
    prepared = prepare_qat_pt2e(gm, coreml.coreml_quantizer(is_qat=True))
    opt = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    for t in calibration(steps):
        loss = prepared(t).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return prepared


def test_qat_module_converts_without_calibration(tmp_path: Path) -> None:
    model = SmallNoBN().eval()
    qat = _qat_module(SmallNoBN())
    result = coreml.convert(
        request(tmp_path, "int8", module=model, qat_module=qat, labels=["a", "b", "c", "d"])
    )
    assert result.report["quantization"]["source"] == "qat"
    counts = coreml.mil_op_counts(result.path)
    assert counts["quantize"] >= 2 and counts["constexpr_affine_dequantize"] == 2


@pytest.mark.slow
def test_qat_module_with_conv_bn_converts(tmp_path: Path) -> None:
    # convert_pt2e folds QAT conv+bn pairs by tracing ~100 pattern graphs: about a minute.
    qat = _qat_module(make_toy())
    result = coreml.convert(request(tmp_path, "int8", qat_module=qat))
    counts = coreml.mil_op_counts(result.path)
    assert counts["quantize"] >= 10 and "constexpr_affine_dequantize" in counts


# --------------------------------------------------------------------------- errors


def test_int8_without_calibration_or_qat_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"--calibration DIR.*--qat-checkpoint PATH"):
        coreml.convert(request(tmp_path, "int8"))
    assert not (tmp_path / "toy_int8.mlpackage").exists()


@pytest.mark.parametrize(
    ("precision", "kw", "message"),
    [
        ("fp32", {"qat_module": nn.Identity()}, "only converts to int8"),
        ("fp32", {"options": {"compute_units": "GPU_ONLY"}}, "compute_units"),
        ("fp32", {"options": {"minimum_deployment_target": "iOS99"}}, "minimum_deployment_target"),
        ("fp32", {"options": {"minimum_deployment_target": "iOS14"}}, "iOS15"),
        ("int8", {"calibration": calibration(1), "options": {"minimum_deployment_target": "iOS16"}}, "iOS17"),
        ("int8", {"calibration": [torch.rand(1, 3, 32, 32)]}, "shaped like the example"),
        ("int8", {"qat_module": nn.Identity()}, "prepare_qat_pt2e"),
        ("int4", {}, "unknown precision"),
        ("fp32", {"example_input": torch.rand(3, 64, 64)}, r"\(1, 3, H, W\)"),
    ],
)
def test_bad_requests_raise_conversion_error(tmp_path: Path, precision: str, kw: dict, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        coreml.convert(request(tmp_path, precision, **kw))


def test_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=".mlpackage"):
        coreml.convert(request(tmp_path, "fp32", out_path=tmp_path / "model.mlmodel"))


def test_non_logits_output_is_rejected(tmp_path: Path) -> None:
    class Mask(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.argmax(1).to(torch.int32)

    with pytest.raises(ConversionError, match="logits"):
        coreml.convert(request(tmp_path, "fp32", module=Mask()))


def test_missing_coremltools_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "coremltools", None)  # makes `import coremltools` fail
    with pytest.raises(MissingBackendError, match=r"pip install coremltools==9\.0"):
        coreml.convert(request(tmp_path, "fp32"))


# --------------------------------------------------------------------------- real model


MODEL_ID = "espnetv2_s_2.0_pascal_256x256"


@pytest.mark.slow
@pytest.mark.weights
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_model_converts_fast_without_op_expansion(weights_dir, tmp_path: Path, precision: str) -> None:
    import espnet_mobile as em
    from espnet_mobile.deploy import make_deployable
    from tests.conftest import checkpoint_path

    model = em.create_model(MODEL_ID, weights=checkpoint_path(weights_dir, MODEL_ID))
    module = make_deployable(model, MODEL_ID)
    started = time.perf_counter()
    result = coreml.convert(
        ConversionRequest(
            module=module,
            example_input=module.example_input(),
            precision=precision,
            out_path=tmp_path / f"{MODEL_ID}.mlpackage",
            model_id=MODEL_ID,
        )
    )
    assert time.perf_counter() - started <= 60
    report = result.report
    assert report["mil_op_total_non_const"] <= 1.5 * report["exported_op_total"]
    assert report["output"]["shape"] == [1, 21, 256, 256]
    assert non_const_types(result.path) <= {
        "conv", "prelu", "add", "concat", "transpose", "upsample_bilinear", "linear", "avg_pool",
        "reshape", "mul", "reduce_mean", "sigmoid", "cast",
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.weights
def test_real_model_int8_calibrated_on_photos(weights_dir, images_dir, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    import espnet_mobile as em
    from espnet_mobile.deploy import make_deployable
    from tests.conftest import checkpoint_path

    model = em.create_model(MODEL_ID, weights=checkpoint_path(weights_dir, MODEL_ID))
    module = make_deployable(model, MODEL_ID)
    photos = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:4]
    batches = [
        torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((256, 256))).copy())
        .permute(2, 0, 1)[None]
        .float()
        / 255
        for p in photos
    ]
    result = coreml.convert(
        ConversionRequest(
            module=module,
            example_input=module.example_input(),
            precision="int8",
            out_path=tmp_path / f"{MODEL_ID}_int8.mlpackage",
            model_id=MODEL_ID,
            calibration=batches,
        )
    )
    report = result.report
    assert report["quantization"]["float_ops"] == {}
    assert report["mil_op_total_non_const"] <= 1.5 * report["exported_op_total"]
    counts = report["mil_ops"]
    assert counts["quantize"] > 200 and counts["constexpr_affine_dequantize"] > 150
    assert non_const_types(result.path) <= {
        "conv", "prelu", "add", "concat", "transpose", "upsample_bilinear", "linear", "avg_pool",
        "reshape", "mul", "reduce_mean", "sigmoid", "cast", "quantize", "dequantize",
        "constexpr_affine_dequantize",
    }  # fmt: skip


@pytest.mark.parametrize("target, delegate, precision, ext", [("coreml", "coreml", "fp32", "mlpackage"),
                                                              ("executorch", "coreml", "fp16", "pte")])
def test_same_model_gives_the_same_bytes(tmp_path: Path, target: str, delegate: str, precision: str,
                                         ext: str) -> None:
    """coremltools names package items and ExecuTorch names delegate models by random UUIDs; ours are derived."""
    import converters
    from espnet_mobile.files import sha256_path

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.rand(1, 3, 16, 16)
    shas = []
    for i in range(2):
        out = tmp_path / str(i) / f"m.{ext}"
        converters.backend(target).convert(ConversionRequest(net, x, precision, out, options={"delegate": delegate}))
        shas.append(sha256_path(out))
    assert shas[0] == shas[1]
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()  # other weights
    out = tmp_path / "other" / f"m.{ext}"
    converters.backend(target).convert(ConversionRequest(other, x, precision, out, options={"delegate": delegate}))
    assert sha256_path(out) != shas[0]
