"""TFLite / LiteRT backend: one ``.tflite`` flatbuffer per (model, precision).

Conversion goes through litert-torch (``torch.export`` -> StableHLO -> TFLite);
execution here goes through the ``ai_edge_litert`` Interpreter, whose default
CPU path is the XNNPACK delegate.

Precisions
    fp32  plain conversion, then each PReLU as one PRELU op instead of the four
          litert-torch writes (:func:`_native_prelu`, bit-exact). The LiteRT GPU
          accelerator does not take PRELU, so these files are CPU (and NPU
          dispatch) artifacts; the GPU artifact (``delegate="gpu"``) keeps the
          four ops.
    fp16  float16 weights, float32 compute (a DEQUANTIZE per weight, folded by
          XNNPACK and the GPU delegate); litert-torch's ``full_fp16_recipe``;
          PReLUs as for fp32.
    int8  full-integer static quantization through PT2E with LiteRT's own
          quantizer (:class:`litert_torch.quantize.pt2e_quantizer.PT2EQuantizer`),
          extended by :func:`get_quantizer` for the ops of the deployable
          segmentation graphs. Either calibrated here on ``req.calibration`` or
          taken from ``req.qat_module`` (prepared with ``prepare_qat_pt2e`` and
          :func:`get_quantizer(qat=True) <get_quantizer>`, then fine-tuned).
          After calibration, convolutions with a weight gain above
          ``int8_max_weight_gain`` (default :data:`DEFAULT_MAX_WEIGHT_GAIN`)
          and the PReLUs on both sides of them stay float
          (:func:`_mark_float_islands`); ESPNetv2 has three such convs.
          Before annotation, exact graph rewrites give every op an int8
          XNNPACK kernel and drop work (:meth:`transform_for_annotation`),
          among them BatchNorm affines folded into the conv ahead of a
          resize or pool (:func:`_fold_affine_into_conv`).

App contract: every artifact has float32 input and float32 output, whatever the
precision. For int8 the converter ends with int8 tensors at the model boundary;
this module then inserts a QUANTIZE after the input and a DEQUANTIZE before the
output (:func:`_float_io`), so an app feeds the same float tensor to every
artifact and never handles scales or zero points. :func:`run_tflite` still
accepts artifacts with integer I/O (from other tools) and (de)quantizes for them.

Each artifact carries one named signature (default ``segment``) with one input
(``image``: NCHW float, or NHWC with ``options["nhwc"]=True``) and one output
(``logits``: NCHW float32).

The same-scale failure, and why the quantizer is extended (see :func:`get_quantizer`).
With the authors' ESPNetv2 graph and LiteRT's stock PT2E quantizer, int8 conversion
stops with ``'tfl.transpose' op quantization parameters violate the same scale
constraint: !quant.uniform<i8:f32, 0.00379:-128> vs. !quant.uniform<i8:f32,
0.00392:-128>``. Those are the scales of the input image (range [0, 1]) and of its
3x3/stride-2 average pool (max 0.97), i.e. the input-reinforcement pyramid
``F.avg_pool2d(image)`` feeding a conv. The stock quantizer annotates conv, linear,
add, mul, cat, max/adaptive pooling and sigmoid, and shares observers only through
``view``/``permute``/``squeeze``/``slice``/``mean``; it leaves ``avg_pool2d``,
``pad``, ``upsample_bilinear2d``, ``aten.reshape`` and ``aten.transpose.int``
unannotated. So the pool's input is quantized with the image's observer and its
output with the next conv's own input observer, and the two differ.
litert-torch's layout pass wraps the NCHW pool in NCHW<->NHWC TRANSPOSE ops, and in
STATIC QDQ mode the converter pushes quantization through the float chain
``dequantize(s1) -> TRANSPOSE -> AVERAGE_POOL_2D -> TRANSPOSE -> quantize(s2)``. TFLite
requires equal input and output scales for TRANSPOSE, RESHAPE, PAD, AVERAGE_POOL_2D and
RESIZE_BILINEAR (their SameOperandsAndResultsScale trait), so the first TRANSPOSE in
the chain fails. A channel shuffle (reshape ->
transpose -> reshape) fails the same way as soon as both its producer and its consumer
are quantized with different observers. :func:`get_quantizer` gives every
single-input data-movement op one observer for its input and output, so ``s1 == s2``
by construction. The deployable graph already avoids this particular chain: it
computes the pyramid's pooling as a depthwise conv with weights 1/9, which the stock
quantizer does annotate.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from converters.common import (
    DEFAULT_MAX_WEIGHT_GAIN,
    PRECISIONS,
    ConversionError,
    ConversionRequest,
    ConversionResult,
    MissingBackendError,
    atomic_output,
    module_path,
)

#: Bumped whenever this module writes a different file for the same request, so
#: ``espnet_mobile.convert`` rebuilds cached artifacts (2: shared quantization vectors;
#: 3: high-gain convs and their PReLUs in float; 4: int8 PReLU slopes tiled along the width;
#: 5: int8 BatchNorm affines folded into the conv ahead of a resize or pool; 6: float PReLUs
#: as one PRELU op, those files CPU-only).
WRITER_VERSION = 6

TARGET = "tflite"
INSTALL_HINT = "pip install litert-torch==0.10.0"
DEFAULT_SIGNATURE = "segment"
DEFAULT_INPUT_NAME = "image"
DEFAULT_OUTPUT_NAME = "logits"
ACCELERATORS = ("cpu", "cpu_reference", "gpu")
OPTIONS = ("nhwc", "signature", "input_name", "output_name", "verbose", "int8_max_weight_gain", "delegate")

_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


# --------------------------------------------------------------------------- #
# Backend availability and versions
# --------------------------------------------------------------------------- #


def _require_backend() -> Any:
    """Import litert-torch and the LiteRT runtime, or say how to install them."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import litert_torch
    except ImportError as exc:
        raise MissingBackendError(
            f"the TFLite/LiteRT backend needs litert-torch ({exc}); install it with `{INSTALL_HINT}`"
        ) from exc
    return litert_torch


