"""ExecuTorch converter: lowering, delegation report, int8, bundled programs, runtime.

A small network built from the operators of the deployable ESPNetv2 graph
stands in for the real model, so these tests run in seconds to tens of seconds.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from converters.executorch import lowering as cx_lowering
from converters.executorch import quantize as cx_quantize

pytest.importorskip("executorch", reason="ExecuTorch not installed: pip install executorch==1.5.1")

from converters import executorch as cx
from converters.base import ConversionError, ConversionRequest, MissingBackendError

H = W = 64
NUM_CLASSES = 5


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D bilinear resizing with align_corners=True."""
    pos = torch.arange(n_out, dtype=torch.float64) * (n_in - 1) / (n_out - 1)
    lo = pos.floor().long().clamp(max=n_in - 2)
    frac = (pos - lo).float()
    m = torch.zeros(n_out, n_in)
    rows = torch.arange(n_out)
    m[rows, lo] = 1 - frac
    m[rows, lo + 1] += frac
    return m


class ToyDeployNet(nn.Module):
    """The operator mix of the deployable graph at toy size: (1,3,64,64) -> (1,5,64,64)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)  # strided
        self.stem_bn = nn.BatchNorm2d(16)
        self.stem_act = nn.PReLU(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.grouped_bn = nn.BatchNorm2d(16)
        self.dilated_dw = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16, bias=False)
        self.mid_act = nn.PReLU(32)
        self.gate = nn.Conv2d(32, 32, 1)
        self.down = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(35, 32, 1)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.aux = nn.Conv2d(32, 16, 1)
        self.head = nn.Conv2d(16, NUM_CLASSES, 1)
        self.register_buffer("resize_w", resize_matrix(32, W))
        self.register_buffer("resize_h", resize_matrix(32, H))
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() > 1:  # He-like init, deterministic
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            for act in (self.stem_act, self.mid_act):
                act.weight.copy_(0.1 + 0.3 * torch.rand(act.weight.shape, generator=g))
            for bn in (self.stem_bn, self.grouped_bn):
                bn.running_mean.uniform_(-0.2, 0.2, generator=g)
                bn.running_var.uniform_(0.5, 1.5, generator=g)
                bn.weight.uniform_(0.5, 1.5, generator=g)
                bn.bias.uniform_(-0.2, 0.2, generator=g)
        self.eval()
        self._fit_head()

    def _fit_head(self) -> None:
        """Least-squares fit of the 1x1 head on the random features to a colour-segmentation
        task, so that the logits are as a trained segmenter's rather than
        near-ties everywhere (which would make any argmax comparison meaningless)."""
        feats: list[torch.Tensor] = []
        hook = self.head.register_forward_hook(lambda mod, args, out: feats.append(args[0]))
        images = smooth_images(8, seed=555)
        with torch.no_grad():
            for x in images:
                self(x)
        hook.remove()
        u = torch.cat(feats).permute(0, 2, 3, 1).reshape(-1, self.head.in_channels)
        labels = torch.cat([colour_labels(x, (32, 32)) for x in images]).reshape(-1)
        target = 4.0 * (F.one_hot(labels, NUM_CLASSES).float() - 1.0 / NUM_CLASSES)
        design = torch.cat([u, torch.ones(len(u), 1)], dim=1)
        solution = torch.linalg.lstsq(design, target).solution
        with torch.no_grad():
            self.head.weight.copy_(solution[:-1].T.reshape(self.head.weight.shape))
            self.head.bias.copy_(solution[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem_act(self.stem_bn(self.stem(x)))  # 16 x 32 x 32
        z = self.mid_act(torch.cat([self.grouped_bn(self.grouped(y)), self.dilated_dw(y)], dim=1))
        z = z * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(z, 1)))
        z = z.reshape(1, 4, 8, 32, 32).transpose(1, 2).reshape(1, 32, 32, 32)  # channel shuffle
        d = self.down(z)  # 32 x 16 x 16
        p = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2, padding=0)
        p = F.avg_pool2d(F.pad(p, (1, 1, 1, 1)), 3, stride=2, padding=0)  # image pyramid, 3 x 16 x 16
        d = self.proj(torch.cat([d, p], dim=1)) + d
        u = self.up(d) + y  # 16 x 32 x 32
        u = u + F.interpolate(self.aux(d), size=(32, 32), mode="bilinear", align_corners=True)
        o = self.head(u)
        o = F.linear(o, self.resize_w)  # resize W with a constant matrix
        return F.linear(o.permute(0, 1, 3, 2), self.resize_h).permute(0, 1, 3, 2)  # and H


PROTOTYPES = torch.tensor([[0.2, 0.2, 0.2], [0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.2, 0.8], [0.8, 0.8, 0.8]])


def colour_labels(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Synthetic ground truth: index of the nearest of five prototype colours, per pixel."""
    small = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
    dist = ((small.unsqueeze(1) - PROTOTYPES.view(1, NUM_CLASSES, 3, 1, 1)) ** 2).sum(dim=2)
    return dist.argmin(dim=1)


