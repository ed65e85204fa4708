"""The backend contract: what every backend package under ``converters/`` provides, and the types it uses.

A backend is one :class:`Backend` value, defined in its package's ``__init__``
and listed in :mod:`converters`' registry. It converts an export-ready module
from :mod:`espnet_mobile.deploy` (fixed batch-1 input, normalization baked in)
into exactly one artifact per request, names the precisions and delegates it
makes, its PT2E quantizer, the module rewrites a delegate needs, and the
runtimes (:class:`RuntimeSpec`) that execute its artifacts on this machine.
Writers must go through :func:`atomic_output` so that an interrupted
conversion never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

PRECISIONS = ("fp32", "fp16", "int8")

#: Post-training int8 keeps convolutions whose effective weights (BatchNorm folded in) exceed
#: this gain in float, on every backend that can (ExecuTorch XNNPACK, TFLite); ESPNetv2's
#: BN-amplified decoder layers reach ~700, and ~11,600 after int8 equalization.
DEFAULT_MAX_WEIGHT_GAIN = 100.0


def module_path(node: torch.fx.Node) -> str:
    """Dotted path of the innermost module that created a captured graph node ("" if unknown)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


class ConversionError(RuntimeError):
    """A conversion that cannot be done, with a message that names the fix."""


class MissingBackendError(ConversionError):
    """The optional dependency of a backend is not installed."""


@dataclass
class ConversionRequest:
    """Everything a backend needs to write one artifact."""

    module: torch.nn.Module
    example_input: torch.Tensor
    precision: str
    out_path: Path
    model_id: str = "model"
    calibration: list[torch.Tensor] | None = None
    # A module already prepared and fine-tuned by QAT for this backend (PT2E
    # graph module after prepare_qat_pt2e); converted instead of calibrating.
    qat_module: torch.nn.Module | None = None
    labels: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConversionResult:
    """What a backend wrote and how, for the bundle manifest."""

    path: Path
    target: str
    precision: str
    compute_units: list[str]
    executable_here: bool
    tool_versions: dict[str, str]
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)
    not_executable_reason: str | None = None


def calibration_batches(calibration: Sequence[torch.Tensor], example: torch.Tensor) -> list[torch.Tensor]:
    """Split calibration tensors into batch-1 tensors shaped like ``example``; wrong shapes are an error."""
    batches: list[torch.Tensor] = []
    for i, t in enumerate(calibration):
        if not isinstance(t, torch.Tensor):
            raise ConversionError(f"calibration item {i} is a {type(t).__name__}, expected a tensor")
        if t.dim() == example.dim() - 1:
            t = t.unsqueeze(0)
        if t.dim() != example.dim() or tuple(t.shape[1:]) != tuple(example.shape[1:]):
            raise ConversionError(
                f"calibration item {i} has shape {tuple(t.shape)}; every calibration tensor must be "
                f"shaped like the example input {tuple(example.shape)} (or a batch of them)"
            )
        batches.extend(t.to(example.dtype).split(1, dim=0))
    return batches


#: Calibration inputs on which a converter that tries several quantizers scores each one's int8 graph.
CHOICE_INPUTS = 8


def most_agreeing(names: Sequence[str], build: Callable[[str], tuple[torch.nn.Module, dict[str, Any]]],
                  reference: torch.nn.Module, inputs: Sequence[torch.Tensor],
                  ) -> tuple[str, torch.nn.Module, dict[str, Any], dict[str, float]]:
    """Build the int8 graph of each name and keep the one whose per-pixel argmax agrees best with
    ``reference`` on ``inputs`` (a tie keeps the earlier name).

    No single quantizer setting wins for every model, so a converter that offers several measures
    them; whatever simulates that converter must choose the same way. Returns the chosen name, its
    graph and build info, and every name's agreement in percent.
    """
    if not names or not inputs:
        raise ValueError("most_agreeing needs at least one name and one input")
    with torch.no_grad():
        expected = [reference(x).argmax(1) for x in inputs]
    best: tuple[str, torch.nn.Module, dict[str, Any]] | None = None
    agreement: dict[str, float] = {}
    for name in names:
        graph, info = build(name)
        with torch.no_grad():
            same = sum(float((graph(x).argmax(1) == e).float().mean()) for x, e in zip(inputs, expected, strict=True))
        agreement[name] = round(100.0 * same / len(inputs), 4)
        if best is None or agreement[name] > agreement[best[0]]:
            best = (name, graph, info)
    assert best is not None
    return best[0], best[1], best[2], agreement


