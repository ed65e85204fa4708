"""Runtimes that execute artifacts on this machine.

Each backend's runtime lives next to its converter (``converters.<backend>``);
this module only dispatches, so a missing optional runtime disables that
artifact's checks, never the others. A runner is loaded once (delegate
initialisation, weight packing) and then called per input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


def load_runner(target: str, delegate: str, path: Path, *, nhwc: bool = False,
                num_threads: int | None = None) -> Runner | None:
    """A callable mapping (1, 3, H, W) float32 input to (1, C, H, W) float32 logits, or None."""
    if target == "executorch" and delegate == "xnnpack":
        import torch

        from converters.executorch import load_pte

        method = load_pte(path)

        def run_et(x: np.ndarray) -> np.ndarray:
            out = method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])[0]
            return out.numpy().astype(np.float32, copy=True)

        return run_et
    if target == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=num_threads)
        signatures = interp.get_signature_list()
        runner = interp.get_signature_runner(next(iter(signatures)))
        (in_name, in_detail), = runner.get_input_details().items()
        if np.issubdtype(in_detail["dtype"], np.integer):
            return None  # integer-I/O models are run through converters.tflite.run_tflite

        def run_tfl(x: np.ndarray) -> np.ndarray:
            feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if nhwc else x, dtype=np.float32)
            (y,) = runner(**{in_name: feed}).values()
            return np.asarray(y, dtype=np.float32)

        return run_tfl
    return None


def run_artifact(target: str, delegate: str, path: Path, x: np.ndarray, *, nhwc: bool = False) -> np.ndarray | None:
    """Logits for one input, or None when nothing here runs the artifact."""
    runner = load_runner(target, delegate, path, nhwc=nhwc)
    return None if runner is None else runner(x)
