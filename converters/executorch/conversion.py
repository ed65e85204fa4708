"""Module -> .pte for one delegate and precision, with its BundledProgram and the result for the manifest."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from converters.base import (
    ConversionError,
    ConversionRequest,
    ConversionResult,
    atomic_output,
)
from converters.executorch.lowering import LoweredProgram, _runtime_has_backend, lower
from converters.executorch.runtime import run_pte
from converters.executorch.toolchain import (
    _CALIBRATION_FIX,
    BACKEND_IDS,
    _check_target,
    _require_executorch,
    tool_versions,
)


def convert(req: ConversionRequest) -> ConversionResult:
    """Write ``req.out_path`` (a ``.pte``) for ``req.options["delegate"]`` (default ``xnnpack``).

    Options:

    * ``delegate``: xnnpack (default) | coreml | vulkan;
    * ``bundle`` (bool): also write ``<out>.bpte`` with the example input and
      its expected output (the program's own output when it runs here, the
      eager module's otherwise);
    * int8 post-training quantization: ``int8_fp32_layers`` (module paths
      kept in fp32) and ``int8_max_weight_gain`` (default
      :data:`DEFAULT_MAX_WEIGHT_GAIN` for XNNPACK; ``None`` disables the
      automatic fp32 fallback of :func:`high_gain_convolutions`) and
      ``int8_float_prelu_affines`` (default True for XNNPACK: the affines of
      :func:`affines_before_prelu` stay fp32);
    * Core ML only: ``compute_unit`` (ALL | CPU_ONLY | CPU_AND_GPU |
      CPU_AND_NE) and ``minimum_deployment_target`` (default iOS17).
    """
    start = time.perf_counter()
    delegate = str(req.options.get("delegate", "xnnpack")).lower()
    _check_target(delegate, req.precision)
    if req.precision == "int8" and req.qat_module is None and not req.calibration:
        raise ConversionError(f"int8 needs calibration data or a QAT model: {_CALIBRATION_FIX}")
    _require_executorch()

    lowered = lower(
        req.module,
        req.example_input,
        precision=req.precision,
        delegate=delegate,
        calibration=req.calibration,
        qat_module=req.qat_module,
        options=req.options,
    )
    with atomic_output(Path(req.out_path)) as tmp:
        tmp.write_bytes(lowered.buffer)
    report = lowered.report
    report["pte_bytes"] = Path(req.out_path).stat().st_size
    report["model_id"] = req.model_id

    backend_id = BACKEND_IDS[delegate]
    executable = _runtime_has_backend(backend_id)
    reason = None
    if not executable:
        if delegate == "coreml":
            reason = (
                "the Core ML delegate runs only on Apple platforms (iOS/macOS); "
                "this host's ExecuTorch runtime has no CoreMLBackend"
            )
        elif delegate == "vulkan":
            reason = (
                "this host's ExecuTorch runtime is built without VulkanBackend (and there is no Vulkan GPU); "
                "run it with an Android or desktop ExecuTorch build that includes Vulkan"
            )
        else:
            reason = f"this host's ExecuTorch runtime has no {backend_id}"

    if req.options.get("bundle"):
        bpte = Path(req.out_path).with_suffix(".bpte")
        x = req.example_input.detach().contiguous()
        if executable:
            expected = run_pte(req.out_path, x)
        else:
            with torch.no_grad():
                expected = req.module(x)
        write_bundled_program(lowered.executorch, [x], [expected], bpte)
        report["bundled_program"] = str(bpte)

    return ConversionResult(
        path=Path(req.out_path),
        target=f"executorch-{delegate}",
        precision=req.precision,
        compute_units=list(report["compute_units"]),
        executable_here=executable,
        tool_versions=tool_versions(delegate, req.precision),
        seconds=round(time.perf_counter() - start, 3),
        report=report,
        not_executable_reason=reason,
    )


# --------------------------------------------------------------------------- bundled programs


def write_bundled_program(
    program: Any,
    inputs: Sequence[torch.Tensor],
    expected: Sequence[torch.Tensor],
    path: str | Path,
    *,
    method: str = "forward",
) -> Path:
    """Write an ExecuTorch BundledProgram (``.bpte``): the program plus golden I/O.

    ``program`` is an ``ExecutorchProgramManager`` (e.g. ``lower(...).executorch``),
    a :class:`LoweredProgram`, or the path of an existing ``.pte``. Each
    ``inputs[i]`` (the single input of ``method``) is bundled with
    ``expected[i]`` as one test case.
    """
    _require_executorch()
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.core import BundledProgram
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    if len(inputs) != len(expected) or not inputs:
        raise ValueError(f"need as many expected outputs as inputs (got {len(inputs)} and {len(expected)})")
    if isinstance(program, LoweredProgram):
        program = program.executorch
    cases = [
        MethodTestCase(inputs=[x.detach().contiguous()], expected_outputs=[y.detach().contiguous()])
        for x, y in zip(inputs, expected, strict=True)
    ]
    suites = [MethodTestSuite(method_name=method, test_cases=cases)]
    if isinstance(program, (str, Path)):
        bundled = BundledProgram(None, suites, pte_file_path=str(program))
    else:
        bundled = BundledProgram(program, suites)
    data = serialize_from_bundled_program_to_flatbuffer(bundled)
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def verify_bundled_program(
    path: str | Path,
    num_cases: int,
    *,
    method: str = "forward",
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> list[torch.Tensor]:
    """Run every bundled test case of a ``.bpte`` with the ExecuTorch runtime and check
    its outputs against the bundled expected ones (``|out - exp| <= atol + rtol*|exp|``).

    Raises :class:`AssertionError` naming the failing case; returns the outputs.
    """
    _require_executorch()
    from executorch.extension.pybindings import portable_lib

    bundle = portable_lib._load_bundled_program_from_buffer(Path(path).read_bytes())
    outputs: list[torch.Tensor] = []
    for idx in range(num_cases):
        try:
            out = bundle.verify_result_with_bundled_expected_output(method, idx, rtol, atol)
        except RuntimeError as exc:
            raise AssertionError(f"{path}: bundled test case {idx} of {method} failed: {exc}") from exc
        outputs.append(out[0])
    return outputs