@contextlib.contextmanager
def atomic_output(final_path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it into place on success.

    Works for files and for directories (an ``.mlpackage`` is a directory).
    On any exception the temporary is removed and ``final_path`` is untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", dir=final_path.parent))
    tmp_path = tmp_dir / final_path.name
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise ConversionError(f"converter produced no output for {final_path.name}")
        if final_path.is_dir() and not final_path.is_symlink():
            old = final_path.with_name(f".{final_path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final_path, old)
            os.replace(tmp_path, final_path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, final_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


# --------------------------------------------------------------------------- reproducible Core ML packages


def stable_mlpackage_ids(package: Path) -> None:
    """Give an ``.mlpackage`` the same item identifiers every time it is written with the same content.

    coremltools' package writer names each item (spec, weights) by a random UUID in
    ``Manifest.json``, so two conversions of one model differ in bytes. Each identifier becomes
    a UUID derived from the item's path and content; the package means the same to Core ML. The
    spec is re-serialized with sorted map keys first.
    """
    import hashlib
    import json
    import uuid

    manifest_path = Path(package) / "Manifest.json"
    if not manifest_path.is_file():
        return
    # Protobuf writes map fields (the model's metadata) in hash order, which changes per process.
    from coremltools.proto import Model_pb2

    for spec_path in (Path(package) / "Data").rglob("*.mlmodel"):
        spec = Model_pb2.Model()
        spec.ParseFromString(spec_path.read_bytes())
        spec_path.write_bytes(spec.SerializeToString(deterministic=True))
    manifest = json.loads(manifest_path.read_text())
    renamed = {}
    for old, item in manifest.get("itemInfoEntries", {}).items():
        digest = hashlib.sha256(item.get("path", "").encode())
        item_path = Path(package) / "Data" / item.get("path", "")
        for f in sorted(p for p in ([item_path] if item_path.is_file() else item_path.rglob("*")) if p.is_file()):
            digest.update(f.read_bytes())
        renamed[old] = str(uuid.UUID(bytes=digest.digest()[:16], version=4)).upper()
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in manifest["itemInfoEntries"].items()}
    if manifest.get("rootModelIdentifier") in renamed:
        manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True))


@contextlib.contextmanager
def stable_coreml_identifiers(seed: bytes) -> Iterator[None]:
    """While lowering to ExecuTorch's Core ML delegate: model identifiers from ``seed``, packages via
    :func:`stable_mlpackage_ids`, so the ``.pte`` has the same bytes for the same model."""
    import hashlib
    import uuid

    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import coreml_preprocess

    calls = [0]

    def seeded_uuid4() -> uuid.UUID:
        calls[0] += 1
        digest = hashlib.sha256(seed + calls[0].to_bytes(4, "little")).digest()
        return uuid.UUID(bytes=digest[:16], version=4)

    class _SeededUUID:
        def __getattr__(self, name: str) -> Any:
            return seeded_uuid4 if name == "uuid4" else getattr(uuid, name)

    original_save = ct.models.MLModel.save

    def save(self, path: str, *args: Any, **kwargs: Any) -> Any:
        result = original_save(self, path, *args, **kwargs)
        stable_mlpackage_ids(Path(path))
        return result

    saved_uuid = coreml_preprocess.uuid
    coreml_preprocess.uuid = _SeededUUID()
    ct.models.MLModel.save = save
    try:
        yield
    finally:
        coreml_preprocess.uuid = saved_uuid
        ct.models.MLModel.save = original_save