def smooth_images(n: int, seed: int) -> list[torch.Tensor]:
    """Photo-like inputs in [0, 1]: low-frequency colour fields plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    img = F.interpolate(low, size=(H, W), mode="bicubic", align_corners=False)
    img = img + 0.03 * torch.randn(img.shape, generator=g)
    return list(img.clamp(0, 1).split(1))


@pytest.fixture(scope="module")
def toy() -> ToyDeployNet:
    return ToyDeployNet()


@pytest.fixture(scope="module")
def example() -> torch.Tensor:
    return smooth_images(1, seed=123)[0]


@pytest.fixture(scope="module")
def fp32_result(toy, example, tmp_path_factory):
    out = tmp_path_factory.mktemp("et") / "toy_fp32.pte"
    req = ConversionRequest(module=toy, example_input=example, precision="fp32", out_path=out,
                            options={"bundle": True})
    return cx.convert(req)


@pytest.fixture(scope="module")
def int8_result(toy, example, tmp_path_factory):
    out = tmp_path_factory.mktemp("et") / "toy_int8.pte"
    req = ConversionRequest(module=toy, example_input=example, precision="int8", out_path=out,
                            calibration=smooth_images(16, seed=1), options={"int8_fp32_layers": ["aux"]})
    return cx.convert(req)


# ----------------------------------------------------------------------------- fp32


def test_fp32_pte_matches_eager(toy, fp32_result) -> None:
    assert fp32_result.path.is_file() and fp32_result.path.stat().st_size > 0
    for x in smooth_images(3, seed=7):
        with torch.no_grad():
            ref = toy(x)
        out = cx.run_pte(fp32_result.path, x)
        assert out.shape == ref.shape == (1, NUM_CLASSES, H, W)
        assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_fp32_result_metadata(fp32_result) -> None:
    r = fp32_result
    assert r.target == "executorch-xnnpack" and r.precision == "fp32"
    assert r.compute_units == ["CPU"]
    assert r.executable_here and r.not_executable_reason is None
    assert {"torch", "executorch"} <= set(r.tool_versions)
    assert r.tool_versions["executorch"].startswith("1.5.1")
    assert r.report["pte_bytes"] == r.path.stat().st_size
    assert r.seconds > 0


def test_run_pte_rejects_wrong_shape(fp32_result) -> None:
    with pytest.raises(ValueError, match="expects an input of shape"):
        cx.run_pte(fp32_result.path, torch.rand(1, 3, 32, 32))


# ----------------------------------------------------------------------------- delegation


def test_toy_graph_is_fully_delegated_to_xnnpack(fp32_result) -> None:
    rep = fp32_result.report["delegation"]
    assert rep["fully_delegated"], cx_lowering.format_delegation_report(rep)
    assert rep["non_delegated_compute"] == {}
    assert rep["rejections"] == {}
    assert rep["backends"] == {"XnnpackBackend": {"subgraphs": 1, "ops": rep["delegated"]}}
    ops = rep["ops"]
    expected = {  # every operator family of the deployable graph, counted inside the delegate
        "aten.convolution.default": 9,  # plain, strided, grouped, depthwise-dilated, 1x1, transposed
        "aten.prelu.default": 2,
        "aten.constant_pad_nd.default": 2,
        "aten.avg_pool2d.default": 2,
        "aten.cat.default": 2,
        "aten.mean.dim": 1,  # adaptive_avg_pool2d(x, 1)
        "aten.sigmoid.default": 1,
        "aten.mul.Tensor": 1,
        "aten.add.Tensor": 3,
        "aten.upsample_bilinear2d.vec": 1,
        "aten.linear.default": 2,
        "aten.permute_copy.default": 3,  # the shuffle's transpose and the two H permutes
        "aten.view_copy.default": 2,
    }
    for op, n in expected.items():
        assert ops[op] == {"delegated": n, "non_delegated": 0}, (op, ops.get(op))
    # BatchNorm after a convolution is folded into it inside the delegate.
    assert ops["aten._native_batch_norm_legit_no_training.default"]["non_delegated"] == 0
    # Only the tuple unpacking of the delegate's output stays outside.
    assert rep["non_delegated_nodes"] and set(rep["non_delegated_nodes"].values()) == {"getitem"}


def test_delegation_report_table(fp32_result) -> None:
    table = cx_lowering.format_delegation_report(fp32_result.report["delegation"])
    assert "aten.convolution.default" in table and "XnnpackBackend: 1 subgraph(s)" in table
    assert "fully delegated" in table and "NOT fully" not in table
    total = next(line for line in table.splitlines() if line.startswith("TOTAL"))
    assert total.split()[1:] == [str(fp32_result.report["delegation"]["delegated"]), "1"]


class _PartlyUnsupported(nn.Module):
    """avg_pool2d with implicit zero padding counted in the average: XNNPACK refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 3, stride=2, padding=1) * 2.0


