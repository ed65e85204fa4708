"""ExecuTorch toolchain: pins, delegates and the precisions each produces, availability, versions, request checks."""

from __future__ import annotations

from typing import Any

import torch

from converters.base import (
    ConversionError,
    MissingBackendError,
)

EXECUTORCH_PIN = "executorch==1.5.1"
COREMLTOOLS_PIN = "coremltools==9.0"

#: Precisions each delegate can produce, in preference order.
DELEGATE_PRECISIONS: dict[str, tuple[str, ...]] = {
    "xnnpack": ("fp32", "int8"),
    "coreml": ("fp32", "fp16", "int8"),
    "vulkan": ("fp32", "fp16"),
}
DELEGATES = tuple(DELEGATE_PRECISIONS)

#: Bumped whenever this module writes a different file for the same request, so
#: ``espnet_mobile.convert`` rebuilds cached artifacts (2: XNNPACK constants under
#: 16-digit names, 16-byte segments, int8 affines before a PReLU in fp32; 3: Core ML delegate
#: identifiers derived from the program, so the same model gives the same bytes).
WRITER_VERSION = 3

#: Name the ExecuTorch runtime registers each delegate's backend under.
BACKEND_IDS = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend", "vulkan": "VulkanBackend"}

COMPUTE_UNITS = {"xnnpack": ["CPU"], "vulkan": ["GPU"]}
COREML_COMPUTE_UNITS = {
    "ALL": ["CPU", "GPU", "ANE"],
    "CPU_ONLY": ["CPU"],
    "CPU_AND_GPU": ["CPU", "GPU"],
    "CPU_AND_NE": ["CPU", "ANE"],
}

#: Operators left outside a delegate that do no arithmetic: tuple unpacking and
#: shape-only views (ExecuTorch turns view_copy into a zero-copy view when it can).
NON_COMPUTE_OPS = frozenset(
    {
        "getitem",
        "alloc",
        "aten.view_copy.default",
        "aten.alias_copy.default",
        "aten.squeeze_copy.dim",
        "aten.squeeze_copy.dims",
        "aten.unsqueeze_copy.default",
        "aten._assert_scalar.default",
        "aten._assert_tensor_metadata.default",
        "aten.sym_constrain_range_for_size.default",
        "executorch_prim.et_view.default",
    }
)

_CALIBRATION_FIX = "pass --calibration DIR (a folder of representative images) or --qat-checkpoint PATH"


# --------------------------------------------------------------------------- imports


def _require_executorch() -> None:
    try:
        import executorch.exir  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingBackendError(
            f"ExecuTorch is not installed ({exc}); install it with: pip install {EXECUTORCH_PIN}"
        ) from exc


def _require_coremltools() -> Any:
    try:
        import coremltools as ct
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingBackendError(
            f"the Core ML delegate needs coremltools ({exc}); install it with: pip install {COREMLTOOLS_PIN}"
        ) from exc
    return ct


def tool_versions(delegate: str = "xnnpack", precision: str = "fp32") -> dict[str, str]:
    """Versions of the tools that produce an artifact for ``delegate``/``precision``."""
    from importlib import metadata

    versions = {"torch": torch.__version__}
    packages = ["executorch"]
    if precision == "int8":
        packages.append("torchao")
    if delegate == "coreml":
        packages.append("coremltools")
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# --------------------------------------------------------------------------- validation


def _check_target(delegate: str, precision: str) -> None:
    if delegate not in DELEGATE_PRECISIONS:
        raise ConversionError(
            f"unknown ExecuTorch delegate {delegate!r}; valid delegates: {', '.join(DELEGATES)}"
        )
    valid = DELEGATE_PRECISIONS[delegate]
    if precision not in valid:
        raise ConversionError(
            f"precision {precision!r} is not supported by the ExecuTorch {delegate} delegate; "
            f"valid precisions: {', '.join(valid)}"
        )




