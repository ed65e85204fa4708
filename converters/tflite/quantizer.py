"""LiteRT's PT2E quantizer, extended for the segmentation graphs (shared observers through data movement, float islands
around high-gain convolutions, strict QDQ conversion)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from converters.base import (
    DEFAULT_MAX_WEIGHT_GAIN,
    ConversionError,
    module_path,
)
from converters.tflite.passes import (
    _PRELU_ROLE,
    _aten,
    _constant_value,
    _decompose_prelu,
    _fold_affine_into_conv,
    _pad_is_zero,
    _rewrite_eval_batch_norm,
    _same_scale_targets,
    _split_affine_after_cat,
    _unshare_constants,
)
from converters.tflite.toolchain import _require_backend


@functools.cache
def _quantizer_class() -> type:
    """Build the quantizer class on first use (litert-torch is imported lazily)."""
    _require_backend()
    from litert_torch.quantize import pt2e_quantizer as lq
    from litert_torch.quantize import pt2e_quantizer_utils as lqu
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        SharedQuantizationSpec,
    )

    key = "quantization_annotation"
    same_scale = _same_scale_targets()
    conv_transpose = {t for t in (_aten("conv_transpose2d", "input"),) if t is not None}
    binary_arith = {t for t in (_aten("add", "Tensor"), _aten("sub", "Tensor"), _aten("mul", "Tensor"))
                    if t is not None}
    concat = _aten("cat")

    def annotated(node: torch.fx.Node) -> bool:
        return key in node.meta and node.meta[key]._annotated

    def has_output_qspec(node: Any) -> bool:
        return isinstance(node, torch.fx.Node) and annotated(node) and node.meta[key].output_qspec is not None

    def input_spec(cfg: Any, producer: Any) -> Any:
        """Reuse the producer's observer when it has one, else a fresh activation spec."""
        return SharedQuantizationSpec(producer) if has_output_qspec(producer) else lqu.get_input_act_qspec(cfg)

    class SegmentationPT2EQuantizer(lq.PT2EQuantizer):
        """LiteRT's PT2E quantizer plus what the ESPNet/ESPNetv2 deployable graphs need for full int8.

        Additions (all static int8; weights per channel when configured):

        * graph transforms before annotation, each exact: inference-mode BatchNorm not
          folded into a conv -> depthwise 1x1 conv; a per-channel affine (+ PReLU) after
          a channel concat -> one per concat input; PReLU -> ``x + relu((a - 1) * x)``;
          so every op has an int8 kernel (and all but AVERAGE_POOL_2D an XNNPACK one);
        * shared constants get one node per user (else the stock conv annotator skips the
          second conv that reads a weight); every add/sub/mul is annotated by its target;
        * every ``cat`` by its target, with one output observer (:meth:`_annotate_cat`);
        * ``conv_transpose2d``: activations (the converter quantizes its weight per channel);
        * one observer for the input and output of every single-input data-movement op
          whose TFLite kernel needs equal scales (reshape, transpose, permute, pad,
          avg/max pool, bilinear/nearest resize, mean, relu, ...), including
          ``aten.transpose.int``, ``aten.reshape``, ``aten.avg_pool2d``, ``aten.pad`` and
          ``aten.upsample_bilinear2d``, which the stock propagation list lacks.
        """

        #: Class-level switch for :func:`_split_affine_after_cat` (kept for experiments).
        split_affine_after_cat = True
        # litert-torch 0.10's conv-BN QAT annotators build their pattern with a torchao helper
        # that torch 2.13 rejects ("Expected `mod` to be an instance of `torch.nn.Module`");
        # :meth:`_annotate_conv_bn_qat` replaces them.
        STATIC_QAT_ONLY_OPS: list[str] = []  # noqa: RUF012

        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().transform_for_annotation(model)
            _rewrite_eval_batch_norm(model)
            _unshare_constants(model)
            if self.split_affine_after_cat:
                _split_affine_after_cat(model)
            if not (self.global_config is not None and self.global_config.is_qat):
                _fold_affine_into_conv(model, self.max_weight_gain)
            _decompose_prelu(model)
            return model

        #: Gain above which a conv runs in float (None: every conv in int8); set by get_quantizer.
        max_weight_gain: float | None = None
        #: Module paths whose convs run in float whatever their gain (``convert --int8-budget``).
        float_modules: tuple[str, ...] = ()

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            cfg = self.global_config
            if cfg is None or cfg.input_activation is None:
                raise ConversionError("the TFLite int8 path supports static quantization configs only")
            self.float_islands = _mark_float_islands(model, self.max_weight_gain, self.float_modules) \
                if (self.max_weight_gain or self.float_modules) and not cfg.is_qat else {}
            # Before the stock patterns: the stock conv+relu pattern would otherwise swallow
            # the conv output that the decomposed PReLU also reads.
            if cfg.is_qat:
                self._annotate_conv_bn_qat(model, cfg)
            self._annotate_prelu_parts(model, cfg)
            self._annotate_binary_arith(model, cfg)
            self._annotate_cat(model, cfg)
            self._annotate_conv_transpose(model, cfg)
            model = self._annotate_for_static_quantization_config(model)
            self._propagate_same_scale(model, cfg)
            lqu.propagate_annotation(model)
            return model

        @staticmethod
        def _annotate_conv_bn_qat(model: torch.fx.GraphModule, cfg: Any) -> None:
            # conv -> BatchNorm (training) as one unit: observers on the conv's input and
            # weight and on the BatchNorm's output, none in between, which is the shape
            # torchao's QAT conv-BN fusion (prepare) and folding (convert) expect.
            bn_ops = {_aten("batch_norm"), _aten("_native_batch_norm_legit")}
            conv_ops = {_aten("conv2d"), _aten("conv1d")}
            getitem = __import__("operator").getitem
            for bn in model.graph.nodes:
                if bn.op != "call_function" or bn.target not in bn_ops or annotated(bn):
                    continue
                conv = bn.args[0]
                if (not isinstance(conv, torch.fx.Node) or conv.op != "call_function"
                        or conv.target not in conv_ops or len(conv.users) != 1 or annotated(conv)):
                    continue
                out = bn
                if bn.target != _aten("batch_norm"):
                    firsts = [u for u in bn.users if u.target is getitem and u.args[1] == 0]
                    if len(firsts) != 1:
                        continue
                    out = firsts[0]
                x, weight = conv.args[0], conv.args[1]
                qmap = {x: input_spec(cfg, x), weight: lqu.get_weight_qspec(cfg)}
                bias = conv.args[2] if len(conv.args) > 2 else None
                if isinstance(bias, torch.fx.Node):
                    qmap[bias] = lqu.get_bias_qspec(cfg)
                conv.meta[key] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
                if out is not bn:
                    bn.meta[key] = QuantizationAnnotation(_annotated=True)
                out.meta[key] = QuantizationAnnotation(
                    output_qspec=lqu.get_output_act_qspec(cfg), _annotated=True)
                weight.meta[key] = QuantizationAnnotation(_annotated=True)

        @staticmethod
        def _annotate_prelu_parts(model: torch.fx.GraphModule, cfg: Any) -> None:
            act = lqu.get_output_act_qspec(cfg)
            for node in model.graph.nodes:
                role = node.meta.get(_PRELU_ROLE)
                if role is None or annotated(node):
                    continue
                if role == "scale":
                    # No output observer: MUL -> RELU must reach the converter as one fusable pair.
                    x, c = node.args[:2]
                    node.meta[key] = QuantizationAnnotation(
                        input_qspec_map={x: input_spec(cfg, x), c: act}, _annotated=True)
                elif role == "relu":
                    node.meta[key] = QuantizationAnnotation(output_qspec=act, _annotated=True)
                else:  # "mul", "add"
                    inputs = {a: act for a in node.args[:2] if isinstance(a, torch.fx.Node)}
                    node.meta[key] = QuantizationAnnotation(
                        input_qspec_map=inputs, output_qspec=act, _annotated=True)

        @staticmethod
        def _annotate_binary_arith(model: torch.fx.GraphModule, cfg: Any) -> None:
            # By target rather than by source partition: the stock add/mul annotators group
            # nodes by the Python line that created them, so in a chain written as a loop
            # (ESPNetv2's hierarchical feature fusion, ``outputs[-1] + branch(x)``) only one
            # add per partition was annotated and the others stayed float.
            act = lqu.get_output_act_qspec(cfg)
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in binary_arith or annotated(node):
                    continue
                inputs = {a: act for a in node.args[:2] if isinstance(a, torch.fx.Node)}
                if not inputs:
                    continue
                node.meta[key] = QuantizationAnnotation(
                    input_qspec_map=inputs, output_qspec=act, _annotated=True)

        @staticmethod
        def _annotate_cat(model: torch.fx.GraphModule, cfg: Any) -> None:
            # By target: the stock cat annotator finds concats through source partitions,
            # which ``torch.export(strict=False)`` does not record, so it annotated none and
            # each concat output was observed only on the edges of consumers that have input
            # observers. When one consumer is quantized (a stride-2 conv, whose padding the
            # converter turns into a PAD) and another reads the float output (a second concat,
            # ESPNet's decoder skip), the converter derives the concat's scale from its first
            # input for the float edge and meets the conv's input scale at the PAD: "'tfl.pad'
            # op quantization parameters violate the same scale constraint". One output
            # observer per concat gives every consumer the same int8 tensor. The inputs keep
            # their producers' observers (the converter requantizes them into the concat's
            # scale, as it did before), so a concat with a single consumer quantizes as before.
            act = lqu.get_output_act_qspec(cfg)
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target != concat or annotated(node):
                    continue
                inputs = [a for a in node.args[0] if isinstance(a, torch.fx.Node)]
                if not inputs:
                    continue
                node.meta[key] = QuantizationAnnotation(
                    input_qspec_map={a: input_spec(cfg, a) for a in inputs}, output_qspec=act,
                    _annotated=True)

        @staticmethod
        def _annotate_conv_transpose(model: torch.fx.GraphModule, cfg: Any) -> None:
            # Activations only. With a per-channel weight annotation (axis 1 of the PyTorch
            # weight, or per-tensor) litert-torch 0.10 keeps TRANSPOSE_CONV in float; left
            # unannotated, the converter quantizes the weight itself (per output channel) and
            # emits an int8 TRANSPOSE_CONV.
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in conv_transpose or annotated(node):
                    continue
                x = node.args[0]
                node.meta[key] = QuantizationAnnotation(
                    input_qspec_map={x: lqu.get_input_act_qspec(cfg)},
                    output_qspec=lqu.get_output_act_qspec(cfg), _annotated=True)

        @staticmethod
        def _propagate_same_scale(model: torch.fx.GraphModule, cfg: Any) -> None:
            pads = {_aten("pad"), _aten("constant_pad_nd")}
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in same_scale or annotated(node):
                    continue
                if node.target in pads and not _pad_is_zero(node):
                    continue
                x = node.args[0]
                if not isinstance(x, torch.fx.Node):
                    continue
                spec = input_spec(cfg, x)
                node.meta[key] = QuantizationAnnotation(
                    input_qspec_map={x: spec},
                    output_qspec=SharedQuantizationSpec((x, node)), _annotated=True)

    return SegmentationPT2EQuantizer


