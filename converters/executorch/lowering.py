"""Lowering an exported program to a delegate and to a .pte: partitioners, delegation report, compact constant names."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from converters import range_refinement
from converters.base import (
    DEFAULT_MAX_WEIGHT_GAIN,
    ConversionError,
    stable_coreml_identifiers,
)
from converters.executorch.quantize import _coreml_quantizer, quantize_pt2e
from converters.executorch.toolchain import (
    COMPUTE_UNITS,
    COREML_COMPUTE_UNITS,
    DELEGATES,
    NON_COMPUTE_OPS,
    _check_target,
    _require_coremltools,
    _require_executorch,
)

# --------------------------------------------------------------------------- delegation report


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    if getattr(target, "__module__", None) == "_operator":
        return target.__name__
    try:
        from executorch.exir.dialects.edge._ops import EdgeOpOverload
    except ImportError:  # pragma: no cover
        EdgeOpOverload = ()  # type: ignore[assignment]
    if isinstance(target, EdgeOpOverload):
        return target.__name__
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def _graph_module(program: Any) -> torch.fx.GraphModule:
    """GraphModule of an EdgeProgramManager / ExportedProgram / GraphModule."""
    if hasattr(program, "exported_program"):
        program = program.exported_program()
    if hasattr(program, "graph_module"):
        return program.graph_module
    if isinstance(program, torch.fx.GraphModule):
        return program
    raise TypeError(f"expected an EdgeProgramManager, ExportedProgram or GraphModule, got {type(program).__name__}")


def delegation_report(edge_program: Any) -> dict[str, Any]:
    """Count delegated and non-delegated operators of a lowered program, per op.

    ``edge_program`` is the result of ``to_edge_transform_and_lower`` (or its
    ``exported_program()``, or that program's graph module), taken before
    ``to_executorch()``, which rewrites the graph in place. Operators inside
    a delegate are counted from the delegate's original edge subgraph. The
    returned dict (JSON-serialisable) has:

    ``ops``: ``{op: {"delegated": n, "non_delegated": m}}``;
    ``backends``: ``{backend_id: {"subgraphs": k, "ops": n}}``;
    ``delegated`` / ``non_delegated``: totals over ``ops``;
    ``non_delegated_compute``: ``{op: m}`` for operators outside every
    delegate that compute something (tuple unpacking and shape-only views
    are excluded, see :data:`NON_COMPUTE_OPS`); ``fully_delegated``: whether
    that dict is empty; ``non_delegated_nodes``: ``{node name: op}``.
    """
    gm = _graph_module(edge_program)
    ops: dict[str, dict[str, int]] = defaultdict(lambda: {"delegated": 0, "non_delegated": 0})
    backends: dict[str, dict[str, int]] = defaultdict(lambda: {"subgraphs": 0, "ops": 0})
    outside: dict[str, str] = {}

    def count_delegate(lowered: Any) -> None:
        backend = getattr(lowered, "backend_id", "unknown")
        backends[backend]["subgraphs"] += 1
        for node in lowered.original_module.graph.nodes:
            if node.op == "call_function":
                ops[_op_name(node)]["delegated"] += 1
                backends[backend]["ops"] += 1

    def walk(module: torch.fx.GraphModule) -> None:
        for node in module.graph.nodes:
            if node.op == "get_attr":
                attr = getattr(module, str(node.target), None)
                if attr is not None and hasattr(attr, "original_module") and hasattr(attr, "backend_id"):
                    count_delegate(attr)
            elif node.op == "call_function":
                name = _op_name(node)
                if name == "executorch_call_delegate":
                    continue
                ops[name]["non_delegated"] += 1
                outside[node.name] = name
            elif node.op == "call_module":  # control-flow submodules, if any
                sub = getattr(module, str(node.target), None)
                if isinstance(sub, torch.fx.GraphModule):
                    walk(sub)

    walk(gm)
    compute = {
        op: c["non_delegated"] for op, c in sorted(ops.items()) if c["non_delegated"] and op not in NON_COMPUTE_OPS
    }
    return {
        "ops": {op: dict(c) for op, c in sorted(ops.items())},
        "backends": {b: dict(c) for b, c in sorted(backends.items())},
        "delegated": sum(c["delegated"] for c in ops.values()),
        "non_delegated": sum(c["non_delegated"] for c in ops.values()),
        "non_delegated_compute": compute,
        "fully_delegated": not compute,
        "non_delegated_nodes": dict(sorted(outside.items())),
    }


def format_delegation_report(report: dict[str, Any]) -> str:
    """Render :func:`delegation_report` output as a fixed-width text table."""
    rows = [(op, str(c["delegated"]), str(c["non_delegated"])) for op, c in report["ops"].items()]
    rows.append(("TOTAL", str(report["delegated"]), str(report["non_delegated"])))
    header = ("operator", "delegated", "not delegated")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]

    def line(cells: Sequence[str]) -> str:
        return f"{cells[0]:<{widths[0]}}  {cells[1]:>{widths[1]}}  {cells[2]:>{widths[2]}}"

    rule = "-" * (sum(widths) + 4)
    out = [line(header), rule]
    out += [line(r) for r in rows[:-1]]
    out += [rule, line(rows[-1])]
    for backend, c in report["backends"].items():
        out.append(f"{backend}: {c['subgraphs']} subgraph(s), {c['ops']} op(s)")
    compute = report["non_delegated_compute"]
    if compute:
        listed = ", ".join(f"{op} x{n}" for op, n in compute.items())
        out.append(f"NOT fully delegated: compute ops outside delegates: {listed}")
    else:
        out.append("fully delegated: no compute op runs outside a delegate")
    for node, reason in report.get("rejections", {}).items():
        out.append(f"  {node}: {reason}")
    return "\n".join(out)


class _RejectionLog(logging.Handler):
    """Collects the partitioners' "why not lowered" debug messages per node name."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        why = record.msg
        node = getattr(why, "node", None)
        reason = getattr(why, "reason", None)
        if node is not None and reason and getattr(node, "name", None) not in self.reasons:
            self.reasons[node.name] = f"{_op_name(node)}: {reason}"


@contextlib.contextmanager
def _capture_rejections(logger_names: Sequence[str]) -> Iterator[_RejectionLog]:
    handler = _RejectionLog()
    saved = []
    for name in logger_names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.DEBUG)
        logger.propagate = False  # keep the partitioner's debug chatter off the console
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