def test_delegation_report_names_non_delegated_ops_and_reasons(tmp_path) -> None:
    x = torch.rand(1, 3, 16, 16)
    model = _PartlyUnsupported().eval()
    lowered = cx.lower(model, x)
    rep = lowered.report["delegation"]
    assert not rep["fully_delegated"]
    assert rep["non_delegated_compute"] == {"aten.avg_pool2d.default": 1}
    assert rep["ops"]["aten.convolution.default"] == {"delegated": 1, "non_delegated": 0}
    assert rep["ops"]["aten.mul.Tensor"]["delegated"] == 1
    (reason,) = rep["rejections"].values()
    assert "avg_pool2d" in reason and "padding" in reason
    table = cx_lowering.format_delegation_report(rep)
    assert "NOT fully delegated" in table and "aten.avg_pool2d.default x1" in table
    # Same delegated count as ExecuTorch's own utility.
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(lowered.edge.exported_program().graph_module)
    assert info.num_delegated_nodes == rep["delegated"]
    assert info.num_delegated_subgraphs == rep["backends"]["XnnpackBackend"]["subgraphs"] == 2  # split by the pool
    # The program still runs (the pool on the portable CPU kernels) and matches eager.
    path = tmp_path / "partial.pte"
    path.write_bytes(lowered.buffer)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(cx.run_pte(path, x), ref, atol=1e-5)


# ----------------------------------------------------------------------------- int8


def test_int8_argmax_agrees_with_fp32(toy, fp32_result, int8_result) -> None:
    assert int8_result.precision == "int8" and int8_result.executable_here
    assert int8_result.report["quantization"]["calibration_samples"] == 16
    assert int8_result.report["delegation"]["fully_delegated"], cx_lowering.format_delegation_report(
        int8_result.report["delegation"])
    assert int8_result.report["pte_bytes"] < fp32_result.report["pte_bytes"]
    assert "torchao" in int8_result.tool_versions
    agree = []
    for x in smooth_images(4, seed=99):  # held out from calibration
        ref = cx.run_pte(fp32_result.path, x).argmax(1)
        out = cx.run_pte(int8_result.path, x).argmax(1)
        agree.append((ref == out).float().mean().item())
    assert min(agree) >= 0.97, agree


def test_int8_weights_are_quantized_per_channel(int8_result) -> None:
    ops = int8_result.report["delegation"]["ops"]
    # 9 convolutions and 2 constant-matrix linears, minus the `aux` conv kept in fp32
    assert ops["quantized_decomposed.dequantize_per_channel.default"]["delegated"] == 10
    assert ops["quantized_decomposed.quantize_per_tensor.default"]["delegated"] > 0


def test_int8_keeps_requested_layers_in_fp32(int8_result) -> None:
    kept = int8_result.report["quantization"]["fp32_nodes"]
    assert [v["module"] for v in kept.values()] == ["aux"]
    assert all(v["reason"] == "requested" for v in kept.values())


