"""Activation ranges narrowed by the logit error they cause (converters/range_refinement.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("executorch", reason="the XNNPACK PT2E quantizer comes with executorch")


class _TailedNet(torch.nn.Module):
    """Two convolutions. One channel of the first one's output is 40x the others, and the
    second one nearly ignores it: its values stretch the shared per-tensor int8 range (so the
    other channels get coarse steps), but clipping them barely changes the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.second = torch.nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.first.weight[0] *= 40.0
            self.second.weight[:, 0] *= 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def _calibrated(net: torch.nn.Module, inputs: list[torch.Tensor]):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from converters.executorch.quantize import xnnpack_quantizer

    captured = torch.export.export(net.eval(), (inputs[0],), strict=False).module()
    prepared = prepare_pt2e(captured, xnnpack_quantizer())
    with torch.no_grad():
        for x in inputs:
            prepared(x)
    return prepared


def _inputs(seed: int, count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, 16, 16, generator=gen) for _ in range(count)]


def _scales(gm: torch.fx.GraphModule) -> list[float]:
    q = torch.ops.quantized_decomposed.quantize_per_tensor.default
    return [float(n.args[1]) for n in gm.graph.nodes if n.op == "call_function" and n.target == q]


def test_a_stretched_range_is_narrowed_and_the_converted_graph_uses_it():
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from converters.range_refinement import RangeRefinement, refine_activation_ranges

    net = _TailedNet()
    calibration = _inputs(0, 16)
    plain = convert_pt2e(_calibrated(net, calibration), fold_quantize=False)
    prepared = _calibrated(net, calibration)
    report = refine_activation_ranges(prepared, calibration, RangeRefinement(inputs=16))
    refined = convert_pt2e(prepared, fold_quantize=False)

    assert report.narrowed, "no range was narrowed although one is stretched by a channel the output ignores"
    assert report.error_after < report.error_before
    before, after = sorted(_scales(plain)), sorted(_scales(refined))
    assert len(before) == len(after)
    assert any(b > a * 1.2 for a, b in zip(after, before, strict=True)), (before, after)  # the converted graph took it

    # On other inputs too, the refined graph is closer to float.
    held_out = _inputs(1, 8)
    with torch.no_grad():
        err = {name: sum(float(torch.mean((gm(x) - net(x)) ** 2)) for x in held_out)
               for name, gm in (("plain", plain), ("refined", refined))}
    assert err["refined"] < err["plain"], err


def test_ranges_are_fixed_after_refinement():
    from converters.range_refinement import RangeRefinement, refine_activation_ranges

    net = _TailedNet()
    calibration = _inputs(2, 8)
    prepared = _calibrated(net, calibration)
    report = refine_activation_ranges(prepared, calibration, RangeRefinement(inputs=8))
    assert report.error_after <= report.error_before
    # A forward pass after refinement must not move the fixed ranges.
    fixed = [m.calculate_qparams()[0].item() for m in prepared.modules() if hasattr(m, "calculate_qparams")
             and getattr(m, "dtype", None) in (torch.int8, torch.uint8) and m.calculate_qparams()[0].numel() == 1]
    with torch.no_grad():
        prepared(torch.randn(1, 3, 16, 16) * 100)
    again = [m.calculate_qparams()[0].item() for m in prepared.modules() if hasattr(m, "calculate_qparams")
             and getattr(m, "dtype", None) in (torch.int8, torch.uint8) and m.calculate_qparams()[0].numel() == 1]
    assert fixed == again


def test_convert_flag_asks_every_backend_for_refinement():
    from converters import range_refinement
    from espnet_mobile.convert import parse_args

    assert parse_args(["--int8-refine-ranges"]).options == {range_refinement.OPTION: True}
    assert range_refinement.from_options(parse_args([]).options) is None


@pytest.mark.parametrize("backend", ["executorch", "coreml"])
def test_pt2e_quantizers_record_the_refinement(backend):
    from converters.range_refinement import RangeRefinement

    net = _TailedNet().eval()
    calibration = _inputs(3, 8)
    refine = RangeRefinement(inputs=8)
    if backend == "executorch":
        from converters.executorch.quantize import quantize_pt2e

        _, info = quantize_pt2e(net, calibration[0], calibration=calibration, refine=refine, max_weight_gain=None)
    else:
        pytest.importorskip("coremltools", reason="the Core ML quantizer comes with coremltools")
        from converters.coreml.quantize import quantize_pt2e

        _, info = quantize_pt2e(net, calibration[0], calibration=calibration, refine=refine)
    record = info["range_refinement"]
    assert record["narrowed"], record
    assert record["logit_mse_after"] < record["logit_mse_before"]


def test_litert_quantizer_records_the_refinement(tmp_path):
    pytest.importorskip("litert_torch", reason="the LiteRT quantizer comes with litert-torch")
    from converters import range_refinement
    from converters.base import ConversionRequest
    from converters.tflite.conversion import _quantize_pt2e

    calibration = _inputs(4, 8)
    req = ConversionRequest(module=_TailedNet().eval(), example_input=calibration[0], precision="int8",
                            out_path=tmp_path / "m.tflite", calibration=calibration,
                            options={range_refinement.OPTION: True, "int8_max_weight_gain": None})
    _, _, info = _quantize_pt2e(req, nhwc=False)
    record = info["range_refinement"]
    assert record["narrowed"], record
    assert record["logit_mse_after"] < record["logit_mse_before"]


def test_the_simulation_refines_as_the_converters_do():
    """sensitivity.quantized_graph (the budget's and the sensitivity scan's int8 graph) takes the same refinement."""
    from converters.range_refinement import RangeRefinement
    from espnet_mobile.sensitivity import parse_args, quantized_graph

    calibration = _inputs(5, 8)
    _, plain = quantized_graph(_TailedNet().eval(), "xnnpack", calibration)
    _, refined = quantized_graph(_TailedNet().eval(), "xnnpack", calibration, refine=RangeRefinement(inputs=8))
    assert "range_refinement" not in plain
    assert refined["range_refinement"]["narrowed"]
    args = parse_args(["--model", "espnet_p_2_q_8_camvid", "--data", "camvid:x", "--int8-refine-ranges"])
    assert args.int8_refine_ranges
