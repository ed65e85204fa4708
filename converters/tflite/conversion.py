"""Module -> .tflite: layout and I/O wrappers, litert-torch conversion per precision, the manifest's result."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from converters import range_refinement
from converters.base import (
    DEFAULT_MAX_WEIGHT_GAIN,
    PRECISIONS,
    ConversionError,
    ConversionRequest,
    ConversionResult,
    MissingBackendError,
    atomic_output,
)
from converters.tflite.flatbuffer import _float_io, _native_prelu, inspect_tflite, share_quantization_vectors
from converters.tflite.quantizer import _strict_qdq, get_quantizer
from converters.tflite.toolchain import (
    DEFAULT_INPUT_NAME,
    DEFAULT_OUTPUT_NAME,
    DEFAULT_SIGNATURE,
    OPTIONS,
    TARGET,
    _require_backend,
    _require_runtime,
    tool_versions,
)

# --------------------------------------------------------------------------- #
# Module wrappers: layout and named I/O
# --------------------------------------------------------------------------- #


class _NHWCInput(nn.Module):
    """Takes an NHWC image and hands the wrapped module the NCHW tensor it expects."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.inner(image.permute(0, 3, 1, 2))


class _NamedIO(nn.Module):
    """Gives the exported signature a named input (the one keyword argument) and a named output."""

    def __init__(self, inner: nn.Module, output_name: str) -> None:
        super().__init__()
        self.inner = inner
        self.output_name = output_name

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        (image,) = inputs.values()
        out = self.inner(image)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return {self.output_name: out}


def _mark_eval(module: nn.Module) -> nn.Module:
    """Put a wrapper in eval mode without calling ``.eval()`` on exported graph modules (unsupported)."""
    for sub in module.modules():
        if not isinstance(sub, torch.fx.GraphModule):
            sub.training = False
    return module


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence litert-torch's progress console and ai-edge-quantizer's prints unless verbose."""
    if verbose:
        yield
        return
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


# --------------------------------------------------------------------------- #
# Conversion
# --------------------------------------------------------------------------- #


def _calibration_batches(tensors: Sequence[torch.Tensor], example: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield calibration inputs one by one, in the module's layout and the example's shape."""
    for i, t in enumerate(tensors):
        t = torch.as_tensor(t)
        if t.dim() == example.dim() - 1:
            t = t.unsqueeze(0)
        if t.dim() != example.dim() or tuple(t.shape[1:]) != tuple(example.shape[1:]):
            raise ConversionError(
                f"calibration tensor {i} has shape {tuple(t.shape)}; expected {tuple(example.shape)} "
                "(the deployable module's fixed input shape)")
        yield from t.to(example.dtype).split(1)


