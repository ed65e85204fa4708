"""Quantization-aware training: the graph, the eps fix, training, checkpoints, resume, conversion, DDP.

Fast tests use the smallest ESPNetv2 (s=0.5) and ESPNet (p=2, q=3) with random
weights at 64x64 (ESPNet 64x128), so they need no checkpoints. Whole runs,
conversions and the two-process comparison are marked ``slow``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import espnet_mobile as em
from espnet_mobile.errors import UserError
from espnet_mobile.metrics import sqnr_db
from espnet_mobile.qat import __main__ as qat_cli
from espnet_mobile.qat import checkpoint as qat_checkpoint
from espnet_mobile.qat import config as qat_config
from espnet_mobile.qat import data as qat_data
from espnet_mobile.qat import distributed as qat_distributed
from espnet_mobile.qat import evaluate as qat_eval
from espnet_mobile.qat import graph as G
from espnet_mobile.qat import loading as qat_loading
from espnet_mobile.qat import losses as qat_losses
from espnet_mobile.qat import run as qat_run

TINY = "espnetv2_s_0.5_pascal_256x256"
ESPNET = "espnet_p_2_q_3"
SIZE = 64
REPO = Path(__file__).resolve().parents[1]


def _random_model(model_id: str, seed: int = 0) -> torch.nn.Module:
    """Random weights, with BatchNorm statistics spread out so eps and folding matter."""
    torch.manual_seed(seed)
    model = em.build_model(em.get_entry(model_id))
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2e-3 + 1e-4)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """Random ESPNetv2 weights whose activations stay of a sane size through the whole network.

    With the eps fixtures' tiny BatchNorm variances they grow to ~1e15, and torchao's histogram
    range search (PTQ baselines, QAT's starting ranges) then walks every bin of every observer:
    minutes per run instead of seconds.
    """
    torch.manual_seed(0)
    model = em.build_model(em.get_entry(TINY)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def espnet_prepared():
    model = _random_model(ESPNET)
    prepared = G.prepare_qat(model, em.get_entry(ESPNET), "xnnpack", SIZE, 2 * SIZE)
    return model, prepared


def _observe(gm: torch.fx.GraphModule, x: torch.Tensor) -> None:
    """Run observers once with BatchNorm on running statistics (no state other than ranges changes)."""
    G.set_batchnorm_training(gm, False)
    with torch.no_grad():
        gm(x)
    G.set_batchnorm_training(gm, True)


def _cli(*args: str) -> list[str]:
    return ["--model", TINY, "--input-size", f"{SIZE}x{SIZE}", "--no-progress", "--threads", "1", *args]


# --------------------------------------------------------------------------- graph and BatchNorm eps


def test_eps_restored_after_prepare(espnet_prepared):
    model, prepared = espnet_prepared
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    report = prepared.report
    # ESPNet's conv->BN pairs were rewritten with eps 1e-5 by prepare_qat_pt2e; all restored.
    assert report["batchnorms"] > 0 and report["eps_restored"] == report["batchnorms"]
    for values in G.std_eps_values(prepared.module).values():
        assert values[0] == 1e-3 and len(values) >= 2 and all(v == 1e-3 for v in values)


def test_qat_graph_computes_the_deployable_model(espnet_prepared):
    from espnet_mobile.deploy import make_deployable

    model, prepared = espnet_prepared
    x = torch.rand(2, 3, SIZE, 2 * SIZE)
    deployable = make_deployable(model, ESPNET, height=SIZE, width=2 * SIZE)
    with torch.no_grad():
        ref = torch.cat([deployable(x[i:i + 1]) for i in range(2)])
        with G.inference_mode(prepared.module, fake_quant=False):
            out = prepared.module(x)
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel < 1e-4, rel
    # Without the fix (eps 1e-5) the same graph computes something else: the test can tell.
    broken = copy.deepcopy(prepared.module)
    G.set_batchnorm_eps(broken, {k: 1e-5 for k in G.batchnorm_eps(broken)})
    with torch.no_grad(), G.inference_mode(broken, fake_quant=False):
        wrong = broken(x)
    assert float((wrong - ref).abs().max() / ref.abs().max()) > 10 * rel


def test_conversion_copy_is_exactly_the_fake_quantized_model(espnet_prepared):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    _, prepared = espnet_prepared
    gm = copy.deepcopy(prepared.module)
    _observe(gm, torch.rand(4, 3, SIZE, 2 * SIZE))
    x = torch.rand(2, 3, SIZE, 2 * SIZE)
    with torch.no_grad(), G.inference_mode(gm, fake_quant=True):
        fq = gm(x)
    folded = G.for_conversion(gm)
    assert folded.meta["espnet_mobile_folded_batchnorms"] == prepared.report["batchnorms"]
    assert not G.batchnorm_nodes(folded)
    with torch.no_grad():
        converted = convert_pt2e(folded)(x)
    # BatchNorm folded with eps 1e-3 and qparams from the observers: what training saw is what converts.
    assert torch.allclose(converted, fq, rtol=0, atol=1e-5 * float(fq.abs().max()))


def test_fake_quantizers_use_the_observers_qparams(espnet_prepared):
    from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize

    _, prepared = espnet_prepared
    gm = copy.deepcopy(prepared.module)
    assert not any(isinstance(m, FusedMovingAvgObsFakeQuantize) for m in gm.modules())
    _observe(gm, torch.rand(2, 3, SIZE, 2 * SIZE))
    for fq in G.fake_quant_modules(gm):
        scale, zero_point = fq.activation_post_process.calculate_qparams()
        assert torch.equal(fq.scale.reshape(-1), scale.reshape(-1).to(fq.scale.dtype))
        assert torch.equal(fq.zero_point.reshape(-1), zero_point.reshape(-1).to(fq.zero_point.dtype))


def test_qat_starts_from_histogram_ranges():
    """Activation ranges come from histogram search on the calibration inputs: narrower than the
    plain min/max for some tensors, with fake-quant output closer to fp32; state is restored."""
    from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver

    torch.manual_seed(0)
    model = em.build_model(em.get_entry(TINY)).eval()
    with torch.no_grad():  # activations of a sane size (the eps fixtures' statistics make them explode)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    prepared = G.prepare_qat(model, em.get_entry(TINY), "xnnpack", SIZE, SIZE)
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    x[0, :, :2, :2] = 30.0  # a few outlier pixels: they stretch min/max, histogram search clips them
    minmax = copy.deepcopy(prepared.module)
    G.set_fake_quant(minmax, False)  # observe float activations, as the histogram pass does
    _observe(minmax, x)  # a first observation sets the plain observers to the min/max of the whole batch
    G.set_fake_quant(minmax, True)
    hist = copy.deepcopy(prepared.module)
    G.set_observers(hist, False)
    assert G.calibrate_activation_ranges(hist, x) > 0
    assert G.batchnorm_training(hist) and G.quant_state(hist) == {"observers": False, "fake_quant": True}
    narrower = 0
    pairs = zip(G.fake_quant_modules(minmax), G.fake_quant_modules(hist), strict=True)
    for fq_plain, fq_hist in pairs:
        plain, obs = fq_plain.activation_post_process, fq_hist.activation_post_process
        if type(obs) is not MovingAverageMinMaxObserver:
            continue
        lo, hi = float(plain.min_val), float(plain.max_val)
        narrower += float(obs.max_val - obs.min_val) < 0.9 * (hi - lo)
        scale, _ = obs.calculate_qparams()
        assert torch.allclose(fq_hist.scale.reshape(-1), scale.reshape(-1))
    assert narrower > 0

    def sqnr(gm: torch.fx.GraphModule) -> float:
        with G.inference_mode(gm) as q, torch.no_grad():
            out = torch.cat([q(s[None]) for s in x])
        with G.inference_mode(gm, fake_quant=False) as f, torch.no_grad():
            ref = torch.cat([f(s[None]) for s in x])
        return sqnr_db(out.numpy(), ref.numpy())

    assert sqnr(hist) > sqnr(minmax)


def test_schedule_switches_observers_and_batchnorm(espnet_prepared):
    _, prepared = espnet_prepared
    gm = copy.deepcopy(prepared.module)
    run = qat_run.Run.__new__(qat_run.Run)
    run.cfg = qat_config.RunConfig(model=ESPNET, backend="xnnpack", steps=10, observer_freeze=0.6, bn_freeze=0.7)
    run._schedule(gm, 5)
    assert G.quant_state(gm)["observers"] and G.batchnorm_training(gm)
    run._schedule(gm, 6)
    assert not G.quant_state(gm)["observers"] and G.batchnorm_training(gm)
    run._schedule(gm, 7)
    assert not G.batchnorm_training(gm)
    assert {v[0] for v in G.std_eps_values(gm).values()} == {1e-3}  # switching keeps eps


def test_high_gain_layers_are_found_and_left_untrained():
    """A BatchNorm with collapsed variance makes its conv's output ~300x as sensitive to a weight
    change; QAT leaves that layer (conv weight, BatchNorm weight and bias) alone and trains the rest."""
    torch.manual_seed(0)
    model = em.build_model(em.get_entry(TINY)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
        model.base_net.level2_0.eesp.conv_1x1_exp.bn.running_var.fill_(1e-8)
    gm = G.prepare_qat(model, em.get_entry(TINY), "xnnpack", SIZE, SIZE).module
    gains = G.high_gain_parameters(gm, qat_config.MAX_TRAINED_GAIN)
    layer = "body.level2_0.eesp.conv_1x1_exp."
    assert sorted(gains) == [layer + "bn.bias", layer + "bn.weight", layer + "conv.weight"]
    assert min(gains.values()) > qat_config.MAX_TRAINED_GAIN
    assert G.high_gain_parameters(gm, 1e6) == {}
    assert G.freeze_parameters(gm, [*gains, "no.such.parameter"]) == 3
    G.set_batchnorm_training(gm, False)
    before = {n: p.detach().clone() for n, p in gm.named_parameters()}
    opt = torch.optim.Adam([p for _, p in G.trainable_parameters(gm)], lr=1e-2)
    gm(torch.rand(2, 3, SIZE, SIZE)).square().mean().backward()
    opt.step()
    params = dict(gm.named_parameters())
    assert all(torch.equal(params[n], before[n]) for n in gains)
    assert any(not torch.equal(params[n], before[n]) for n in before if n not in gains)


def test_checkpoints_from_before_the_freeze_and_the_tiling_still_load():
    """Old configs trained every layer; old TFLite QAT states hold PReLU slopes untiled ([1,C,1,1])."""
    old = qat_config.RunConfig.from_dict({"model": TINY, "backend": "tflite"})
    assert old.max_trained_gain == 0.0
    fresh = qat_config.RunConfig(model=TINY, backend="tflite").to_dict()
    assert qat_config.RunConfig.from_dict(fresh).max_trained_gain == qat_config.MAX_TRAINED_GAIN

    module = torch.nn.Module()
    module.register_buffer("_prelu_slope_0", torch.zeros(1, 3, 1, 5))
    module.register_buffer("weight", torch.zeros(1, 3, 1, 5))
    slope = torch.tensor([0.1, -0.2, 0.3]).reshape(1, 3, 1, 1)
    qat_loading._load_state(module, {"_prelu_slope_0": slope, "weight": torch.ones(1, 3, 1, 5)}, "old.pt")
    torch.testing.assert_close(module._prelu_slope_0, slope.expand(1, 3, 1, 5))
    with pytest.raises(UserError, match="does not fit"):  # only PReLU slopes are widened
        qat_loading._load_state(module, {"_prelu_slope_0": slope, "weight": torch.ones(1, 3, 1, 1)}, "old.pt")


def test_loss_decreases_on_a_fixed_batch():
    torch.set_num_threads(1)
    prepared = G.prepare_qat(_random_model(TINY), em.get_entry(TINY), "xnnpack", SIZE, SIZE)
    gm = prepared.module
    data = qat_data.load_data("synthetic:2", height=SIZE, width=SIZE, num_classes=21)
    x, y = qat_data.batch(data, seed=0, phase="qat", step=0, global_batch=4, rank=0, world=1, height=SIZE,
                          width=SIZE)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam([p for _, p in G.trainable_parameters(gm)], lr=3e-2)
    losses = []
    for _ in range(8):
        loss, _ = qat_losses.label_loss(gm(x), y, qat_distributed.Dist())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0] and losses == sorted(losses, reverse=True), losses


def test_teacher_term_pulls_towards_the_teacher_and_is_zero_at_it():
    """With labels, --label-kd-weight adds the KL term: zero when student equals teacher, growing as it departs."""
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 6, 7)
    labels = torch.randint(0, 5, (2, 6, 7))
    labels[0, 0] = qat_data.IGNORE
    dist = qat_distributed.Dist()
    pixels = float(2 * 6 * 7)
    cfg = qat_config.RunConfig(model=TINY, backend="xnnpack", label_kd_weight=0.0)
    ce, _ = qat_losses.label_loss(teacher, labels, dist)
    assert qat_losses.label_and_teacher_loss(teacher, labels, teacher, cfg, dist, pixels).item() == pytest.approx(
        ce.item())
    cfg.label_kd_weight = 2.0
    at_teacher = qat_losses.label_and_teacher_loss(teacher, labels, teacher, cfg, dist, pixels)
    assert at_teacher.item() == pytest.approx(ce.item(), abs=1e-5)
    away = teacher + 0.5 * torch.randn_like(teacher)
    ce_away, _ = qat_losses.label_loss(away, labels, dist)
    both = qat_losses.label_and_teacher_loss(away, labels, teacher, cfg, dist, pixels)
    kl = qat_losses.kl_to_teacher(away, teacher, cfg.temperature).item() / pixels
    assert kl > 0.01 and both.item() == pytest.approx(ce_away.item() + 2.0 * kl, rel=1e-5)


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("kind, given, expected", [
    ("synthetic", [], qat_config.NEW_TASK), ("voc", [], qat_config.OWN_LABELS), ("camvid", [], qat_config.OWN_LABELS),
    ("distill", [], qat_config.DISTILL),
    ("distill", ["--lr", "2e-4"], {"lr": 2e-4}), ("synthetic", ["--lr", "2e-6"], {"lr": 2e-6}),
    ("camvid", ["--crop-scale", "1:2", "--label-kd-weight", "0", "--class-weights", "none"],
     {"crop_scale": (1.0, 2.0), "label_kd_weight": 0.0, "class_weights": "none", "lr": qat_config.OWN_LABELS.lr})])
def test_defaults_follow_the_data(tmp_path, kind, given, expected):
    """A new task trains harder on zoomed crops; a dataset's own labels fine-tune a converged model gently, on
    whole frames, near the fp32 model, with rare classes weighted up; distillation stays near its teacher."""
    from types import SimpleNamespace

    cfg, _ = qat_config.config_from_args(qat_config.build_parser().parse_args(_cli("--backend", "xnnpack", *given)))
    run = qat_run.Run(cfg, tmp_path, qat_distributed.Dist(), progress=False)
    run.data = SimpleNamespace(kind=kind, distill=kind == "distill")
    run._fill_defaults(10)
    if isinstance(expected, qat_config.DataDefaults):
        expected = dataclasses.asdict(expected)
    assert {name: getattr(run.cfg, name) for name in expected} == expected
    assert qat_config.NEW_TASK != qat_config.OWN_LABELS != qat_config.DISTILL


def test_checkpoints_from_before_the_data_defaults_keep_their_settings():
    """A checkpoint written before --crop-scale, --label-kd-weight and --class-weights trained without them."""
    old = qat_config.RunConfig(model=TINY, backend="xnnpack", data="camvid:/x").to_dict()
    for name in ("crop_scale", "label_kd_weight", "class_weights"):
        del old[name]
    cfg = qat_config.RunConfig.from_dict(old)
    assert (cfg.crop_scale, cfg.label_kd_weight, cfg.class_weights) == (qat_data.SCALE_RANGE, 0.0, "none")


def test_batches_are_a_pure_function_of_seed_and_step_and_split_over_processes():
    data = qat_data.load_data("synthetic:2", height=SIZE, width=SIZE, num_classes=21)
    kw = {"seed": 3, "phase": "qat", "step": 5, "height": SIZE, "width": SIZE}
    x1, y1 = qat_data.batch(data, global_batch=4, rank=0, world=1, **kw)
    x2, y2 = qat_data.batch(data, global_batch=4, rank=0, world=1, **kw)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    halves = [qat_data.batch(data, global_batch=4, rank=r, world=2, **kw) for r in (0, 1)]
    assert np.array_equal(np.concatenate([h[0] for h in halves]), x1)
    assert np.array_equal(np.concatenate([h[1] for h in halves]), y1)
    x3, _ = qat_data.batch(data, global_batch=4, rank=0, world=1, **{**kw, "step": 6})
    assert not np.array_equal(x1, x3)


def test_crop_scale_one_trains_on_whole_frames():
    """--crop-scale 1:1 gives the whole frame resized (or its mirror); the default zooms in."""
    from espnet_mobile.preprocess import preprocess

    yy, xx = np.mgrid[0:36, 0:48]  # smooth, so that any bilinear resize agrees with preprocess's
    rgb = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=-1).astype(np.uint8)
    label = (xx // 5).astype(np.uint8)
    whole = preprocess(rgb, 24, 32)[0]
    seen_flip = seen_plain = False
    for seed in range(6):
        out, lab = qat_data.augment(rgb, label, np.random.default_rng(seed), 24, 32, (1.0, 1.0))
        x = out.transpose(2, 0, 1).astype(np.float32) / 255.0
        plain = np.abs(x - whole).max() < 2 / 255
        flipped = np.abs(x - whole[:, :, ::-1]).max() < 2 / 255
        assert plain or flipped
        seen_plain, seen_flip = seen_plain or plain, seen_flip or flipped
        assert lab.shape == (24, 32)
    assert seen_plain and seen_flip
    zoomed = [qat_data.augment(rgb, label, np.random.default_rng(seed), 24, 32)[0] for seed in range(6)]
    assert any(np.abs(z.transpose(2, 0, 1) / 255.0 - whole).max() > 0.1
               and np.abs(z.transpose(2, 0, 1) / 255.0 - whole[:, :, ::-1]).max() > 0.1 for z in zoomed)


def test_class_weights_follow_the_training_share():
    """inverse-log weighs a class by 1/ln(1.10 + share): rare classes up, unlabelled pixels not counted."""
    from types import SimpleNamespace

    rgb = np.zeros((4, 5, 3), np.uint8)
    a = np.zeros((4, 5), np.uint8)  # 20 pixels of class 0
    b = np.full((4, 5), qat_data.IGNORE, np.uint8)
    b[0, :2] = 2  # 2 pixels of class 2, the rest unlabelled
    data = SimpleNamespace(train=[lambda: (rgb, a), lambda: (rgb, b)])
    w = qat_data.class_weights(data, 3)
    share = np.array([20, 0, 2]) / 22
    np.testing.assert_allclose(w, 1 / np.log(1.10 + share), rtol=1e-6)
    assert w[2] > 2 * w[0]
    photos = SimpleNamespace(train=[lambda: (rgb, None)])
    with pytest.raises(UserError, match="the training data has none"):
        qat_data.class_weights(photos, 3)
    # The weighted loss counts each labelled pixel by its class's weight.
    logits = torch.zeros(1, 3, 4, 5)
    weight = torch.from_numpy(w)
    loss, total = qat_losses.label_loss(logits, torch.from_numpy(b[None]), qat_distributed.Dist(), weight)
    assert total == 2 and loss.item() == pytest.approx(float(w[2]) * np.log(3), rel=1e-5)


def test_distill_data_holds_out_photos(tmp_path):
    from PIL import Image

    from espnet_mobile.data import synthetic

    for i, (rgb, _) in enumerate(synthetic.scenes(8, 70, 90, 21)):
        Image.fromarray(rgb).save(tmp_path / f"p{i}.png")
    data = qat_data.load_data(f"distill:{tmp_path}", height=SIZE, width=SIZE, num_classes=21)
    held = {n.split("#")[0] for n in data.heldout_names}
    assert held == {"p3", "p7"} and not held & {Path(n).stem for n in data.train_names}
    assert data.heldout_inputs.shape == (2 * len(qat_data.HOLDOUT_VIEWS), 3, SIZE, SIZE)
    assert data.heldout_labels is None
    # The class-coverage check sees the training photos through the same views.
    views = qat_data.training_views(data, seed=0, count=4, height=SIZE, width=SIZE)
    assert views.shape == (4 * len(qat_data.HOLDOUT_VIEWS), 3, SIZE, SIZE) and views.dtype == np.float32
    assert 0.0 <= views.min() and views.max() <= 1.0
    assert len(np.unique(views[:: len(qat_data.HOLDOUT_VIEWS)], axis=0)) == 4  # four different photos
    # --eval-limit scores fewer held-out photos; the rest still do not train.
    limited = qat_data.load_data(f"distill:{tmp_path}", height=SIZE, width=SIZE, num_classes=21, eval_limit=1)
    assert {n.split("#")[0] for n in limited.heldout_names} == {"p3"}
    assert limited.heldout_inputs.shape == (len(qat_data.HOLDOUT_VIEWS), 3, SIZE, SIZE)
    assert limited.train_names == data.train_names


def test_distill_scored_on_labels_trains_on_every_photo(tmp_path):
    """--eval-data: the distillation photos all train; the labelled val split (its own labels) is scored."""
    from PIL import Image

    from espnet_mobile.data import synthetic
    from tests.test_evaluate import _write_camvid

    photos = tmp_path / "frames"
    photos.mkdir()
    for i, (rgb, _) in enumerate(synthetic.scenes(5, 70, 90, 21)):
        Image.fromarray(rgb).save(photos / f"p{i}.png")
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 12, (60, 80), dtype=np.uint8) for _ in range(3)]
    camvid = _write_camvid(tmp_path / "camvid", "val", [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)] * 3,
                           labels)
    data = qat_data.load_data(f"distill:{photos}", height=SIZE, width=SIZE, num_classes=12,
                              eval_data=f"camvid:{camvid}")
    assert sorted(data.train_names) == [f"p{i}.png" for i in range(5)] and data.distill
    assert data.heldout_inputs.shape == (3, 3, SIZE, SIZE) and data.eval_data == f"camvid:{camvid}"
    assert data.heldout_labels is not None and data.heldout_labels.shape == (3, SIZE, SIZE)
    assert set(np.unique(data.heldout_labels)) <= set(range(11)) | {qat_data.IGNORE}  # 11 = unlabelled
    with pytest.raises(UserError, match="has no labels"):
        qat_data.load_data(f"distill:{photos}", height=SIZE, width=SIZE, num_classes=12,
                           eval_data=f"distill:{photos}")


def test_teacher_labels_skip_unsure_pixels():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1, 0, 0] = 5.0  # confident
    teacher = lambda x: logits  # noqa: E731
    labels = qat_eval.teacher_labels(teacher, np.zeros((1, 3, 2, 2), np.float32))
    assert labels[0, 0, 0] == 1 and (labels.flatten()[1:] == 255).all()


def test_scores_give_pixel_accuracy_next_to_miou():
    labels = np.zeros((1, 10, 10), np.uint8)
    labels[0, :, 5:] = 1
    labels[0, 0, 0] = 255  # not scored
    masks = labels.copy()
    masks[0, 0, 0] = 2  # an unscored pixel: counts nowhere
    assert qat_eval.scores(masks, labels, 3) == {"miou": 100.0, "miou_all": 100.0, "pixel_acc": 100.0,
                                                 "class_iou": {"0": 100.0, "1": 100.0}}
    masks[0, 9, 9] = 2  # one pixel of a class the labels lack
    s = qat_eval.scores(masks, labels, 3)
    assert s["class_iou"] == {"0": 100.0, "1": round(49 / 50 * 100, 2)}  # labelled classes only
    # IoU: class 0 = 49/49, class 1 = 49/50, class 2 = 0/1. Over the labelled classes the stray pixel
    # costs class 1 a fiftieth; over every class that occurs it costs a third of the mean.
    assert s["miou"] == pytest.approx((1 + 49 / 50) / 2 * 100, abs=1e-3)
    assert s["miou_all"] == pytest.approx((1 + 49 / 50 + 0) / 3 * 100, abs=1e-3)
    assert s["pixel_acc"] == pytest.approx(98 / 99 * 100, abs=1e-3)


def test_class_coverage_names_held_out_classes_the_training_photos_lack():
    train = np.array([[[0, 0, 1], [1, 255, 0]]], np.uint8)
    held = np.array([[[0, 2, 2], [1, 3, 255]]], np.uint8)
    cov = qat_eval.class_coverage(train, held, ["bg", "car", "cat", "dog"])
    assert cov == {"heldout_pixels": {"bg": 1, "car": 1, "cat": 2, "dog": 1},
                   "train_pixels": {"bg": 3, "car": 2}, "absent_from_training": ["cat", "dog"]}


def test_class_table_puts_the_three_models_side_by_side():
    baselines = {"fp32_class_iou": {"0": 100.0, "2": 100.0}, "ptq_int8_class_iou": {"0": 98.0, "2": 54.6}}
    final = {"int8_class_iou": {"0": 98.2, "2": 44.4}}
    assert qat_run._class_table(["bg", "car", "motorbike"], baselines, final) == {
        "bg": {"fp32": 100.0, "ptq_int8": 98.0, "qat_int8": 98.2},
        "motorbike": {"fp32": 100.0, "ptq_int8": 54.6, "qat_int8": 44.4}}
    assert qat_run._class_table(["bg"], {"fp32_class_iou": {"0": 1.0}}, final) is None  # an older checkpoint


def test_an_artifact_far_below_its_fake_quant_graph_is_reported_and_warned_about():
    # The figures of the LiteRT distillation run of espnetc_p_2_q_8 (docs/qat.md): the .tflite
    # scored 16 points of pixel accuracy below the graph it was converted from.
    final = {"int8_from": "artifact", "int8_miou": 23.2447, "fake_quant_miou": 38.9599,
             "int8_pixel_acc": 66.4237, "fake_quant_pixel_acc": 82.7317}
    gap = qat_run.artifact_gap(final)
    assert gap == {"miou": pytest.approx(-15.7152), "pixel_acc": pytest.approx(-16.308)}
    warning = qat_run.artifact_gap_warning(gap, "tflite")
    assert warning.startswith("warning: the tflite int8 artifact scores 16.31 points of held-out pixel accuracy")
    # ExecuTorch's artifact of the XNNPACK run scored what its graph did: no warning.
    close = dict(final, int8_miou=42.67, fake_quant_miou=42.5, int8_pixel_acc=78.03, fake_quant_pixel_acc=78.02)
    assert qat_run.artifact_gap_warning(qat_run.artifact_gap(close), "xnnpack") is None
    # Just past the threshold on one metric is enough; an artifact above its graph never warns.
    edge = dict(close, int8_miou=42.5 - qat_run.ARTIFACT_GAP_WARN_POINTS - 0.01)
    assert "mIoU" in qat_run.artifact_gap_warning(qat_run.artifact_gap(edge), "coreml")
    # The fake-quant graph scored in place of an artifact (Core ML here, or --artifact-eval none).
    assert qat_run.artifact_gap(dict(final, int8_from="fake-quant")) is None
    assert qat_run.artifact_gap_warning(None, "coreml") is None


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "checkpoint.pt"
    payload = {"config": {"model": TINY}, "phase": "qat", "step": 7, "qat_state": {"w": torch.arange(3.0)},
               "rng": qat_checkpoint.rng_state(), "history": [{"step": 7, "fp32_miou": 1.5}]}
    qat_checkpoint.save(path, payload)
    back = qat_checkpoint.load(path)
    assert back["step"] == 7 and torch.equal(back["qat_state"]["w"], torch.arange(3.0))
    torch.load(path, weights_only=True)  # nothing but tensors and primitive containers
    state = qat_checkpoint.rng_state()
    a = (torch.rand(3), np.random.rand(3))
    qat_checkpoint.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_corrupt_checkpoint_is_a_clear_error_and_never_replaces_a_good_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    qat_checkpoint.save(path, {"config": {}, "phase": "qat", "step": 1})
    good = path.read_bytes()
    # A write that dies half way leaves the good file and no temporary behind.
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        qat_checkpoint.save(path, {"config": {}, "phase": "qat", "step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    # A corrupt file is reported in one line and left untouched.
    bad = tmp_path / "bad" / "checkpoint.pt"
    bad.parent.mkdir()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        qat_checkpoint.load(bad)
    before = bad.read_bytes()
    assert qat_cli.main(_cli("--backend", "xnnpack", "--data", "synthetic:2", "--out", str(bad.parent),
                         "--resume")) == 2
    assert bad.read_bytes() == before


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_weights):
    cases = [
        (["--input-size", "64"], "--input-size must look like"),
        (["--data", "distill:/no/such/folder"], "does not exist"),
        (["--data", "imagenet:/x"], "unknown data spec"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--out", str(tmp_path), "--resume"], "no checkpoint"),
        (["--data", "synthetic:3", "--eval-data", f"camvid:{tmp_path}"], "drop --eval-data"),
        (["--data", f"distill:{tmp_path}", "--eval-data", f"camvid:{tmp_path}"], "camvid labels do not index"),
        (["--crop-scale", "0.5:1"], "--crop-scale needs 1.0 <= low <= high"),
        (["--crop-scale", "big"], "--crop-scale must look like"),
        (["--data", f"distill:{tmp_path}", "--label-kd-weight", "1"], "use --kd-weight"),
    ]
    for extra, message in cases:
        argv = ["--model", TINY, "--backend", "xnnpack", "--weights", str(tiny_weights), "--no-progress", *extra]
        assert qat_cli.main(argv) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert qat_cli.main(["--model", "nope", "--backend", "xnnpack"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        qat_cli.main(["--model", TINY, "--backend", "xnnpack", "--steps", "2", "--epochs", "1"])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------- whole runs (slow)


def _run_args(out: Path, weights: Path, *extra: str) -> list[str]:
    return _cli("--backend", "xnnpack", "--weights", str(weights), "--data", "synthetic:3", "--steps", "6",
                "--fp32-steps", "2", "--batch-size", "2", "--eval-every", "3", "--checkpoint-every", "2",
                "--artifact-eval", "none", "--calibration-images", "2", "--out", str(out), *extra)


def _numbers(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    keep = ("fp32_miou", "ptq_int8_miou", "qat_int8_miou", "qat_fake_quant_miou", "qat_fp32_miou")
    history = [{k: v for k, v in h.items() if k not in ("wall_seconds", "artifact")} for h in m["history"]]
    return {**{k: m[k] for k in keep}, "history": history}


@pytest.mark.slow
def test_resume_after_a_crash_gives_the_same_numbers(tmp_path, tiny_weights, monkeypatch):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    assert qat_cli.main(_run_args(whole, tiny_weights)) == 0
    real_batch = qat_data.batch

    def crash_at_qat_step_5(data, **kw):
        if kw["phase"] == "qat" and kw["step"] == 5:
            raise RuntimeError("simulated crash")
        return real_batch(data, **kw)

    monkeypatch.setattr(qat_data, "batch", crash_at_qat_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        qat_cli.main(_run_args(crashed, tiny_weights))
    assert qat_checkpoint.load(crashed / "checkpoint.pt")["step"] == 4  # at most --checkpoint-every lost
    monkeypatch.setattr(qat_data, "batch", real_batch)
    assert qat_cli.main(_run_args(crashed, tiny_weights, "--resume")) == 0
    assert _numbers(crashed) == _numbers(whole)
    a = qat_checkpoint.load(whole / "checkpoint.pt")["qat_state"]
    b = qat_checkpoint.load(crashed / "checkpoint.pt")["qat_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if "num_batches_tracked" not in k)
    # A finished run resumed again only reports.
    assert qat_cli.main(_run_args(crashed, tiny_weights, "--resume")) == 0
    # Changing a setting on --resume is refused.
    assert qat_cli.main(_run_args(crashed, tiny_weights, "--resume", "--lr", "0.5")) == 2


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path, tiny_weights):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "espnet_mobile.qat", *_run_args(out, tiny_weights)]
    args[args.index("--steps") + 1] = "40"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            ckpt = out / "checkpoint.pt"
            if ckpt.exists() and qat_checkpoint.load(ckpt)["phase"] == "qat" and \
                    qat_checkpoint.load(ckpt)["step"] >= 4:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = qat_checkpoint.load(out / "checkpoint.pt")["step"]
    result = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"step {killed_at}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["history"][-1]["step"] == 40


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_weights) -> Path:
    out = tmp_path_factory.mktemp("qat") / "run"
    assert qat_cli.main(_run_args(out, tiny_weights)) == 0
    return out


@pytest.mark.slow
def test_run_writes_metrics_and_fp32_weights(finished_run):
    m = json.loads((finished_run / "metrics.json").read_text())
    for key in ("fp32_miou", "ptq_int8_miou", "qat_int8_miou", "data", "steps", "wall_seconds", "int8_source"):
        assert key in m
    accuracy = [m["fp32_pixel_acc"], m["ptq_int8_pixel_acc"], m["qat_int8_pixel_acc"]]
    assert all(0.0 <= a <= 100.0 for a in accuracy)
    if abs(accuracy[0] - accuracy[1]) > 1e-9:
        assert m["gap_closed_pixel_acc"] == pytest.approx((accuracy[2] - accuracy[1]) / (accuracy[0] - accuracy[1]),
                                                          abs=1e-4)
    assert m["data"] == "synthetic:3" and m["steps"] == 6 and m["fp32_steps"] == 2
    final = m["history"][-1]
    if final.get("int8_from") == "artifact":  # the artifact's distance from the graph it was converted from
        assert m["artifact_minus_fake_quant"]["miou"] == pytest.approx(final["int8_miou"] - final["fake_quant_miou"],
                                                                       abs=1e-3)
    else:
        assert m["artifact_minus_fake_quant"] is None
    assert (finished_run / "fp32_finetuned.pth").is_file()
    em.create_model(TINY, weights=finished_run / "fp32_finetuned.pth")  # loads as a reference model


@pytest.mark.slow
@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_checkpoint_converts_without_calibration(finished_run, tmp_path, target, monkeypatch):
    from espnet_mobile import convert

    bundle_root = tmp_path / "bundle"
    argv = ["--model", TINY, "--target", target, "--precision", "int8", "--qat-checkpoint",
            str(finished_run / "checkpoint.pt"), "--out", str(bundle_root), "--no-extra-delegates"]
    if target == "tflite":
        # The run was for XNNPACK: converting it for another backend is refused.
        assert convert.main(argv) == 2
        return
    monkeypatch.delenv("ESPNET_MOBILE_IMAGES", raising=False)  # no calibration photos anywhere
    assert convert.main(argv) == 0
    manifest = json.loads((bundle_root / TINY / "manifest.json").read_text())
    (art,) = [a for a in manifest["artifacts"] if a["precision"] == "int8"]
    assert art["quantization"]["source"] == "qat"
    assert manifest["model"]["qat_checkpoint_sha256"]
    # The artifact computes what QAT trained: the int8 .pte is far closer to the fake-quantized graph
    # than to the same graph without fake quantization. (Not equal: XNNPACK's fixed-point
    # requantization rounds differently by up to one step per layer.)
    loaded = qat_loading.load_qat_module(finished_run / "checkpoint.pt")
    x = torch.from_numpy(qat_data.load_data("synthetic:3", height=SIZE, width=SIZE, num_classes=21)
                         .heldout_inputs[:3])
    from converters import run_artifact

    for i in range(len(x)):
        out = run_artifact("executorch", "xnnpack", bundle_root / TINY / art["file"], x[i:i + 1].numpy())
        with torch.no_grad():
            fake_quant = loaded.module(x[i:i + 1]).numpy()
            G.set_fake_quant(loaded.module, False)
            float_graph = loaded.module(x[i:i + 1]).numpy()
            G.set_fake_quant(loaded.module, True)
        # Measured: 54 dB to the fake-quantized graph, 38 dB to the float one.
        assert sqnr_db(out, fake_quant) >= sqnr_db(out, float_graph) + 3.0
        assert np.mean(out.argmax(1) == fake_quant.argmax(1)) >= 0.99


def test_simulated_xnnpack_ptq_quantizes_as_the_converter_does(monkeypatch, tmp_path):
    """The PTQ baseline without an artifact must be the converter's int8, option for option (it once
    quantized the affines before each PReLU, which the converter keeps fp32, and scored 3 points lower)."""
    pytest.importorskip("executorch")
    import converters.executorch as et
    from converters.executorch import lowering as et_lowering
    from espnet_mobile.deploy import make_deployable

    calls = []

    class Stop(Exception):
        pass

    def record(module, example_input, **kwargs):
        calls.append({k: v for k, v in kwargs.items() if k not in ("calibration", "qat_module")})
        raise Stop

    defaults = {name: param.default for name, param in inspect.signature(et.quantize_pt2e).parameters.items()
                if param.default is not inspect.Parameter.empty and name not in ("calibration", "qat_module")}
    monkeypatch.setattr(et, "quantize_pt2e", record)  # what the PTQ simulation calls
    monkeypatch.setattr(et_lowering, "quantize_pt2e", record)  # what the converter calls
    deployable = make_deployable(_random_model(TINY), em.get_entry(TINY), height=SIZE, width=SIZE)
    calibration = [np.zeros((1, 3, SIZE, SIZE), np.float32)]
    with pytest.raises(Stop):
        qat_eval.ptq_simulated_scores("xnnpack", deployable, calibration, calibration[0], None, 21)
    with pytest.raises(Exception):  # noqa: B017 - Stop, or the converter's error wrapping it
        qat_eval.convert_int8("xnnpack", deployable, tmp_path / "x.pte", calibration=calibration)
    simulated, converter = calls  # the converter got as quantizing
    assert {**defaults, **simulated} == {**defaults, **converter}
    assert converter["float_prelu_affines"] is True


@pytest.mark.slow
def test_distill_run_reports_classes_it_cannot_learn(tmp_path, tiny_weights, capsys, monkeypatch):
    """A class that only the held-out photo shows is named in the log and in metrics.json."""
    from PIL import Image

    from espnet_mobile.data import synthetic

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (rgb, _) in enumerate(synthetic.scenes(4, 80, 80, 21)):
        rgb = rgb // 2  # no pure red anywhere ...
        if i == qat_data.HOLDOUT_EVERY - 1:
            rgb[20:60, 20:60] = (255, 0, 0)  # ... but in the held-out photo
        Image.fromarray(rgb).save(photos / f"p{i}.png")

    def red_is_bicycle(teacher, inputs, confidence=qat_eval.TEACHER_CONFIDENCE, batch=qat_eval.EVAL_BATCH):
        red = (inputs[:, 0] > 0.9) & (inputs[:, 1] < 0.1)
        return np.where(red, 2, 0).astype(np.uint8)  # VOC class 2: bicycle

    monkeypatch.setattr(qat_eval, "teacher_labels", red_is_bicycle)
    argv = _run_args(tmp_path / "run", tiny_weights)
    argv[argv.index("synthetic:3")] = f"distill:{photos}"
    argv[argv.index("--fp32-steps") + 1] = "0"
    argv[argv.index("--steps") + 1] = "2"
    argv += ["--class-weights", "inverse-log"]
    assert qat_cli.main(argv) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["class_weights"] == "inverse-log"
    cov = m["class_coverage"]
    assert cov["absent_from_training"] == ["bicycle"] and set(cov["heldout_pixels"]) == {"background", "bicycle"}
    assert cov["train_pixels"] == {"background": cov["train_pixels"]["background"]}
    assert set(m["class_iou"]) == {"background", "bicycle"}
    assert set(m["class_iou"]["bicycle"]) == {"fp32", "ptq_int8", "qat_int8"}
    out = capsys.readouterr().out
    assert "warning: the held-out crops show bicycle" in out
    # The teacher labels only background on the training photos: every other class weighs 1/ln(1.10).
    weights = next(line for line in out.splitlines() if line.startswith("class weights"))
    assert "teacher's confident labels" in weights
    assert f"background {1 / np.log(2.10):.2f}" in weights and f"bicycle {1 / np.log(1.10):.2f}" in weights


@pytest.mark.slow
def test_tflite_qat_converts(tmp_path, tiny_weights):
    from espnet_mobile import convert

    out = tmp_path / "run"
    argv = _run_args(out, tiny_weights)
    argv[argv.index("xnnpack")] = "tflite"
    assert qat_cli.main(argv) == 0
    assert convert.main(["--model", TINY, "--target", "tflite", "--precision", "int8", "--qat-checkpoint",
                         str(out / "checkpoint.pt"), "--out", str(tmp_path / "bundle")]) == 0


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, tiny_weights):
    """DDP over 2 gloo processes vs 1 process: same data, same gradient (up to summation order);
    BatchNorm batch statistics are per process, so numbers agree within the documented tolerance."""
    one, two = tmp_path / "one", tmp_path / "two"
    base = ["--backend", "xnnpack", "--weights", str(tiny_weights), "--data", "synthetic:3", "--steps", "6",
            "--fp32-steps", "2", "--batch-size", "4", "--eval-every", "6", "--artifact-eval", "none",
            "--calibration-images", "2",
            "--model", TINY, "--input-size", f"{SIZE}x{SIZE}", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r1 = subprocess.run([sys.executable, "-m", "espnet_mobile.qat", *base, "--out", str(one)], cwd=REPO, env=env,
                        capture_output=True, text=True)
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "espnet_mobile.qat", *base, "--out", str(two)], cwd=REPO, env=env,
                        capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr[-2000:]
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m1["world_size"] == 1
    # Every figure comes after training steps (the random weights need the fp32 phase's BatchNorm
    # statistics to stay finite), so each carries the per-process BatchNorm difference.
    for key in ("fp32_miou", "ptq_int8_miou", "qat_int8_miou", "qat_fp32_miou"):
        assert abs(m1[key] - m2[key]) <= qat_config.DDP_MIOU_TOLERANCE, (key, m1[key], m2[key])
    assert m1["steps"] == m2["steps"] and m1["batch_size"] == m2["batch_size"]


def test_loading_a_qat_state_keeps_observer_eps(espnet_prepared):
    """A plain-dict state (as checkpoints store it) must not reset observers' eps to float32 eps."""
    _, prepared = espnet_prepared
    gm = copy.deepcopy(prepared.module)
    state = {k: v.clone() for k, v in gm.state_dict().items()}
    eps_keys = [k for k in state if k.endswith(".eps")]
    assert eps_keys and any(float(state[k][0]) == 2.0 ** -12 for k in eps_keys)
    rebuilt = copy.deepcopy(prepared.module)
    qat_loading._load_state(rebuilt, state, "test")
    after = rebuilt.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in eps_keys)


