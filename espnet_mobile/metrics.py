"""Accuracy metrics: how an artifact's output compares with the reference and with labels."""

from __future__ import annotations

import numpy as np

IGNORE = 255


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(num_classes, num_classes) counts, rows = target class, columns = predicted class."""
    keep = target != ignore
    t = target[keep].astype(np.int64)
    p = np.clip(pred[keep].astype(np.int64), 0, num_classes - 1)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for classes absent from both prediction and target."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(conf: np.ndarray) -> float:
    """Mean IoU over classes that occur, in percent."""
    ious = iou_per_class(conf)
    return float(np.nanmean(ious) * 100.0) if np.any(~np.isnan(ious)) else float("nan")


def miou_labelled(conf: np.ndarray) -> float:
    """Mean IoU over the classes the labels contain, in percent.

    A class only predicted (absent from the labels) has no IoU worth averaging on a small split:
    a few stray pixels of it would score 0 and move the mean by 1/classes. Its pixels still count,
    as misses of the labelled classes they were taken from.
    """
    ious = iou_per_class(conf)
    labelled = conf.sum(1) > 0
    return float(np.mean(ious[labelled]) * 100.0) if np.any(labelled) else float("nan")


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def max_abs_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))


def mean_abs_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(np.abs(out.astype(np.float64) - ref.astype(np.float64))))


def sqnr_db(out: np.ndarray, ref: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``out`` against ``ref`` in dB (inf when identical)."""
    ref64 = ref.astype(np.float64)
    noise = np.sum((out.astype(np.float64) - ref64) ** 2)
    if noise == 0:
        return float("inf")
    return float(10.0 * np.log10(np.sum(ref64**2) / noise))