# --------------------------------------------------------------------------- lowering


@dataclass
class LoweredProgram:
    """Result of :func:`lower`: the edge program (for reports) and the ExecuTorch program."""

    edge: Any  # EdgeProgramManager
    executorch: Any  # ExecutorchProgramManager
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def buffer(self) -> bytes:
        return self.executorch.buffer


def _partitioner(delegate: str, precision: str, options: dict[str, Any]) -> tuple[Any, list[str], list[str]]:
    """Partitioner, logger names to watch, and compute units for ``delegate``."""
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return XnnpackPartitioner(), ["executorch.backends.xnnpack"], COMPUTE_UNITS["xnnpack"]
    if delegate == "coreml":
        ct = _require_coremltools()
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        unit_name = str(options.get("compute_unit", "ALL")).upper()
        if unit_name not in COREML_COMPUTE_UNITS:
            raise ConversionError(
                f"unknown Core ML compute_unit {unit_name!r}; valid: {', '.join(COREML_COMPUTE_UNITS)}"
            )
        target = options.get("minimum_deployment_target", "iOS17")
        try:
            target = getattr(ct.target, target) if isinstance(target, str) else target
        except AttributeError as exc:
            raise ConversionError(f"unknown Core ML deployment target {target!r} (e.g. iOS17, macOS14)") from exc
        specs = CoreMLBackend.generate_compile_specs(
            compute_unit=getattr(ct.ComputeUnit, unit_name),
            minimum_deployment_target=target,
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        )
        part = CoreMLPartitioner(compile_specs=specs)
        return part, ["executorch.backends.apple.coreml"], COREML_COMPUTE_UNITS[unit_name]
    if delegate == "vulkan":
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        compile_options: dict[str, Any] = {}
        if precision == "fp16":
            compile_options["force_fp16"] = True
        return VulkanPartitioner(compile_options), ["executorch.backends.vulkan"], COMPUTE_UNITS["vulkan"]
    raise ConversionError(f"unknown ExecuTorch delegate {delegate!r}; valid delegates: {', '.join(DELEGATES)}")


#: Hex digits of the names under which XNNPACK stores constants in the ``.pte`` (its own: all 64 of a sha256).
CONSTANT_KEY_HEX_DIGITS = 16
#: Alignment of the ``.pte`` data segments for XNNPACK programs: the 16 bytes XNNPACK aligns its constants to
#: (ExecuTorch's default is 128).
XNNPACK_SEGMENT_ALIGNMENT = 16


class _ShortConstantKeys:
    """Stands in for ``hashlib`` in XNNPACK's node visitor so constants get 16-digit names, not 64.

    Each constant's name is stored twice (in the XNNPACK graph and in the
    program's named-data table): with ESPNetv2 int8's 515 constants the full
    names are 69 KB of a 1.25 MB file. Names only need to tell different
    bytes apart; a shortened name that would clash with another constant's
    keeps its full digest, so equal names still mean equal bytes.
    """

    class _Digest:
        def __init__(self, text: str) -> None:
            self._text = text

        def hexdigest(self) -> str:
            return self._text

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}
        self.kept_full = 0

    def sha256(self, data: bytes) -> _Digest:
        digest = hashlib.sha256(data).hexdigest()
        short = digest[:CONSTANT_KEY_HEX_DIGITS]
        if self.owner.setdefault(short, digest) != digest:
            self.kept_full += 1
            return self._Digest(digest)
        return self._Digest(short)


