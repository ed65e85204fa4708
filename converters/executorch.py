"""ExecuTorch backend: export-ready module -> ``.pte`` program (XNNPACK, Core ML or Vulkan).

Flow: ``torch.export`` -> (int8 only: PT2E quantization with the delegate's
quantizer) -> ``to_edge_transform_and_lower`` with the delegate's partitioner
-> ``to_executorch`` -> ``.pte``.

* ``xnnpack`` (default): fp32, or int8 with per-channel symmetric weights and
  static per-tensor activations (calibrated, or converted from a QAT module).
  Runs here through the ExecuTorch Python runtime.
* ``coreml``: fp32 / fp16 (and int8 through the Core ML quantizer). Lowers here
  with coremltools, but only runs on Apple platforms.
* ``vulkan``: fp32 / fp16. Lowers here, needs a Vulkan GPU runtime to run.

Every conversion carries a delegation report (``result.report["delegation"]``)
counting delegated and non-delegated operators per op and, for operators the
partitioner rejected, the reason it logged.

ExecuTorch is imported lazily so that the other backends work without it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from converters.common import (
    DEFAULT_MAX_WEIGHT_GAIN,
    ConversionError,
    ConversionRequest,
    ConversionResult,
    MissingBackendError,
    atomic_output,
    calibration_batches,
    module_path,
)

EXECUTORCH_PIN = "executorch==1.5.1"
COREMLTOOLS_PIN = "coremltools==9.0"

#: Precisions each delegate can produce, in preference order.
DELEGATE_PRECISIONS: dict[str, tuple[str, ...]] = {
    "xnnpack": ("fp32", "int8"),
    "coreml": ("fp32", "fp16", "int8"),
    "vulkan": ("fp32", "fp16"),
}
DELEGATES = tuple(DELEGATE_PRECISIONS)

#: Bumped whenever this module writes a different file for the same request, so
#: ``espnet_mobile.convert`` rebuilds cached artifacts (2: XNNPACK constants under
#: 16-digit names, 16-byte segments, int8 affines before a PReLU in fp32).
WRITER_VERSION = 2

#: Name the ExecuTorch runtime registers each delegate's backend under.
BACKEND_IDS = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend", "vulkan": "VulkanBackend"}

COMPUTE_UNITS = {"xnnpack": ["CPU"], "vulkan": ["GPU"]}
COREML_COMPUTE_UNITS = {
    "ALL": ["CPU", "GPU", "ANE"],
    "CPU_ONLY": ["CPU"],
    "CPU_AND_GPU": ["CPU", "GPU"],
    "CPU_AND_NE": ["CPU", "ANE"],
}

#: Operators left outside a delegate that do no arithmetic: tuple unpacking and
#: shape-only views (ExecuTorch turns view_copy into a zero-copy view when it can).
NON_COMPUTE_OPS = frozenset(
    {
        "getitem",
        "alloc",
        "aten.view_copy.default",
        "aten.alias_copy.default",
        "aten.squeeze_copy.dim",
        "aten.squeeze_copy.dims",
        "aten.unsqueeze_copy.default",
        "aten._assert_scalar.default",
        "aten._assert_tensor_metadata.default",
        "aten.sym_constrain_range_for_size.default",
        "executorch_prim.et_view.default",
    }
)

_CALIBRATION_FIX = "pass --calibration DIR (a folder of representative images) or --qat-checkpoint PATH"


# --------------------------------------------------------------------------- imports


def _require_executorch() -> None:
    try:
        import executorch.exir  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingBackendError(
            f"ExecuTorch is not installed ({exc}); install it with: pip install {EXECUTORCH_PIN}"
        ) from exc


def _require_coremltools() -> Any:
    try:
        import coremltools as ct
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingBackendError(
            f"the Core ML delegate needs coremltools ({exc}); install it with: pip install {COREMLTOOLS_PIN}"
        ) from exc
    return ct


def tool_versions(delegate: str = "xnnpack", precision: str = "fp32") -> dict[str, str]:
    """Versions of the tools that produce an artifact for ``delegate``/``precision``."""
    from importlib import metadata

    versions = {"torch": torch.__version__}
    packages = ["executorch"]
    if precision == "int8":
        packages.append("torchao")
    if delegate == "coreml":
        packages.append("coremltools")
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# --------------------------------------------------------------------------- validation


def _check_target(delegate: str, precision: str) -> None:
    if delegate not in DELEGATE_PRECISIONS:
        raise ConversionError(
            f"unknown ExecuTorch delegate {delegate!r}; valid delegates: {', '.join(DELEGATES)}"
        )
    valid = DELEGATE_PRECISIONS[delegate]
    if precision not in valid:
        raise ConversionError(
            f"precision {precision!r} is not supported by the ExecuTorch {delegate} delegate; "
            f"valid precisions: {', '.join(valid)}"
        )




# --------------------------------------------------------------------------- quantization


def xnnpack_quantizer(is_qat: bool = False) -> Any:
    """The XNNPACK PT2E quantizer this converter uses: int8, per-channel symmetric
    weights, static per-tensor activations. QAT code must prepare with
    ``xnnpack_quantizer(is_qat=True)`` so that ``convert`` can lower its result."""
    _require_executorch()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat, is_dynamic=False)
    quantizer = XNNPACKQuantizer().set_global(config)
    if is_qat:
        # torchao's prepare drops ch_axis for fake-quantizers whose class name lacks
        # "PerChannel" (FusedMovingAvgObsFakeQuantize), so QAT weights always get axis 0:
        # right for conv/linear (output channels), wrong for transposed conv (axis 1),
        # which XNNPACK then refuses. Quantize transposed-conv weights per tensor instead.
        per_tensor = get_symmetric_quantization_config(is_per_channel=False, is_qat=True, is_dynamic=False)
        for op in _CONV_TRANSPOSE_OPS:
            quantizer.set_operator_type(op, per_tensor)
    return quantizer


_CONV_TRANSPOSE_OPS = (torch.ops.aten.conv_transpose1d.default, torch.ops.aten.conv_transpose2d.input)


def _check_qat_module(module: torch.nn.Module) -> None:
    """Refuse a QAT module whose transposed-conv weights are fake-quantized per input channel."""
    if not isinstance(module, torch.fx.GraphModule):
        raise ConversionError(
            f"the QAT model is a {type(module).__name__}; expected the GraphModule returned by "
            "prepare_qat_pt2e (fine-tuned), prepared with converters.executorch.xnnpack_quantizer(is_qat=True)"
        )
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in _CONV_TRANSPOSE_OPS:
            continue
        weight = node.args[1]
        if getattr(weight, "op", None) != "call_module":
            continue
        fq = module.get_submodule(str(weight.target))
        if getattr(fq, "qscheme", None) in (torch.per_channel_symmetric, torch.per_channel_affine) and getattr(
            fq, "ch_axis", 1
        ) != 1:
            raise ConversionError(
                f"QAT model quantizes the weights of {node.name} (transposed conv) per input channel, which "
                "XNNPACK cannot run; prepare it with converters.executorch.xnnpack_quantizer(is_qat=True)"
            )


def _coreml_quantizer() -> Any:
    """Core ML's PT2E quantizer: int8 per-channel symmetric weights, uint8 activations."""
    ct = _require_coremltools()
    from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

    q = ct.optimize.torch.quantization
    module_config = q.ModuleLinearQuantizerConfig(
        quantization_scheme="symmetric",
        weight_dtype=torch.qint8,
        weight_per_channel=True,
        activation_dtype=torch.quint8,
    )
    return CoreMLQuantizer(q.LinearQuantizerConfig(global_config=module_config))


