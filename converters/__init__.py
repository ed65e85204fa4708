"""The backend registry: one package per backend under ``converters/``, one line each here.

    converters/executorch/   ExecuTorch .pte (XNNPACK; Core ML and Vulkan delegates)
    converters/coreml/       Core ML .mlpackage
    converters/tflite/       LiteRT .tflite (CPU; a GPU graph; NPU dispatch)

Every part of espnet-mobile (convert, qat, parity, evaluate, bench) asks this registry
for a backend's precisions, quantizer, rewrites, runtimes and debugger, through the
:class:`converters.base.Backend` each package defines as ``BACKEND``. Packages import
their toolchains lazily, so a missing optional dependency disables only its target.
Adding a backend is one package and one line in :data:`PACKAGES` (or, at run time,
:func:`register`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from converters.base import Backend, Runner, RuntimeSpec

PACKAGES: dict[str, str] = {
    "executorch": "converters.executorch",
    "coreml": "converters.coreml",
    "tflite": "converters.tflite",
}
_loaded: dict[str, Backend] = {}


class UnknownBackendError(KeyError):
    """A backend name nobody registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(backend: Backend) -> Backend:
    """Add a backend at run time (a plug-in or a test); a name already taken is an error."""
    if backend.name in names():
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    _loaded[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    """Remove a backend added with :func:`register` (the packaged ones stay)."""
    if name in PACKAGES:
        raise ValueError(f"{name!r} is a packaged backend; it cannot be unregistered")
    _loaded.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*PACKAGES, *_loaded]))


def backend(name: str) -> Backend:
    """The backend called ``name`` (its package is imported on first use)."""
    if name not in _loaded:
        if name not in PACKAGES:
            raise UnknownBackendError(f"unknown backend {name!r}; choose from {', '.join(names())}")
        _loaded[name] = importlib.import_module(PACKAGES[name]).BACKEND
    return _loaded[name]


def backends() -> list[Backend]:
    return [backend(n) for n in names()]


def for_qat(qat_name: str) -> Backend:
    """The backend whose quantizer ``qat --backend qat_name`` prepares with."""
    for b in backends():
        if b.qat_name == qat_name:
            return b
    raise UnknownBackendError(f"unknown QAT backend {qat_name!r}; choose from {', '.join(qat_names())}")


def qat_names() -> tuple[str, ...]:
    return tuple(b.qat_name for b in backends() if b.qat_name)


def runtimes() -> list[RuntimeSpec]:
    """Every runtime of every backend, whether or not it is available here (see ``RuntimeSpec.status``)."""
    return [spec for b in backends() for spec in b.runtimes()]


def load_runner(target: str, delegate: str, path: Path, *, nhwc: bool = False,
                num_threads: int | None = None) -> Runner | None:
    """The primary CPU runner for an artifact, or None when nothing here runs it.

    ``num_threads`` reaches runtimes that take a thread count (LiteRT's Interpreter); others use their default.
    """
    record = {"target": target, "delegate": delegate, "input_layout": "NHWC" if nhwc else "NCHW",
              "num_threads": num_threads}
    for spec in backend(target).runtimes():
        if spec.primary and spec.applies(record) and spec.status()[0]:
            return spec.load(Path(path), record)
    return None


def run_artifact(target: str, delegate: str, path: Path, x: np.ndarray, *, nhwc: bool = False) -> np.ndarray | None:
    """Logits for one input, or None when nothing here runs the artifact."""
    runner = load_runner(target, delegate, path, nhwc=nhwc)
    return None if runner is None else runner(x)
