"""ExecuTorch backend: export-ready module -> ``.pte`` program (XNNPACK, Core ML or Vulkan).

Flow: ``torch.export`` -> (int8 only: PT2E quantization with the delegate's
quantizer) -> ``to_edge_transform_and_lower`` with the delegate's partitioner
-> ``to_executorch`` -> ``.pte``.

* ``xnnpack`` (default): fp32, or int8 with per-channel symmetric weights and
  static per-tensor activations (calibrated, or converted from a QAT module).
  Runs here through the ExecuTorch Python runtime.
* ``coreml``: fp32 / fp16 (and int8 through the Core ML quantizer). Lowers here
  with coremltools, but only runs on Apple platforms.
* ``vulkan``: fp32 / fp16. Lowers here, needs a Vulkan GPU runtime to run.

Every conversion carries a delegation report (``result.report["delegation"]``)
counting delegated and non-delegated operators per op and, for operators the
partitioner rejected, the reason it logged.

ExecuTorch is imported lazily so that the other backends work without it.
Modules: ``toolchain`` (pins, delegates, versions), ``quantize`` (PT2E int8 and the nodes kept fp32),
``lowering`` (partitioners, delegation report), ``conversion`` (module -> .pte and its BundledProgram),
``runtime`` and ``cpp_runtime`` (executing .pte files here: pybindings, and the C++ runner in
``cpp_runner/``), ``debugger`` (first layer off).
"""

from __future__ import annotations

from converters.base import DEFAULT_MAX_WEIGHT_GAIN, Backend, RuntimeSpec
from converters.executorch.conversion import convert, verify_bundled_program, write_bundled_program
from converters.executorch.lowering import lower
from converters.executorch.quantize import automatic_fp32_nodes, quantize_pt2e, xnnpack_quantizer
from converters.executorch.runtime import load_pte, run_pte
from converters.executorch.toolchain import DELEGATE_PRECISIONS, WRITER_VERSION, tool_versions


def _simulate_int8(module, example, calibration):
    # The converter's int8 defaults: fp32 high-gain convs and affines before a PReLU.
    program, _ = quantize_pt2e(module, example, calibration=calibration, float_prelu_affines=True)
    return program.module()


def _qat_float_nodes(captured):
    return sorted(automatic_fp32_nodes(captured, DEFAULT_MAX_WEIGHT_GAIN, prelu_affines=True))


def _runtimes() -> list[RuntimeSpec]:
    from converters.executorch import cpp_runtime, runtime

    return [*cpp_runtime.RUNTIMES, *runtime.RUNTIMES]


BACKEND = Backend(
    name="executorch", extension="pte",
    delegates={"xnnpack": ("fp32", "int8"), "coreml": ("fp16",), "vulkan": ("fp32",)},
    supported=dict(DELEGATE_PRECISIONS),
    convert=convert, tool_versions=tool_versions, writer_version=WRITER_VERSION,
    quantizer=lambda qat: xnnpack_quantizer(is_qat=qat), simulate_int8=_simulate_int8, qat_name="xnnpack",
    qat_float_nodes=_qat_float_nodes, float_layers_option="int8_fp32_layers",
    runtimes=_runtimes, debugger="converters.executorch.debugger",
)

__all__ = ["BACKEND", "convert", "load_pte", "lower", "quantize_pt2e", "run_pte", "verify_bundled_program",
           "write_bundled_program", "xnnpack_quantizer"]