@contextlib.contextmanager
def _short_constant_keys(enabled: bool) -> Iterator[_ShortConstantKeys | None]:
    """While lowering to XNNPACK, name constants with :class:`_ShortConstantKeys`."""
    if not enabled:
        yield None
        return
    from executorch.backends.xnnpack.operators import node_visitor

    keys = _ShortConstantKeys()
    saved = node_visitor.hashlib
    node_visitor.hashlib = keys
    try:
        yield keys
    finally:
        node_visitor.hashlib = saved


def lower(
    module: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    precision: str = "fp32",
    delegate: str = "xnnpack",
    calibration: Sequence[torch.Tensor] | None = None,
    qat_module: torch.nn.Module | None = None,
    options: dict[str, Any] | None = None,
) -> LoweredProgram:
    """Export, (quantize,) partition and lower ``module`` to an ExecuTorch program in memory."""
    _check_target(delegate, precision)
    _require_executorch()
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    options = dict(options or {})
    module = module.eval()
    example_input = example_input.detach().contiguous()
    report: dict[str, Any] = {"delegate": delegate, "input_shape": list(example_input.shape)}

    t0 = time.perf_counter()
    try:
        if precision == "int8":
            quantizer = _coreml_quantizer() if delegate == "coreml" and qat_module is None else None
            exported, qinfo = quantize_pt2e(
                module,
                example_input,
                calibration=calibration,
                qat_module=qat_module,
                quantizer=quantizer,
                fp32_layers=options.get("int8_fp32_layers", ()),
                # The Core ML quantizer has no per-node filter: no automatic fp32 fallback there.
                max_weight_gain=options.get(
                    "int8_max_weight_gain", DEFAULT_MAX_WEIGHT_GAIN if delegate == "xnnpack" else None
                ),
                float_prelu_affines=options.get("int8_float_prelu_affines", delegate == "xnnpack"),
                refine=range_refinement.from_options(options),
            )
            report["quantization"] = {
                **qinfo,
                "weights": "int8 per-channel symmetric",
                "activations": "uint8 per-tensor static" if delegate == "coreml" else "int8 per-tensor static",
            }
        else:
            with torch.no_grad():
                exported = torch.export.export(module, (example_input,), strict=False)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"torch.export / PT2E failed for the ExecuTorch {delegate} target: {exc}") from exc
    report["export_seconds"] = round(time.perf_counter() - t0, 3)

    partitioner, loggers, compute_units = _partitioner(delegate, precision, options)
    t0 = time.perf_counter()
    try:
        xnnpack = delegate == "xnnpack"
        stable_ids = stable_coreml_identifiers(_program_digest(exported)) if delegate == "coreml" \
            else contextlib.nullcontext()
        with _capture_rejections(loggers) as rejections, _short_constant_keys(xnnpack) as keys, stable_ids:
            edge = to_edge_transform_and_lower(exported, partitioner=[partitioner])
        # Count before to_executorch(): it rewrites the edge graph in place (out variants, allocs).
        delegation = delegation_report(edge)
        config = ExecutorchBackendConfig(segment_alignment=XNNPACK_SEGMENT_ALIGNMENT) if xnnpack \
            else ExecutorchBackendConfig()
        et_program = edge.to_executorch(config)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"ExecuTorch {delegate} delegate cannot lower this graph here: {exc}") from exc
    report["lower_seconds"] = round(time.perf_counter() - t0, 3)
    if keys is not None:
        report["constant_keys"] = {"hex_digits": CONSTANT_KEY_HEX_DIGITS, "kept_full_digest": keys.kept_full}

    delegation["rejections"] = {
        n: rejections.reasons.get(n, f"{op}: not claimed by the partitioner (unsupported op or pattern)")
        for n, op in delegation["non_delegated_nodes"].items()
        if op not in NON_COMPUTE_OPS
    }
    report["delegation"] = delegation
    report["compute_units"] = compute_units
    return LoweredProgram(edge=edge, executorch=et_program, report=report)


def _program_digest(exported: Any) -> bytes:
    """A digest of an exported program's graph and constants: the seed of its delegate identifiers."""
    digest = hashlib.sha256(str(exported.graph_module.graph).encode())
    for name, value in sorted(exported.state_dict.items()):
        digest.update(name.encode())
        digest.update(value.detach().contiguous().cpu().numpy().tobytes())
    for name, value in sorted(getattr(exported, "constants", {}).items()):
        if isinstance(value, torch.Tensor):
            digest.update(name.encode())
            digest.update(value.detach().contiguous().cpu().numpy().tobytes())
    return digest.digest()


def _runtime_has_backend(backend_id: str) -> bool:
    try:
        from executorch.runtime import Runtime

        return bool(Runtime.get().backend_registry.is_available(backend_id))
    except Exception:
        return False

