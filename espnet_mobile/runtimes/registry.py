"""Which runtimes can execute which artifacts here: collected from the runtime modules.

Every module in ``espnet_mobile.runtimes`` may declare ``RUNTIMES``, a list of
:class:`RuntimeSpec`; the registry imports them all. Adding a runtime is
adding a module - nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RuntimeSpec:
    """One way of executing an artifact on this machine."""

    name: str  # e.g. "litert-gpu-fp16"
    compute_unit: str  # CPU, GPU or NPU
    label: str  # what this is (and is not), for reports
    targets: tuple[str, ...]
    delegates: tuple[str, ...]
    load: Callable[[Path, dict], Runner]  # (artifact path, manifest record) -> runner
    status: Callable[[], tuple[bool, str]]  # (available here, why not)
    # Arithmetic precision the runtime itself imposes (e.g. a GPU computing in fp16), if any.
    compute_precision: str | None = None

    def judged_as(self, artifact_precision: str) -> str:
        """The precision whose thresholds apply: the lossier of the artifact's and the runtime's."""
        order = ("fp32", "fp16", "int8")
        if self.compute_precision is None:
            return artifact_precision
        return max(artifact_precision, self.compute_precision, key=order.index)

    def applies(self, artifact: dict) -> bool:
        return artifact["target"] in self.targets and artifact["delegate"] in self.delegates


def always() -> tuple[bool, str]:
    return True, ""


def discover() -> list[RuntimeSpec]:
    import espnet_mobile.runtimes as package

    found: list[RuntimeSpec] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name == "registry":
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found += list(getattr(module, "RUNTIMES", []))
    return found


def close_runner(runner: Runner) -> None:
    close = getattr(runner, "close", None)
    if callable(close):
        close()
