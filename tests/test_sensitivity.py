"""Per-layer int8 sensitivity scan: the float bypass is exact, and the scan finds the layer that hurts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from espnet_mobile import sensitivity as S

pytest.importorskip("executorch")
pytest.importorskip("torchao")


RATIO = 150.0  # large tap over the largest small one


class OutlierNet(nn.Module):
    """Three convs; int8 rounds away the middle one's weights.

    Every output channel of the middle conv has one large tap (1.0) on a stem channel
    that the ReLU always zeroes, and taps at least 150x smaller elsewhere: per-channel
    int8 rounds most small taps to 0 or one level, so that layer's weights are where the error
    comes from, and only that layer in float removes it (its output is quantized again
    for the head either way). Its weight gain stays under the converter's automatic
    float threshold (100).
    """

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(3)
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.middle = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 5, 1)
        with torch.no_grad():
            self.stem.bias[0] = -100.0  # channel 0 is always zero after the ReLU
            factor = 1.0 / (RATIO * self.middle.weight.abs().max())
            self.middle.weight.mul_(factor)
            self.middle.bias.mul_(factor)
            self.head.weight.div_(factor)  # the head reads the small signal at its former scale
            self.middle.weight[:, 0, 1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.middle(torch.relu(self.stem(x)))))


def _inputs(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 16, 16, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def quantized():
    net = OutlierNet().eval()
    gm, info = S.quantized_graph(net, "xnnpack", _inputs(8, seed=1))
    return net, gm, info


def test_layers_and_their_share_of_the_macs(quantized):
    _, gm, _ = quantized
    layers = S.conv_layers(gm)
    assert [layer.module for layer in layers] == ["stem", "middle", "head"]
    assert [layer.macs for layer in layers] == [16 * 16 * 8 * 27, 16 * 16 * 8 * 72, 16 * 16 * 5 * 8]
    assert sum(layer.share for layer in layers) == pytest.approx(1.0)


def test_every_layer_in_float_is_the_float_model_on_the_int8_input(quantized):
    """With each layer in float, only the input's quantization is left."""
    net, gm, _ = quantized
    x = _inputs(1, seed=2)[0]
    with torch.no_grad():
        assert (gm(x) - net(x)).abs().max() > 1e-3  # int8 is not float
        gm = S.with_layers_in_float(gm, [layer.node for layer in S.conv_layers(gm)])
        (q,) = [n for n in gm.graph.nodes if S._is_quantize(n)]
        assert q.args[0].op == "placeholder"
        scale, zero_point, qmin, qmax = q.args[1:5]
        x_int8 = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), int(qmin), int(qmax))
        torch.testing.assert_close(gm(x), net(x_int8), rtol=1e-5, atol=1e-5)


def test_a_float_layer_is_quantized_again_for_its_int8_reader(quantized):
    """As in an artifact: only layers in float together pass float tensors; the logits stay float."""
    _, gm, _ = quantized
    _stem, middle, head = (layer.node for layer in S.conv_layers(gm))

    def reads(graph: torch.fx.GraphModule, name: str) -> torch.fx.Node:
        return next(n for n in graph.graph.nodes if n.name == name).args[0]

    alone = S.with_layers_in_float(gm, [middle])
    assert S._is_dequantize(reads(alone, middle)) and S._is_dequantize(reads(alone, head))
    together = S.with_layers_in_float(gm, [middle, head])
    assert S._is_dequantize(reads(together, middle))
    assert reads(together, head).target is torch.ops.aten.relu.default  # middle's float output, through its ReLU
    (output,) = [n for n in together.graph.nodes if n.op == "output"]
    assert not any(S._is_dequantize(a) for a in output.all_input_nodes)


def test_variant_leaves_the_source_graph_alone(quantized):
    _, gm, _ = quantized
    before = gm.code
    S.with_layer_in_float(gm, S.conv_layers(gm)[1].node)
    assert gm.code == before


def test_scan_ranks_the_outlier_layer_first(quantized):
    net, gm, _ = quantized
    scorer = S.Scorer(_inputs(6, seed=4), [None] * 6, 5, list(range(5)), net)
    base, rows = S.scan(gm, S.conv_layers(gm), scorer, rank="miou")  # no labels: by agreement
    assert base.miou is None and base.agreement < 100.0
    assert rows[0].module == "middle", rows
    assert rows[0].agreement_recovered > 0 and rows[0].agreement_recovered >= rows[-1].agreement_recovered


@pytest.mark.slow  # 20-70 s: the real ESPNet quantized and scored three times
def test_main_on_camvid_frames(weights_dir, datasets_dir, tmp_path, capsys):
    """The command end to end on 2 CamVid frames at 64x96, three layers."""
    out = tmp_path / "scan.json"
    layers = ["body.encoder.level1.conv", "body.encoder.level3.7.d16.conv", "body.classifier"]
    code = S.main(["--model", "espnet_p_2_q_8_camvid", "--data", f"camvid:{datasets_dir / 'camvid'}",
                   "--limit", "2", "--calibration-limit", "2", "--input-size", "64x96",
                   "--layers", *layers, "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["calibration_inputs"] == 4 and result["rank"] == "miou"
    assert sorted(r["module"] for r in result["rows"]) == sorted(layers)
    assert result["fp32"]["agreement"] == 100.0 and result["fp32"]["miou"] is not None
    recovered = [r["miou_recovered"] for r in result["rows"]]
    assert recovered == sorted(recovered, reverse=True)
    assert "body.encoder.level1.conv" in capsys.readouterr().out


@pytest.mark.slow  # 15-40 s
def test_a_cityscapes_model_on_camvid_frames_is_ranked_by_agreement(weights_dir, datasets_dir, tmp_path, capsys):
    """CamVid's labels cannot score a Cityscapes model, but its street frames can: agreement only."""
    out = tmp_path / "scan.json"
    code = S.main(["--model", "espnetc_p_2_q_3", "--data", f"camvid:{datasets_dir / 'camvid'}",
                   "--limit", "2", "--calibration-limit", "2", "--input-size", "64x128",
                   "--layers", "body.level1.conv", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["rank"] == "agreement" and result["fp32"]["miou"] is None
    assert result["images"] == 2 and result["rows"][0]["miou"] is None
    printed = capsys.readouterr()
    assert "scored by agreement with fp32 only" in printed.out + printed.err


def test_bad_arguments_exit_2(tmp_path):
    with pytest.raises(SystemExit) as err:
        S.main(["--model", "espnet_p_2_q_8_camvid", "--data", str(tmp_path), "--backend", "qnn"])
    assert err.value.code == 2
    assert S.main(["--model", "espnet_p_2_q_8_camvid", "--data", f"camvid:{tmp_path / 'missing'}"]) == 2


def test_calibration_frames_are_spread_over_the_split_as_convert_picks_them(tmp_path):
    """The scan must quantize like convert: frames spread over the split, not the first run of one sequence."""
    from PIL import Image

    from espnet_mobile import data

    for seq in ("0001TP", "0006R0", "0016E5", "Seq05VD"):
        for i in range(5):
            Image.new("RGB", (8, 6)).save(tmp_path / f"{seq}_{i:03d}.png")
    spec = data.parse_spec(str(tmp_path))
    first = S._frames(spec, "train", 4)
    spread = S._frames(spec, "train", 4, spread=True)
    assert [p.name[:6] for p in first] == ["0001TP"] * 4
    assert [p.name[:6] for p in spread] == ["0001TP", "0006R0", "0016E5", "Seq05V"]
    assert S._frames(spec, "train", None, spread=True) == S._frames(spec, "train", None)


def stray_value_case() -> tuple[nn.Module, list[torch.Tensor]]:
    """A conv and calibration inputs on which Core ML's converter keeps histogram ranges over min/max.

    One stray value among 390,000: min/max spreads the input's 256 levels over [0, 30]; the histogram
    range clips it (a large tensor is needed: a histogram range minimises the squared error over all values).
    """
    with torch.random.fork_rng():
        torch.manual_seed(4)
        net = nn.Conv2d(3, 4, 1).eval()
    g = torch.Generator().manual_seed(5)
    calibration = [torch.rand(1, 3, 128, 128, generator=g) for _ in range(8)]
    calibration[0][0, 0, 0, 0] = 30.0
    return net, calibration


def test_coreml_is_simulated_with_the_activation_ranges_its_converter_keeps():
    """Core ML's converter calibrates with min/max and with histogram ranges and keeps the one that agrees
    better with float; the scan's and the budget's graph must be that one, not min/max alone (which put the
    Cityscapes ESPNets' simulation 14-50 points below their artifacts)."""
    from converters.coreml.quantize import quantize_choosing_observer

    net, calibration = stray_value_case()
    gm, info = S.quantized_graph(net, "coreml", calibration)
    assert info["quantizer"] == "histogram"
    assert info["quantizer_agreement"]["histogram"] > info["quantizer_agreement"]["minmax"] + 1.0
    converted, report = quantize_choosing_observer(net, calibration[0], calibration)
    assert report["activation_observer"] == "histogram"
    with torch.no_grad():
        for x in calibration[1:4]:
            torch.testing.assert_close(gm(x), converted(x), rtol=0.0, atol=1e-6)
