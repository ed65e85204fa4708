"""Culprit search: a check made to fail on purpose must name the layer that was broken.

The reference model is copied, ONE convolution in its decoder gets its weight
scaled by 5, that copy is converted, and the artifact is checked against the
unperturbed reference the way the parity check does it. ``locate`` must name
the perturbed layer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from converters import debug
from converters.tflite import debugger as tfl_debugger
from espnet_mobile.parity import culprit

MODEL_ID = "espnet_p_2_q_3"  # ESPNet with its decoder: small graph, quick to convert
PERTURBED = "combine_l2_l3.1.d2.conv"  # a dilated conv of the decoder's ESP module
H, W = 32, 64


# --------------------------------------------------------------------------- pieces


def test_tensor_locations_split_fused_ops_and_drop_the_counter() -> None:
    assert tfl_debugger.tensor_locations("a/b;;a/c;2") == ["a/b", "a/c"]
    assert tfl_debugger.tensor_locations("a/b;") == ["a/b"]
    assert tfl_debugger.tensor_locations("a/b;13") == ["a/b"]
    assert tfl_debugger.tensor_locations("arith.constant") == ["arith.constant"]


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.br_after_cat = nn.PReLU(2)


class Root(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(Inner(), Inner())


class Lists(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.early = nn.ModuleList([Inner(), Inner(), Inner()])
        self.late = nn.ModuleList([Inner(), Inner()])


def test_location_resolver_finds_modules_called_out_of_a_list() -> None:
    """litert-torch names ``for block in self.early`` items by index alone (``Inner_2``): unique indices
    resolve, shared ones are told apart by the tensor's size, and a tie is never guessed."""
    root = Lists()
    prefix = "converters.tflite._NamedIO/tests.test_culprit.Lists_inner/"
    r = tfl_debugger._LocationResolver(root, {"early.1.conv": 8 * 16 * 16, "late.1.conv": 8 * 8 * 8,
                                   "early.2.conv": 8 * 16 * 16})
    assert r.resolve(prefix + "tests.test_culprit.Inner_2/torch.nn.modules.conv.Conv2d_conv") == "early.2.conv"
    loc = prefix + "tests.test_culprit.Inner_1/torch.nn.modules.conv.Conv2d_conv"
    assert r.resolve(loc, 8 * 16 * 16) == "early.1.conv"
    assert r.resolve(loc, 8 * 8 * 8) == "late.1.conv"
    assert r.resolve(loc, 5) == ""  # fits neither: stop at the root rather than guess
    assert r.resolve(loc) == ""  # no size: ambiguous


def test_location_resolver_walks_the_module_tree() -> None:
    root = Root()
    r = tfl_debugger._LocationResolver(root)
    loc = ("converters.tflite._NamedIO/tests.test_culprit.Root_inner/torch.nn.modules.container.Sequential_body/"
           "tests.test_culprit.Inner_1/torch.nn.modules.activation.PReLU_br_after_cat")
    assert r.resolve(loc) == "body.1.br_after_cat"  # attribute names with underscores resolve too
    assert r.resolve(loc.rsplit("/", 1)[0] + "/torch.nn.modules.conv.Conv2d_nope") == "body.1"  # partial
    assert r.resolve("arith.constant") is None
    assert r.short(loc + ";3") == ("torch.nn.modules.container.Sequential_body/tests.test_culprit.Inner_1/"
                                   "torch.nn.modules.activation.PReLU_br_after_cat;3")


def test_pick_culprit_wants_a_jump_against_the_inputs() -> None:
    e = [debug.Compared("a", "a", "conv", 1e-7), debug.Compared("b", "b", "conv", 2e-3, [0]),
         debug.Compared("c", "c", "add", 3e-3, [1]), debug.Compared("d", "d", "conv", 0.5, [2]),
         debug.Compared("e", "e", "conv", 0.6, [3])]
    assert debug.pick_culprit(e, 1e-4) == (1, "first layer over the threshold whose error jumps against its inputs")
    assert debug.pick_culprit(e, 1e-2)[0] == 3  # b and c stay under; d jumps
    flat = [debug.Compared("a", "a", "x", 0.2), debug.Compared("b", "b", "x", 0.21, [0])]
    assert debug.pick_culprit(flat, 0.1)[0] == 0
    assert debug.pick_culprit(flat, 0.5) == (None, "no compared layer exceeds the threshold")
    result = debug.summarize("m", e, 1e-2)
    assert result["layer"] == "d" and result["input_rel_error"] == 0.003
    assert [d["layer"] for d in result["details"]] == ["a", "b", "c", "d", "e"]
    # A tensor compared with the wrong reference (its consumers are exact again) is not the culprit.
    mismatched = [debug.Compared("a", "a", "conv", 1e-7), debug.Compared("dw", "dw", "dwconv", 1.3, [0]),
                  debug.Compared("bn", "bn", "dwconv", 2e-6, [1]), debug.Compared("p", "p", "conv", 1.5, [2]),
                  debug.Compared("q", "q", "conv", 1.6, [3])]
    assert debug.pick_culprit(mismatched, 1e-4)[0] == 3


