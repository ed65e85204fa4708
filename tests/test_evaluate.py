"""Accuracy against labels: dataset statistics, the CamVid preprocessing, ``evaluate`` and its errors.

Parity compares artifacts with our own reference; these tests compare the reference (and the
artifacts) with CamVid's labels, the only check that can catch a wrong mean/std. They need the
authors' checkpoints and the CamVid split from ``$ESPNET_MOBILE_DATASETS``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import espnet_mobile as em
from espnet_mobile import bundle as B
from espnet_mobile import convert, evaluate
from espnet_mobile.zoo.dataset_stats import authors_channel_stats, dataset_stats

CAMVID_MODEL = "espnet_p_2_q_8_camvid"
FEW = 6  # CamVid val frames for the fast tests
SMALL = "176x240"  # a bundle input size ESPNet's 1/8 stages divide evenly


def _write_camvid(root: Path, split: str, photos: list[np.ndarray], labels: list[np.ndarray]) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    for i, (rgb, label) in enumerate(zip(photos, labels, strict=True)):
        Image.fromarray(rgb).save(root / split / f"f{i:03d}.png")
        Image.fromarray(label).save(root / f"{split}annot" / f"f{i:03d}.png")
    return root


def test_dataset_stats_average_each_photos_bgr_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(3)]
    photos[0][..., 0], photos[0][..., 2] = 200, 10  # red 200, blue 10: BGR order puts 10 first
    labels = [np.zeros((12, 16), np.uint8)] * 3
    root = _write_camvid(tmp_path / "camvid", "train", photos, labels)
    _write_camvid(root, "val", photos[:1], labels[:1])  # val photos must not count

    stats = dataset_stats(f"camvid:{root}")

    bgr = [p[:, :, ::-1].astype(np.float64) for p in photos]
    want_mean = [np.mean([b[:, :, c].mean() for b in bgr]) for c in range(3)]
    want_std = [np.mean([b[:, :, c].std() for b in bgr]) for c in range(3)]
    assert stats.images == 3 and stats.color_order == "BGR"
    np.testing.assert_allclose(stats.mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(stats.std, want_std, rtol=1e-6)
    # Per-photo averaging differs from pooling all pixels when photos differ in spread.
    pooled_std = np.concatenate([b[:, :, 1].ravel() for b in bgr]).std()
    assert abs(stats.std[1] - pooled_std) > 1e-3


def test_dataset_stats_refuse_an_empty_list() -> None:
    with pytest.raises(em.UserError, match="no photos"):
        authors_channel_stats([])


def test_zoo_cli_prints_dataset_stats(tmp_path: Path, capsys) -> None:
    from espnet_mobile import zoo

    photo = np.full((4, 4, 3), (30, 60, 90), np.uint8)
    root = _write_camvid(tmp_path / "camvid", "train", [photo], [np.zeros((4, 4), np.uint8)])
    assert zoo.main(["--dataset-stats", f"camvid:{root}"]) == 0
    out = capsys.readouterr().out
    assert "mean=[90.0, 60.0, 30.0]" in out and "std=[0.0, 0.0, 0.0]" in out
    assert zoo.main(["--dataset-stats", f"camvid:{tmp_path / 'missing'}"]) == 2


def test_camvid_entry_holds_the_statistics_of_its_training_split(datasets_dir: Path) -> None:
    """The zoo's CamVid figures are the ones the project's own code derives from the train split."""
    stats = dataset_stats(f"camvid:{datasets_dir / 'camvid'}")
    norm = em.get_entry(CAMVID_MODEL).normalization
    assert stats.images == 367
    assert norm.color_order == "BGR" and norm.pixel_range == 255.0 and norm.divide_after == 255.0
    np.testing.assert_allclose(norm.mean, stats.mean, atol=1e-4)
    np.testing.assert_allclose(norm.std, stats.std, atol=1e-4)
    assert "--dataset-stats" in norm.provenance


def test_cityscapes_entries_keep_the_authors_hard_coded_statistics() -> None:
    """ESPNet's test/VisualizeResults.py hard-codes the Cityscapes figures; EdgeNets uses ImageNet's on RGB."""
    for model_id in ("espnet_p_2_q_8", "espnetc_p_2_q_3"):
        norm = em.get_entry(model_id).normalization
        assert norm.mean == (72.3923111, 82.90893555, 73.15840149) and norm.divide_after == 255.0
    v2 = em.get_entry("espnetv2_s_2.0_city_512x256").normalization
    assert (v2.color_order, v2.pixel_range, v2.mean) == ("RGB", 1.0, (0.485, 0.456, 0.406))


@pytest.fixture(scope="module")
def camvid(datasets_dir: Path) -> Path:
    return datasets_dir / "camvid"


def _score(model_id: str, camvid: Path, entry=None, limit: int = FEW, split: str = "val") -> float:
    """mIoU of the reference on CamVid frames, with the zoo's entry or a modified one."""
    from espnet_mobile import data
    from espnet_mobile.deploy import reference_forward
    from espnet_mobile.preprocess import argmax_mask, preprocess

    entry = entry or em.get_entry(model_id)
    model = em.create_model(model_id, weights=em.PRETRAINED)
    scores = evaluate.Scores(entry.num_classes, list(range(11)))
    for s in data.iter_samples(data.parse_spec(f"camvid:{camvid}"), split=split, limit=limit):
        x = preprocess(s.rgb, entry.input_height, entry.input_width)
        scores.add(argmax_mask(reference_forward(model, entry, torch.from_numpy(x)).numpy()), s.label)
    record = evaluate.EvalRecord("x", None, "fp32", "pytorch", "CPU")
    scores.fill(record, list(entry.data.scored_classes))
    return record.miou