def _require_runtime() -> Any:
    try:
        from ai_edge_litert import interpreter
    except ImportError as exc:
        raise MissingBackendError(
            f"running .tflite files needs the LiteRT runtime ({exc}); install it with "
            "`pip install ai-edge-litert==2.3.0`"
        ) from exc
    return interpreter


def tool_versions() -> dict[str, str]:
    """Versions of the tools that produce and run the artifact (for the manifest)."""
    versions = {"torch": torch.__version__}
    for dist in ("litert-torch", "ai-edge-litert"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


# --------------------------------------------------------------------------- #
# Module wrappers: layout and named I/O
# --------------------------------------------------------------------------- #


class _NHWCInput(nn.Module):
    """Takes an NHWC image and hands the wrapped module the NCHW tensor it expects."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.inner(image.permute(0, 3, 1, 2))


class _NamedIO(nn.Module):
    """Gives the exported signature a named input (the one keyword argument) and a named output."""

    def __init__(self, inner: nn.Module, output_name: str) -> None:
        super().__init__()
        self.inner = inner
        self.output_name = output_name

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        (image,) = inputs.values()
        out = self.inner(image)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return {self.output_name: out}


def _mark_eval(module: nn.Module) -> nn.Module:
    """Put a wrapper in eval mode without calling ``.eval()`` on exported graph modules (unsupported)."""
    for sub in module.modules():
        if not isinstance(sub, torch.fx.GraphModule):
            sub.training = False
    return module


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence litert-torch's progress console and ai-edge-quantizer's prints unless verbose."""
    if verbose:
        yield
        return
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


# --------------------------------------------------------------------------- #
# The quantizer
# --------------------------------------------------------------------------- #

_PRELU_ROLE = "espnet_mobile_prelu"  # node.meta key set on nodes of a decomposed PReLU


def _aten(name: str, overload: str = "default") -> Any:
    packet = getattr(torch.ops.aten, name, None)
    return getattr(packet, overload, None) if packet is not None else None


def _same_scale_targets() -> frozenset:
    """Single-input ops whose TFLite kernels keep (or require) the input scale on the output."""
    names = [
        ("view", "default"), ("reshape", "default"), ("_unsafe_view", "default"),
        ("transpose", "int"), ("permute", "default"), ("clone", "default"),
        ("contiguous", "default"), ("alias", "default"),
        ("squeeze", "dim"), ("squeeze", "dims"), ("squeeze", "default"), ("unsqueeze", "default"),
        ("flatten", "using_ints"), ("slice", "Tensor"), ("select", "int"),
        ("avg_pool2d", "default"), ("max_pool2d", "default"),
        ("upsample_bilinear2d", "vec"), ("upsample_bilinear2d", "default"),
        ("upsample_nearest2d", "vec"), ("upsample_nearest2d", "default"),
        ("relu", "default"), ("hardtanh", "default"),
        ("adaptive_avg_pool2d", "default"), ("_adaptive_avg_pool2d", "default"), ("mean", "dim"),
        ("pad", "default"), ("constant_pad_nd", "default"),
    ]
    return frozenset(t for t in (_aten(n, o) for n, o in names) if t is not None)


def _pad_is_zero(node: torch.fx.Node) -> bool:
    """Only zero padding maps onto an int8 PAD (pads with the zero point); other fills need PADV2."""
    if node.target == _aten("constant_pad_nd"):
        value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
        return value in (0, 0.0, None)
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    return mode == "constant" and value in (0, 0.0, None)


def _fetch_attr(gm: torch.fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _new_constant(gm: torch.fx.GraphModule, prefix: str, value: torch.Tensor, before: torch.fx.Node):
    i = 0
    while hasattr(gm, f"{prefix}{i}"):
        i += 1
    name = f"{prefix}{i}"
    gm.register_buffer(name, value.detach().clone().contiguous())
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def _constant_value(gm: torch.fx.GraphModule, arg: Any) -> torch.Tensor | None:
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        return _fetch_attr(gm, arg.target)
    return None


def _rewrite_eval_batch_norm(gm: torch.fx.GraphModule) -> int:
    """Replace each inference-mode BatchNorm left after conv-BN folding by an exact depthwise 1x1 conv.

    TFLite has no BatchNorm kernel: the converter lowers a standalone BN to
    SUB/MUL/MUL/ADD, which PT2E leaves in float. As a per-channel affine map it
    is exactly a depthwise 1x1 convolution, which quantizes like any other conv
    (int8 DEPTHWISE_CONV_2D with per-channel weights). BatchNorms in training
    mode (QAT graphs) are left alone.
    """
    bn_legit = _aten("_native_batch_norm_legit_no_training")
    bn = _aten("batch_norm")
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (bn, bn_legit):
            continue
        if node.target == bn:
            x, w, b, mean, var, training, _momentum, eps = node.args[:8]
            if training:
                continue
            out_node = node
        else:
            x, w, b, mean, var, _momentum, eps = node.args[:7]
            users = list(node.users)
            if not all(u.target.__name__ == "getitem" and u.args[1] == 0 for u in users
                       if u.op == "call_function") or len(users) != 1:
                continue
            out_node = users[0]
        mean_t, var_t = _constant_value(gm, mean), _constant_value(gm, var)
        if mean_t is None or var_t is None or x.meta.get("val") is None or x.meta["val"].dim() != 4:
            continue
        w_t = _constant_value(gm, w) if w is not None else torch.ones_like(mean_t)
        b_t = _constant_value(gm, b) if b is not None else torch.zeros_like(mean_t)
        if w_t is None or b_t is None:
            continue
        scale = w_t.float() / torch.sqrt(var_t.float() + eps)
        shift = b_t.float() - mean_t.float() * scale
        channels = scale.numel()
        weight = _new_constant(gm, "_bn_as_dwconv_weight_", scale.reshape(channels, 1, 1, 1), node)
        bias = _new_constant(gm, "_bn_as_dwconv_bias_", shift, node)
        with gm.graph.inserting_before(node):
            conv = gm.graph.call_function(
                _aten("conv2d"), (x, weight, bias, [1, 1], [0, 0], [1, 1], channels))
        conv.meta = {k: v for k, v in out_node.meta.items() if k != "quantization_annotation"}
        out_node.replace_all_uses_with(conv)
        if out_node is not node:
            gm.graph.erase_node(out_node)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count


def _node_arg(node: torch.fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` of a call node, or its keyword ``name``, or ``default``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _is_pointwise_depthwise(gm: torch.fx.GraphModule, node: torch.fx.Node, channels: int) -> bool:
    """A conv2d that is a per-channel affine map: 1x1 kernel, one channel per group, stride 1, no padding."""
    if node.op != "call_function" or node.target != _aten("conv2d"):
        return False
    weight = _constant_value(gm, node.args[1])
    if weight is None or tuple(weight.shape) != (channels, 1, 1, 1):
        return False
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if bias is not None and _constant_value(gm, bias) is None:
        return False
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v, v]  # noqa: E731
    return (as_list(_node_arg(node, 3, "stride", 1)) == [1, 1]
            and as_list(_node_arg(node, 4, "padding", 0)) == [0, 0]
            and as_list(_node_arg(node, 5, "dilation", 1)) == [1, 1]
            and _node_arg(node, 6, "groups", 1) == channels)


def _fake_like(ref: torch.fx.Node, shape: Sequence[int]) -> Any:
    val = ref.meta.get("val")
    mode = getattr(val, "fake_mode", None)
    if mode is None:
        return torch.empty(tuple(shape), dtype=val.dtype if val is not None else torch.float32, device="meta")
    with mode:
        return torch.empty(tuple(shape), dtype=val.dtype)


def _split_affine_after_cat(gm: torch.fx.GraphModule) -> int:
    """Move a per-channel affine (+ PReLU) that follows a channel concat onto each concat input (exact).

    ``cat([a, b, ...]) -> depthwise 1x1 conv (a BatchNorm) -> PReLU`` becomes
    ``cat([prelu_a(conv_a(a)), prelu_b(conv_b(b)), ...])``. The concat output
    and its inputs share one int8 scale; before the BatchNorm the branches of
    ESPNetv2's EESP units and pyramid pools differ in range by large factors,
    so the small branches kept only a few quantization levels. After the
    BatchNorm and PReLU the branches are on a common scale.
    """
    cat, conv2d, prelu = _aten("cat"), _aten("conv2d"), _aten("prelu")
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != cat or len(node.users) != 1:
            continue
        inputs = node.args[0]
        dim = _node_arg(node, 1, "dim", 0)
        val = node.meta.get("val")
        if val is None or val.dim() != 4 or dim not in (1, -3) or len(inputs) < 2:
            continue
        channels = int(val.shape[1])
        affine = next(iter(node.users))
        if not _is_pointwise_depthwise(gm, affine, channels):
            continue
        act = next(iter(affine.users)) if len(affine.users) == 1 else None
        alpha = None
        if act is not None and act.op == "call_function" and act.target == prelu:
            alpha = _constant_value(gm, act.args[1])
        if alpha is None or alpha.numel() not in (1, channels):
            act, alpha = None, None
        weight = _constant_value(gm, affine.args[1])
        bias_arg = affine.args[2] if len(affine.args) > 2 else affine.kwargs.get("bias")
        bias = _constant_value(gm, bias_arg) if bias_arg is not None else None
        branches, offset = [], 0
        for x in inputs:
            c = int(x.meta["val"].shape[1])
            sl = slice(offset, offset + c)
            offset += c
            w = _new_constant(gm, "_cat_split_weight_", weight[sl], affine)
            b = _new_constant(gm, "_cat_split_bias_", bias[sl], affine) if bias is not None else None
            with gm.graph.inserting_before(affine):
                y = gm.graph.call_function(conv2d, (x, w, b, [1, 1], [0, 0], [1, 1], c))
            y.meta["val"] = _fake_like(x, x.meta["val"].shape)
            if act is not None:
                a = alpha if alpha.numel() == 1 else alpha[sl]
                a_node = _new_constant(gm, "_cat_split_alpha_", a, affine)
                with gm.graph.inserting_before(affine):
                    y2 = gm.graph.call_function(prelu, (y, a_node))
                y2.meta["val"] = _fake_like(x, x.meta["val"].shape)
                y = y2
            branches.append(y)
        with gm.graph.inserting_before(affine):
            new_cat = gm.graph.call_function(cat, (branches, 1))
        new_cat.meta = {k: v for k, v in node.meta.items() if k != "quantization_annotation"}
        last = act if act is not None else affine
        last.replace_all_uses_with(new_cat)
        for dead in (act, affine, node):
            if dead is not None:
                gm.graph.erase_node(dead)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count


def _passes_affine_through(gm: torch.fx.GraphModule, node: torch.fx.Node, channels: int) -> bool:
    """Whether ``affine(op(x)) == op(affine(x))`` for a per-channel affine map on dim 1.

    True for spatial ops that keep dim 1 as the channels and map a constant image to
    the same constant: bilinear/nearest resizes, H/W transposes, unpadded average
    pools, and a bias-free ``linear`` over a spatial dim whose rows each sum to 1
    (the deployable graph's adaptive pooling and odd-ratio resizes).
    """
    if node.op != "call_function" or not isinstance(node.args[0], torch.fx.Node):
        return False
    val = node.meta.get("val")
    if val is None or val.dim() != 4 or int(val.shape[1]) != channels:
        return False
    if node.target in (_aten("upsample_bilinear2d", "vec"), _aten("upsample_nearest2d", "vec"),
                       _aten("adaptive_avg_pool2d")):
        return True
    if node.target == _aten("transpose", "int"):
        return {int(d) % 4 for d in node.args[1:3]} <= {2, 3}
    if node.target == _aten("avg_pool2d"):
        padding = _node_arg(node, 3, "padding", 0)
        return all(int(p) == 0 for p in (padding if isinstance(padding, (list, tuple)) else [padding]))
    if node.target == _aten("linear"):
        weight = _constant_value(gm, node.args[1])
        bias = _node_arg(node, 2, "bias", None)
        return (bias is None and weight is not None and weight.dim() == 2
                and bool(torch.allclose(weight.detach().sum(dim=1), torch.ones(weight.shape[0]), atol=1e-6)))
    return False


def _fold_affine_into_conv(gm: torch.fx.GraphModule, max_gain: float | None) -> int:
    """Fold a per-channel affine (a depthwise 1x1 conv) into the conv that produces its input (exact).

    After :func:`_split_affine_after_cat`, each branch of ESPNetv2's pyramid pools
    (and a few other units) ends in its own BatchNorm affine, separated from the
    branch's conv only by resizes or pooling, which commute with it
    (:func:`_passes_affine_through`). XNNPACK runs a 1x1 depthwise conv with its
    3-tap int8 kernel in tiles of 32 channels, so on these 10-channel tensors it
    does ~10 times the useful work; folded, the affine costs nothing. Skipped when
    the conv's output has other readers, or when the affine's largest gain exceeds
    ``max_gain`` (such a layer stays a small float island, see
    :func:`_mark_float_islands`, instead of taking its producer into float).
    """
    conv2d = _aten("conv2d")
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != conv2d or node.meta.get("val") is None:
            continue
        channels = int(node.meta["val"].shape[1])
        if not _is_pointwise_depthwise(gm, node, channels):
            continue
        scale = _constant_value(gm, node.args[1]).detach().reshape(channels)
        if max_gain and float(scale.abs().max()) > max_gain:
            continue
        bias_arg = _node_arg(node, 2, "bias", None)
        shift = _constant_value(gm, bias_arg) if bias_arg is not None else None
        producer = node.args[0]
        while (isinstance(producer, torch.fx.Node) and len(producer.users) == 1
               and _passes_affine_through(gm, producer, channels)):
            producer = producer.args[0]
        if not (isinstance(producer, torch.fx.Node) and producer.op == "call_function"
                and producer.target == conv2d and len(producer.users) == 1):
            continue
        weight = _constant_value(gm, producer.args[1])
        old_bias_arg = _node_arg(producer, 2, "bias", None)
        old_bias = _constant_value(gm, old_bias_arg) if old_bias_arg is not None else None
        if weight is None or weight.shape[0] != channels or (old_bias_arg is not None and old_bias is None):
            continue
        new_weight = weight.detach().float() * scale.float().reshape(-1, *[1] * (weight.dim() - 1))
        new_bias = (old_bias.detach().float() if old_bias is not None else torch.zeros(channels)) * scale.float()
        if shift is not None:
            new_bias = new_bias + shift.detach().float()
        w_node = _new_constant(gm, "_affine_folded_weight_", new_weight, producer)
        b_node = _new_constant(gm, "_affine_folded_bias_", new_bias, producer)
        args = list(producer.args)
        args[1] = w_node
        if len(args) > 2:
            args[2] = b_node
        else:
            args.append(b_node)
        producer.args = tuple(args)
        producer.kwargs = {k: v for k, v in producer.kwargs.items() if k != "bias"}
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count


def _unshare_constants(gm: torch.fx.GraphModule) -> int:
    """Give every user of a shared constant (``get_attr``) its own node.

    A module applied several times (ESPNetv2's image-pyramid pooling conv) reads
    one weight node from several convs. The stock conv annotator treats the
    weight as part of the first conv's pattern and then skips every other conv
    that reads it, leaving them in float.
    """
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "get_attr" or len(node.users) < 2:
            continue
        for user in list(node.users)[1:]:
            with gm.graph.inserting_before(user):
                twin = gm.graph.get_attr(node.target)
            twin.meta = dict(node.meta)
            user.replace_input_with(node, twin)
            count += 1
    if count:
        gm.recompile()
    return count


#: PReLU slopes of tensors with fewer channels than this are stored tiled along the width
#: (see :func:`_decompose_prelu`).
PRELU_TILE_MAX_CHANNELS = 64


def _decompose_prelu(gm: torch.fx.GraphModule) -> int:
    """Rewrite ``prelu(x, a)`` with ops that have int8 XNNPACK kernels (exact in float).

    ``prelu(x) = x + (1 - a) * relu(-x)``, and where every slope ``a <= 1`` this
    is ``x + relu((a - 1) * x)``: a MUL whose ReLU the converter fuses into it,
    and an ADD. (With some ``a > 1``: ``x + (1 - a) * relu(-1 * x)``, one MUL more.)

    Why: litert-torch lowers PReLU after PT2E into RELU/MUL/MUL/SUB, which stay
    float between one DEQUANTIZE and the next QUANTIZE; and a standalone int8
    RELU, though TFLite runs it, is float-only in the XNNPACK delegate, so each
    one splits the delegated graph (an int8 model with them ran 2.5x slower
    than fp32). A ReLU fused into the MUL is an output clamp, which XNNPACK runs.

    Where a 4-D tensor has fewer than :data:`PRELU_TILE_MAX_CHANNELS` channels, the
    per-channel slope constant is stored repeated along the width ([1, C, 1, W],
    NHWC [1, 1, W, C]): XNNPACK calls its int8 MUL kernel once per contiguous run of
    the broadcast operand, so [1, 1, 1, C] means one call per pixel for a handful of
    channels (the slowest kernel in ESPNetv2's int8 profile), and [1, 1, W, C] one per
    image row. It costs W*C bytes per PReLU (44 KB for ESPNetv2) and saves ~1 ms of 21.
    """
    prelu, mul, add, relu = _aten("prelu"), _aten("mul", "Tensor"), _aten("add", "Tensor"), _aten("relu")
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != prelu:
            continue
        x, weight = node.args[:2]
        alpha = _constant_value(gm, weight)
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if alpha is None or val is None:
            continue
        shape = [1] * val.dim()
        if val.dim() >= 2 and alpha.numel() > 1:
            shape[1] = alpha.numel()
        alpha = alpha.detach().float().reshape(shape)
        if val.dim() == 4 and 1 < alpha.numel() < PRELU_TILE_MAX_CHANNELS:
            alpha = alpha.expand(1, alpha.numel(), 1, int(val.shape[3])).contiguous()
        created: list[tuple[str, torch.fx.Node]] = []
        with gm.graph.inserting_before(node):
            if bool((alpha <= 1).all()):
                slope = _new_constant(gm, "_prelu_slope_", alpha - 1.0, node)
                scaled = gm.graph.call_function(mul, (x, slope))
                rectified = gm.graph.call_function(relu, (scaled,))
                created += [("scale", scaled), ("relu", rectified)]
                tail = rectified
            else:
                minus_one = _new_constant(gm, "_prelu_minus_one_", torch.full(shape[:1] + [1] * (len(shape) - 1),
                                                                             -1.0), node)
                flipped = gm.graph.call_function(mul, (x, minus_one))
                rectified = gm.graph.call_function(relu, (flipped,))
                factor = _new_constant(gm, "_prelu_factor_", 1.0 - alpha, node)
                tail = gm.graph.call_function(mul, (rectified, factor))
                created += [("scale", flipped), ("relu", rectified), ("mul", tail)]
            out = gm.graph.call_function(add, (x, tail))
            created.append(("add", out))
        for role, n in created:
            n.meta["val"] = val
            n.meta[_PRELU_ROLE] = role
            if "nn_module_stack" in node.meta:
                n.meta["nn_module_stack"] = node.meta["nn_module_stack"]
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count


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

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            cfg = self.global_config
            if cfg is None or cfg.input_activation is None:
                raise ConversionError("the TFLite int8 path supports static quantization configs only")
            self.float_islands = _mark_float_islands(model, self.max_weight_gain) \
                if self.max_weight_gain and not cfg.is_qat else {}
            # Before the stock patterns: the stock conv+relu pattern would otherwise swallow
            # the conv output that the decomposed PReLU also reads.
            if cfg.is_qat:
                self._annotate_conv_bn_qat(model, cfg)
            self._annotate_prelu_parts(model, cfg)
            self._annotate_binary_arith(model, cfg)
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
                  max_weight_gain: float | None = DEFAULT_MAX_WEIGHT_GAIN) -> Any:
    """The PT2E quantizer for TFLite int8 (static, int8 activations, symmetric int8 weights).

    Use the same object for ``prepare_qat_pt2e`` (``qat=True``) when fine-tuning
    a model that will be converted with ``req.qat_module``. ``max_weight_gain``
    applies to post-training quantization only (QAT trains every conv in int8).
    """
    cls = _quantizer_class()  # raises MissingBackendError without litert-torch
    from litert_torch.quantize import pt2e_quantizer as lq

    quantizer = cls().set_global(lq.get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=qat))
    quantizer.max_weight_gain = max_weight_gain
    quantizer.float_islands = {}
    return quantizer


def _mark_float_islands(gm: torch.fx.GraphModule, max_gain: float) -> dict[str, dict[str, Any]]:
    """Leave unquantized each conv whose weight gain exceeds ``max_gain``, and the PReLUs around it.

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
        if gain <= max_gain:
            continue
        found[node.name] = {"module": module_path(node) or node.name, "gain": round(gain, 1)}
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


# --------------------------------------------------------------------------- #
# Float I/O for integer models
# --------------------------------------------------------------------------- #


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _unpack(model_bytes: bytes) -> Any:
    """The object-API model of a flatbuffer, ready to be packed again by :func:`_pack`.

    Large files (fp16 ones here) keep constants after the flatbuffer, referenced by
    offset; packing drops that tail, so such buffers are read in as inline data.
    """
    model = _schema().ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    for buffer in model.buffers or []:
        if getattr(buffer, "offset", 0) > 1:
            buffer.data = np.frombuffer(model_bytes, dtype=np.uint8, count=buffer.size, offset=buffer.offset)
            buffer.offset, buffer.size = 0, 0
    return model


@functools.cache
def _builtin_names() -> dict[int, str]:
    return {v: k for k, v in vars(_schema().BuiltinOperator).items() if not k.startswith("_")}


def _op_name(model: Any, op: Any, default: str = "CUSTOM") -> str:
    """The builtin name of ``op`` (``default`` for a custom op)."""
    code = model.operatorCodes[op.opcodeIndex]
    return _builtin_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), default)


def _opcode_index(model: Any, builtin: int, version: int) -> int:
    schema = _schema()
    for i, code in enumerate(model.operatorCodes or []):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes = [*(model.operatorCodes or []), code]
    return len(model.operatorCodes) - 1


def _float_twin(model: Any, tensor: Any, name: str) -> Any:
    """A new float32 tensor with the shape of ``tensor`` and an empty buffer of its own."""
    schema = _schema()
    buffer = schema.BufferT()
    model.buffers.append(buffer)
    twin = schema.TensorT()
    twin.shape = copy.copy(tensor.shape)
    twin.shapeSignature = copy.copy(tensor.shapeSignature)
    twin.type = schema.TensorType.FLOAT32
    twin.buffer = len(model.buffers) - 1
    twin.name = name.encode() if isinstance(name, str) else name
    return twin


def _float_io(model_bytes: bytes) -> tuple[bytes, list[str]]:
    """Give a model with int8/uint8 inputs or outputs float32 ones, with (de)quantize ops inside.

    Returns the new flatbuffer and a list of what was changed (empty when the
    model already had float I/O, in which case the bytes are returned as is).
    """
    schema = _schema()
    integer = (schema.TensorType.INT8, schema.TensorType.UINT8)
    model = _unpack(model_bytes)
    changes: list[str] = []
    for sg_index, sub in enumerate(model.subgraphs):
        remap: dict[int, int] = {}
        new_first, new_last = [], []
        sub.inputs, sub.outputs = _seq(sub.inputs), _seq(sub.outputs)
        for pos, t_index in enumerate(list(sub.inputs)):
            tensor = sub.tensors[t_index]
            if tensor.type not in integer:
                continue
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            tensor.name = f"{name}_quantized".encode()
            twin = _float_twin(model, tensor, name)
            sub.tensors.append(twin)
            op = schema.OperatorT()
            op.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.QUANTIZE, 2)
            op.inputs, op.outputs = [len(sub.tensors) - 1], [t_index]
            new_first.append(op)
            sub.inputs[pos] = len(sub.tensors) - 1
            remap[t_index] = len(sub.tensors) - 1
            changes.append(f"input {name}: float32 -> QUANTIZE")
        for pos, t_index in enumerate(list(sub.outputs)):
            tensor = sub.tensors[t_index]
            if tensor.type not in integer:
                continue
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            tensor.name = f"{name}_quantized".encode()
            twin = _float_twin(model, tensor, name)
            sub.tensors.append(twin)
            op = schema.OperatorT()
            op.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.DEQUANTIZE, 2)
            op.inputs, op.outputs = [t_index], [len(sub.tensors) - 1]
            new_last.append(op)
            sub.outputs[pos] = len(sub.tensors) - 1
            remap[t_index] = len(sub.tensors) - 1
            changes.append(f"output {name}: DEQUANTIZE -> float32")
        if not remap:
            continue
        sub.operators = [*new_first, *(sub.operators or []), *new_last]
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex != sg_index:
                continue
            for tmap in [*(sig.inputs or []), *(sig.outputs or [])]:
                tmap.tensorIndex = remap.get(tmap.tensorIndex, tmap.tensorIndex)
    if not changes:
        return model_bytes, changes
    return _pack(model, len(model_bytes) + 4096, share=False), changes


def _native_prelu(model_bytes: bytes) -> tuple[bytes, int]:
    """Give a float model one PRELU op per PReLU instead of litert-torch's four (bit-exact).

    litert-torch lowers ``prelu(x, a)`` as ``relu(x) - a * relu(-1 * x)``: RELU, MUL (-1,
    fused ReLU), MUL (a), SUB, four passes over the tensor where XNNPACK's PRELU kernel
    makes one. Both compute ``x`` for ``x >= 0`` and ``a * x`` below, with the same
    rounding. For ESPNetv2 fp32 (64 PReLUs): 28.96 -> 25.47 ms in one run. Returns the
    new flatbuffer and the number of PReLUs rewritten (bytes unchanged when 0).
    """
    schema = _schema()
    model = _unpack(model_bytes)

    def kind(op: Any) -> str:
        return _op_name(model, op, "")

    def fused(op: Any) -> int:
        options = op.builtinOptions
        return getattr(options, "fusedActivationFunction", schema.ActivationFunctionType.NONE)

    def is_minus_one(sub: Any, index: int) -> bool:
        tensor = sub.tensors[index]
        data = model.buffers[tensor.buffer].data
        return (tensor.type == schema.TensorType.FLOAT32 and data is not None and len(data) == 4
                and float(np.frombuffer(bytes(data), dtype=np.float32)[0]) == -1.0)

    count = 0
    for sub in model.subgraphs:
        ops = list(sub.operators or [])
        outputs = set(_seq(sub.outputs))
        producer = {t: i for i, op in enumerate(ops) for t in _seq(op.outputs)}
        readers: Counter = Counter(t for op in ops for t in _seq(op.inputs))
        dropped: set[int] = set()
        for op in ops:
            if kind(op) != "SUB" or fused(op) != schema.ActivationFunctionType.NONE:
                continue
            rectified, scaled = _seq(op.inputs)
            relu_i, mul_i = producer.get(rectified), producer.get(scaled)
            if relu_i is None or mul_i is None or kind(ops[relu_i]) != "RELU" or kind(ops[mul_i]) != "MUL":
                continue
            mul = ops[mul_i]
            m_in = _seq(mul.inputs)
            flip_i = next((producer.get(t) for t in m_in if producer.get(t) is not None
                           and kind(ops[producer[t]]) == "MUL"), None)
            if flip_i is None or fused(mul) != schema.ActivationFunctionType.NONE:
                continue
            flipped = _seq(ops[flip_i].outputs)[0]
            alpha = next(t for t in m_in if t != flipped)
            flip_in = _seq(ops[flip_i].inputs)
            x = _seq(ops[relu_i].inputs)[0]
            if (fused(ops[flip_i]) != schema.ActivationFunctionType.RELU or x not in flip_in
                    or not is_minus_one(sub, next(t for t in flip_in if t != x))):
                continue
            if any(readers[t] != 1 or t in outputs for t in (rectified, scaled, flipped)):
                continue
            op.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.PRELU, 1)
            op.builtinOptionsType, op.builtinOptions = 0, None
            op.inputs = np.array([x, alpha], dtype=np.int32)
            dropped |= {relu_i, mul_i, flip_i}
            count += 1
        sub.operators = [op for i, op in enumerate(ops) if i not in dropped]
    if not count:
        return model_bytes, 0
    return _pack(model, len(model_bytes), share=False), count


@functools.cache
def _sharing_builder_class() -> type:
    """A flatbuffers Builder that stores each distinct quantization vector once."""
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        """Write each distinct int64 / float32 vector once and point every user at it.

        In the TFLite schema those are the quantization parameters (zero points,
        scales, min/max). Per-channel int8 weights and their int32 biases carry a
        float32 scale and an int64 zero point per output channel, nearly all zero
        points being 0: for ESPNetv2 that is ~37,000 entries, 450 KB of a 1.5 MB
        file. A flatbuffer table refers to a vector by offset, so tables may share
        one; readers (and the flatbuffers verifier) see the same values.
        """

        def __init__(self, initial_size: int) -> None:
            super().__init__(initial_size)
            self.shared: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x: np.ndarray) -> int:
            if x.dtype not in (np.int64, np.float32):
                return super().CreateNumpyVector(x)
            key = (x.dtype.str, x.tobytes())
            if key not in self.shared:
                self.shared[key] = super().CreateNumpyVector(x)
            return self.shared[key]

    return SharingBuilder


def _pack(model: Any, size_hint: int, share: bool = True) -> bytes:
    """Serialize an object-API TFLite model, sharing identical quantization vectors if ``share``."""
    import flatbuffers

    builder = _sharing_builder_class()(size_hint) if share else flatbuffers.Builder(size_hint)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def share_quantization_vectors(model_bytes: bytes) -> bytes:
    """The same model with each distinct quantization vector stored once (same values, smaller file).

    Returns ``model_bytes`` unchanged when sharing would not make it smaller
    (float models have no quantization vectors).
    """
    model = _unpack(model_bytes)
    packed = _pack(model, len(model_bytes))
    return packed if len(packed) < len(model_bytes) else model_bytes


# --------------------------------------------------------------------------- #
# Inspection
# --------------------------------------------------------------------------- #


def _seq(values: Any) -> list[int]:
    """Flatbuffer object-API vectors are numpy arrays or None."""
    return [] if values is None else [int(v) for v in values]


def inspect_tflite(model: bytes | str | Path) -> dict[str, Any]:
    """Op histogram and, for quantized models, the ops that still compute in float.

    ``float_ops`` counts operators (other than QUANTIZE/DEQUANTIZE) with a
    float32 activation input or output; a full-integer model has none.
    """
    schema = _schema()
    data = Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model)
    m = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    ops: Counter = Counter()
    float_ops: Counter = Counter()
    for sub in m.subgraphs:
        const = {i for i, t in enumerate(sub.tensors) if t.buffer and m.buffers[t.buffer].data is not None
                 and len(m.buffers[t.buffer].data)}
        for op in sub.operators or []:
            name = _op_name(m, op)
            ops[name] += 1
            if name in _BOUNDARY_OPS:
                continue
            acts = [int(i) for i in [*_seq(op.inputs), *_seq(op.outputs)] if i >= 0 and i not in const]
            if any(sub.tensors[i].type == schema.TensorType.FLOAT32 for i in acts):
                float_ops[name] += 1
    return {"ops": dict(sorted(ops.items())), "float_ops": dict(sorted(float_ops.items()))}


# --------------------------------------------------------------------------- #
# Conversion
# --------------------------------------------------------------------------- #


def _calibration_batches(tensors: Sequence[torch.Tensor], example: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield calibration inputs one by one, in the module's layout and the example's shape."""
    for i, t in enumerate(tensors):
        t = torch.as_tensor(t)
        if t.dim() == example.dim() - 1:
            t = t.unsqueeze(0)
        if t.dim() != example.dim() or tuple(t.shape[1:]) != tuple(example.shape[1:]):
            raise ConversionError(
                f"calibration tensor {i} has shape {tuple(t.shape)}; expected {tuple(example.shape)} "
                "(the deployable module's fixed input shape)")
        yield from t.to(example.dtype).split(1)


def _to_layout(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous() if nhwc else x


def _quantize_pt2e(req: ConversionRequest, nhwc: bool) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A PT2E-converted module (quantize/dequantize nodes) ready for litert-torch, with its quantizer."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    info: dict[str, Any] = {}
    if req.qat_module is not None:
        gm = copy.deepcopy(req.qat_module)
        move_exported_model_to_eval(gm)
        gm = convert_pt2e(gm, fold_quantize=False)
        info["quantization"] = "pt2e-qat"
        # The QAT graph takes NCHW; the layout permute stays outside it (float, before QUANTIZE).
        return (_NHWCInput(gm) if nhwc else gm), get_quantizer(qat=True), info

    gain = (req.options or {}).get("int8_max_weight_gain", DEFAULT_MAX_WEIGHT_GAIN)
    quantizer = get_quantizer(max_weight_gain=None if gain is None else float(gain))
    source = _NHWCInput(req.module) if nhwc else req.module
    example = _to_layout(req.example_input, nhwc)
    try:
        gm = torch.export.export(_mark_eval(source), (example,), strict=False).module()
    except Exception as exc:
        raise ConversionError(f"torch.export failed before int8 quantization: {exc}") from exc
    gm = prepare_pt2e(gm, quantizer)
    n = 0
    with torch.no_grad():
        for sample in _calibration_batches(req.calibration or [], req.example_input):
            gm(_to_layout(sample, nhwc))
            n += 1
    if n == 0:
        raise ConversionError("int8 calibration got no tensors; pass `--calibration DIR` with images")
    gm = convert_pt2e(gm, fold_quantize=False)
    move_exported_model_to_eval(gm)
    info.update(quantization="pt2e-ptq", calibration_samples=n)
    if quantizer.float_islands:
        info["float_convs"] = quantizer.float_islands
    return gm, quantizer, info


def convert(req: ConversionRequest) -> ConversionResult:
    """Convert ``req.module`` to one ``.tflite`` file at ``req.out_path`` (see the module docstring)."""
    if req.precision not in PRECISIONS:
        raise ConversionError(
            f"unknown precision {req.precision!r} for {TARGET}; valid: {', '.join(PRECISIONS)}")
    if req.precision == "int8" and not req.calibration and req.qat_module is None:
        raise ConversionError(
            "int8 for tflite needs calibration data or a QAT model: pass `--calibration DIR` "
            "(a folder of representative images) or `--qat-checkpoint PATH`")
    litert_torch = _require_backend()

    opts = dict(req.options or {})
    nhwc = bool(opts.get("nhwc", False))
    sig_name = str(opts.get("signature", DEFAULT_SIGNATURE))
    in_name = str(opts.get("input_name", DEFAULT_INPUT_NAME))
    out_name = str(opts.get("output_name", DEFAULT_OUTPUT_NAME))
    verbose = bool(opts.get("verbose", False))
    if not in_name.isidentifier():
        raise ConversionError(f"input_name must be a Python identifier, got {in_name!r}")

    start = time.perf_counter()
    example = _to_layout(req.example_input.detach(), nhwc)
    report: dict[str, Any] = {
        "signature": sig_name,
        "input": {"name": in_name, "shape": list(example.shape), "dtype": "float32",
                  "layout": "NHWC" if nhwc else "NCHW"},
        "output_name": out_name,
    }
    ignored = sorted(set(opts) - set(OPTIONS))
    if ignored:
        report["ignored_options"] = ignored

    quant_config = None
    float_convs: dict[str, Any] = {}
    with _quiet(verbose):
        if req.precision == "int8":
            inner, quantizer, info = _quantize_pt2e(req, nhwc)
            float_convs = info.get("float_convs", {})
            report.update(info)
            from litert_torch.quantize.quant_config import QuantConfig

            quant_config = QuantConfig(pt2e_quantizer=quantizer)
        else:
            inner = _NHWCInput(req.module) if nhwc else req.module
            if req.precision == "fp16":
                from litert_torch.generative.quantize import quant_recipes

                quant_config = quant_recipes.full_fp16_recipe()
        named = _mark_eval(_NamedIO(inner, out_name))
        try:
            with _strict_qdq(bool(float_convs)):
                edge = litert_torch.signature(sig_name, named, sample_kwargs={in_name: example}).convert(
                    quant_config=quant_config)
            data = bytes(edge.model_content())
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"litert-torch failed to convert ({req.precision}): {exc}") from exc

    data, io_changes = _float_io(data)
    if io_changes:
        report["float_io"] = io_changes
    if req.precision != "int8" and opts.get("delegate") != "gpu":
        # The GPU artifact keeps the converter's lowering: the LiteRT GPU accelerator does not
        # take a PRELU op (lavapipe: "Some ops are not accelerated").
        data, report["native_prelu"] = _native_prelu(data)
    if req.precision == "int8":
        before = len(data)
        data = share_quantization_vectors(data)
        report["shared_quantization_bytes"] = before - len(data)
    report.update(inspect_tflite(data))
    with atomic_output(Path(req.out_path)) as tmp:
        tmp.write_bytes(data)
    report["bytes"] = len(data)
    return ConversionResult(
        path=Path(req.out_path),
        target=TARGET,
        precision=req.precision,
        # Neither int8 nor a native PRELU runs on the LiteRT GPU accelerator: the GPU artifact
        # (delegate "gpu") is the one for GPUs.
        compute_units=["cpu"] if req.precision == "int8" or report.get("native_prelu") else ["cpu", "gpu"],
        executable_here=_runtime_available(),
        tool_versions=tool_versions(),
        seconds=time.perf_counter() - start,
        report=report,
        not_executable_reason=None if _runtime_available() else "ai-edge-litert is not installed",
    )


def _runtime_available() -> bool:
    try:
        _require_runtime()
    except MissingBackendError:
        return False
    return True


# --------------------------------------------------------------------------- #
# Execution
# --------------------------------------------------------------------------- #


def _quantize_array(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    q = np.round(x / scale) + zero
    return np.clip(q, info.min, info.max).astype(detail["dtype"])


def _dequantize_array(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def run_tflite(path: str | Path, input: np.ndarray, *, accelerator: str = "cpu",
               signature: str | None = None, num_threads: int | None = None) -> np.ndarray:
    """Run a single-input, single-output ``.tflite`` model and return its output as float32.

    ``input`` is a float array in the artifact's input layout and shape. For a
    model with integer I/O it is quantized with the input tensor's scale and
    zero point, and the integer output is dequantized, so callers always see
    float. ``accelerator``: ``cpu`` (default kernels with the XNNPACK delegate),
    ``cpu_reference`` (TFLite's built-in kernels, no delegate) or ``gpu``
    (LiteRT CompiledModel on the GPU accelerator; fails where no GPU runtime is
    available).
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {accelerator!r}; valid: {', '.join(ACCELERATORS)}")
    x = np.asarray(input)
    if accelerator == "gpu":
        return _run_compiled(Path(path), x, signature)
    interp_mod = _require_runtime()
    resolver = (interp_mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                if accelerator == "cpu_reference" else interp_mod.OpResolverType.AUTO)
    interp = interp_mod.Interpreter(model_path=str(path), num_threads=num_threads,
                                    experimental_op_resolver_type=resolver)
    signatures = interp.get_signature_list()
    key = signature or (next(iter(signatures)) if signatures else None)
    if key is None or key not in signatures:
        raise ValueError(f"signature {signature!r} not in {path}; available: {sorted(signatures)}")
    runner = interp.get_signature_runner(key)
    (in_name, in_detail), = runner.get_input_details().items()
    if tuple(x.shape) != tuple(in_detail["shape"]):
        raise ValueError(f"input shape {tuple(x.shape)} does not match the model's "
                         f"{tuple(int(d) for d in in_detail['shape'])}")
    if np.issubdtype(in_detail["dtype"], np.integer) and not np.issubdtype(x.dtype, np.integer):
        x = _quantize_array(x.astype(np.float32), in_detail)
    else:
        x = x.astype(in_detail["dtype"], copy=False)
    outputs = runner(**{in_name: x})
    out_details = runner.get_output_details()
    (out_name, y), = outputs.items()
    detail = out_details[out_name]
    if np.issubdtype(detail["dtype"], np.integer):
        return _dequantize_array(y, detail)
    return np.asarray(y, dtype=np.float32)


def _run_compiled(path: Path, x: np.ndarray, signature: str | None) -> np.ndarray:
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    except ImportError as exc:
        raise MissingBackendError(f"the LiteRT CompiledModel API is missing ({exc})") from exc
    try:
        model = CompiledModel.from_file(str(path), hardware_accel=HardwareAccelerator.GPU)
    except Exception as exc:
        raise RuntimeError(f"no usable LiteRT GPU accelerator here: {exc}") from exc
    signatures = model.get_signature_list()
    key = signature or next(iter(signatures))
    index = model.get_signature_index(key)
    inputs = model.create_input_buffers(index)
    outputs = model.create_output_buffers(index)
    inputs[0].write(np.ascontiguousarray(x, dtype=np.float32))
    model.run_by_index(index, inputs, outputs)
    details = model.get_output_tensor_details(key)
    (_, detail), = details.items()
    shape = tuple(detail["shape"])
    y = outputs[0].read(int(np.prod(shape)), np.float32)
    return np.asarray(y, dtype=np.float32).reshape(shape)
