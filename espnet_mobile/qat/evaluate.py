"""Scoring QAT on the held-out split: fp32, fake-quantized, and int8 artifacts where they run here.

int8 numbers come from the converted artifact run by its own runtime
(ExecuTorch XNNPACK for ``xnnpack``, the LiteRT interpreter for ``tflite``).
Core ML does not run on Linux, so for ``coreml`` the int8 number is the
PT2E-converted graph (quantize/dequantize in PyTorch); for a QAT graph that is
exactly its fake-quantized inference (checked in tests/test_qat.py), so the
fake-quant score is reported as the int8 score and labelled ``simulated``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import converters
from espnet_mobile import metrics
from espnet_mobile.qat import data as qat_data
from espnet_mobile.qat import graph as qat_graph

EVAL_BATCH = 8
#: Distillation scores only pixels where the teacher's top class has at least this probability.
#: ESPNetv2's argmax on photos outside its training set has many near-ties (8% of pixels below 0.5
#: at 128x128), and a handful of flipped near-tie pixels that form a rare class swing mIoU by
#: several points; the confident pixels measure what quantization changed.
TEACHER_CONFIDENCE = 0.5


def predict(fn: Callable[[torch.Tensor], torch.Tensor], inputs: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Argmax masks (N, H, W) of a batched torch callable over float inputs (N, 3, H, W)."""
    masks = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            logits = fn(torch.from_numpy(inputs[i:i + batch]))
            masks.append(torch.argmax(logits, dim=1).to(torch.uint8).numpy())
    return np.concatenate(masks)


def teacher_labels(teacher: torch.nn.Module, inputs: np.ndarray, confidence: float = TEACHER_CONFIDENCE,
                   batch: int = EVAL_BATCH) -> np.ndarray:
    """The teacher's argmax (N, H, W) uint8, with 255 (not scored) where it is less confident than ``confidence``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            p = torch.softmax(teacher(torch.from_numpy(inputs[i:i + batch])), dim=1)
            top, label = p.max(dim=1)
            label = label.to(torch.uint8)
            label[top < confidence] = metrics.IGNORE
            out.append(label.numpy())
    return np.concatenate(out)


def predict_one_by_one(fn: Callable[[torch.Tensor], torch.Tensor], inputs: np.ndarray) -> np.ndarray:
    return predict(fn, inputs, batch=1)


def scores(masks: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """mIoU, pixel accuracy and IoU per labelled class (all in percent) of argmax masks against labels.

    ``miou`` averages the classes present in the labels (:func:`metrics.miou_labelled`).
    ``miou_all`` also averages classes only predicted, each at IoU 0: on the 24 held-out crops of
    ``distill:`` 931 stray pixels of two such classes (0.06% of the pixels) cost ESPNetv2's PTQ
    int8 20 points of it, so it measures stray pixels more than the quantization gap. Pixel
    accuracy moves with the share of pixels that changed.
    """
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for m, t in zip(masks, labels, strict=True):
        conf += metrics.confusion(m, t, num_classes)
    total = conf.sum()
    accuracy = float(np.trace(conf) / total * 100.0) if total else float("nan")
    ious = metrics.iou_per_class(conf)
    return {"miou": round(metrics.miou_labelled(conf), 4), "miou_all": round(metrics.miou(conf), 4),
            "pixel_acc": round(accuracy, 4),
            "class_iou": {str(c): round(float(ious[c]) * 100.0, 2) for c in np.flatnonzero(conf.sum(1))}}


def class_coverage(train_labels: np.ndarray, heldout_labels: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Which classes of the held-out labels the training data shows at all.

    QAT can only learn to keep what it sees: a class scored on the held-out split but absent
    from every training image still counts in the held-out mIoU, with nothing to train it on.
    """
    train = qat_data.class_pixels(train_labels, len(names))
    held = qat_data.class_pixels(heldout_labels, len(names))
    return {"heldout_pixels": {names[c]: int(held[c]) for c in np.flatnonzero(held)},
            "train_pixels": {names[c]: int(train[c]) for c in np.flatnonzero(train)},
            "absent_from_training": [names[c] for c in np.flatnonzero(held) if train[c] == 0]}


