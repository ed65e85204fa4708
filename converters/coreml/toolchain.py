"""Core ML toolchain: pins, availability, versions, deployment target and compute unit options, request checks."""

from __future__ import annotations

import sys
from typing import Any

import torch

from converters.base import (
    PRECISIONS,
    ConversionError,
    ConversionRequest,
    MissingBackendError,
)

COREMLTOOLS_PIN = "coremltools==9.0"
TORCHAO_PIN = "torchao==0.18.0"

TARGET = "coreml"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DEFAULT_DEPLOYMENT_TARGET = "iOS17"
DEFAULT_COMPUTE_UNITS = "ALL"

#: Core ML compute-unit setting -> the devices it allows.
COMPUTE_UNITS: dict[str, list[str]] = {
    "ALL": ["CPU", "GPU", "ANE"],
    "CPU_ONLY": ["CPU"],
    "CPU_AND_GPU": ["CPU", "GPU"],
    "CPU_AND_NE": ["CPU", "ANE"],
}

#: Above this many MIL operations per exported ATen operation the converter
#: warns: an op the Core ML frontend expands element by element (such as
#: adaptive pooling with non-divisible sizes) has slipped into the graph.
MAX_OP_RATIO = 1.5

_CALIBRATION_FIX = (
    "pass --calibration DIR (images to calibrate activation ranges) or "
    "--qat-checkpoint PATH (a model fine-tuned with quantization-aware training)"
)

_OP_CONST = "const"


# --------------------------------------------------------------------------- toolchain


def _require_coremltools() -> Any:
    try:
        import coremltools as ct
    except ImportError as exc:
        raise MissingBackendError(
            f"the Core ML backend needs coremltools ({exc}); install it with: pip install {COREMLTOOLS_PIN}"
        ) from exc
    return ct


def _require_torchao() -> None:
    try:
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError as exc:
        raise MissingBackendError(
            f"int8 Core ML conversion needs torchao's PT2E quantization ({exc}); "
            f"install it with: pip install {TORCHAO_PIN}"
        ) from exc


def tool_versions(precision: str = "fp32") -> dict[str, str]:
    """Versions of the tools a conversion at ``precision`` uses."""
    from importlib import metadata

    versions = {"torch": torch.__version__}
    packages = ["coremltools"] + (["torchao"] if precision == "int8" else [])
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _runs_here() -> tuple[bool, str | None]:
    if sys.platform != "darwin":
        return False, (
            "Core ML runs only on Apple platforms (iOS/macOS); on this host the package can be "
            "written and inspected but not executed"
        )
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError:
        return False, "coremltools was installed without its Core ML runtime bindings (libcoremlpython)"
    return True, None


# --------------------------------------------------------------------------- options


def _deployment_target(ct: Any, name: Any) -> Any:
    if isinstance(name, ct.target):
        return name
    members = dict(ct.target.__members__)
    text = str(name)
    if text in members:
        return members[text]
    folded = {k.lower(): v for k, v in members.items()}
    if text.lower() in folded:
        return folded[text.lower()]
    raise ConversionError(
        f"unknown Core ML minimum_deployment_target {text!r}; valid: {', '.join(members)}"
    )


def _compute_units(name: Any) -> str:
    unit = str(name).upper()
    if unit not in COMPUTE_UNITS:
        raise ConversionError(f"unknown Core ML compute_units {name!r}; valid: {', '.join(COMPUTE_UNITS)}")
    return unit


def _check_request(req: ConversionRequest) -> None:
    if req.precision not in PRECISIONS:
        raise ConversionError(f"unknown precision {req.precision!r}; valid: {', '.join(PRECISIONS)}")
    x = req.example_input
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConversionError(f"the Core ML converter needs a (1, 3, H, W) example input, got {shape}")
    if not x.is_floating_point():
        raise ConversionError(f"the example input must be a float tensor, got {x.dtype}")
    if req.qat_module is not None and req.precision != "int8":
        raise ConversionError(
            f"a QAT model only converts to int8, not {req.precision}; drop --qat-checkpoint "
            "or ask for int8"
        )
    if req.precision == "int8" and req.qat_module is None and not req.calibration:
        raise ConversionError(f"int8 Core ML conversion needs calibration data or a QAT model: {_CALIBRATION_FIX}")


