"""Exact FX graph rewrites run before int8 annotation: BatchNorm as an affine, affines split and folded into
convs, PReLU decomposed, constants unshared; each keeps the function and gives every op an int8 XNNPACK kernel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

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