@pytest.mark.weights
def test_camvid_statistics_are_what_the_checkpoint_needs(weights_dir: Path, camvid: Path) -> None:
    """With the Cityscapes figures the zoo used to give it, the CamVid model's output is noise."""
    from espnet_mobile.zoo import ESPNET_NORM

    entry = em.get_entry(CAMVID_MODEL)
    own = _score(CAMVID_MODEL, camvid)
    wrong = _score(CAMVID_MODEL, camvid, dataclasses.replace(entry, normalization=ESPNET_NORM))
    assert own > 60.0, own
    assert own - wrong > 25.0, (own, wrong)


@pytest.mark.weights
def test_evaluate_reference_on_a_few_frames(weights_dir: Path, camvid: Path, tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "r.json"
    code = evaluate.main([CAMVID_MODEL, "--dataset", f"camvid:{camvid}", "--limit", str(FEW),
                          "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0
    section = json.loads(out_json.read_text())
    [ref] = section["results"]
    assert ref["artifact"] == "pytorch-reference" and ref["runtime"] == "pytorch" and ref["precision"] == "fp32"
    assert section["images"] == FEW and section["classes"][0] == "sky" and len(section["classes"]) == 11
    assert "unlabelled" not in ref["class_iou"]
    assert abs(ref["miou"] - _score(CAMVID_MODEL, camvid)) < 1e-3  # the same figure, computed another way
    present = [v for v in ref["class_iou"].values() if v is not None]
    assert abs(ref["miou"] - float(np.mean(present))) < 1e-3
    assert 0 < ref["pixel_accuracy"] <= 100
    assert "pytorch-reference" in out and "IoU per class" in out


@pytest.mark.slow
@pytest.mark.weights
def test_reference_scores_camvid_val_as_published(weights_dir: Path, camvid: Path) -> None:
    """The whole val split (101 frames): the target is at least 69.5 mIoU."""
    ev = evaluate.evaluate(CAMVID_MODEL, f"camvid:{camvid}", split="val", log=lambda *_: None)
    assert ev.images == 101
    assert ev.reference().miou >= 69.5, ev.reference().miou


# --- bad input: one line, exit 2 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def camvid_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "camvid_random.pth"
    torch.manual_seed(0)
    torch.save(em.build_model(em.get_entry(CAMVID_MODEL)).state_dict(), path)
    return path


def _tiny_camvid(root: Path, *, label_size=(24, 32), label_value: int = 3) -> Path:
    photo = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    label = np.full(label_size, label_value, np.uint8)
    return _write_camvid(root, "val", [photo], [label])


@pytest.mark.parametrize("case, expected", [
    ("no_labels", "has no label"),
    ("label_size", "but its image is"),
    ("label_values", "outside the 11 camvid classes"),
    ("wrong_dataset", "predicts the CamVid (SegNet split) classes"),
    ("unlabelled_kind", "--dataset needs labels"),
    ("not_a_bundle", "without a manifest.json"),
    ("bad_limit", "--limit must be at least 1"),
])
def test_bad_input_is_a_one_line_error(case: str, expected: str, tmp_path: Path, camvid_weights: Path,
                                       capsys) -> None:
    root = tmp_path / "camvid"
    target, extra = CAMVID_MODEL, []
    if case == "no_labels":
        _tiny_camvid(root)
        for f in (root / "valannot").iterdir():
            f.unlink()
    elif case == "label_size":
        _tiny_camvid(root, label_size=(12, 16))
    elif case == "label_values":
        _tiny_camvid(root, label_value=40)
    else:
        _tiny_camvid(root)
    spec = f"camvid:{root}"
    if case == "wrong_dataset":
        spec = f"cityscapes:{root}"
    elif case == "unlabelled_kind":
        spec = f"images:{root / 'val'}"
    elif case == "not_a_bundle":
        target = str(tmp_path)
    elif case == "bad_limit":
        extra = ["--limit", "0"]
    code = evaluate.main([target, "--dataset", spec, "--weights", str(camvid_weights), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_unknown_target_lists_the_zoo(capsys, tmp_path: Path) -> None:
    assert evaluate.main(["espnet_nope", "--dataset", f"camvid:{tmp_path}"]) == 2
    assert "valid ids" in capsys.readouterr().err


# --- a converted CamVid bundle -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def camvid_bundle(weights_dir: Path, camvid: Path, tmp_path_factory) -> Path:
    """ExecuTorch and TFLite fp32 artifacts of the CamVid model at a small size, scored at conversion."""
    out = tmp_path_factory.mktemp("camvid_bundle")
    code = convert.main(["--model", CAMVID_MODEL, "--input-size", SMALL, "--out", str(out),
                         "--target", "tflite", "--precision", "fp32",
                         "--eval-dataset", f"camvid:{camvid}", "--eval-limit", str(FEW)])
    assert code == 0
    code = convert.main(["--model", CAMVID_MODEL, "--input-size", SMALL, "--out", str(out),
                         "--target", "executorch", "--precision", "fp32", "--no-extra-delegates"])
    assert code == 0
    return out / CAMVID_MODEL


@pytest.mark.weights
def test_convert_eval_dataset_fills_the_manifest(camvid_bundle: Path) -> None:
    manifest = B.load_manifest(camvid_bundle)
    accuracy = manifest["accuracy"]
    assert accuracy is not None and accuracy["dataset"] == "camvid" and accuracy["images"] == FEW
    by_artifact = {r["artifact"] for r in accuracy["results"]}
    assert "pytorch-reference" in by_artifact
    assert f"{CAMVID_MODEL}_tflite_fp32.tflite" in by_artifact
    # The golden vectors are CamVid frames: the model's own domain.
    assert "CamVid val frames" in manifest["golden"]["photos_from"]
    assert all(item["image_size"] == [360, 480] for item in manifest["golden"]["items"])


@pytest.mark.weights
def test_evaluate_bundle_scores_every_artifact_on_every_runtime(camvid_bundle: Path, camvid: Path,
                                                                tmp_path: Path) -> None:
    out_json = tmp_path / "acc.json"
    code = evaluate.main([str(camvid_bundle), "--dataset", f"camvid:{camvid}", "--limit", str(FEW),
                          "--json", str(out_json)])
    assert code == 0
    results = json.loads(out_json.read_text())["results"]
    ref = next(r for r in results if r["artifact"] == "pytorch-reference")
    runtimes = {(r["artifact"].rsplit("_", 2)[-2], r["runtime"]) for r in results if r["target"]}
    assert {("executorch", "executorch-python"), ("tflite", "litert-cpu")} <= runtimes, runtimes
    for r in results:
        if r["target"] is None:
            continue
        assert r["error"] is None, r
        assert abs(r["miou"] - ref["miou"]) <= 0.05, (r["artifact"], r["runtime"], r["miou"], ref["miou"])
        assert r["agreement_with_reference"] >= 99.9, r
        assert set(r["class_iou"]) == set(ref["class_iou"])
    # The manifest now carries the same figures, with each artifact's sha256.
    manifest = B.load_manifest(camvid_bundle)
    shas = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
    for r in manifest["accuracy"]["results"]:
        assert r["sha256"] == shas.get(r["artifact"])


@pytest.mark.weights
def test_reconverting_an_artifact_drops_its_old_accuracy(camvid_bundle: Path, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / CAMVID_MODEL
    shutil.copytree(camvid_bundle, bundle)
    manifest = B.load_manifest(bundle)
    tfl = next(a for a in manifest["artifacts"] if a["target"] == "tflite")
    tfl["sha256"] = "0" * 64  # as if the artifact had been re-made
    B.drop_stale_accuracy(manifest)
    kept = {r["artifact"] for r in manifest["accuracy"]["results"]}
    assert tfl["file"] not in kept and "pytorch-reference" in kept