@pytest.mark.parametrize("photo_hw", [(426, 640), (640, 426), (1024, 2048), (565, 849)])  # 565x849: rounding case
@pytest.mark.parametrize("model_hw", [(256, 512), (256, 256), (512, 1024)])
def test_held_out_views_fit_any_photo_and_model_aspect(photo_hw, model_hw):
    """A crop of the model's aspect, anywhere in the photo, stays inside it (float rounding included)."""
    rgb = np.random.default_rng(0).integers(0, 256, size=(*photo_hw, 3), dtype=np.uint8)
    for side, cy, cx in [(1.0, 0.5, 0.5), (0.6, 0.0, 1.0), (0.6, 1.0, 0.0), (0.8, 0.3, 0.7)]:
        view = qat_data._view(rgb, side, cy, cx, *model_hw)
        assert view.shape == (*model_hw, 3)


def _observer_sync_worker(rank: int, world: int, init_file: str, batches: list, out_dir: str) -> None:
    """One process of test_sync_observers_gives_the_global_batch_range: observe its half, then sync."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8)
        synced = 0
        for batch in batches:
            fq(batch.chunk(world)[rank])
            synced = G.sync_observers(fq)
        obs = fq.activation_post_process
        torch.save({"synced": synced, "min": obs.min_val.clone(), "max": obs.max_val.clone(),
                    "scale": fq.scale.clone()}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_sync_observers_gives_the_global_batch_range(tmp_path):
    """Two processes each observing half of every batch end with the range one process gets from
    whole batches (moving average included), on both ranks."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver

    gen = torch.Generator().manual_seed(0)
    # The halves differ on purpose: rank 0 sees the large negatives, rank 1 the large positives.
    batches = [torch.cat([torch.randn(2, 8, generator=gen) - 3 * k, torch.randn(2, 8, generator=gen) + 5 * k])
               for k in range(1, 4)]
    single = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8)
    for batch in batches:
        single(batch)
    assert G.sync_observers(single) == 0  # not distributed: a no-op
    torch.multiprocessing.spawn(_observer_sync_worker, args=(2, str(tmp_path / "init"), batches, str(tmp_path)),
                                nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["synced"] == 1
        torch.testing.assert_close(got["min"], single.activation_post_process.min_val)
        torch.testing.assert_close(got["max"], single.activation_post_process.max_val)
        torch.testing.assert_close(got["scale"], single.scale)
