"""ExecuTorch's Python runtime (pybindings) with the XNNPACK delegate, on the CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from espnet_mobile.runtimes.registry import RuntimeSpec


def status() -> tuple[bool, str]:
    if importlib.util.find_spec("executorch") is None:
        return False, "executorch is not installed (pip install executorch==1.5.1)"
    return True, ""


def load(path: Path, _artifact: dict):
    import torch

    from converters.executorch import load_pte

    method = load_pte(path)

    def run(x: np.ndarray) -> np.ndarray:
        out = method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])[0]
        return out.numpy().astype(np.float32, copy=True)

    return run


RUNTIMES = [RuntimeSpec("executorch-python", "CPU", "ExecuTorch Python runtime, XNNPACK delegate",
                        ("executorch",), ("xnnpack",), load, status)]
