"""PT2E int8 for ExecuTorch: the XNNPACK quantizer, the nodes XNNPACK int8 keeps in fp32 (high-gain convs, affines
before a PReLU), and calibration or QAT conversion."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from converters.base import (
    DEFAULT_MAX_WEIGHT_GAIN,
    ConversionError,
    calibration_batches,
    module_path,
)
from converters.executorch.toolchain import _CALIBRATION_FIX, _require_coremltools, _require_executorch
from converters.range_refinement import RangeRefinement, refine_activation_ranges

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
    refine: RangeRefinement | None = None,
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
    XNNPACK runs PReLU in fp32). With ``refine``, activation ranges are then narrowed
    where that lowers the logit error (:mod:`converters.range_refinement`). Returns the quantized exported program
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
        if refine is not None:
            info["range_refinement"] = refine_activation_ranges(prepared, batches, refine).as_dict()
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, args, strict=False), info


