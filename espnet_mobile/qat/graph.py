"""The QAT graph: a deployable model captured in training mode and prepared with a backend's quantizer.

``prepare_qat`` turns a reference model into the graph module that
quantization-aware training fine-tunes and that ``convert --qat-checkpoint``
lowers without calibration:

1. :func:`espnet_mobile.deploy.make_deployable` at the training size, with its
   baked-in normalization frozen;
2. ``torch.export`` in training mode with a dynamic batch dimension, so
   BatchNorm stays a training-mode ``aten.batch_norm`` (the form the PT2E
   conv-BN QAT rewrite matches, and the form LiteRT's quantizer leaves alone);
3. ``prepare_qat_pt2e`` with the backend's own quantizer, the very objects the
   converters use: :func:`converters.executorch.xnnpack_quantizer`,
   :func:`converters.coreml.coreml_quantizer`, :func:`converters.tflite.get_quantizer`;
4. BatchNorm eps restored (see below).

BatchNorm eps. The PT2E conv-BN QAT rewrite replaces every conv -> BatchNorm
pair with a pattern whose eps is a literal 1e-5 (in ``sqrt(var + eps)`` and in
the BatchNorm), and torchao's train/eval switch rebuilds BatchNorm nodes the
same way. ESPNet (v1) checkpoints use eps 1e-3, so the rewrite silently changes
the network. Here the eps of each BatchNorm is read before preparation and
written back afterwards, and train/eval is switched by flipping only the
``training`` flag of the BatchNorm nodes (:func:`set_batchnorm_training`), which
keeps eps and momentum. For conversion, ``convert_pt2e`` folds BatchNorm into
the convolution with its own literal 1e-5, so :func:`for_conversion` moves the
difference into the running variance (``var + eps - 1e-5``): in inference mode
that is the same function, and the fold then produces the trained weights.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import converters
from espnet_mobile.deploy import equalize
from espnet_mobile.errors import UserError
from espnet_mobile.qat import range_search


def backends() -> tuple[str, ...]:
    """The ``qat --backend`` names: one per registered backend that has a PT2E quantizer."""
    return converters.qat_names()


def _backend(name: str):
    try:
        return converters.for_qat(name)
    except converters.UnknownBackendError as err:
        raise UserError(str(err)) from None


def convert_target(backend: str) -> str:
    """The ``convert --target`` a backend's QAT checkpoint converts with."""
    return _backend(backend).name


def artifact_suffix(backend: str) -> str:
    return "." + _backend(backend).extension


def artifact_runtime(backend: str) -> tuple[str, str] | None:
    """(target, delegate) of the int8 artifact where a runtime here executes it, else None."""
    b = _backend(backend)
    return (b.name, b.default_delegate) if any(spec.primary for spec in b.runtimes()) else None


_EXPORTED_TRAINING_ATTR = "_exported_training"  # torchao's flag for move_exported_model_to_eval/train


def _aten_batch_norm() -> Any:
    return torch.ops.aten.batch_norm.default


def backend_quantizer(backend: str, *, qat: bool) -> Any:
    """The converter's own PT2E quantizer for ``backend`` (QAT or PTQ flavour)."""
    return _backend(backend).quantizer(qat)


# --------------------------------------------------------------------------- capture


def trainable_deployable(model: nn.Module, entry: Any, height: int, width: int) -> nn.Module:
    """The deployable graph at ``height`` x ``width`` that takes any batch size, normalization frozen."""
    from espnet_mobile.deploy import make_deployable

    try:
        deployable = make_deployable(model, entry, height=height, width=width)
    except ValueError as err:
        raise UserError(f"--input-size {height}x{width}: {err}") from None
    for p in deployable.normalize.parameters():
        p.requires_grad_(False)
    return deployable


