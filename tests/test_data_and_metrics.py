"""Dataset layouts (on tiny fake trees), data specs and metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from espnet_mobile import data, metrics
from espnet_mobile.errors import UserError


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _rgb(h=12, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_cityscapes_layout(tmp_path):
    label = np.full((12, 16), 255, np.uint8)
    label[:6] = 7
    _png(tmp_path / "leftImg8bit/val/bonn/bonn_01_leftImg8bit.png", _rgb())
    _png(tmp_path / "gtFine/val/bonn/bonn_01_gtFine_labelTrainIds.png", label)
    [s] = data.iter_samples(data.parse_spec(f"cityscapes:{tmp_path}"), split="val")
    assert s.name == "bonn_01" and s.rgb.shape == (12, 16, 3) and np.array_equal(s.label, label)


def test_voc_layout_uses_split_file(tmp_path):
    for i in ("a", "b"):
        img = tmp_path / "JPEGImages" / f"{i}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb()).save(img)
        _png(tmp_path / "SegmentationClass" / f"{i}.png", np.full((12, 16), 15, np.uint8), "L")
    (tmp_path / "ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("b\n")
    samples = list(data.iter_samples(data.parse_spec(f"voc:{tmp_path}"), split="val"))
    assert [s.name for s in samples] == ["b"] and samples[0].label.max() == 15


def test_camvid_layout_ignores_unlabelled(tmp_path):
    label = np.array([[0, 11], [3, 5]], np.uint8).repeat(6, 0).repeat(8, 1)
    _png(tmp_path / "val/x.png", _rgb())
    _png(tmp_path / "valannot/x.png", label)
    [s] = data.iter_samples(data.parse_spec(f"camvid:{tmp_path}"), split="val")
    assert set(np.unique(s.label)) == {0, 3, 5, 255}


def test_missing_label_is_a_clear_error(tmp_path):
    _png(tmp_path / "val/x.png", _rgb())
    with pytest.raises(UserError, match="has no label"):
        list(data.iter_samples(data.parse_spec(f"camvid:{tmp_path}")))


def test_specs():
    assert data.parse_spec("synthetic").count == 16
    assert data.parse_spec("synthetic:3").count == 3
    with pytest.raises(UserError, match="unknown data kind 'kitti'"):
        data.parse_spec("kitti:/nowhere")
    with pytest.raises(UserError, match="does not exist"):
        data.parse_spec("voc:/nowhere/at/all")


def test_synthetic_is_deterministic_and_labelled():
    spec = data.parse_spec("synthetic:2")
    a = list(data.iter_samples(spec, height=32, width=48, num_classes=5))
    b = list(data.iter_samples(spec, height=32, width=48, num_classes=5))
    assert all(np.array_equal(x.rgb, y.rgb) and np.array_equal(x.label, y.label) for x, y in zip(a, b, strict=True))
    assert a[0].label.max() < 5 and len(np.unique(a[0].label)) > 1
    train = next(data.iter_samples(spec, split="train", height=32, width=48, num_classes=5))
    assert not np.array_equal(train.rgb, a[0].rgb)


def test_metrics():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    conf = metrics.confusion(pred, target, 3)
    assert conf.sum() == 6
    ious = metrics.iou_per_class(conf)
    assert np.allclose(ious, [1 / 2, 2 / 3, 1.0])
    assert math.isclose(metrics.miou(conf), (0.5 + 2 / 3 + 1) / 3 * 100)
    ref = np.array([1.0, 2.0, 3.0])
    assert metrics.sqnr_db(ref, ref) == math.inf
    assert math.isclose(metrics.sqnr_db(ref + 0.1, ref), 10 * math.log10(14 / 0.03))
    assert metrics.max_abs_error(ref + np.array([0, 0.5, 0]), ref) == 0.5
    assert metrics.pixel_agreement(pred, pred) == 1.0