class _CollapsedBatchNorm(nn.Module):
    """conv -> BN whose running variance collapsed: effective gain ~ |gamma| / sqrt(eps) ~ 1000."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.a_bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.a.weight.fill_(0.1)
            self.a_bn.running_var.copy_(torch.tensor([1.0, 1.0, 1e-9, 1.0]))
            self.a_bn.weight.fill_(3.0)
            self.b.weight.fill_(0.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a_bn(self.a(x)))


def test_high_gain_convolutions_finds_collapsed_batchnorm() -> None:
    gm = torch.export.export(_CollapsedBatchNorm(), (torch.rand(1, 3, 8, 8),), strict=False).module()
    found = cx_quantize.high_gain_convolutions(gm, cx.DEFAULT_MAX_WEIGHT_GAIN)
    assert [v["module"] for v in found.values()] == ["a"]
    (info,) = found.values()
    expected = 3.0 / (1e-9 + 1e-5) ** 0.5 * (0.1**2 * 27) ** 0.5  # |gamma|/sqrt(var+eps) * ||w||
    assert info["gain"] == pytest.approx(expected, rel=1e-3)
    assert cx_quantize.high_gain_convolutions(gm, 1e6) == {}


class _ConcatBatchNormPReLU(nn.Module):
    """ESPNetv2's EESP tail at toy size: concat -> BatchNorm as a depth-wise 1x1 conv -> PReLU -> conv."""

    def __init__(self) -> None:
        super().__init__()
        from espnet_mobile.deploy import batchnorm_as_conv

        g = torch.Generator().manual_seed(3)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=2, dilation=2)
        bn = nn.BatchNorm2d(16).eval()
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0, generator=g)
            bn.bias.uniform_(-0.3, 0.3, generator=g)
            bn.running_var.uniform_(0.2, 2.0, generator=g)
        self.bn = batchnorm_as_conv(bn)
        self.act = nn.PReLU(16)
        self.head = nn.Conv2d(16, 4, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(torch.cat([self.a(x), self.b(x)], dim=1))))


def test_affines_before_prelu_finds_the_batchnorm_conv_only() -> None:
    gm = torch.export.export(_ConcatBatchNormPReLU(), (torch.rand(1, 3, 16, 16),), strict=False).module()
    found = cx_quantize.affines_before_prelu(gm)
    assert [v["module"] for v in found.values()] == ["bn"]
    assert cx_quantize.affines_before_prelu(torch.export.export(
        ToyDeployNet(), (torch.rand(1, 3, H, W),), strict=False).module()) == {}  # no such affine there


def test_int8_affine_before_prelu_stays_fp32_and_the_file_shrinks(tmp_path) -> None:
    net = _ConcatBatchNormPReLU()
    images = smooth_images(9, seed=8)
    results = {}
    for keep in (True, False):
        req = ConversionRequest(module=net, example_input=images[0], precision="int8",
                                out_path=tmp_path / f"keep_{keep}.pte", calibration=images[1:],
                                options={"int8_float_prelu_affines": keep})
        results[keep] = cx.convert(req)
    kept = results[True].report["quantization"]["fp32_nodes"]
    assert [v["module"] for v in kept.values()] == ["bn"]
    assert results[False].report["quantization"]["fp32_nodes"] == {}

    def per_channel_weights(result) -> int:
        return result.report["delegation"]["ops"]["quantized_decomposed.dequantize_per_channel.default"]["delegated"]

    assert per_channel_weights(results[True]) == per_channel_weights(results[False]) - 1
    # 16 channels: int8 weight + int32 bias + two fp32 scales (13 B) became two fp32 values (8 B),
    # and two of the four named constants went away.
    assert results[True].report["pte_bytes"] < results[False].report["pte_bytes"] - 16 * 5
    with torch.no_grad():
        ref = net(images[0])
    for result in results.values():
        out = cx.run_pte(result.path, images[0])
        assert float((out - ref).abs().max()) < 0.1 * float(ref.abs().max())


def _named_constant_keys(path) -> list[str]:
    from executorch.exir._serialize._program import deserialize_pte_binary

    return list(deserialize_pte_binary(path.read_bytes()).named_data.pte_data)


