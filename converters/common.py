"""Types shared by every backend converter: what to convert and what came out.

A converter receives an export-ready module from :mod:`espnet_mobile.deploy`
(fixed batch-1 input, normalization baked in) and writes exactly one artifact.
Writers must go through :func:`atomic_output` so that an interrupted
conversion never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("fp32", "fp16", "int8")

#: Post-training int8 keeps convolutions whose effective weights (BatchNorm folded in) exceed
#: this gain in float, on every backend that can (ExecuTorch XNNPACK, TFLite); ESPNetv2's
#: BN-amplified decoder layers reach ~700, and ~11,600 after int8 equalization.
DEFAULT_MAX_WEIGHT_GAIN = 100.0


def module_path(node: torch.fx.Node) -> str:
    """Dotted path of the innermost module that created a captured graph node ("" if unknown)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


class ConversionError(RuntimeError):
    """A conversion that cannot be done, with a message that names the fix."""


class MissingBackendError(ConversionError):
    """The optional dependency of a backend is not installed."""


@dataclass
class ConversionRequest:
    """Everything a backend needs to write one artifact."""

    module: torch.nn.Module
    example_input: torch.Tensor
    precision: str
    out_path: Path
    model_id: str = "model"
    calibration: list[torch.Tensor] | None = None
    # A module already prepared and fine-tuned by QAT for this backend (PT2E
    # graph module after prepare_qat_pt2e); converted instead of calibrating.
    qat_module: torch.nn.Module | None = None
    labels: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConversionResult:
    """What a backend wrote and how, for the bundle manifest."""

    path: Path
    target: str
    precision: str
    compute_units: list[str]
    executable_here: bool
    tool_versions: dict[str, str]
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)
    not_executable_reason: str | None = None


def calibration_batches(calibration: Sequence[torch.Tensor], example: torch.Tensor) -> list[torch.Tensor]:
    """Split calibration tensors into batch-1 tensors shaped like ``example``; wrong shapes are an error."""
    batches: list[torch.Tensor] = []
    for i, t in enumerate(calibration):
        if not isinstance(t, torch.Tensor):
            raise ConversionError(f"calibration item {i} is a {type(t).__name__}, expected a tensor")
        if t.dim() == example.dim() - 1:
            t = t.unsqueeze(0)
        if t.dim() != example.dim() or tuple(t.shape[1:]) != tuple(example.shape[1:]):
            raise ConversionError(
                f"calibration item {i} has shape {tuple(t.shape)}; every calibration tensor must be "
                f"shaped like the example input {tuple(example.shape)} (or a batch of them)"
            )
        batches.extend(t.to(example.dtype).split(1, dim=0))
    return batches


@contextlib.contextmanager
def atomic_output(final_path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it into place on success.

    Works for files and for directories (an ``.mlpackage`` is a directory).
    On any exception the temporary is removed and ``final_path`` is untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", dir=final_path.parent))
    tmp_path = tmp_dir / final_path.name
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise ConversionError(f"converter produced no output for {final_path.name}")
        if final_path.is_dir() and not final_path.is_symlink():
            old = final_path.with_name(f".{final_path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final_path, old)
            os.replace(tmp_path, final_path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, final_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
