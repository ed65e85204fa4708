"""Module -> .mlpackage: export, coremltools conversion per precision, metadata, the result for the manifest."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from converters import range_refinement
from converters.base import (
    ConversionError,
    ConversionRequest,
    ConversionResult,
    atomic_output,
    stable_mlpackage_ids,
)
from converters.coreml.mil import exported_op_counts, mil_op_counts
from converters.coreml.quantize import coreml_quantizer, quantize_choosing_observer, quantize_pt2e
from converters.coreml.toolchain import (
    _OP_CONST,
    COMPUTE_UNITS,
    DEFAULT_COMPUTE_UNITS,
    DEFAULT_DEPLOYMENT_TARGET,
    INPUT_NAME,
    MAX_OP_RATIO,
    OUTPUT_NAME,
    TARGET,
    _check_request,
    _compute_units,
    _deployment_target,
    _require_coremltools,
    _runs_here,
    tool_versions,
)

# --------------------------------------------------------------------------- conversion


def _export(module: torch.nn.Module, example: torch.Tensor) -> Any:
    try:
        ep = torch.export.export(module, (example,), strict=False)
        return ep.run_decompositions({})
    except Exception as exc:
        raise ConversionError(f"torch.export of the deployable module failed: {exc}") from exc


def _output_shape(program: Any) -> tuple[int, ...]:
    output = next(n for n in program.graph.nodes if n.op == "output")
    values = output.args[0] if isinstance(output.args[0], (list, tuple)) else [output.args[0]]
    vals = [v.meta.get("val") if isinstance(v, torch.fx.Node) else v for v in values]
    if len(vals) != 1 or not isinstance(vals[0], torch.Tensor) or vals[0].dim() != 4:
        got = ", ".join(
            f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in vals
        )
        raise ConversionError(f"the deployable module must return one (1, C, H, W) logits tensor, got: {got}")
    if not vals[0].is_floating_point():
        raise ConversionError(
            f"the Core ML converter expects float logits, got {vals[0].dtype} (build the module with head='logits')"
        )
    return tuple(int(d) for d in vals[0].shape)


def _apply_metadata(ml: Any, req: ConversionRequest, shape: tuple[int, ...], out_shape: tuple[int, ...],
                    unit: str, target_name: str) -> None:
    meta = dict(req.metadata)
    ml.author = str(meta.pop("author", "espnet-mobile"))
    ml.license = str(meta.pop("license", "see the model card of the source weights"))
    desc = meta.pop("description", None) or meta.pop("short_description", None)
    ml.short_description = str(
        desc or f"{req.model_id}: semantic segmentation ({req.precision}), per-pixel class logits"
    )
    ml.version = str(meta.pop("version", "0.1.0"))
    _, c, h, w = shape
    ml.input_description[INPUT_NAME] = (
        f"float32 RGB image, values in [0, 1], NCHW {tuple(shape)} (1, {c}, {h}, {w}); "
        "mean/std normalization is inside the model"
    )
    ml.output_description[OUTPUT_NAME] = (
        f"float32 class logits {tuple(out_shape)} (1, C, H, W); argmax over dim 1 gives the label index "
        "into the 'labels' metadata"
    )
    user = ml.user_defined_metadata
    for key, value in meta.items():
        user[str(key)] = value if isinstance(value, str) else json.dumps(value)
    user["model_id"] = req.model_id
    user["labels"] = json.dumps(list(req.labels))
    user["num_classes"] = str(out_shape[1] if len(out_shape) > 1 else len(req.labels))
    user["task"] = "semantic_segmentation"
    user["precision"] = req.precision
    user["compute_units"] = unit
    user["minimum_deployment_target"] = target_name
    user["input_format"] = "RGB float32 [0,1] NCHW"


def convert(req: ConversionRequest) -> ConversionResult:
    """Write ``req.module`` as a Core ML ML program ``.mlpackage`` at ``req.out_path``.

    Options: ``minimum_deployment_target`` (default ``iOS17``; int8 needs
    iOS17/macOS14 or later), ``compute_units`` (ALL | CPU_ONLY | CPU_AND_GPU |
    CPU_AND_NE, stored in the model's metadata and the result),
    ``int8_compute_precision`` (fp16 | fp32 for the float parts of an int8
    model), ``activation_observer`` (minmax | histogram; default: both tried, the one agreeing best with
    float on the calibration inputs kept),
    ``float_modules`` (module paths kept in float in an int8 model).
    """
    started = time.perf_counter()
    ct = _require_coremltools()
    import numpy as np

    _check_request(req)
    opts = req.options
    target = _deployment_target(ct, opts.get("minimum_deployment_target", DEFAULT_DEPLOYMENT_TARGET))
    target_name = target.name
    if target < ct.target.iOS15:
        raise ConversionError(f"ML programs need iOS15/macOS12 or later, not {target_name}")
    if req.precision == "int8" and target < ct.target.iOS17:
        raise ConversionError(
            f"int8 activations (MIL quantize/dequantize) need iOS17/macOS14 or later, not {target_name}; "
            "raise minimum_deployment_target"
        )
    unit = _compute_units(opts.get("compute_units", DEFAULT_COMPUTE_UNITS))
    out_path = Path(req.out_path)
    if out_path.suffix != ".mlpackage":
        raise ConversionError(f"a Core ML ML program is saved as a .mlpackage directory, not {out_path.name}")

    example = req.example_input.detach().to(torch.float32)
    module = req.module.eval()

    report: dict[str, Any] = {}
    if req.precision == "int8":
        float_modules = tuple(opts.get("float_modules", ()))
        if req.qat_module is not None:
            quantized, qinfo = quantize_pt2e(module, example, calibration=req.calibration, qat_module=req.qat_module)
        elif "activation_observer" in opts:
            quantizer = coreml_quantizer(activation_observer=str(opts["activation_observer"]),
                                         float_modules=float_modules)
            quantized, qinfo = quantize_pt2e(module, example, calibration=req.calibration, quantizer=quantizer,
                                             refine=range_refinement.from_options(opts))
        else:
            quantized, qinfo = quantize_choosing_observer(module, example, req.calibration,
                                                          float_modules=float_modules,
                                                          refine=range_refinement.from_options(opts))
        program = _export(quantized, example)
        report["quantization"] = qinfo
        compute = str(opts.get("int8_compute_precision", "fp16"))
        if compute not in ("fp16", "fp32"):
            raise ConversionError(f"int8_compute_precision must be fp16 or fp32, not {compute!r}")
    else:
        program = _export(module, example)
        compute = req.precision
    out_shape = _output_shape(program)
    program_ops = exported_op_counts(program)
    precision = ct.precision.FLOAT16 if compute == "fp16" else ct.precision.FLOAT32

    convert_started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ml = ct.convert(
                program,
                inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape), dtype=np.float32)],
                outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                convert_to="mlprogram",
                minimum_deployment_target=target,
                compute_precision=precision,
                compute_units=getattr(ct.ComputeUnit, unit),
                skip_model_load=True,
            )
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"coremltools could not convert the exported program: {exc}") from exc
    report["coremltools_seconds"] = round(time.perf_counter() - convert_started, 3)

    _apply_metadata(ml, req, tuple(example.shape), out_shape, unit, target_name)

    with atomic_output(out_path) as tmp:
        ml.save(str(tmp))
        stable_mlpackage_ids(tmp)
        # Read it back as a device would receive it; prediction is not possible off Apple hosts.
        try:
            spec = ct.models.MLModel(str(tmp), skip_model_load=True).get_spec()
        except Exception as exc:
            raise ConversionError(f"the saved .mlpackage cannot be read back: {exc}") from exc
        mil_ops = mil_op_counts(spec)

    non_const = sum(c for k, c in mil_ops.items() if k != _OP_CONST)
    exported_total = sum(program_ops.values())
    ratio = non_const / max(1, exported_total)
    report.update(
        {
            "format": "mlprogram",
            "specification_version": spec.specificationVersion,
            "minimum_deployment_target": target_name,
            "compute_units": unit,
            "compute_precision": compute,
            "mil_ops": mil_ops,
            "mil_op_total": sum(mil_ops.values()),
            "mil_op_total_non_const": non_const,
            "exported_ops": program_ops,
            "exported_op_total": exported_total,
            "mil_per_exported_op": round(ratio, 3),
            "input": {"name": INPUT_NAME, "shape": list(example.shape), "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": list(out_shape), "dtype": "float32"},
        }
    )
    if ratio > MAX_OP_RATIO:
        warnings.warn(
            f"Core ML program has {non_const} operations for {exported_total} exported ATen ops "
            f"({ratio:.1f}x > {MAX_OP_RATIO}x): an op was expanded; see report['mil_ops']",
            stacklevel=2,
        )
    runs, reason = _runs_here()
    return ConversionResult(
        path=out_path,
        target=TARGET,
        precision=req.precision,
        compute_units=list(COMPUTE_UNITS[unit]),
        executable_here=runs,
        tool_versions=tool_versions(req.precision),
        seconds=round(time.perf_counter() - started, 3),
        report=report,
        not_executable_reason=reason,
    )

