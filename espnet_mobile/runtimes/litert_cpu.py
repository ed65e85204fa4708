"""LiteRT (ai-edge-litert) Interpreter on the CPU, with its default XNNPACK delegate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from espnet_mobile.runtimes.registry import RuntimeSpec


def status() -> tuple[bool, str]:
    if importlib.util.find_spec("ai_edge_litert") is None:
        return False, "ai-edge-litert is not installed (pip install ai-edge-litert==2.3.0)"
    return True, ""


def load(path: Path, artifact: dict, num_threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    from converters.tflite import run_tflite

    nhwc = artifact.get("input_layout") == "NHWC"
    interp = Interpreter(model_path=str(path), num_threads=num_threads)
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
                        ("tflite",), ("cpu", "gpu"), load, status)]