_CONV_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default, torch.ops.aten.convolution.default)


def _graph_constants(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """Parameters and buffers of a captured graph by name, what its ``get_attr`` nodes read."""
    tensors = dict(gm.named_parameters())
    tensors.update(dict(gm.named_buffers()))
    return tensors


def _constant(tensors: dict[str, torch.Tensor], arg: Any) -> torch.Tensor | None:
    """The tensor a node argument reads when it is a ``get_attr`` of the graph, else None."""
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        return tensors.get(str(arg.target))
    return None


def high_gain_convolutions(gm: torch.fx.GraphModule, max_gain: float) -> dict[str, dict[str, Any]]:
    """Convolutions of a captured graph whose effective weights are too large for int8 activations.

    The gain of output channel ``c`` is the L2 norm of its weights, times
    ``|gamma_c| / sqrt(var_c + eps)`` when a BatchNorm follows (PT2E folds
    it in). A channel with a gain of several hundred amplifies the rounding
    noise of a per-tensor int8 input by as much: trained networks get such
    channels from BatchNorms whose running variance collapsed to ~0 (the
    pre-BN signal is tiny and BN rescales it to unit size), and post-training
    int8 turns them into noise. Returns ``{node name: {"module", "gain"}}``
    for gains above ``max_gain``.
    """
    tensors = _graph_constants(gm)
    found: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _CONV_OPS:
            continue
        weight = _constant(tensors, node.args[1])
        if weight is None:
            continue
        gain = weight.detach().flatten(1).norm(dim=1)
        users = list(node.users)
        if len(users) == 1 and users[0].target in (
            torch.ops.aten.batch_norm.default,
            torch.ops.aten._native_batch_norm_legit_no_training.default,
        ):
            bn = users[0]
            gamma, var = _constant(tensors, bn.args[1]), _constant(tensors, bn.args[4])
            eps = bn.args[7] if bn.target == torch.ops.aten.batch_norm.default else bn.args[6]
            if gamma is not None and var is not None and gain.numel() == gamma.numel():
                gain = gain * gamma.detach().abs() / (var.detach() + eps).sqrt()
        top = float(gain.max()) if gain.numel() else 0.0
        if top > max_gain:
            found[node.name] = {"module": module_path(node), "gain": round(top, 1)}
    return found


def affines_before_prelu(gm: torch.fx.GraphModule) -> dict[str, dict[str, Any]]:
    """Depth-wise 1x1 convolutions (BatchNorms that follow no conv) whose only consumer is a PReLU.

    XNNPACK's quantizer leaves PReLU in fp32 (dequantize -> PReLU -> quantize),
    so an int8 per-channel affine right before it buys no integer arithmetic:
    it only adds a rounding step and costs more bytes than its fp32 form (an
    int8 weight, an int32 bias and two fp32 scales per channel, against two
    fp32 values). Kept in fp32 it runs inside the PReLU's float island.
    Returns ``{node name: {"module", "reason"}}``.
    """
    tensors = _graph_constants(gm)
    found: dict[str, dict[str, Any]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.conv2d.default:
            continue
        w = _constant(tensors, node.args[1])
        groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        users = list(node.users)
        if w is None or w.dim() != 4 or tuple(w.shape[1:]) != (1, 1, 1) or groups != w.shape[0]:
            continue
        if len(users) == 1 and users[0].target == torch.ops.aten.prelu.default:
            found[node.name] = {"module": module_path(node), "reason": "per-channel affine before an fp32 PReLU"}
    return found


def automatic_fp32_nodes(gm: torch.fx.GraphModule, max_weight_gain: float | None,
                         prelu_affines: bool) -> dict[str, dict[str, Any]]:
    """The nodes post-training int8 keeps in fp32 without being asked (QAT graphs keep the same ones).

    Convolutions above ``max_weight_gain`` (:func:`high_gain_convolutions`;
    None: none) and, with ``prelu_affines``, :func:`affines_before_prelu`.
    """
    keep = high_gain_convolutions(gm, max_weight_gain) if max_weight_gain else {}
    if prelu_affines:
        for name, why in affines_before_prelu(gm).items():
            keep.setdefault(name, why)
    return keep


def quantize_pt2e(
    module: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    calibration: Sequence[torch.Tensor] | None = None,
    qat_module: torch.nn.Module | None = None,
    quantizer: Any = None,
    fp32_layers: Sequence[str] = (),
    max_weight_gain: float | None = DEFAULT_MAX_WEIGHT_GAIN,
    float_prelu_affines: bool = False,
) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """Quantize ``module`` with PT2E and re-export it.

    With ``qat_module`` (a graph module from ``prepare_qat_pt2e`` after
    fine-tuning) it is converted as is; otherwise ``module`` is prepared with
    ``quantizer`` (default :func:`xnnpack_quantizer`) and calibrated on
    ``calibration``. Post-training quantization keeps in fp32 the
    convolutions under the module paths ``fp32_layers`` and those whose
    effective weights (BatchNorm folded in) exceed ``max_weight_gain`` (see
    :func:`high_gain_convolutions`) and, with ``float_prelu_affines``, the
    per-channel affines in front of a PReLU (:func:`affines_before_prelu`;
    XNNPACK runs PReLU in fp32). Returns the quantized exported program
    and a small report of how it was quantized.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    args = (example_input,)
    if qat_module is not None:
        _check_qat_module(qat_module)
        prepared = copy.deepcopy(qat_module)
        try:
            move_exported_model_to_eval(prepared)
        except Exception as exc:
            raise ConversionError(
                f"--qat-checkpoint module is not a PT2E graph module prepared with prepare_qat_pt2e: {exc}"
            ) from exc
        info = {"source": "qat"}
    else:
        if not calibration:
            raise ConversionError(f"int8 needs calibration data or a QAT model: {_CALIBRATION_FIX}")
        batches = calibration_batches(calibration, example_input)
        quantizer = quantizer if quantizer is not None else xnnpack_quantizer()
        captured = torch.export.export(module.eval(), args, strict=False).module()
        keep = automatic_fp32_nodes(captured, max_weight_gain, float_prelu_affines)
        prefixes = tuple(p.rstrip(".") for p in fp32_layers)
        for node in captured.graph.nodes:
            path = module_path(node)
            if node.op == "call_function" and prefixes and any(
                path == p or path.startswith(p + ".") for p in prefixes
            ):
                keep.setdefault(node.name, {"module": path, "reason": "requested"})
        if keep and not hasattr(quantizer, "set_filter_function"):
            raise ConversionError(
                f"{type(quantizer).__name__} cannot keep layers in fp32 ({', '.join(sorted(keep))}); "
                "pass int8_max_weight_gain=None and no int8_fp32_layers"
            )
        if keep:
            kept = frozenset(keep)
            quantizer.set_filter_function(lambda node: node.name not in kept)
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        info = {
            "source": "ptq",
            "calibration_samples": len(batches),
            "fp32_nodes": {n: v for n, v in sorted(keep.items())},
        }
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, args, strict=False), info


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
        with _capture_rejections(loggers) as rejections, _short_constant_keys(xnnpack) as keys:
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


def _runtime_has_backend(backend_id: str) -> bool:
    try:
        from executorch.runtime import Runtime

        return bool(Runtime.get().backend_registry.is_available(backend_id))
    except Exception:
        return False


def convert(req: ConversionRequest) -> ConversionResult:
    """Write ``req.out_path`` (a ``.pte``) for ``req.options["delegate"]`` (default ``xnnpack``).

    Options:

    * ``delegate``: xnnpack (default) | coreml | vulkan;
    * ``bundle`` (bool): also write ``<out>.bpte`` with the example input and
      its expected output (the program's own output when it runs here, the
      eager module's otherwise);
    * int8 post-training quantization: ``int8_fp32_layers`` (module paths
      kept in fp32) and ``int8_max_weight_gain`` (default
      :data:`DEFAULT_MAX_WEIGHT_GAIN` for XNNPACK; ``None`` disables the
      automatic fp32 fallback of :func:`high_gain_convolutions`) and
      ``int8_float_prelu_affines`` (default True for XNNPACK: the affines of
      :func:`affines_before_prelu` stay fp32);
    * Core ML only: ``compute_unit`` (ALL | CPU_ONLY | CPU_AND_GPU |
      CPU_AND_NE) and ``minimum_deployment_target`` (default iOS17).
    """
    start = time.perf_counter()
    delegate = str(req.options.get("delegate", "xnnpack")).lower()
    _check_target(delegate, req.precision)
    if req.precision == "int8" and req.qat_module is None and not req.calibration:
        raise ConversionError(f"int8 needs calibration data or a QAT model: {_CALIBRATION_FIX}")
    _require_executorch()

    lowered = lower(
        req.module,
        req.example_input,
        precision=req.precision,
        delegate=delegate,
        calibration=req.calibration,
        qat_module=req.qat_module,
        options=req.options,
    )
    with atomic_output(Path(req.out_path)) as tmp:
        tmp.write_bytes(lowered.buffer)
    report = lowered.report
    report["pte_bytes"] = Path(req.out_path).stat().st_size
    report["model_id"] = req.model_id

    backend_id = BACKEND_IDS[delegate]
    executable = _runtime_has_backend(backend_id)
    reason = None
    if not executable:
        if delegate == "coreml":
            reason = (
                "the Core ML delegate runs only on Apple platforms (iOS/macOS); "
                "this host's ExecuTorch runtime has no CoreMLBackend"
            )
        elif delegate == "vulkan":
            reason = (
                "this host's ExecuTorch runtime is built without VulkanBackend (and there is no Vulkan GPU); "
                "run it with an Android or desktop ExecuTorch build that includes Vulkan"
            )
        else:
            reason = f"this host's ExecuTorch runtime has no {backend_id}"

    if req.options.get("bundle"):
        bpte = Path(req.out_path).with_suffix(".bpte")
        x = req.example_input.detach().contiguous()
        if executable:
            expected = run_pte(req.out_path, x)
        else:
            with torch.no_grad():
                expected = req.module(x)
        write_bundled_program(lowered.executorch, [x], [expected], bpte)
        report["bundled_program"] = str(bpte)

    return ConversionResult(
        path=Path(req.out_path),
        target=f"executorch-{delegate}",
        precision=req.precision,
        compute_units=list(report["compute_units"]),
        executable_here=executable,
        tool_versions=tool_versions(delegate, req.precision),
        seconds=round(time.perf_counter() - start, 3),
        report=report,
        not_executable_reason=reason,
    )


# --------------------------------------------------------------------------- bundled programs


def write_bundled_program(
    program: Any,
    inputs: Sequence[torch.Tensor],
    expected: Sequence[torch.Tensor],
    path: str | Path,
    *,
    method: str = "forward",
) -> Path:
    """Write an ExecuTorch BundledProgram (``.bpte``): the program plus golden I/O.

    ``program`` is an ``ExecutorchProgramManager`` (e.g. ``lower(...).executorch``),
    a :class:`LoweredProgram`, or the path of an existing ``.pte``. Each
    ``inputs[i]`` (the single input of ``method``) is bundled with
    ``expected[i]`` as one test case.
    """
    _require_executorch()
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.core import BundledProgram
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    if len(inputs) != len(expected) or not inputs:
        raise ValueError(f"need as many expected outputs as inputs (got {len(inputs)} and {len(expected)})")
    if isinstance(program, LoweredProgram):
        program = program.executorch
    cases = [
        MethodTestCase(inputs=[x.detach().contiguous()], expected_outputs=[y.detach().contiguous()])
        for x, y in zip(inputs, expected, strict=True)
    ]
    suites = [MethodTestSuite(method_name=method, test_cases=cases)]
    if isinstance(program, (str, Path)):
        bundled = BundledProgram(None, suites, pte_file_path=str(program))
    else:
        bundled = BundledProgram(program, suites)
    data = serialize_from_bundled_program_to_flatbuffer(bundled)
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def verify_bundled_program(
    path: str | Path,
    num_cases: int,
    *,
    method: str = "forward",
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> list[torch.Tensor]:
    """Run every bundled test case of a ``.bpte`` with the ExecuTorch runtime and check
    its outputs against the bundled expected ones (``|out - exp| <= atol + rtol*|exp|``).

    Raises :class:`AssertionError` naming the failing case; returns the outputs.
    """
    _require_executorch()
    from executorch.extension.pybindings import portable_lib

    bundle = portable_lib._load_bundled_program_from_buffer(Path(path).read_bytes())
    outputs: list[torch.Tensor] = []
    for idx in range(num_cases):
        try:
            out = bundle.verify_result_with_bundled_expected_output(method, idx, rtol, atol)
        except RuntimeError as exc:
            raise AssertionError(f"{path}: bundled test case {idx} of {method} failed: {exc}") from exc
        outputs.append(out[0])
    return outputs


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