def qat_scores(gm: torch.fx.GraphModule, inputs: np.ndarray, labels: np.ndarray,
               num_classes: int) -> dict[str, Any]:
    """Scores of the QAT graph without and with fake quantization (inference mode, state untouched)."""
    with qat_graph.inference_mode(gm, fake_quant=False):
        fp32 = scores(predict(gm, inputs), labels, num_classes)
    with qat_graph.inference_mode(gm, fake_quant=True):
        fq = scores(predict(gm, inputs), labels, num_classes)
    return {"fp32_miou": fp32["miou"], "fake_quant_miou": fq["miou"],
            "fp32_pixel_acc": fp32["pixel_acc"], "fake_quant_pixel_acc": fq["pixel_acc"],
            "fp32_miou_all": fp32["miou_all"], "fake_quant_miou_all": fq["miou_all"],
            "fake_quant_class_iou": fq["class_iou"]}


# --------------------------------------------------------------------------- artifacts


def _request(deployable: torch.nn.Module, out_path: Path, *, calibration=None, qat_module=None,
             backend: str):
    from converters.base import ConversionRequest

    example = torch.zeros(1, 3, deployable.config.height, deployable.config.width)
    options: dict[str, Any] = {}
    if backend == "xnnpack":
        options["delegate"] = "xnnpack"
    return ConversionRequest(module=deployable, example_input=example, precision="int8", out_path=out_path,
                             model_id=deployable.model_id, calibration=calibration, qat_module=qat_module,
                             options=options)


def convert_int8(backend: str, deployable: torch.nn.Module, out_path: Path, *,
                 calibration: Sequence[np.ndarray] | None = None,
                 qat_module: torch.fx.GraphModule | None = None) -> dict[str, Any]:
    """Write the int8 artifact of ``backend`` (PTQ from ``calibration``, or from a QAT graph); report it."""
    backend_ = converters.backend(qat_graph.convert_target(backend))
    cal = None if calibration is None else [torch.from_numpy(np.asarray(c)) for c in calibration]
    qat = None if qat_module is None else qat_graph.for_conversion(qat_module)
    start = time.perf_counter()
    result = backend_.convert(_request(deployable, Path(out_path), calibration=cal, qat_module=qat, backend=backend))
    return {"file": str(out_path), "seconds": round(time.perf_counter() - start, 1),
            "executable_here": bool(result.executable_here)}


def artifact_scores(backend: str, path: Path, inputs: np.ndarray, labels: np.ndarray,
                    num_classes: int) -> dict[str, float] | None:
    """:func:`scores` of an int8 artifact run by its runtime here; None where it cannot run here."""
    runtime = qat_graph.artifact_runtime(backend)
    if runtime is None:
        return None
    from converters import run_artifact

    masks = []
    for x in inputs:
        out = run_artifact(runtime[0], runtime[1], Path(path), x[None])
        if out is None:
            return None
        masks.append(np.argmax(out[0], axis=0).astype(np.uint8))
    return scores(np.stack(masks), labels, num_classes)


def ptq_simulated_scores(backend: str, deployable: torch.nn.Module, calibration: Sequence[np.ndarray],
                         inputs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """PTQ int8 with the backend's PT2E quantizer and its converter's policy, run as
    quantize/dequantize in PyTorch (Core ML, which does not run here, or when artifacts are off)."""
    example = torch.zeros(1, 3, deployable.config.height, deployable.config.width)
    cal = [torch.from_numpy(np.asarray(c)) for c in calibration]
    simulate = qat_graph._backend(backend).simulate_int8
    if simulate is not None:
        converted = simulate(deployable, example, cal)
    else:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        captured = torch.export.export(deployable.eval(), (example,), strict=False).module()
        prepared = prepare_pt2e(captured, qat_graph.backend_quantizer(backend, qat=False))
        with torch.no_grad():
            for c in cal:
                prepared(c)
        converted = convert_pt2e(prepared, fold_quantize=False)
    return scores(predict_one_by_one(converted, inputs), labels, num_classes)
