"""Runtimes that execute artifacts on this machine, one module each.

Each module declares ``RUNTIMES`` (see :mod:`espnet_mobile.runtimes.registry`);
parity, bench and convert's quick check find them there. A missing optional
runtime disables only the checks that need it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from espnet_mobile.runtimes.registry import Runner

# The runtime that stands for "this artifact on the CPU" in quick checks and benchmarks.
PRIMARY = {"executorch": "executorch-python", "tflite": "litert-cpu"}


def load_runner(target: str, delegate: str, path: Path, *, nhwc: bool = False,
                num_threads: int | None = None) -> Runner | None:
    """The primary CPU runner for an artifact, or None when nothing here runs it."""
    from espnet_mobile.runtimes.registry import discover

    record = {"target": target, "delegate": delegate, "input_layout": "NHWC" if nhwc else "NCHW"}
    for spec in discover():
        if spec.name == PRIMARY.get(target) and spec.applies(record) and spec.status()[0]:
            return spec.load(Path(path), record)
    return None


def run_artifact(target: str, delegate: str, path: Path, x: np.ndarray, *, nhwc: bool = False) -> np.ndarray | None:
    """Logits for one input, or None when nothing here runs the artifact."""
    runner = load_runner(target, delegate, path, nhwc=nhwc)
    return None if runner is None else runner(x)
