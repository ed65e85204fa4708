"""LiteRT toolchain: the pinned litert-torch and ai-edge-litert, their availability and versions, format constants."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import torch

from converters.base import (
    MissingBackendError,
)

#: Bumped whenever this module writes a different file for the same request, so
#: ``espnet_mobile.convert`` rebuilds cached artifacts (2: shared quantization vectors;
#: 3: high-gain convs and their PReLUs in float; 4: int8 PReLU slopes tiled along the width;
#: 5: int8 BatchNorm affines folded into the conv ahead of a resize or pool; 6: float PReLUs
#: as one PRELU op, those files CPU-only; 7: one output observer per concat).
WRITER_VERSION = 7

TARGET = "tflite"
INSTALL_HINT = "pip install litert-torch==0.10.0"
DEFAULT_SIGNATURE = "segment"
DEFAULT_INPUT_NAME = "image"
DEFAULT_OUTPUT_NAME = "logits"
ACCELERATORS = ("cpu", "cpu_reference", "gpu")
OPTIONS = ("nhwc", "signature", "input_name", "output_name", "verbose", "int8_max_weight_gain", "delegate")

_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


# --------------------------------------------------------------------------- #
# Backend availability and versions
# --------------------------------------------------------------------------- #


def _require_backend() -> Any:
    """Import litert-torch and the LiteRT runtime, or say how to install them."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import litert_torch
    except ImportError as exc:
        raise MissingBackendError(
            f"the TFLite/LiteRT backend needs litert-torch ({exc}); install it with `{INSTALL_HINT}`"
        ) from exc
    return litert_torch


def _require_runtime() -> Any:
    try:
        from ai_edge_litert import interpreter
    except ImportError as exc:
        raise MissingBackendError(
            f"running .tflite files needs the LiteRT runtime ({exc}); install it with "
            "`pip install ai-edge-litert==2.3.0`"
        ) from exc
    return interpreter


def tool_versions() -> dict[str, str]:
    """Versions of the tools that produce and run the artifact (for the manifest)."""
    versions = {"torch": torch.__version__}
    for dist in ("litert-torch", "ai-edge-litert"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions

