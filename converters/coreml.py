"""Core ML backend: export-ready module -> ML program ``.mlpackage`` (coremltools).

Flow: ``torch.export`` -> ``run_decompositions({})`` (ATen dialect, composite
ops such as ``linear`` and ``prelu`` kept whole) -> ``coremltools.convert`` to
an ML program -> metadata -> saved through :func:`atomic_output`.

Precisions:

* ``fp32`` / ``fp16``: the compute precision of the ML program (fp16 stores
  weights and runs every op in float16; the model input and output stay
  float32, with casts at the edges).
* ``int8``: int8 weights *and* activations. The module is quantized with PT2E
  using :func:`coreml_quantizer` (per-channel symmetric int8 weights, static
  per-tensor int8 activations), calibrated on ``req.calibration``,
  or taken from ``req.qat_module`` (prepared with ``prepare_qat_pt2e`` and
  fine-tuned). The quantize/dequantize graph converts to MIL ``quantize`` /
  ``dequantize`` activation ops and ``constexpr_affine_dequantize`` int8
  weights, which need iOS 17 / macOS 14. Ops outside the int8 path run in
  float16 (``options["int8_compute_precision"] = "fp32"`` to change that).

ExecuTorch's ``CoreMLQuantizer`` annotates through ~400 pattern graphs, each
traced with ``torch.export``; that costs minutes on a small CPU and leaves
PReLU, concatenation, pooling and transposed convolutions in float. The
quantizer here annotates by operator instead, in well under a second.

Core ML models cannot be run on Linux: the package is checked by loading it
back with ``skip_model_load=True`` and reading its spec, never by predicting.

coremltools is imported lazily so that the other backends work without it.
"""

from __future__ import annotations

import copy
import json
import operator
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from converters.common import (
    PRECISIONS,
    ConversionError,
    ConversionRequest,
    ConversionResult,
    MissingBackendError,
    atomic_output,
    calibration_batches,
)

COREMLTOOLS_PIN = "coremltools==9.0"
TORCHAO_PIN = "torchao==0.18.0"

TARGET = "coreml"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DEFAULT_DEPLOYMENT_TARGET = "iOS17"
DEFAULT_COMPUTE_UNITS = "ALL"

#: Core ML compute-unit setting -> the devices it allows.
COMPUTE_UNITS: dict[str, list[str]] = {
    "ALL": ["CPU", "GPU", "ANE"],
    "CPU_ONLY": ["CPU"],
    "CPU_AND_GPU": ["CPU", "GPU"],
    "CPU_AND_NE": ["CPU", "ANE"],
}

#: Above this many MIL operations per exported ATen operation the converter
#: warns: an op the Core ML frontend expands element by element (such as
#: adaptive pooling with non-divisible sizes) has slipped into the graph.
MAX_OP_RATIO = 1.5

_CALIBRATION_FIX = (
    "pass --calibration DIR (images to calibrate activation ranges) or "
    "--qat-checkpoint PATH (a model fine-tuned with quantization-aware training)"
)

_OP_CONST = "const"


# --------------------------------------------------------------------------- toolchain


def _require_coremltools() -> Any:
    try:
        import coremltools as ct
    except ImportError as exc:
        raise MissingBackendError(
            f"the Core ML backend needs coremltools ({exc}); install it with: pip install {COREMLTOOLS_PIN}"
        ) from exc
    return ct


def _require_torchao() -> None:
    try:
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError as exc:
        raise MissingBackendError(
            f"int8 Core ML conversion needs torchao's PT2E quantization ({exc}); "
            f"install it with: pip install {TORCHAO_PIN}"
        ) from exc


def tool_versions(precision: str = "fp32") -> dict[str, str]:
    """Versions of the tools a conversion at ``precision`` uses."""
    from importlib import metadata

    versions = {"torch": torch.__version__}
    packages = ["coremltools"] + (["torchao"] if precision == "int8" else [])
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _runs_here() -> tuple[bool, str | None]:
    if sys.platform != "darwin":
        return False, (
            "Core ML runs only on Apple platforms (iOS/macOS); on this host the package can be "
            "written and inspected but not executed"
        )
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError:
        return False, "coremltools was installed without its Core ML runtime bindings (libcoremlpython)"
    return True, None


# --------------------------------------------------------------------------- options


def _deployment_target(ct: Any, name: Any) -> Any:
    if isinstance(name, ct.target):
        return name
    members = dict(ct.target.__members__)
    text = str(name)
    if text in members:
        return members[text]
    folded = {k.lower(): v for k, v in members.items()}
    if text.lower() in folded:
        return folded[text.lower()]
    raise ConversionError(
        f"unknown Core ML minimum_deployment_target {text!r}; valid: {', '.join(members)}"
    )


def _compute_units(name: Any) -> str:
    unit = str(name).upper()
    if unit not in COMPUTE_UNITS:
        raise ConversionError(f"unknown Core ML compute_units {name!r}; valid: {', '.join(COMPUTE_UNITS)}")
    return unit


def _check_request(req: ConversionRequest) -> None:
    if req.precision not in PRECISIONS:
        raise ConversionError(f"unknown precision {req.precision!r}; valid: {', '.join(PRECISIONS)}")
    x = req.example_input
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConversionError(f"the Core ML converter needs a (1, 3, H, W) example input, got {shape}")
    if not x.is_floating_point():
        raise ConversionError(f"the example input must be a float tensor, got {x.dtype}")
    if req.qat_module is not None and req.precision != "int8":
        raise ConversionError(
            f"a QAT model only converts to int8, not {req.precision}; drop --qat-checkpoint "
            "or ask for int8"
        )
    if req.precision == "int8" and req.qat_module is None and not req.calibration:
        raise ConversionError(f"int8 Core ML conversion needs calibration data or a QAT model: {_CALIBRATION_FIX}")


# --------------------------------------------------------------------------- quantizer

_aten = torch.ops.aten

#: Ops with a constant weight operand at index 1 (quantized per output channel).
_WEIGHTED = {
    _aten.conv1d.default: 0,
    _aten.conv2d.default: 0,
    _aten.conv2d.padding: 0,
    _aten.conv_transpose2d.input: 1,
    _aten.linear.default: 0,
}
#: Element-wise activations Core ML fuses into the op before them.
_ACTIVATIONS = {
    _aten.prelu.default,
    _aten.relu.default,
    _aten.relu_.default,
    _aten.relu6.default,
    _aten.hardtanh.default,
    _aten.hardtanh_.default,
    _aten.leaky_relu.default,
    _aten.leaky_relu_.default,
    _aten.sigmoid.default,
    _aten.sigmoid_.default,
    _aten.hardswish.default,
    _aten.hardswish_.default,
    _aten.silu.default,
    _aten.silu_.default,
    _aten.tanh.default,
    _aten.gelu.default,
}
_BATCH_NORM = {
    _aten.batch_norm.default,
    _aten._native_batch_norm_legit_no_training.default,
}
#: Ops quantized on every tensor operand and on their output.
_BINARY = {
    _aten.add.Tensor,
    _aten.add_.Tensor,
    _aten.sub.Tensor,
    _aten.mul.Tensor,
    _aten.mul_.Tensor,
    _aten.matmul.default,
    _aten.bmm.default,
    _aten.mm.default,
}
#: Ops quantized on input 0 and on their output (own range).
_UNARY = {
    _aten.adaptive_avg_pool2d.default,
    _aten.mean.dim,
    _aten.softmax.int,
    _aten._softmax.default,
}
#: Ops whose output keeps the scale of their input 0: data movement, and
#: averages/interpolations that cannot leave the input's range.
_SHARED = {
    _aten.reshape.default,
    _aten.view.default,
    _aten._unsafe_view.default,
    _aten.permute.default,
    _aten.transpose.int,
    _aten.flatten.using_ints,
    _aten.squeeze.dim,
    _aten.squeeze.dims,
    _aten.unsqueeze.default,
    _aten.clone.default,
    _aten.contiguous.default,
    _aten.slice.Tensor,
    _aten.max_pool2d.default,
    _aten.avg_pool2d.default,
    _aten.upsample_bilinear2d.vec,
    _aten.upsample_bilinear2d.default,
    _aten.upsample_nearest2d.vec,
    _aten.upsample_nearest2d.default,
    _aten.pixel_shuffle.default,
    _aten.pad.default,
    _aten.constant_pad_nd.default,
}
_PADS = {_aten.pad.default, _aten.constant_pad_nd.default}
_CAT = {_aten.cat.default, _aten.concat.default}


def _is_tensor_node(arg: Any) -> bool:
    val = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _only_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _in_modules(node: torch.fx.Node, paths: Sequence[str]) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return False
    inner = str(list(stack.values())[-1][0])
    return any(inner == p or inner.startswith(p + ".") for p in paths)


def _zero_pad(node: torch.fx.Node) -> bool:
    if node.target is _aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        return mode == "constant" and not value
    value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
    return not value


def _get_tensor(model: torch.nn.Module, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if not (isinstance(node, torch.fx.Node) and node.op == "get_attr"):
        raise LookupError(node)
    value: Any = model
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value.detach()


def _batch_norms_to_depthwise(model: torch.fx.GraphModule) -> int:
    """Replace eval-mode ``aten.batch_norm`` nodes on 4-D tensors with an equal
    1x1 depthwise ``aten.conv2d``; returns how many were replaced."""
    graph = model.graph
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not _aten.batch_norm.default:
            continue
        x, weight, bias, mean, var, training, _momentum, eps = node.args[:8]
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if training or not isinstance(val, torch.Tensor) or val.dim() != 4:
            continue
        try:
            w, b, m, v = (_get_tensor(model, n) for n in (weight, bias, mean, var))
        except (LookupError, AttributeError):
            continue
        if m is None or v is None:
            continue
        channels = m.numel()
        scale = torch.rsqrt(v.float() + eps) * (w.float() if w is not None else 1.0)
        shift = (b.float() if b is not None else 0.0) - m.float() * scale
        prefix = f"_coreml_bn{replaced}_{node.name}"
        model.register_buffer(f"{prefix}_weight", scale.reshape(channels, 1, 1, 1).contiguous())
        model.register_buffer(f"{prefix}_bias", shift.contiguous())
        with graph.inserting_before(node):
            w_node = graph.get_attr(f"{prefix}_weight")
            b_node = graph.get_attr(f"{prefix}_bias")
            conv = graph.call_function(
                _aten.conv2d.default, (x, w_node, b_node, [1, 1], [0, 0], [1, 1], channels)
            )
        conv.meta.update(node.meta)
        node.replace_all_uses_with(conv)
        graph.erase_node(node)
        replaced += 1
    if replaced:
        graph.eliminate_dead_code()
        model.recompile()
    return replaced


def coreml_quantizer(
    is_qat: bool = False,
    activation_observer: str = "minmax",
    symmetric_activations: bool = True,
    float_modules: Sequence[str] = (),
) -> Any:
    """PT2E quantizer for Core ML: int8 per-channel symmetric weights, static
    int8 per-tensor symmetric activations on every tensor of the graph.

    Convolutions and linear layers absorb a following batch norm and
    activation (one quantized tensor after the group, as Core ML fuses them);
    reshapes, transposes, zero padding, pooling and interpolation share the
    scale of their input; a concatenation requantizes to a scale of its own.
    The model input (an image in [0, 1]) is quantized with a zero point so
    that it keeps all 256 levels; every other activation is symmetric.
    QAT code must prepare with ``coreml_quantizer(is_qat=True)`` to produce a
    ``req.qat_module`` quantized the same way.

    ``float_modules`` lists module paths (``"body.bu_dec_l4"``) whose ops stay
    unannotated, i.e. in float; a path matches the module and its children.
    """
    _require_torchao()
    from torchao.quantization.pt2e import (
        FakeQuantize,
        HistogramObserver,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        QuantizationSpec,
        Quantizer,
        SharedQuantizationSpec,
    )

    if is_qat:
        act_ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
        weight_ctr = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver)
    else:
        observers = {"histogram": HistogramObserver, "minmax": MinMaxObserver}
        if activation_observer not in observers:
            raise ConversionError(
                f"unknown activation_observer {activation_observer!r}; valid: {', '.join(observers)}"
            )
        # Smallest scale: float16's smallest normal number, as the float parts
        # of the program (and the stored scales) are fp16 by default.
        act_ctr = observers[activation_observer].with_args(eps=2**-14)
        weight_ctr = PerChannelMinMaxObserver.with_args(eps=2**-14)

    act_spec = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_symmetric if symmetric_activations else torch.per_tensor_affine,
        observer_or_fake_quant_ctr=act_ctr,
    )
    image_spec = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=act_ctr,
    )

    def input_spec(arg: torch.fx.Node) -> Any:
        return image_spec if arg.op == "placeholder" else act_spec

    def weight_spec(axis: int) -> Any:
        return QuantizationSpec(
            dtype=torch.int8,
            quant_min=-127,
            quant_max=127,
            qscheme=torch.per_channel_symmetric,
            ch_axis=axis,
            observer_or_fake_quant_ctr=weight_ctr,
        )

    def fused_into_next(node: torch.fx.Node) -> bool:
        """True when ``node``'s output is consumed only by an op Core ML fuses with it."""
        user = _only_user(node)
        if user is None or node.target not in (*_WEIGHTED, *_BATCH_NORM, *_BINARY):
            return False
        if user.target in _BATCH_NORM:
            return node.target in _WEIGHTED and user.args[0] is node
        return user.target in _ACTIVATIONS and user.args[0] is node

    class _CoreMLQuantizer(Quantizer):
        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            # prepare_pt2e has folded every conv -> batch norm pair by now; the
            # batch norms left (after a concatenation or an addition) become
            # 1x1 depthwise convolutions. That quantizes their scale like any
            # weight and keeps convert_pt2e off its QAT conv-bn folding path,
            # which traces ~100 pattern graphs (about a minute here). QAT keeps
            # batch norms trainable, so it leaves them alone.
            if not is_qat:
                _batch_norms_to_depthwise(model)
            return model

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op != "call_function" or "quantization_annotation" in node.meta:
                    continue
                if float_modules and _in_modules(node, float_modules):
                    continue
                inputs: dict[torch.fx.Node, Any] = {}
                output: Any = act_spec
                target = node.target
                args = node.args
                if target in _WEIGHTED:
                    if _is_tensor_node(args[0]):
                        inputs[args[0]] = input_spec(args[0])
                    weight = args[1]
                    if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
                        groups = args[6] if target is _aten.conv_transpose2d.input and len(args) > 6 else 1
                        inputs[weight] = weight_spec(_WEIGHTED[target] if groups == 1 else 0)
                    elif _is_tensor_node(weight):
                        inputs[weight] = act_spec
                elif target in _ACTIVATIONS or target in _BATCH_NORM:
                    src = args[0]
                    if _is_tensor_node(src) and not fused_into_next(src):
                        inputs[src] = input_spec(src)
                elif target in _BINARY:
                    for arg in args[:2]:
                        if _is_tensor_node(arg):
                            inputs[arg] = input_spec(arg)
                elif target in _UNARY:
                    if _is_tensor_node(args[0]):
                        inputs[args[0]] = input_spec(args[0])
                elif target in _SHARED:
                    src = args[0]
                    if not _is_tensor_node(src) or (target in _PADS and not _zero_pad(node)):
                        continue
                    inputs[src] = input_spec(src)
                    output = SharedQuantizationSpec((src, node))
                elif target in _CAT:
                    tensors = list(dict.fromkeys(a for a in args[0] if _is_tensor_node(a)))
                    if not tensors:
                        continue
                    # Each input keeps its producer's scale and the result gets its own:
                    # one shared scale lets the widest branch (e.g. a pyramid level)
                    # swamp the resolution of the others.
                    for tensor in tensors:
                        inputs[tensor] = input_spec(tensor)
                else:
                    continue
                if (
                    not _is_tensor_node(node)
                    or fused_into_next(node)
                    or any(user.op == "output" for user in node.users)
                ):
                    # Fused, or a model output: the logits stay float.
                    output = None
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=inputs, output_qspec=output, _annotated=True
                )
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            return None

    return _CoreMLQuantizer()




_Q_OPS = ("quantize_per_tensor", "quantize_per_channel")
_DQ_OPS = ("dequantize_per_tensor", "dequantize_per_channel")


def _is_qdq(node: Any, names: tuple[str, ...]) -> bool:
    return (
        isinstance(node, torch.fx.Node)
        and node.op == "call_function"
        and getattr(node.target, "__name__", "").startswith(names)
    )


def _fusable_producer(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target in (*_WEIGHTED, *_BATCH_NORM, *_BINARY) and len(node.users) == 1


def float_ops(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Ops of a converted PT2E graph that take a float activation not coming from a
    dequantize (activations fused into the quantized op before them excepted)."""
    left: Counter[str] = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem or _is_qdq(node, _Q_OPS + _DQ_OPS):
            continue
        flat = [a for a in node.args if isinstance(a, torch.fx.Node)]
        flat += [a for arg in node.args if isinstance(arg, (list, tuple)) for a in arg if isinstance(a, torch.fx.Node)]
        activations = [a for a in flat if a.op != "get_attr" and _is_tensor_node(a)]
        if node.target in _WEIGHTED and isinstance(node.args[1], torch.fx.Node):
            activations.append(node.args[1])  # the weight: int8 unless left float
        if node.target in _ACTIVATIONS and activations and _fusable_producer(activations[0]):
            continue  # runs fused into the quantized op before it
        if any(not _is_qdq(a, _DQ_OPS) for a in activations):
            left[str(node.target)] += 1
    return dict(left)


def quantize_pt2e(
    module: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    calibration: Sequence[torch.Tensor] | None = None,
    qat_module: torch.nn.Module | None = None,
    quantizer: Any = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Quantize ``module`` with PT2E for Core ML; returns the converted
    (quantize/dequantize) graph module and a report of how it was quantized.

    With ``qat_module`` (from ``prepare_qat_pt2e`` after fine-tuning) that
    module is converted as is; otherwise ``module`` is prepared with
    ``quantizer`` (default :func:`coreml_quantizer`) and calibrated.
    """
    _require_torchao()
    from torchao.quantization.pt2e import FakeQuantizeBase, ObserverBase, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    started = time.perf_counter()
    if qat_module is not None:
        if not any(isinstance(m, (FakeQuantizeBase, ObserverBase)) for m in qat_module.modules()):
            raise ConversionError(
                "the --qat-checkpoint model has no fake-quantize modules: prepare it with "
                "prepare_qat_pt2e(exported, coreml_quantizer(is_qat=True)) before fine-tuning"
            )
        prepared = copy.deepcopy(qat_module)
        try:
            move_exported_model_to_eval(prepared)
        except Exception as exc:
            raise ConversionError(
                f"the --qat-checkpoint model is not a PT2E graph module prepared with prepare_qat_pt2e: {exc}"
            ) from exc
        info: dict[str, Any] = {"source": "qat"}
    else:
        if not calibration:
            raise ConversionError(f"int8 Core ML conversion needs calibration data or a QAT model: {_CALIBRATION_FIX}")
        batches = calibration_batches(calibration, example_input)
        quantizer = quantizer if quantizer is not None else coreml_quantizer()
        captured = torch.export.export(module.eval(), (example_input,), strict=False).module()
        prepared = prepare_pt2e(captured, quantizer)
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        info = {"source": "calibration", "calibration_samples": len(batches)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_pt2e(prepared)
    ops = Counter(
        getattr(n.target, "__name__", str(n.target))
        for n in converted.graph.nodes
        if n.op == "call_function"
    )
    info["quantize_ops"] = sum(c for name, c in ops.items() if name.startswith(_Q_OPS))
    info["dequantize_ops"] = sum(c for name, c in ops.items() if name.startswith(_DQ_OPS))
    info["float_ops"] = float_ops(converted)
    info["seconds"] = round(time.perf_counter() - started, 3)
    return converted, info


# --------------------------------------------------------------------------- MIL inspection


def _load_spec(model: Any) -> Any:
    ct = _require_coremltools()
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise ConversionError(f"no Core ML model at {path}")
        return ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if hasattr(model, "get_spec"):
        return model.get_spec()
    if hasattr(model, "mlProgram"):
        return model
    raise TypeError(f"expected an .mlpackage path, an MLModel or a Model spec, got {type(model).__name__}")


def _main_block(spec: Any, function: str = "main") -> Any:
    if spec.WhichOneof("Type") != "mlProgram":
        raise ConversionError(f"the Core ML model is a {spec.WhichOneof('Type')}, not an ML program")
    fn = spec.mlProgram.functions[function]
    if fn.opset in fn.block_specializations:
        return fn.block_specializations[fn.opset]
    return next(iter(fn.block_specializations.values()))


def _walk_ops(block: Any) -> Iterator[Any]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk_ops(inner)


def iter_mil_ops(mlpackage_or_model: Any, function: str = "main") -> Iterator[Any]:
    """Every MIL operation (protobuf ``Operation``) of ``function``, nested blocks included."""
    return _walk_ops(_main_block(_load_spec(mlpackage_or_model), function))


def mil_op_counts(mlpackage_or_model: Any, function: str = "main") -> dict[str, int]:
    """Number of MIL operations of each type in the ML program's ``function``.

    Accepts an ``.mlpackage`` path, an ``MLModel`` or a ``Model`` spec. ``const``
    operations (weights and literal operands) are counted under ``"const"``.
    """
    counts = Counter(op.type for op in iter_mil_ops(mlpackage_or_model, function))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def mil_dtype_counts(mlpackage_or_model: Any, function: str = "main", include_const: bool = True) -> dict[str, int]:
    """Number of MIL operation outputs of each element type (``fp16``, ``int8``, ...)."""
    ct = _require_coremltools()
    names = ct.proto.MIL_pb2.DataType.Name
    counts: Counter[str] = Counter()
    for op in iter_mil_ops(mlpackage_or_model, function):
        if op.type == _OP_CONST and not include_const:
            continue
        for out in op.outputs:
            if out.type.WhichOneof("type") == "tensorType":
                counts[names(out.type.tensorType.dataType).lower()] += 1
    return dict(counts)


def exported_op_counts(program: Any) -> dict[str, int]:
    """ATen operations of an exported program or graph module (``getitem`` excluded)."""
    gm = program.graph_module if hasattr(program, "graph_module") else program
    counts = Counter(
        str(n.target) for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem
    )
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------- conversion


def _export(module: torch.nn.Module, example: torch.Tensor) -> Any:
    try:
        ep = torch.export.export(module, (example,), strict=False)
        return ep.run_decompositions({})
    except Exception as exc:
        raise ConversionError(f"torch.export of the deployable module failed: {exc}") from exc


def _output_shape(program: Any) -> tuple[int, ...]:
    output = next(n for n in program.graph.nodes if n.op == "output")
    values = output.args[0] if isinstance(output.args[0], (list, tuple)) else [output.args[0]]
    vals = [v.meta.get("val") if isinstance(v, torch.fx.Node) else v for v in values]
    if len(vals) != 1 or not isinstance(vals[0], torch.Tensor) or vals[0].dim() != 4:
        got = ", ".join(
            f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in vals
        )
        raise ConversionError(f"the deployable module must return one (1, C, H, W) logits tensor, got: {got}")
    if not vals[0].is_floating_point():
        raise ConversionError(
            f"the Core ML converter expects float logits, got {vals[0].dtype} (build the module with head='logits')"
        )
    return tuple(int(d) for d in vals[0].shape)


def _apply_metadata(ml: Any, req: ConversionRequest, shape: tuple[int, ...], out_shape: tuple[int, ...],
                    unit: str, target_name: str) -> None:
    meta = dict(req.metadata)
    ml.author = str(meta.pop("author", "espnet-mobile"))
    ml.license = str(meta.pop("license", "see the model card of the source weights"))
    desc = meta.pop("description", None) or meta.pop("short_description", None)
    ml.short_description = str(
        desc or f"{req.model_id}: semantic segmentation ({req.precision}), per-pixel class logits"
    )
    ml.version = str(meta.pop("version", "0.1.0"))
    _, c, h, w = shape
    ml.input_description[INPUT_NAME] = (
        f"float32 RGB image, values in [0, 1], NCHW {tuple(shape)} (1, {c}, {h}, {w}); "
        "mean/std normalization is inside the model"
    )
    ml.output_description[OUTPUT_NAME] = (
        f"float32 class logits {tuple(out_shape)} (1, C, H, W); argmax over dim 1 gives the label index "
        "into the 'labels' metadata"
    )
    user = ml.user_defined_metadata
    for key, value in meta.items():
        user[str(key)] = value if isinstance(value, str) else json.dumps(value)
    user["model_id"] = req.model_id
    user["labels"] = json.dumps(list(req.labels))
    user["num_classes"] = str(out_shape[1] if len(out_shape) > 1 else len(req.labels))
    user["task"] = "semantic_segmentation"
    user["precision"] = req.precision
    user["compute_units"] = unit
    user["minimum_deployment_target"] = target_name
    user["input_format"] = "RGB float32 [0,1] NCHW"


def convert(req: ConversionRequest) -> ConversionResult:
    """Write ``req.module`` as a Core ML ML program ``.mlpackage`` at ``req.out_path``.

    Options: ``minimum_deployment_target`` (default ``iOS17``; int8 needs
    iOS17/macOS14 or later), ``compute_units`` (ALL | CPU_ONLY | CPU_AND_GPU |
    CPU_AND_NE, stored in the model's metadata and the result),
    ``int8_compute_precision`` (fp16 | fp32 for the float parts of an int8
    model), ``activation_observer`` (minmax | histogram, int8 calibration),
    ``float_modules`` (module paths kept in float in an int8 model).
    """
    started = time.perf_counter()
    ct = _require_coremltools()
    import numpy as np

    _check_request(req)
    opts = req.options
    target = _deployment_target(ct, opts.get("minimum_deployment_target", DEFAULT_DEPLOYMENT_TARGET))
    target_name = target.name
    if target < ct.target.iOS15:
        raise ConversionError(f"ML programs need iOS15/macOS12 or later, not {target_name}")
    if req.precision == "int8" and target < ct.target.iOS17:
        raise ConversionError(
            f"int8 activations (MIL quantize/dequantize) need iOS17/macOS14 or later, not {target_name}; "
            "raise minimum_deployment_target"
        )
    unit = _compute_units(opts.get("compute_units", DEFAULT_COMPUTE_UNITS))
    out_path = Path(req.out_path)
    if out_path.suffix != ".mlpackage":
        raise ConversionError(f"a Core ML ML program is saved as a .mlpackage directory, not {out_path.name}")

    example = req.example_input.detach().to(torch.float32)
    module = req.module.eval()

    report: dict[str, Any] = {}
    if req.precision == "int8":
        quantizer = None
        if req.qat_module is None:
            quantizer = coreml_quantizer(
                activation_observer=str(opts.get("activation_observer", "minmax")),
                float_modules=tuple(opts.get("float_modules", ())),
            )
        quantized, qinfo = quantize_pt2e(
            module, example, calibration=req.calibration, qat_module=req.qat_module, quantizer=quantizer
        )
        program = _export(quantized, example)
        report["quantization"] = qinfo
        compute = str(opts.get("int8_compute_precision", "fp16"))
        if compute not in ("fp16", "fp32"):
            raise ConversionError(f"int8_compute_precision must be fp16 or fp32, not {compute!r}")
    else:
        program = _export(module, example)
        compute = req.precision
    out_shape = _output_shape(program)
    program_ops = exported_op_counts(program)
    precision = ct.precision.FLOAT16 if compute == "fp16" else ct.precision.FLOAT32

    convert_started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ml = ct.convert(
                program,
                inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape), dtype=np.float32)],
                outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                convert_to="mlprogram",
                minimum_deployment_target=target,
                compute_precision=precision,
                compute_units=getattr(ct.ComputeUnit, unit),
                skip_model_load=True,
            )
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"coremltools could not convert the exported program: {exc}") from exc
    report["coremltools_seconds"] = round(time.perf_counter() - convert_started, 3)

    _apply_metadata(ml, req, tuple(example.shape), out_shape, unit, target_name)

    with atomic_output(out_path) as tmp:
        ml.save(str(tmp))
        # Read it back as a device would receive it; prediction is not possible off Apple hosts.
        try:
            spec = ct.models.MLModel(str(tmp), skip_model_load=True).get_spec()
        except Exception as exc:
            raise ConversionError(f"the saved .mlpackage cannot be read back: {exc}") from exc
        mil_ops = mil_op_counts(spec)

    non_const = sum(c for k, c in mil_ops.items() if k != _OP_CONST)
    exported_total = sum(program_ops.values())
    ratio = non_const / max(1, exported_total)
    report.update(
        {
            "format": "mlprogram",
            "specification_version": spec.specificationVersion,
            "minimum_deployment_target": target_name,
            "compute_units": unit,
            "compute_precision": compute,
            "mil_ops": mil_ops,
            "mil_op_total": sum(mil_ops.values()),
            "mil_op_total_non_const": non_const,
            "exported_ops": program_ops,
            "exported_op_total": exported_total,
            "mil_per_exported_op": round(ratio, 3),
            "input": {"name": INPUT_NAME, "shape": list(example.shape), "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": list(out_shape), "dtype": "float32"},
        }
    )
    if ratio > MAX_OP_RATIO:
        warnings.warn(
            f"Core ML program has {non_const} operations for {exported_total} exported ATen ops "
            f"({ratio:.1f}x > {MAX_OP_RATIO}x): an op was expanded; see report['mil_ops']",
            stacklevel=2,
        )
    runs, reason = _runs_here()
    return ConversionResult(
        path=out_path,
        target=TARGET,
        precision=req.precision,
        compute_units=list(COMPUTE_UNITS[unit]),
        executable_here=runs,
        tool_versions=tool_versions(req.precision),
        seconds=round(time.perf_counter() - started, 3),
        report=report,
        not_executable_reason=reason,
    )


def mil_op_types(models: Iterable[Any]) -> set[str]:
    """Union of the MIL op types used by several models (for a MIL interpreter's coverage)."""
    types: set[str] = set()
    for model in models:
        types.update(mil_op_counts(model))
    return types