def export_for_training(deployable: nn.Module, height: int, width: int) -> torch.fx.GraphModule:
    """``torch.export`` in training mode (BatchNorm on batch statistics) with a dynamic batch."""
    deployable = copy.deepcopy(deployable).train()
    example = torch.rand(2, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(deployable, (example,), dynamic_shapes={"image": {0: batch}}, strict=False)
    return program.module()


# --------------------------------------------------------------------------- BatchNorm


def batchnorm_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The ``aten.batch_norm`` nodes; any other BatchNorm form is unexpected here and an error."""
    nodes = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == _aten_batch_norm():
            nodes.append(node)
        elif "batch_norm" in str(node.target) and "backward" not in str(node.target):
            raise RuntimeError(f"unexpected BatchNorm form {node.target} in the QAT graph ({node.name})")
    return nodes


def _var_key(node: torch.fx.Node) -> str:
    var = node.args[4]
    if not (isinstance(var, torch.fx.Node) and var.op == "get_attr"):
        raise RuntimeError(f"BatchNorm {node.name} has no running variance buffer")
    return str(var.target)


def _eps_of(node: torch.fx.Node) -> float:
    return float(node.args[7]) if len(node.args) > 7 else float(node.kwargs.get("eps", 1e-5))


def batchnorm_eps(gm: torch.fx.GraphModule) -> dict[str, float]:
    """eps of every BatchNorm, keyed by the name of its running-variance buffer."""
    return {_var_key(n): _eps_of(n) for n in batchnorm_nodes(gm)}


def _set_arg(node: torch.fx.Node, index: int, value: Any) -> None:
    args = list(node.args)
    args[index] = value
    node.args = tuple(args)


def _std_eps_nodes(gm: torch.fx.GraphModule, bn: torch.fx.Node) -> list[torch.fx.Node]:
    """The ``running_var + eps`` additions of the QAT pattern feeding this BatchNorm's weight scaling."""
    var = bn.args[4]
    return [u for u in var.users
            if u.op == "call_function" and u.target == torch.ops.aten.add.Tensor
            and u.args[0] is var and isinstance(u.args[1], float)]


def set_batchnorm_eps(gm: torch.fx.GraphModule, eps_by_var: dict[str, float]) -> int:
    """Write eps back into every BatchNorm and its weight-scaling ``sqrt(var + eps)``; count the changes."""
    changed = 0
    for bn in batchnorm_nodes(gm):
        key = _var_key(bn)
        if key not in eps_by_var:
            raise RuntimeError(f"no recorded eps for BatchNorm on {key}")
        eps = float(eps_by_var[key])
        if _eps_of(bn) != eps:
            changed += 1
        _set_arg(bn, 7, eps)
        for add in _std_eps_nodes(gm, bn):
            _set_arg(add, 1, eps)
    gm.recompile()
    return changed


def std_eps_values(gm: torch.fx.GraphModule) -> dict[str, list[float]]:
    """For tests and reports: per BatchNorm, its eps and the eps of its weight-scaling additions."""
    return {_var_key(bn): [_eps_of(bn), *(float(a.args[1]) for a in _std_eps_nodes(gm, bn))]
            for bn in batchnorm_nodes(gm)}


def set_batchnorm_training(gm: torch.fx.GraphModule, training: bool) -> None:
    """Batch statistics (``True``) or frozen running statistics (``False``), eps and momentum kept."""
    for bn in batchnorm_nodes(gm):
        _set_arg(bn, 5, bool(training))
    setattr(gm, _EXPORTED_TRAINING_ATTR, bool(training))
    gm.recompile()


def batchnorm_training(gm: torch.fx.GraphModule) -> bool:
    nodes = batchnorm_nodes(gm)
    return bool(nodes[0].args[5]) if nodes else False


# --------------------------------------------------------------------------- fake quantization


def fake_quant_modules(gm: nn.Module) -> Iterator[nn.Module]:
    from torchao.quantization.pt2e import FakeQuantizeBase

    for m in gm.modules():
        if isinstance(m, FakeQuantizeBase):
            yield m


def set_observers(gm: nn.Module, enabled: bool) -> None:
    for m in fake_quant_modules(gm):
        m.enable_observer(enabled)


def set_fake_quant(gm: nn.Module, enabled: bool) -> None:
    for m in fake_quant_modules(gm):
        m.enable_fake_quant(enabled)


def unfuse_fake_quant(gm: nn.Module) -> int:
    """Swap each ``FusedMovingAvgObsFakeQuantize`` for a plain ``FakeQuantize`` around the same observer.

    XNNPACK's and LiteRT's QAT configs use the fused module, whose ATen kernel
    recomputes scale and zero point from the running range on every call, even
    with its observer off, and treats "symmetric" as "keep zero exact": a
    one-signed tensor (a ReLU output; a per-channel weight whose channel has one
    value, like a BatchNorm turned depthwise conv) gets an affine range with the
    zero point at the end of the integer range. ``convert_pt2e`` asks the
    observer instead, which is truly symmetric, so the fused module trains a
    different quantization from the one conversion writes (LiteRT int8 argmax
    agreed on ~80% of pixels with its own fake-quant model on ESPNet). The plain
    module takes its qparams from the observer and keeps them frozen when
    observation stops; state-dict keys are the same. Returns how many were swapped.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize

    replacement: dict[int, nn.Module] = {}
    # Shared observers are one module under several attribute names: swap every alias.
    for name, module in list(gm.named_modules(remove_duplicate=False)):
        if type(module) is not FusedMovingAvgObsFakeQuantize:
            continue
        plain = replacement.get(id(module))
        if plain is None:
            observer = module.activation_post_process
            plain = FakeQuantize(observer=lambda _obs=observer, **_kw: _obs)
            with torch.no_grad():
                plain.scale.resize_(module.scale.shape).copy_(module.scale)
                plain.zero_point.resize_(module.zero_point.shape).copy_(
                    module.zero_point.to(plain.zero_point.dtype))
                plain.fake_quant_enabled.copy_(module.fake_quant_enabled)
                plain.observer_enabled.copy_(module.observer_enabled)
            replacement[id(module)] = plain
        parent_name, _, attr = name.rpartition(".")
        setattr(gm.get_submodule(parent_name) if parent_name else gm, attr, plain)
    swapped = len(replacement)
    return swapped


def _set_range(fq: nn.Module, low: torch.Tensor, high: torch.Tensor) -> None:
    """Give a fake-quantizer's observer the range [low, high] and the scale and zero point that follow."""
    obs = fq.activation_post_process
    with torch.no_grad():
        obs.min_val.resize_(low.shape).copy_(low)
        obs.max_val.resize_(high.shape).copy_(high)
        scale, zero_point = fq.calculate_qparams()
        fq.scale.resize_(scale.shape).copy_(scale)
        fq.zero_point.resize_(zero_point.shape).copy_(zero_point.to(fq.zero_point.dtype))


def _observe_with(gm: torch.fx.GraphModule, fakes: list[nn.Module], observers: list[nn.Module],
                  inputs: torch.Tensor) -> None:
    """Run ``inputs`` one by one, ``observers`` seeing what reaches ``fakes`` (whose own observers rest).

    The observers are fed by hooks rather than swapped into the fake-quantizers: a
    fake-quantizer with its observer on recomputes scale and zero point after every
    call, which for a histogram observer is a full range search per tensor per input
    (most of the 413 s LiteRT's QAT graph spent here), all overwritten at the end.
    """
    def feed(obs: nn.Module):
        return lambda _module, args: obs(args[0].detach())

    enabled = [int(fq.observer_enabled[0]) for fq in fakes]
    hooks = []
    try:
        for fq, obs in zip(fakes, observers, strict=True):
            fq.disable_observer()
            hooks.append(fq.register_forward_pre_hook(feed(obs)))
        with torch.no_grad():
            for x in inputs:
                gm(x.unsqueeze(0))
    finally:
        for hook in hooks:
            hook.remove()
        for fq, on in zip(fakes, enabled, strict=True):
            fq.enable_observer(bool(on))


def calibrate_activation_ranges(gm: torch.fx.GraphModule, inputs: torch.Tensor) -> int:
    """Start QAT from the activation ranges post-training quantization would choose.

    QAT's activation observers keep a moving average of each batch's min and
    max, which a few outliers stretch: measured on ESPNetv2 s=0.5, the
    fake-quant model scored 61 mIoU against the teacher after 5 steps with no
    weight change, where the PTQ artifact scored 78. Here two passes over
    ``inputs`` (BatchNorm on running statistics, fake quantization off) find
    each per-tensor activation's range: plain min/max first, then a histogram
    over that fixed range whose search minimizes the int8 rounding error (what
    the PTQ quantizers do; :mod:`espnet_mobile.qat.range_search` computes it
    faster). Fixing the range first keeps the histogram from
    being re-binned batch after batch, which takes minutes when activations
    span many decades. The moving-average observers then start from the
    searched range; a range that is not finite keeps plain min/max. Weight
    observers are left alone. Returns how many activation ranges were set.
    """
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

    fakes, seen = [], set()
    for fq in fake_quant_modules(gm):
        obs = fq.activation_post_process
        if id(obs) not in seen and type(obs) is MovingAverageMinMaxObserver:
            seen.add(id(obs))
            fakes.append(fq)
    if not fakes:
        return 0

    def like(cls: Any, obs: nn.Module) -> nn.Module:
        return cls(dtype=obs.dtype, qscheme=obs.qscheme, quant_min=obs.quant_min, quant_max=obs.quant_max,
                   eps=float(obs.eps))

    state = quant_state(gm)
    bn_training = batchnorm_training(gm)
    set_fake_quant(gm, False)
    set_observers(gm, True)
    set_batchnorm_training(gm, False)
    try:
        plain = [like(MinMaxObserver, fq.activation_post_process) for fq in fakes]
        _observe_with(gm, fakes, plain, inputs)
        finite = [bool(torch.isfinite(p.min_val) and torch.isfinite(p.max_val) and p.max_val > p.min_val)
                  for p in plain]
        hists = [like(HistogramObserver, fq.activation_post_process) for fq in fakes]
        for hist, p, ok in zip(hists, plain, finite, strict=True):
            if ok:  # a fixed range: every batch is added to the same bins
                hist.min_val.resize_(p.min_val.shape).copy_(p.min_val)
                hist.max_val.resize_(p.max_val.shape).copy_(p.max_val)
                hist.histogram.resize_(hist.bins).zero_()
        _observe_with(gm, fakes, hists, inputs)
        for fq, p, hist, ok in zip(fakes, plain, hists, finite, strict=True):
            _set_range(fq, *(range_search.search_range(hist) if ok else (p.min_val, p.max_val)))
    finally:
        set_fake_quant(gm, state["fake_quant"])
        set_observers(gm, state["observers"])
        set_batchnorm_training(gm, bn_training)
    return len(fakes)


def sync_observers(gm: nn.Module) -> int:
    """Make every process's activation ranges those of the global batch (torchrun; call after a forward).

    Under DDP each process's observers see only its share of the batch, and the
    next forward broadcasts process 0's buffers, so the ranges would come from
    half the data. A moving-average min/max is ``old + c * (batch_min - old)``
    with ``old`` equal everywhere, so the minimum over processes of the updated
    ``min_val`` (the maximum of ``max_val``) is exactly what one process seeing
    the whole batch computes. Scale and zero point are recomputed to match.
    Returns how many observers were synchronized (0 when not distributed).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0
    modules, seen = [], set()
    for fq in fake_quant_modules(gm):
        obs = getattr(fq, "activation_post_process", None)
        if obs is None or id(obs) in seen or not int(fq.observer_enabled[0]):
            continue
        if not (hasattr(obs, "min_val") and hasattr(obs, "max_val")) or obs.min_val.numel() == 0:
            continue
        seen.add(id(obs))
        modules.append(fq)
    if not modules:
        return 0
    mins = torch.cat([fq.activation_post_process.min_val.detach().flatten() for fq in modules])
    maxs = torch.cat([fq.activation_post_process.max_val.detach().flatten() for fq in modules])
    torch.distributed.all_reduce(mins, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(maxs, op=torch.distributed.ReduceOp.MAX)
    at = 0
    for fq in modules:
        obs = fq.activation_post_process
        n = obs.min_val.numel()
        _set_range(fq, mins[at:at + n].view_as(obs.min_val), maxs[at:at + n].view_as(obs.max_val))
        at += n
    return len(modules)


def quant_state(gm: nn.Module) -> dict[str, bool]:
    """Whether observers / fake quantization are on (all modules agree after the helpers above)."""
    mods = list(fake_quant_modules(gm))
    return {"observers": bool(mods and all(int(m.observer_enabled[0]) for m in mods)),
            "fake_quant": bool(mods and all(int(m.fake_quant_enabled[0]) for m in mods))}


class inference_mode:  # used like torch.no_grad, hence the lower-case name
    """Context: BatchNorm on running statistics, observers off, fake quantization on or off; then restored."""

    def __init__(self, gm: torch.fx.GraphModule, *, fake_quant: bool = True) -> None:
        self.gm, self.fake_quant = gm, fake_quant

    def __enter__(self) -> torch.fx.GraphModule:
        self.saved_bn = batchnorm_training(self.gm)
        mods = list(fake_quant_modules(self.gm))
        self.saved = [(int(m.observer_enabled[0]), int(m.fake_quant_enabled[0])) for m in mods]
        set_batchnorm_training(self.gm, False)
        set_observers(self.gm, False)
        set_fake_quant(self.gm, self.fake_quant)
        return self.gm

    def __exit__(self, *exc: object) -> None:
        for m, (obs, fq) in zip(fake_quant_modules(self.gm), self.saved, strict=True):
            m.observer_enabled[0] = obs
            m.fake_quant_enabled[0] = fq
        set_batchnorm_training(self.gm, self.saved_bn)


# --------------------------------------------------------------------------- prepare


class _CallableModule(nn.Module):
    """A plain pattern function as a module, the form ``torch.export`` accepts."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@contextlib.contextmanager
def _litert_qat_patterns(backend: str) -> Iterator[None]:
    """Let LiteRT's QAT-only conv-BN annotators build their patterns.

    litert-torch 0.10 hands plain functions to torchao 0.18's
    ``_get_aten_graph_module_for_pattern``, which exports them with
    ``torch.export`` and so rejects anything but a module: every
    ``prepare_qat_pt2e`` with LiteRT's quantizer fails on its conv-BN(-ReLU)
    annotators. While preparing, the helper seen by litert-torch wraps a
    function in a module first; nothing else changes.
    """
    if backend != "tflite":
        yield
        return
    from litert_torch.quantize import pt2e_quantizer_utils as lqu

    original = lqu._get_aten_graph_module_for_pattern

    def wrapped(pattern: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(pattern, nn.Module):
            pattern = _CallableModule(pattern)
        return original(pattern, *args, **kwargs)

    lqu._get_aten_graph_module_for_pattern = wrapped
    try:
        yield
    finally:
        lqu._get_aten_graph_module_for_pattern = original


@dataclass
class PreparedQAT:
    """The prepared graph and what preparing it did."""

    module: torch.fx.GraphModule
    backend: str
    report: dict[str, Any] = field(default_factory=dict)


def fp32_nodes(captured: torch.fx.GraphModule, backend: str) -> list[str]:
    """Nodes the backend's converter keeps in fp32 when it quantizes after training, so QAT does too.

    XNNPACK's converter leaves convolutions with effective weight gains above
    :data:`converters.executorch.DEFAULT_MAX_WEIGHT_GAIN` in float (BatchNorms
    with collapsed variance make ESPNetv2's decoder amplify int8 rounding
    several hundred times), and the per-channel affines in front of a PReLU
    (which XNNPACK runs in fp32). The LiteRT converter also keeps high-gain convs in
    float after post-training calibration, but its QAT quantizer has no per-node filter, so a TFLite QAT graph
    trains every conv in int8 and the converter keeps it so; Core ML quantizes everything.
    """
    keep = _backend(backend).qat_float_nodes
    return [] if keep is None else sorted(keep(captured))


def prepare_qat(model: nn.Module, entry: Any, backend: str, height: int, width: int,
                equalize_on: torch.Tensor | None = None, keep_fp32: list[str] | None = None) -> PreparedQAT:
    """Reference model -> PT2E QAT graph for ``backend`` at ``height`` x ``width`` (BatchNorm training).

    ``equalize_on``: inputs to measure ranges on for :func:`espnet_mobile.deploy.equalize.equalize_for_int8`,
    capped at its ``QAT_MAX_SCALE`` (a new run passes its calibration images; rebuilding a
    checkpoint's graph does not need them, as its state dict holds the equalized values).
    ``keep_fp32``: node names left unquantized; None chooses them as the converter would
    (:func:`fp32_nodes`); a checkpoint passes its own list so the rebuilt graph is the trained one.
    """
    import logging
    import warnings

    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = backend_quantizer(backend, qat=True)
    deployable = trainable_deployable(model, entry, height, width)
    equalized = {} if equalize_on is None else equalize.equalize_for_int8(deployable, equalize_on,
                                                                  max_scale=equalize.QAT_MAX_SCALE)
    captured = export_for_training(deployable, height, width)
    eps = batchnorm_eps(captured)
    kept = fp32_nodes(captured, backend) if keep_fp32 is None else list(keep_fp32)
    if kept:
        names = frozenset(kept)
        quantizer.set_filter_function(lambda node: node.name not in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torchao").setLevel(logging.ERROR)
        with _litert_qat_patterns(backend):
            prepared = prepare_qat_pt2e(captured, quantizer)
    unfused = unfuse_fake_quant(prepared)
    reset = set_batchnorm_eps(prepared, eps)
    set_batchnorm_training(prepared, True)
    freeze_unused_parameters(prepared)
    values = sorted(set(eps.values()))
    report = {"batchnorms": len(eps), "eps": values, "eps_restored": reset,
              "fake_quantizers": sum(1 for _ in fake_quant_modules(prepared)), "unfused_fake_quantizers": unfused,
              "equalization": equalized, "fp32_nodes": kept}
    return PreparedQAT(prepared, backend, report)


def for_conversion(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy for ``ConversionRequest.qat_module``: BatchNorm on running statistics and folded into its
    convolution with the model's own eps, observers off, fake quantization on.

    Folding here (rather than in ``convert_pt2e``) keeps eps exact (torchao's
    fold assumes 1e-5) and skips convert_pt2e's pattern-traced QAT fold, which
    costs tens of seconds per conversion. The folded graph computes what the
    fake-quantized graph computes in inference mode, with the weight quantizer
    now reading the folded weight it was trained on.
    """
    out = copy.deepcopy(gm)
    set_batchnorm_training(out, False)
    set_observers(out, False)
    set_fake_quant(out, True)
    folded = fold_batchnorms(out)
    out.meta["espnet_mobile_folded_batchnorms"] = folded
    return out


def _attr_tensor(gm: torch.fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not (isinstance(node, torch.fx.Node) and node.op == "get_attr"):
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def _is_call(node: Any, target: Any) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target == target


def _new_param(gm: torch.fx.GraphModule, base: str, value: torch.Tensor, before: torch.fx.Node) -> torch.fx.Node:
    name = base.replace(".", "_")
    i = 0
    while hasattr(gm, f"{name}_{i}"):
        i += 1
    gm.register_parameter(f"{name}_{i}", nn.Parameter(value.detach().clone(), requires_grad=False))
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(f"{name}_{i}")


@dataclass
class _ConvBN:
    """The conv in front of a BatchNorm in the PT2E QAT conv-BN pattern (see :func:`fold_batchnorms`)."""

    conv: torch.fx.Node
    consumer: torch.fx.Node  # what reads the scaled weight: its fake-quantizer, or the conv itself
    scaled: torch.fx.Node  # ``w * s``; its first argument is the weight
    bias: Any  # the conv's own bias node (outside its reshape), or None


def _match_conv_bn(bn: torch.fx.Node) -> _ConvBN | None:
    """The conv of ``bn``'s conv-BN pattern; None for a BatchNorm without one."""
    aten = torch.ops.aten
    y, bias = bn.args[0], None
    if _is_call(y, aten.add.Tensor) and _is_call(y.args[0], aten.div.Tensor):
        bias, y = y.args[1], y.args[0]
        if _is_call(bias, aten.reshape.default):
            bias = bias.args[0]
    if not (_is_call(y, aten.div.Tensor) and _is_call(y.args[0], aten.conv2d.default)):
        return None
    conv = y.args[0]
    # The weight is fake-quantized (fq(w * s)), or plain (w * s) where the quantizer left the
    # convolution in float (e.g. XNNPACK's high-gain layers).
    fq = conv.args[1]
    if isinstance(fq, torch.fx.Node) and fq.op == "call_module":
        scaled, consumer = fq.args[0], fq
    else:
        scaled, consumer = fq, conv
    if not _is_call(scaled, aten.mul.Tensor):
        return None
    return _ConvBN(conv, consumer, scaled, bias)


def _batchnorm_scale(gm: torch.fx.GraphModule, bn: torch.fx.Node) -> torch.Tensor:
    """``gamma / sqrt(running_var + eps)`` of an inference-mode BatchNorm, as the graph computes it."""
    gamma, var = _attr_tensor(gm, bn.args[1]), _attr_tensor(gm, bn.args[4])
    return (gamma if gamma is not None else torch.ones_like(var)) / torch.sqrt(var + _eps_of(bn))


def fold_batchnorms(gm: torch.fx.GraphModule) -> int:
    """Fold every inference-mode BatchNorm of the PT2E QAT conv-BN pattern into its convolution.

    The pattern (torchao's ``_get_qat_conv_bn_pattern``)::

        s = bn.weight / sqrt(bn.running_var + eps)
        y = conv(x, fq(w * s[:, None, None, None]), [zeros]) / s[None, :, None, None] [+ conv_bias]
        out = batch_norm(y, running stats, eps)

    becomes ``conv(x, fq(w_folded), b_folded)`` with ``w_folded = w * s`` (the very tensor
    the weight quantizer saw) and ``b_folded = (conv_bias - mean) * s + bn.bias``.
    A BatchNorm that does not match raises, so a changed pattern is noticed.
    """
    aten = torch.ops.aten
    count = 0
    for bn in batchnorm_nodes(gm):
        if bn.args[5]:
            raise RuntimeError(f"{bn.name} is in training mode; fold only inference-mode BatchNorm")
        match = _match_conv_bn(bn)
        if match is None:
            raise RuntimeError(f"BatchNorm {bn.name} does not follow the PT2E QAT conv-BN pattern "
                               "(conv2d with a scaled weight)")
        conv, consumer, scaled, conv_bias_node = match.conv, match.consumer, match.scaled, match.bias
        weight = _attr_tensor(gm, scaled.args[0])
        beta, mean, var = (_attr_tensor(gm, a) for a in bn.args[2:5])
        if weight is None or mean is None or var is None:
            raise RuntimeError(f"BatchNorm {bn.name}: weight or statistics are not constants")
        with torch.no_grad():
            # The same float32 operations as the graph, so fq sees bit-identical weights.
            scale = _batchnorm_scale(gm, bn)
            w_folded = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
            conv_bias = _attr_tensor(gm, conv_bias_node) if conv_bias_node is not None else None
            shift = (conv_bias if conv_bias is not None else torch.zeros_like(mean)) - mean
            b_folded = shift * scale + (beta if beta is not None else torch.zeros_like(mean))
        w_node = _new_param(gm, f"{scaled.args[0].target}_folded", w_folded, consumer)
        b_node = _new_param(gm, f"{scaled.args[0].target}_folded_bias", b_folded, conv)
        conv_args = list(conv.args)
        if consumer is conv:
            conv_args[1] = w_node
        else:  # the weight's fake-quantizer
            consumer.args = (w_node, *consumer.args[1:])
        while len(conv_args) < 3:
            conv_args.append(None)
        conv_args[2] = b_node
        conv.args = tuple(conv_args)
        bn.replace_all_uses_with(conv)
        gm.graph.erase_node(bn)
        count += 1
    # The BatchNorms' num_batches_tracked increments are in-place and would survive dead-code removal.
    for node in list(gm.graph.nodes):
        if _is_call(node, aten.add_.Tensor) and isinstance(node.args[0], torch.fx.Node) \
                and str(node.args[0].target).endswith("num_batches_tracked") and not node.users:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return count


def high_gain_parameters(gm: torch.fx.GraphModule, max_gain: float) -> dict[str, float]:
    """Parameters of BatchNorms (and the convs before them) whose gain exceeds ``max_gain``.

    The gain of output channel ``c`` is ``|gamma_c| / sqrt(var_c + eps)`` times the L2 norm of
    the conv's channel-``c`` weights (1 without a conv): the factor by which the layer scales a
    change of its weights. Adam moves every weight by about the learning rate per step, so in a
    layer of gain ~10^4 (ESPNetv2's decoder has one, from a BatchNorm with collapsed variance)
    a step that is harmless elsewhere moves the output by whole units. (XNNPACK's converter keeps
    such layers in float, so there is no rounding to adapt to either; the other backends quantize
    them with the weights they were trained with.) Returns ``{parameter name: gain}`` (the
    largest gain of the layer the parameter belongs to).
    """
    out: dict[str, float] = {}
    for bn in batchnorm_nodes(gm):
        if _attr_tensor(gm, bn.args[4]) is None:
            continue
        match = _match_conv_bn(bn)
        weight_node, bias_node = (match.scaled.args[0], match.bias) if match else (None, None)
        weight = _attr_tensor(gm, weight_node)
        with torch.no_grad():
            scale = _batchnorm_scale(gm, bn).abs()
            norms = weight.flatten(1).norm(dim=1) if weight is not None else torch.ones_like(scale)
            gain = float((scale * norms).max())
        if gain <= max_gain:
            continue
        for node in (bn.args[1], bn.args[2], weight_node, bias_node):
            if isinstance(node, torch.fx.Node) and node.op == "get_attr":
                out[str(node.target)] = round(gain, 1)
    return out


def freeze_parameters(gm: nn.Module, names: list[str]) -> int:
    """Stop training the named parameters (those that exist); returns how many were frozen."""
    params = dict(gm.named_parameters())
    frozen = 0
    for name in names:
        p = params.get(name)
        if p is not None and p.requires_grad:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def freeze_unused_parameters(gm: torch.fx.GraphModule) -> int:
    """Stop training parameters the graph never reads (e.g. copied into constants by a quantizer's
    transform); DDP requires every trained parameter to receive a gradient."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    frozen = 0
    for name, p in gm.named_parameters():
        if p.requires_grad and name not in used:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def trainable_parameters(gm: nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in gm.named_parameters() if p.requires_grad]