def test_xnnpack_constants_get_short_names_and_the_same_outputs(toy, example, fp32_result, tmp_path,
                                                                monkeypatch) -> None:
    keys = _named_constant_keys(fp32_result.path)
    assert keys and all(len(k.removeprefix("scale_")) == cx_lowering.CONSTANT_KEY_HEX_DIGITS for k in keys)
    assert fp32_result.report["constant_keys"] == {"hex_digits": cx_lowering.CONSTANT_KEY_HEX_DIGITS,
                                                   "kept_full_digest": 0}
    expected = cx.run_pte(fp32_result.path, example)

    # sha256's full 64 digits, as XNNPACK names them itself: a larger file, the same program
    monkeypatch.setattr(cx_lowering, "CONSTANT_KEY_HEX_DIGITS", 64)
    full = cx.convert(ConversionRequest(module=toy, example_input=example, precision="fp32",
                                        out_path=tmp_path / "full.pte"))
    assert full.report["pte_bytes"] - fp32_result.report["pte_bytes"] >= len(keys) * (64 - 16) * 2 - 16 * len(keys)
    assert torch.equal(cx.run_pte(full.path, example), expected)

    # One digit: names clash, and each clashing constant keeps its full digest instead
    monkeypatch.setattr(cx_lowering, "CONSTANT_KEY_HEX_DIGITS", 1)
    clashing = cx.convert(ConversionRequest(module=toy, example_input=example, precision="fp32",
                                            out_path=tmp_path / "clash.pte"))
    assert clashing.report["constant_keys"]["kept_full_digest"] > 0
    names = _named_constant_keys(clashing.path)
    assert len(names) == len(keys) and {len(k) for k in names} == {1, 64}
    assert torch.equal(cx.run_pte(clashing.path, example), expected)


@pytest.mark.slow
def test_int8_from_qat_module(toy, example, tmp_path) -> None:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    captured = torch.export.export(toy.train(), (example,), strict=False).module()
    toy.eval()
    prepared = prepare_qat_pt2e(captured, cx.xnnpack_quantizer(is_qat=True))
    # Stand-in for fine-tuning: the fake-quant observers see data, in eval mode so that
    # BatchNorm keeps its running statistics and the result stays comparable to `toy`.
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        for x in smooth_images(4, seed=3):
            prepared(x)
    req = ConversionRequest(module=toy, example_input=example, precision="int8", out_path=tmp_path / "qat.pte",
                            qat_module=prepared)
    result = cx.convert(req)
    assert result.report["quantization"]["source"] == "qat"
    assert result.report["delegation"]["fully_delegated"]
    out = cx.run_pte(result.path, example)
    assert out.shape == (1, NUM_CLASSES, H, W) and torch.isfinite(out).all()
    with torch.no_grad():
        ref = toy(example)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