def test_weight_alignment_is_blind_to_per_channel_scales() -> None:
    w = torch.randn(6, 4, 3, 3)
    node = SimpleNamespace(target=torch.ops.aten.conv2d.default)
    tfl = tfl_debugger._weight_in_tflite_layout(node, w, "CONV_2D")
    assert tfl.shape == (6, 3, 3, 4)
    folded = tfl * np.array([0.5, -2, 3, 1, 1, 7]).reshape(6, 1, 1, 1)  # a batch norm folded in
    assert tfl_debugger._channel_cosine(folded, tfl, 0) == pytest.approx(1.0)
    assert tfl_debugger._channel_cosine(np.roll(folded, 1, axis=0), tfl, 0) < 0.5  # another conv's filter
    dw = torch.randn(8, 1, 3, 3)
    assert tfl_debugger._weight_in_tflite_layout(node, dw, "DEPTHWISE_CONV_2D").shape == (1, 3, 3, 8)
    tnode = SimpleNamespace(target=torch.ops.aten.conv_transpose2d.input)
    assert tfl_debugger._weight_in_tflite_layout(tnode, torch.randn(5, 3, 2, 2), "TRANSPOSE_CONV").shape == (3, 2, 2, 5)
    assert tfl_debugger._weight_in_tflite_layout(tnode, torch.randn(5, 3, 2, 2), "CONV_2D") is None


def test_rel_error() -> None:
    ref = np.array([1.0, -4.0, 2.0])
    assert debug.rel_error(ref + np.array([0, 0.4, 0]), ref) == pytest.approx(0.1)
    assert debug.rel_error(np.array([np.nan, 0, 0]), ref) == float("inf")
    assert debug.rel_error(np.array([0.5]), np.array([0.0])) == 0.5


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)
        self.d = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        z = torch.sigmoid(self.c(torch.relu(self.b(y))))
        return self.d(torch.cat([y, z], dim=1))


def test_bisect_finds_the_node_a_backend_gets_wrong() -> None:
    torch.manual_seed(0)
    model = Chain().eval()
    x = torch.rand(1, 3, 8, 8).numpy()
    calls = []

    def broken_backend(prefix: nn.Module, xt: torch.Tensor) -> list[np.ndarray]:
        """Runs the prefix in PyTorch, but with layer ``b`` computed wrong (its weight x5)."""
        calls.append(prefix)
        bad = copy.deepcopy(prefix)
        for name, p in bad.named_parameters():
            if name.startswith("b."):
                p.data.mul_(5.0)
        with torch.no_grad():
            out = bad(xt)
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    result = debug.bisect_graph(model, x, broken_backend, 1e-4)
    assert result["method"] == "bisect" and result["reproduced"]
    assert result["layer"] == "b"
    assert result["steps"] == len(calls) <= 6

    def good_backend(prefix: nn.Module, xt: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            out = prefix(xt)
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    assert debug.bisect_graph(model, x, good_backend, 1e-4)["reproduced"] is False


def test_locate_refuses_other_targets() -> None:
    import espnet_mobile as em
    from espnet_mobile.zoo import get_entry

    entry = get_entry(MODEL_ID)
    model = em.build_model(entry).eval()
    res = culprit.locate(SimpleNamespace(judged_as="fp32"), {"target": "onnx", "precision": "fp32"}, Path("x"), model,
                   entry, np.zeros((1, 3, H, W), dtype=np.float32))
    assert res == {"method": "none", "layer": None, "reason": "no culprit search for target 'onnx'"}


# --------------------------------------------------------------------------- failing on purpose


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory) -> SimpleNamespace:
    """The reference model, a copy with one decoder conv's weight x5, and an input."""
    import espnet_mobile as em
    from espnet_mobile.deploy import make_deployable
    from espnet_mobile.zoo import get_entry

    entry = get_entry(MODEL_ID)
    torch.manual_seed(0)
    model = em.build_model(entry).eval()
    with torch.no_grad():  # per-channel PReLU slopes, as trained models have
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
    bad = copy.deepcopy(model)
    with torch.no_grad():
        dict(bad.named_modules())[PERTURBED].weight.mul_(5.0)
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(1))
    return SimpleNamespace(entry=entry, model=model, bad=make_deployable(bad, entry, height=H, width=W),
                           x=x, tmp=tmp_path_factory.mktemp("culprit"))