# --------------------------------------------------------------------------- runtimes

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RuntimeSpec:
    """One way of executing a backend's artifacts on this machine."""

    name: str  # e.g. "litert-gpu-fp16"
    compute_unit: str  # CPU, GPU or NPU
    label: str  # what this is (and is not), for reports
    targets: tuple[str, ...]
    delegates: tuple[str, ...]
    load: Callable[[Path, dict], Runner]  # (artifact path, manifest record) -> runner
    status: Callable[[], tuple[bool, str]]  # (available here, why not)
    # Arithmetic precision the runtime itself imposes (e.g. a GPU computing in fp16), if any.
    compute_precision: str | None = None
    # The runtime that stands for "this artifact on the CPU" in quick checks and benchmarks.
    primary: bool = False

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


def close_runner(runner: Runner) -> None:
    close = getattr(runner, "close", None)
    if callable(close):
        close()


# --------------------------------------------------------------------------- the backend contract


@dataclass(frozen=True)
class Backend:
    """Everything the rest of espnet-mobile asks of a backend; nothing else names a backend.

    ``delegates`` maps each delegate to the precisions ``convert --target <name>`` makes with it by
    default; the first delegate is the plain one (its artifacts are ``<model>_<name>_<precision>``,
    the others ``<model>_<name>-<delegate>_<precision>``). ``supported`` lists every precision a
    delegate can make when asked. ``quantizer(qat)`` is the PT2E quantizer the int8 conversion
    uses, so QAT prepares with the same object; ``qat_name`` is the ``qat --backend`` that selects
    it. ``rewrite(module, delegate)`` returns the module a delegate must be given (exact rewrites),
    ``runtimes()`` the runtimes that execute the artifacts here, ``debugger`` the module that
    locates the first layer where an artifact departs from the reference.
    """

    name: str
    extension: str
    delegates: dict[str, tuple[str, ...]]
    convert: Callable[[ConversionRequest], ConversionResult]
    tool_versions: Callable[[str, str], dict[str, str]]  # (delegate, precision) -> {package: version}
    supported: dict[str, tuple[str, ...]] = field(default_factory=dict)
    writer_version: int = 1
    quantizer: Callable[[bool], Any] | None = None
    # (module, example, calibration) -> the PT2E graph that computes what the converter's int8 would
    # (its own policy: layers kept in float, equalization); None: prepare/convert with ``quantizer``.
    simulate_int8: Callable[[torch.nn.Module, torch.Tensor, list[torch.Tensor]], torch.nn.Module] | None = None
    qat_name: str | None = None
    # captured training graph -> names of the nodes the converter keeps in float, which QAT leaves unquantized
    qat_float_nodes: Callable[[torch.fx.GraphModule], list[str]] | None = None
    rewrite: Callable[[torch.nn.Module, str], torch.nn.Module] | None = None
    runtimes: Callable[[], list[RuntimeSpec]] = lambda: []
    debugger: str | None = None  # dotted module with locate(record, artifact, path, model, entry, x)
    # ConversionRequest.options key naming module paths an int8 artifact keeps in float (``convert
    # --int8-budget`` fills it); None: the backend cannot keep chosen layers in float.
    float_layers_option: str | None = None
    # The post-training quantizers the converter chooses between, by name, each built fresh; it keeps the
    # one whose int8 graph agrees best with float (:func:`most_agreeing` on the first CHOICE_INPUTS
    # calibration inputs). None: ``quantizer(False)`` alone.
    ptq_quantizers: Callable[[], dict[str, Any]] | None = None

    @property
    def default_delegate(self) -> str:
        return next(iter(self.delegates))

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions of the plain delegate."""
        return self.delegates[self.default_delegate]

    def can_make(self, delegate: str, precision: str) -> bool:
        return precision in self.supported.get(delegate, self.delegates.get(delegate, ()))