def get_quantizer(*, qat: bool = False, per_channel: bool = True,
                  max_weight_gain: float | None = DEFAULT_MAX_WEIGHT_GAIN,
                  float_modules: Sequence[str] = ()) -> Any:
    """The PT2E quantizer for TFLite int8 (static, int8 activations, symmetric int8 weights).

    Use the same object for ``prepare_qat_pt2e`` (``qat=True``) when fine-tuning
    a model that will be converted with ``req.qat_module``. ``max_weight_gain``
    applies to post-training quantization only (QAT trains every conv in int8), as does
    ``float_modules``: module paths whose convs stay float, like high-gain ones.
    """
    cls = _quantizer_class()  # raises MissingBackendError without litert-torch
    from litert_torch.quantize import pt2e_quantizer as lq

    quantizer = cls().set_global(lq.get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=qat))
    quantizer.max_weight_gain = max_weight_gain
    quantizer.float_modules = tuple(p.rstrip(".") for p in float_modules)
    quantizer.float_islands = {}
    return quantizer


def _mark_float_islands(gm: torch.fx.GraphModule, max_gain: float | None,
                        float_modules: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Leave unquantized each conv whose weight gain exceeds ``max_gain`` or that lies under one of
    ``float_modules`` (module paths), and the PReLUs around it.

    Runs on the prepared graph, where PT2E has folded BatchNorms into the conv
    weights, so the gain of output channel ``c`` is the L2 norm of its weights.
    ESPNetv2's decoder has three such convs after int8 equalization (gains up to
    ~11,600, from BatchNorms with near-zero running variance); in int8 they
    amplify the rounding of their int8 input by as much. Marked float: the conv,
    the decomposed PReLU that reads it (:func:`_decompose_prelu`), and the
    decomposed PReLU that produces its input, so that input reaches the conv
    without the two extra roundings of an int8 PReLU (the XNNPACK converter's
    float convs see the same). Returns ``{conv node: {"module", "gain"}}``.
    The converter must then run in strict QDQ mode (:func:`_strict_qdq`), or it
    quantizes the float ops again.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    key = "quantization_annotation"
    convs = {_aten("conv2d"), _aten("conv1d"), _aten("convolution")}
    found: dict[str, dict[str, Any]] = {}

    def keep_float(node: torch.fx.Node) -> None:
        node.meta[key] = QuantizationAnnotation(_annotated=True)
        if node.meta.get(_PRELU_ROLE) in ("scale", "mul"):
            # A float slope is stored in 4 bytes per value: undo the int8 kernel's width tiling.
            slope = _constant_value(gm, node.args[1])
            if slope is not None and slope.dim() == 4 and slope.shape[3] > 1:
                setattr(gm, node.args[1].target, slope[..., :1].contiguous())

    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in convs or key in node.meta:
            continue
        weight = _constant_value(gm, node.args[1])
        if weight is None or weight.dim() < 2:
            continue
        gain = float(weight.detach().flatten(1).norm(dim=1).max())
        path = module_path(node) or node.name
        requested = any(path == p or path.startswith(p + ".") for p in float_modules)
        if not requested and (max_gain is None or gain <= max_gain):
            continue
        found[node.name] = {"module": path, "gain": round(gain, 1), **({"reason": "requested"} if requested else {})}
        keep_float(node)
        seen: set[torch.fx.Node] = {node}
        source = [node.args[0]] if isinstance(node.args[0], torch.fx.Node) else []
        # Downstream through the PReLU parts reading the conv, upstream through those producing its input.
        for todo, step in ((list(node.users), lambda n: list(n.users)),
                           (source, lambda n: list(n.all_input_nodes))):
            while todo:
                n = todo.pop()
                if n not in seen and n.meta.get(_PRELU_ROLE):
                    seen.add(n)
                    keep_float(n)
                    todo += step(n)
    return found


@contextlib.contextmanager
def _strict_qdq(enabled: bool) -> Iterator[None]:
    """Run litert-torch's converter in strict QDQ mode: an op no quantize/dequantize pair wraps stays float.

    In its default mode the converter folds ``dequantize -> conv -> quantize`` into an
    int8 conv even when PT2E left the conv unquantized. litert-torch 0.10 exposes the
    switch only on the converter's config object, which it builds internally, so the
    config class is wrapped for the duration of one conversion.
    """
    if not enabled:
        yield
        return
    from litert_torch._convert import litert_converter

    api = litert_converter.converter_api_ext
    original = api.ConvertToTFLConfig

    def strict_config() -> Any:
        config = original()
        config.strict_qdq_mode = True
        return config

    api.ConvertToTFLConfig = strict_config
    try:
        yield
    finally:
        api.ConvertToTFLConfig = original


