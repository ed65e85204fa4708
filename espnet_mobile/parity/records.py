"""Parity records: one per (artifact, runtime, compute unit), and their JSON form for parity.json and the manifest."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Reference:
    name: str
    rgb: np.ndarray
    input: np.ndarray
    logits: np.ndarray
    mask: np.ndarray
    label: np.ndarray | None


@dataclass
class Record:
    artifact: str
    target: str
    delegate: str
    precision: str
    runtime: str
    compute_unit: str
    executed: bool
    reason: str | None = None
    label: str = ""
    metrics: dict[str, Any] | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None
    failures: list[str] = field(default_factory=list)
    culprit: dict[str, Any] | None = None
    device_steps: str | None = None
    judged_as: str = ""
    masks: list[np.ndarray] = field(default_factory=list, repr=False)



def record_json(rec: Record) -> dict:
    return {
        "artifact": rec.artifact, "target": rec.target, "delegate": rec.delegate, "precision": rec.precision,
        "runtime": rec.runtime, "compute_unit": rec.compute_unit, "label": rec.label, "executed": rec.executed,
        "reason": rec.reason, "metrics": _finite(rec.metrics), "judged_as": rec.judged_as or rec.precision,
        "thresholds": rec.thresholds, "passed": rec.passed,
        "failures": rec.failures, "culprit": rec.culprit, "device_steps": rec.device_steps,
    }


def _finite(m: dict | None) -> dict | None:
    """JSON has no infinity: an identical output's SQNR is written as null with ``sqnr_db_infinite``."""
    if m is None:
        return None
    out = dict(m)
    if out.get("sqnr_db") is not None and math.isinf(out["sqnr_db"]):
        out["sqnr_db"], out["sqnr_db_infinite"] = None, True
    return out