def _to_layout(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous() if nhwc else x


def _quantize_pt2e(req: ConversionRequest, nhwc: bool) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A PT2E-converted module (quantize/dequantize nodes) ready for litert-torch, with its quantizer."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    info: dict[str, Any] = {}
    if req.qat_module is not None:
        gm = copy.deepcopy(req.qat_module)
        move_exported_model_to_eval(gm)
        gm = convert_pt2e(gm, fold_quantize=False)
        info["quantization"] = "pt2e-qat"
        # The QAT graph takes NCHW; the layout permute stays outside it (float, before QUANTIZE).
        return (_NHWCInput(gm) if nhwc else gm), get_quantizer(qat=True), info

    gain = (req.options or {}).get("int8_max_weight_gain", DEFAULT_MAX_WEIGHT_GAIN)
    quantizer = get_quantizer(max_weight_gain=None if gain is None else float(gain),
                              float_modules=tuple((req.options or {}).get("int8_fp32_layers", ())))
    source = _NHWCInput(req.module) if nhwc else req.module
    example = _to_layout(req.example_input, nhwc)
    try:
        gm = torch.export.export(_mark_eval(source), (example,), strict=False).module()
    except Exception as exc:
        raise ConversionError(f"torch.export failed before int8 quantization: {exc}") from exc
    gm = prepare_pt2e(gm, quantizer)
    samples = [_to_layout(s, nhwc) for s in _calibration_batches(req.calibration or [], req.example_input)]
    if not samples:
        raise ConversionError("int8 calibration got no tensors; pass `--calibration DIR` with images")
    with torch.no_grad():
        for sample in samples:
            gm(sample)
    refine = range_refinement.from_options(req.options)
    if refine is not None:
        info["range_refinement"] = range_refinement.refine_activation_ranges(gm, samples, refine).as_dict()
    gm = convert_pt2e(gm, fold_quantize=False)
    move_exported_model_to_eval(gm)
    info.update(quantization="pt2e-ptq", calibration_samples=len(samples))
    if quantizer.float_islands:
        info["float_convs"] = quantizer.float_islands
    return gm, quantizer, info


def convert(req: ConversionRequest) -> ConversionResult:
    """Convert ``req.module`` to one ``.tflite`` file at ``req.out_path`` (see the module docstring)."""
    if req.precision not in PRECISIONS:
        raise ConversionError(
            f"unknown precision {req.precision!r} for {TARGET}; valid: {', '.join(PRECISIONS)}")
    if req.precision == "int8" and not req.calibration and req.qat_module is None:
        raise ConversionError(
            "int8 for tflite needs calibration data or a QAT model: pass `--calibration DIR` "
            "(a folder of representative images) or `--qat-checkpoint PATH`")
    litert_torch = _require_backend()

    opts = dict(req.options or {})
    nhwc = bool(opts.get("nhwc", False))
    sig_name = str(opts.get("signature", DEFAULT_SIGNATURE))
    in_name = str(opts.get("input_name", DEFAULT_INPUT_NAME))
    out_name = str(opts.get("output_name", DEFAULT_OUTPUT_NAME))
    verbose = bool(opts.get("verbose", False))
    if not in_name.isidentifier():
        raise ConversionError(f"input_name must be a Python identifier, got {in_name!r}")

    start = time.perf_counter()
    example = _to_layout(req.example_input.detach(), nhwc)
    report: dict[str, Any] = {
        "signature": sig_name,
        "input": {"name": in_name, "shape": list(example.shape), "dtype": "float32",
                  "layout": "NHWC" if nhwc else "NCHW"},
        "output_name": out_name,
    }
    ignored = sorted(set(opts) - set(OPTIONS))
    if ignored:
        report["ignored_options"] = ignored

    quant_config = None
    float_convs: dict[str, Any] = {}
    with _quiet(verbose):
        if req.precision == "int8":
            inner, quantizer, info = _quantize_pt2e(req, nhwc)
            float_convs = info.get("float_convs", {})
            report.update(info)
            from litert_torch.quantize.quant_config import QuantConfig

            quant_config = QuantConfig(pt2e_quantizer=quantizer)
        else:
            inner = _NHWCInput(req.module) if nhwc else req.module
            if req.precision == "fp16":
                from litert_torch.generative.quantize import quant_recipes

                quant_config = quant_recipes.full_fp16_recipe()
        named = _mark_eval(_NamedIO(inner, out_name))
        try:
            with _strict_qdq(bool(float_convs)):
                edge = litert_torch.signature(sig_name, named, sample_kwargs={in_name: example}).convert(
                    quant_config=quant_config)
            data = bytes(edge.model_content())
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"litert-torch failed to convert ({req.precision}): {exc}") from exc

    data, io_changes = _float_io(data)
    if io_changes:
        report["float_io"] = io_changes
    if req.precision != "int8" and opts.get("delegate") != "gpu":
        # The GPU artifact keeps the converter's lowering: the LiteRT GPU accelerator does not
        # take a PRELU op (lavapipe: "Some ops are not accelerated").
        data, report["native_prelu"] = _native_prelu(data)
    if req.precision == "int8":
        before = len(data)
        data = share_quantization_vectors(data)
        report["shared_quantization_bytes"] = before - len(data)
    report.update(inspect_tflite(data))
    with atomic_output(Path(req.out_path)) as tmp:
        tmp.write_bytes(data)
    report["bytes"] = len(data)
    return ConversionResult(
        path=Path(req.out_path),
        target=TARGET,
        precision=req.precision,
        # Neither int8 nor a native PRELU runs on the LiteRT GPU accelerator: the GPU artifact
        # (delegate "gpu") is the one for GPUs.
        compute_units=["cpu"] if req.precision == "int8" or report.get("native_prelu") else ["cpu", "gpu"],
        executable_here=_runtime_available(),
        tool_versions=tool_versions(),
        seconds=time.perf_counter() - start,
        report=report,
        not_executable_reason=None if _runtime_available() else "ai-edge-litert is not installed",
    )


def _runtime_available() -> bool:
    try:
        _require_runtime()
    except MissingBackendError:
        return False
    return True


