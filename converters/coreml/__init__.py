"""Core ML backend: export-ready module -> ML program ``.mlpackage`` (coremltools).

Flow: ``torch.export`` -> ``run_decompositions({})`` (ATen dialect, composite
ops such as ``linear`` and ``prelu`` kept whole) -> ``coremltools.convert`` to
an ML program -> metadata -> saved through :func:`atomic_output`.

Precisions:

* ``fp32`` / ``fp16``: the compute precision of the ML program (fp16 stores
  weights and runs every op in float16; the model input and output stay
  float32, with casts at the edges).
* ``int8``: int8 weights *and* activations. The module is quantized with PT2E
  using :func:`coreml_quantizer` (per-channel symmetric int8 weights, static
  per-tensor affine int8 activations), calibrated on ``req.calibration``,
  or taken from ``req.qat_module`` (prepared with ``prepare_qat_pt2e`` and
  fine-tuned). The quantize/dequantize graph converts to MIL ``quantize`` /
  ``dequantize`` activation ops and ``constexpr_affine_dequantize`` int8
  weights, which need iOS 17 / macOS 14. Ops outside the int8 path run in
  float16 (``options["int8_compute_precision"] = "fp32"`` to change that).

ExecuTorch's ``CoreMLQuantizer`` annotates through ~400 pattern graphs, each
traced with ``torch.export``; that costs minutes on a small CPU and leaves
PReLU, concatenation, pooling and transposed convolutions in float. The
quantizer here annotates by operator instead, in well under a second.

Core ML models cannot be run on Linux: the package is checked by loading it
back with ``skip_model_load=True`` and reading its spec, never by predicting.

coremltools is imported lazily so that the other backends work without it.
Modules: ``toolchain`` (pins, versions, options), ``quantize`` (the operator-level PT2E quantizer),
``conversion`` (module -> .mlpackage), ``mil`` (reading the written program), ``mil_interpreter``
(a reference interpreter that executes ML programs here), ``debugger`` (first layer off).
"""

from __future__ import annotations

from converters.base import Backend, RuntimeSpec
from converters.coreml.conversion import convert
from converters.coreml.mil import iter_mil_ops, mil_dtype_counts, mil_op_counts
from converters.coreml.quantize import OBSERVERS, coreml_quantizer, quantize_choosing_observer, quantize_pt2e
from converters.coreml.toolchain import tool_versions as _tool_versions


def _versions(_delegate: str, precision: str) -> dict[str, str]:
    return _tool_versions(precision)


def _simulate_int8(module, example, calibration):
    converted, _ = quantize_choosing_observer(module, example, calibration)  # as the converter does
    return converted


def _ptq_quantizers() -> dict:
    return {observer: coreml_quantizer(activation_observer=observer) for observer in OBSERVERS}


def _runtimes() -> list[RuntimeSpec]:
    from converters.coreml import mil_interpreter

    return list(mil_interpreter.RUNTIMES)


BACKEND = Backend(
    name="coreml", extension="mlpackage",
    delegates={"coreml": ("fp32", "fp16", "int8")},
    convert=convert, tool_versions=_versions,
    # 2: package item identifiers derived from their content (reproducible bytes)
    # 3: int8 activations affine (zero points) instead of symmetric
    # 4: int8 activation ranges from histograms instead of min/max
    # 5: int8 activation ranges from min/max or histograms, whichever agrees better with float
    writer_version=5,
    quantizer=lambda qat: coreml_quantizer(is_qat=qat), simulate_int8=_simulate_int8, qat_name="coreml",
    ptq_quantizers=_ptq_quantizers,
    runtimes=_runtimes, debugger="converters.coreml.debugger", float_layers_option="float_modules",
)

__all__ = ["BACKEND", "convert", "coreml_quantizer", "iter_mil_ops", "mil_dtype_counts", "mil_op_counts",
           "quantize_pt2e"]
