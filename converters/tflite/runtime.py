"""Running a .tflite here with the ai_edge_litert Interpreter (XNNPACK on the CPU) or CompiledModel (accelerators)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from converters.base import (
    MissingBackendError,
    RuntimeSpec,
)
from converters.tflite.toolchain import ACCELERATORS, _require_runtime

# --------------------------------------------------------------------------- #
# Execution
# --------------------------------------------------------------------------- #


def _quantize_array(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    q = np.round(x / scale) + zero
    return np.clip(q, info.min, info.max).astype(detail["dtype"])


def _dequantize_array(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def run_tflite(path: str | Path, input: np.ndarray, *, accelerator: str = "cpu",
               signature: str | None = None, num_threads: int | None = None) -> np.ndarray:
    """Run a single-input, single-output ``.tflite`` model and return its output as float32.

    ``input`` is a float array in the artifact's input layout and shape. For a
    model with integer I/O it is quantized with the input tensor's scale and
    zero point, and the integer output is dequantized, so callers always see
    float. ``accelerator``: ``cpu`` (default kernels with the XNNPACK delegate),
    ``cpu_reference`` (TFLite's built-in kernels, no delegate) or ``gpu``
    (LiteRT CompiledModel on the GPU accelerator; fails where no GPU runtime is
    available).
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {accelerator!r}; valid: {', '.join(ACCELERATORS)}")
    x = np.asarray(input)
    if accelerator == "gpu":
        return _run_compiled(Path(path), x, signature)
    interp_mod = _require_runtime()
    resolver = (interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                if accelerator == "cpu_reference" else interp_mod.OpResolverType.AUTO)
    interp = interp_mod.Interpreter(model_path=str(path), num_threads=num_threads,
                                    experimental_op_resolver_type=resolver)
    signatures = interp.get_signature_list()
    key = signature or (next(iter(signatures)) if signatures else None)
    if key is None or key not in signatures:
        raise ValueError(f"signature {signature!r} not in {path}; available: {sorted(signatures)}")
    runner = interp.get_signature_runner(key)
    (in_name, in_detail), = runner.get_input_details().items()
    if tuple(x.shape) != tuple(in_detail["shape"]):
        raise ValueError(f"input shape {tuple(x.shape)} does not match the model's "
                         f"{tuple(int(d) for d in in_detail['shape'])}")
    if np.issubdtype(in_detail["dtype"], np.integer) and not np.issubdtype(x.dtype, np.integer):
        x = _quantize_array(x.astype(np.float32), in_detail)
    else:
        x = x.astype(in_detail["dtype"], copy=False)
    outputs = runner(**{in_name: x})
    out_details = runner.get_output_details()
    (out_name, y), = outputs.items()
    detail = out_details[out_name]
    if np.issubdtype(detail["dtype"], np.integer):
        return _dequantize_array(y, detail)
    return np.asarray(y, dtype=np.float32)


def _run_compiled(path: Path, x: np.ndarray, signature: str | None) -> np.ndarray:
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    except ImportError as exc:
        raise MissingBackendError(f"the LiteRT CompiledModel API is missing ({exc})") from exc
    try:
        model = CompiledModel.from_file(str(path), hardware_accel=HardwareAccelerator.GPU)
    except Exception as exc:
        raise RuntimeError(f"no usable LiteRT GPU accelerator here: {exc}") from exc
    signatures = model.get_signature_list()
    key = signature or next(iter(signatures))
    index = model.get_signature_index(key)
    inputs = model.create_input_buffers(index)
    outputs = model.create_output_buffers(index)
    inputs[0].write(np.ascontiguousarray(x, dtype=np.float32))
    model.run_by_index(index, inputs, outputs)
    details = model.get_output_tensor_details(key)
    (_, detail), = details.items()
    shape = tuple(detail["shape"])
    y = outputs[0].read(int(np.prod(shape)), np.float32)
    return np.asarray(y, dtype=np.float32).reshape(shape)


def status() -> tuple[bool, str]:
    if importlib.util.find_spec("ai_edge_litert") is None:
        return False, "ai-edge-litert is not installed (pip install ai-edge-litert==2.3.0)"
    return True, ""


def load(path: Path, artifact: dict, num_threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    from converters.tflite import run_tflite

    nhwc = artifact.get("input_layout") == "NHWC"
    interp = Interpreter(model_path=str(path), num_threads=num_threads or artifact.get("num_threads"))
    runner = interp.get_signature_runner(next(iter(interp.get_signature_list())))
    (in_name, detail), = runner.get_input_details().items()
    if np.issubdtype(detail["dtype"], np.integer):  # integer I/O: let the converter's helper (de)quantize
        return lambda x: run_tflite(path, x.transpose(0, 2, 3, 1) if nhwc else x)

    def run(x: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if nhwc else x, dtype=np.float32)
        (y,) = runner(**{in_name: feed}).values()
        return np.asarray(y, dtype=np.float32)

    return run


RUNTIMES = [RuntimeSpec("litert-cpu", "CPU", "LiteRT Interpreter, CPU (XNNPACK delegate)",
                        ("tflite",), ("cpu", "gpu"), load, status, primary=True)]