def failing_check(p: SimpleNamespace, art: dict, path: Path, runtime_name: str):
    """Run the artifact like the parity check does, against the *unperturbed* reference; it must fail."""
    import converters
    from espnet_mobile import bundle as B
    from espnet_mobile import parity
    from espnet_mobile.deploy import reference_forward
    from espnet_mobile.preprocess import argmax_mask

    spec = next(s for s in converters.runtimes() if s.name == runtime_name)
    x = p.x.numpy()
    logits = reference_forward(p.model, p.entry, p.x).numpy()
    refs = [parity.Reference("sample", None, x, logits, argmax_mask(logits), None)]
    rec = parity.Record(art["file"], art["target"], art["delegate"], art["precision"], spec.name,
                        spec.compute_unit, executed=True, judged_as=spec.judged_as(art["precision"]))
    parity.execute(rec, spec.load(path, art), refs, p.entry.num_classes)
    parity.judge(rec, refs, B.thresholds(), None)
    assert rec.passed is False, rec.metrics
    rec.culprit = parity.find_culprit(rec, art, path, p.model, p.entry, refs, H, W)
    return rec


def test_tflite_culprit_names_the_perturbed_conv(perturbed) -> None:
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from converters import tflite
    from converters.base import ConversionRequest

    path = perturbed.tmp / "bad.tflite"
    tflite.convert(ConversionRequest(module=perturbed.bad, example_input=perturbed.x, precision="fp32",
                                     out_path=path))
    art = {"file": path.name, "target": "tflite", "delegate": "cpu", "precision": "fp32", "input_layout": "NCHW"}
    rec = failing_check(perturbed, art, path, "litert-cpu")
    c = rec.culprit
    assert c["method"] == "tflite-intermediates", c
    assert c["layer"] == f"body.{PERTURBED}", c
    assert c["rel_error"] > 1.0 and c["input_rel_error"] < 1e-5
    assert c["reproduced"] is True
    assert any(d["layer"] == f"body.{PERTURBED}" for d in c["details"])


def test_coreml_culprit_names_the_perturbed_conv(perturbed) -> None:
    pytest.importorskip("coremltools")
    from converters import coreml
    from converters.base import ConversionRequest

    path = perturbed.tmp / "bad.mlpackage"
    coreml.convert(ConversionRequest(module=perturbed.bad, example_input=perturbed.x, precision="fp32",
                                     out_path=path))
    art = {"file": path.name, "target": "coreml", "delegate": "coreml", "precision": "fp32"}
    rec = failing_check(perturbed, art, path, "mil-reference-interpreter")
    c = rec.culprit
    assert c["method"] == "mil-intermediates", c
    assert c["layer"] == f"body.{PERTURBED}", c
    assert c["op"] == "conv" and c["rel_error"] > 1.0


@pytest.mark.slow
def test_tflite_int8_culprit_by_weight_alignment(perturbed) -> None:
    """PT2E-quantized TFLite graphs lose litert-torch's module names; convs are paired by their weights."""
    pytest.importorskip("litert_torch")
    from converters import tflite
    from converters.base import ConversionRequest

    g = torch.Generator().manual_seed(2)
    calibration = [perturbed.x] + [torch.rand(1, 3, H, W, generator=g) for _ in range(7)]
    path = perturbed.tmp / "bad_int8.tflite"
    tflite.convert(ConversionRequest(module=perturbed.bad, example_input=perturbed.x, precision="int8",
                                     out_path=path, calibration=calibration))
    art = {"file": path.name, "target": "tflite", "delegate": "cpu", "precision": "int8", "input_layout": "NCHW"}
    rec = failing_check(perturbed, art, path, "litert-cpu")
    c = rec.culprit
    assert c["method"] == "tflite-conv-alignment", c
    assert c["layer"] == f"body.{PERTURBED}", c


@pytest.mark.slow
def test_executorch_culprit_via_numeric_gap(perturbed) -> None:
    """The .pte hides its intermediates (one XNNPACK delegate); the per-op re-lowering of the
    *reference* cannot reproduce a perturbed artifact, and the report must say so."""
    pytest.importorskip("executorch")
    from converters import executorch
    from converters.base import ConversionRequest

    path = perturbed.tmp / "bad.pte"
    executorch.convert(ConversionRequest(module=perturbed.bad, example_input=perturbed.x, precision="fp32",
                                         out_path=path))
    art = {"file": path.name, "target": "executorch", "delegate": "xnnpack", "precision": "fp32"}
    rec = failing_check(perturbed, art, path, "executorch-python")
    c = rec.culprit
    assert c["method"] == "executorch-numeric-gap", c
    assert c["reproduced"] is False
    assert any("XNNPACK delegation hides the intermediates" in n for n in c["notes"])
    assert c["compared"] > 20  # every op of the per-op program paired with the exported graph


def test_run_in_child_returns_the_result_and_survives_a_native_abort() -> None:
    import math
    import os

    from converters.executorch.debugger import run_in_child

    assert run_in_child(math.sqrt, 6.25) == 2.5
    # The ExecuTorch runtime aborts when an ETDump buffer fills; in the child that is an error, not our end.
    with pytest.raises(RuntimeError, match="abort ended its process abnormally"):
        run_in_child(os.abort)