@pytest.mark.slow
def test_qat_module_with_per_input_channel_transposed_conv_is_refused(toy, example, tmp_path) -> None:
    """The stock XNNPACK QAT config quantizes ConvTranspose weights along axis 0 (torchao drops
    ch_axis for fused fake-quantizers); XNNPACK cannot run that, so convert says how to fix it."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    captured = torch.export.export(toy.train(), (example,), strict=False).module()
    toy.eval()
    stock = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    prepared = prepare_qat_pt2e(captured, stock)
    req = ConversionRequest(module=toy, example_input=example, precision="int8", out_path=tmp_path / "q.pte",
                            qat_module=prepared)
    with pytest.raises(ConversionError, match=r"xnnpack_quantizer\(is_qat=True\)"):
        cx.convert(req)


# ----------------------------------------------------------------------------- errors


def test_int8_without_calibration_names_the_fix(toy, example, tmp_path) -> None:
    out = tmp_path / "x.pte"
    with pytest.raises(ConversionError, match=r"--calibration DIR.*--qat-checkpoint PATH"):
        cx.convert(ConversionRequest(module=toy, example_input=example, precision="int8", out_path=out))
    with pytest.raises(ConversionError, match="--calibration"):
        cx.convert(ConversionRequest(module=toy, example_input=example, precision="int8", out_path=out,
                                     calibration=[]))
    assert not out.exists()


@pytest.mark.parametrize(("precision", "delegate", "valid"), [
    ("fp64", "xnnpack", "fp32, int8"),
    ("fp16", "xnnpack", "fp32, int8"),
    ("int8", "vulkan", "fp32, fp16"),
])
def test_unsupported_precision_lists_valid_ones(toy, example, tmp_path, precision, delegate, valid) -> None:
    req = ConversionRequest(module=toy, example_input=example, precision=precision, out_path=tmp_path / "x.pte",
                            options={"delegate": delegate}, calibration=[example])
    with pytest.raises(ConversionError, match=f"valid precisions: {valid}"):
        cx.convert(req)


def test_unknown_delegate(toy, example, tmp_path) -> None:
    req = ConversionRequest(module=toy, example_input=example, precision="fp32", out_path=tmp_path / "x.pte",
                            options={"delegate": "qnn"})
    with pytest.raises(ConversionError, match="valid delegates: xnnpack, coreml, vulkan"):
        cx.convert(req)


def test_calibration_shape_mismatch(toy, example, tmp_path) -> None:
    req = ConversionRequest(module=toy, example_input=example, precision="int8", out_path=tmp_path / "x.pte",
                            calibration=[torch.rand(1, 3, 32, 32)])
    with pytest.raises(ConversionError, match="calibration item 0 has shape"):
        cx.convert(req)


def test_missing_executorch_is_a_missing_backend_error(toy, example, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # makes `import executorch.exir` fail
    req = ConversionRequest(module=toy, example_input=example, precision="fp32", out_path=tmp_path / "x.pte")
    with pytest.raises(MissingBackendError, match=r"pip install executorch==1\.5\.1"):
        cx.convert(req)
    assert not (tmp_path / "x.pte").exists()


# ----------------------------------------------------------------------------- bundled program


def test_bundled_program_round_trip(toy, fp32_result, tmp_path) -> None:
    x = smooth_images(2, seed=5)
    with torch.no_grad():
        expected = [toy(v) for v in x]
    # From an existing .pte file (the in-memory ExecutorchProgramManager works the same way).
    path = cx.write_bundled_program(fp32_result.path, x, expected, tmp_path / "toy.bpte")
    assert path.is_file()
    outs = cx.verify_bundled_program(path, num_cases=2, rtol=1e-4, atol=1e-4)
    assert len(outs) == 2
    for out, ref in zip(outs, expected, strict=True):
        assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    # A wrong golden output is caught by the runtime's own comparison.
    bad = cx.write_bundled_program(fp32_result.path, x[:1], [expected[0] + 0.5], tmp_path / "bad.bpte")
    with pytest.raises(AssertionError, match="bundled test case 0"):
        cx.verify_bundled_program(bad, num_cases=1)


def test_bundled_program_from_program_manager(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(4)).eval()
    x = torch.rand(1, 3, 8, 8)
    lowered = cx.lower(model, x)
    with torch.no_grad():
        ref = model(x)
    path = cx.write_bundled_program(lowered.executorch, [x], [ref], tmp_path / "small.bpte")
    (out,) = cx.verify_bundled_program(path, num_cases=1)
    assert torch.allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="as many expected outputs as inputs"):
        cx.write_bundled_program(lowered, [x, x], [ref], tmp_path / "mismatch.bpte")


def test_convert_can_bundle(fp32_result, example) -> None:
    bpte = fp32_result.path.with_suffix(".bpte")
    assert fp32_result.report["bundled_program"] == str(bpte)
    (out,) = cx.verify_bundled_program(bpte, num_cases=1, rtol=1e-5, atol=1e-6)
    assert torch.allclose(out, cx.run_pte(fp32_result.path, example))


# ----------------------------------------------------------------------------- other delegates


@pytest.mark.slow
def test_coreml_delegate_lowers_but_is_not_executable_here(toy, example, tmp_path) -> None:
    pytest.importorskip("coremltools")
    req = ConversionRequest(module=toy, example_input=example, precision="fp16", out_path=tmp_path / "c.pte",
                            options={"delegate": "coreml"})
    result = cx.convert(req)
    assert result.target == "executorch-coreml" and result.path.stat().st_size > 0
    assert not result.executable_here and "Apple" in result.not_executable_reason
    assert "coremltools" in result.tool_versions
    assert result.report["delegation"]["fully_delegated"]
    assert set(result.report["delegation"]["backends"]) == {"CoreMLBackend"}


@pytest.mark.slow
def test_vulkan_delegate_lowers_but_is_not_executable_here(toy, example, tmp_path) -> None:
    req = ConversionRequest(module=toy, example_input=example, precision="fp32", out_path=tmp_path / "v.pte",
                            options={"delegate": "vulkan"})
    result = cx.convert(req)
    assert result.target == "executorch-vulkan" and result.compute_units == ["GPU"]
    assert not result.executable_here and "Vulkan" in result.not_executable_reason
    assert result.report["delegation"]["fully_delegated"]
