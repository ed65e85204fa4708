"""Loading and running a .pte here through ExecuTorch's Python runtime (pybindings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.base import RuntimeSpec
from converters.executorch.toolchain import _require_executorch

# --------------------------------------------------------------------------- runtime


_PROGRAM_CACHE: dict[tuple[str, int, int], Any] = {}


def load_pte(path: str | Path, method: str = "forward") -> Any:
    """Load (once per file version) a ``.pte`` method with the ExecuTorch runtime.

    Returns an ``executorch.runtime.Method``; delegate initialisation (e.g.
    XNNPACK weight packing) happens here, not on each call.
    """
    _require_executorch()
    from executorch.runtime import Runtime

    p = Path(path).resolve()
    stat = p.stat()
    key = (str(p), stat.st_mtime_ns, stat.st_size)
    cached = _PROGRAM_CACHE.get(key)
    if cached is None:
        for old in [k for k in _PROGRAM_CACHE if k[0] == key[0]]:
            del _PROGRAM_CACHE[old]
        program = Runtime.get().load_program(p)
        cached = _PROGRAM_CACHE[key] = (program, {})
    program, methods = cached
    if method not in methods:
        methods[method] = program.load_method(method)
    return methods[method]


def run_pte(path: str | Path, input: torch.Tensor) -> torch.Tensor:
    """Run the ``forward`` method of a ``.pte`` on one input tensor and return its first output."""
    m = load_pte(path)
    meta = m.metadata.input_tensor_meta(0)
    expected = tuple(meta.sizes())
    if tuple(input.shape) != expected:
        raise ValueError(f"{path} expects an input of shape {expected}, got {tuple(input.shape)}")
    outputs = m.execute([input.detach().to(torch.float32).contiguous()])
    return outputs[0].clone()


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
                        ("executorch",), ("xnnpack",), load, status, primary=True)]
