"""Where an artifact starts to disagree with PyTorch: the first layer whose error jumps.

:func:`locate` is called by the parity check when an executed check fails. It
rebuilds the deployable graph at the artifact's input size, runs the artifact
(or the closest thing to it this machine can look inside), lines up
intermediate tensors with the deployable graph's and names the first layer
whose relative error

    max |artifact - pytorch| / max |pytorch|       (per tensor)

exceeds the precision's threshold *and* jumps against the errors of its
inputs (by :data:`JUMP`). If no layer jumps, the first one over the threshold
is named. Methods, per target:

``tflite-intermediates``
    The ``.tflite`` runs in LiteRT's Interpreter with the built-in kernels
    (no XNNPACK: delegated tensors are not materialised) and
    ``experimental_preserve_all_tensors=True``. litert-torch names every
    tensor after the ``nn.Module`` path(s) of the ops it came from
    (``<module>.<Class>_<attr>/...``, fused ops joined by ``;``), so each
    module of the deployable graph whose output is materialised as one
    tensor is compared with that module's PyTorch output (forward hooks).
    Graph order and inputs come from the TFLite op list.
``tflite-conv-alignment``
    PT2E-quantized (int8) graphs reach TFLite without module paths in their
    tensor names. Each CONV_2D / DEPTHWISE_CONV_2D / TRANSPOSE_CONV /
    FULLY_CONNECTED op is then paired with the exported graph's conv/linear
    node whose weight its filter holds (mean per-output-channel |cosine| >
    :data:`ALIGN_MIN_COSINE`: blind to the per-channel scales of folded batch
    norms and of quantization) and compared with that node's output (after
    the batch norm folded into it).
``mil-intermediates``
    The Core ML program runs in :mod:`espnet_mobile.runtimes.mil_interpreter`,
    which keeps every MIL var. coremltools names vars after the exported
    program's nodes (plus suffixes such as ``_cast_fp16``), so each var is
    compared with that node's value in the same ``torch.export`` of the
    deployable graph the converter uses.
``executorch-numeric-gap``
    An XNNPACK-delegated ``.pte`` is one delegate call; its ETDump holds
    XNNPACK operator events (profiling only: no debug handles, no output
    tensors), so the artifact's intermediates cannot be read. The deployable
    graph is lowered again with ``XnnpackPartitioner(per_op_mode=True)``
    (one delegate call per op) and an ETRecord, run with an ETDump debug
    buffer, and ExecuTorch's ``Inspector.calculate_numeric_gap`` pairs every
    runtime output with its exported-graph op. The result applies to the
    artifact only if that program reproduces the artifact's output; the
    report says whether it does.
``bisect``
    When neither names nor weights map (TFLite fp32/fp16), :func:`bisect_graph`
    converts prefixes of the exported deployable graph (every node up to
    node ``k``, all live values as outputs) and binary-searches the first
    ``k`` whose outputs are off. Each step is a conversion, so it is bounded
    by :data:`BISECT_SECONDS`.

The returned dict always has ``method`` and ``layer`` (a module path of the
deployable graph, or None), and ``details``: the compared layers around the
culprit with their relative errors.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: Relative error (max |diff| / max |reference| of a tensor) above which a layer is off, per precision.
THRESHOLDS = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.25}
#: A culprit's error must exceed its inputs' largest error by this factor.
JUMP = 4.0
#: Layers listed in ``details``: this many before the culprit and after it.
CONTEXT_BEFORE, CONTEXT_AFTER = 3, 5
#: Time budget of a bisection (each step converts part of the graph).
BISECT_SECONDS = float(os.environ.get("ESPNET_MOBILE_BISECT_SECONDS", "900"))
#: Fewer mapped tensors than this and the TFLite comparison falls back to bisection.
MIN_MAPPED = 3


@dataclass
class Compared:
    """One intermediate tensor compared with its PyTorch counterpart."""

    layer: str  # module path in the deployable graph
    node: str  # backend tensor / var / op name
    op: str  # backend op type
    rel_error: float
    inputs: list[int] = field(default_factory=list)  # indexes of the nearest compared upstream tensors
    fused: list[str] = field(default_factory=list)  # other modules fused into the same backend op

    def input_error(self, entries: Sequence[Compared]) -> float:
        return max((entries[i].rel_error for i in self.inputs), default=0.0)


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    diff = np.abs(out - ref)
    if not np.all(np.isfinite(out)):
        return math.inf
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    worst = float(diff.max()) if diff.size else 0.0
    return worst / scale if scale > 0 else worst


def pick_culprit(entries: Sequence[Compared], threshold: float, jump: float = JUMP) -> tuple[int | None, str]:
    """Index of the first entry over ``threshold`` whose error jumps against its inputs'.

    An entry whose consumers are all back under the threshold is passed over:
    a real error propagates, a tensor compared with the wrong reference (an
    ambiguous layout or name) does not. Falls back to the first entry over the threshold when none jumps.
    """
    consumers: dict[int, list[int]] = {}
    for j, e in enumerate(entries):
        for i in e.inputs:
            consumers.setdefault(i, []).append(j)
    first_over = None
    for i, e in enumerate(entries):
        if e.rel_error <= threshold:
            continue
        users = consumers.get(i, [])
        if users and all(entries[j].rel_error <= threshold for j in users):
            continue  # every consumer is exact again: a mismatched comparison, not an error that propagates
        if first_over is None:
            first_over = i
        if e.rel_error > jump * max(e.input_error(entries), threshold / jump):
            return i, "first layer over the threshold whose error jumps against its inputs"
    if first_over is not None:
        return first_over, "first layer over the threshold (no single jump)"
    return None, "no compared layer exceeds the threshold"


def summarize(method: str, entries: list[Compared], threshold: float, **extra: Any) -> dict[str, Any]:
    index, why = pick_culprit(entries, threshold)
    result: dict[str, Any] = {"method": method, "layer": None, "threshold": threshold, "compared": len(entries)}
    if index is not None:
        c = entries[index]
        result.update(layer=c.layer, node=c.node, op=c.op, rel_error=_num(c.rel_error),
                      input_rel_error=_num(c.input_error(entries)), rule=why)
        if c.fused:
            result["fused_with"] = c.fused
        lo, hi = max(0, index - CONTEXT_BEFORE), index + CONTEXT_AFTER + 1
    else:
        result["rule"] = why
        ranked = sorted(range(len(entries)), key=lambda i: -entries[i].rel_error)[:CONTEXT_AFTER]
        lo, hi = (min(ranked), min(ranked) + CONTEXT_BEFORE + CONTEXT_AFTER + 1) if ranked else (0, 0)
    result["details"] = [
        {"layer": e.layer, "node": e.node, "op": e.op, "rel_error": _num(e.rel_error),
         "input_rel_error": _num(e.input_error(entries))}
        for e in entries[lo:hi]
    ]
    result.update(extra)
    return result


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else float(f"{v:.4g}")


# --------------------------------------------------------------------------- entry point


def locate(rec: Any, art: dict, path: Path, model: nn.Module, entry: Any, x: np.ndarray) -> dict[str, Any]:
    """Name the first layer where ``art`` (at ``path``) departs from the PyTorch deployable graph.

    ``rec`` is the failing parity record (its ``judged_as`` precision picks the
    threshold), ``model`` the reference model, ``entry`` its zoo entry and ``x``
    one NCHW float input of the artifact's shape.
    """
    from espnet_mobile.deploy import make_deployable

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected one NCHW input, got shape {x.shape}")
    deployable = make_deployable(model, entry, height=x.shape[2], width=x.shape[3])
    precision = getattr(rec, "judged_as", None) or art.get("precision", "fp32")
    threshold = THRESHOLDS.get(precision, THRESHOLDS["fp32"])
    target = art.get("target")
    if target == "tflite":
        if art.get("delegate") == "gpu":
            from espnet_mobile.runtimes.litert_gpu import gpu_friendly

            deployable = gpu_friendly(deployable)
        return locate_tflite(Path(path), deployable, x, threshold, nhwc=art.get("input_layout") == "NHWC",
                             runtime=getattr(rec, "runtime", ""), precision=art.get("precision", "fp32"))
    if target == "coreml":
        return locate_coreml(Path(path), deployable, x, threshold)
    if target == "executorch":
        return locate_executorch(Path(path), deployable, x, threshold, delegate=art.get("delegate", "xnnpack"),
                                 precision=art.get("precision", "fp32"))
    return {"method": "none", "layer": None, "reason": f"no culprit search for target {target!r}"}


# --------------------------------------------------------------------------- PyTorch side


@dataclass
class ModuleOutputs:
    """Each module's output on one input, with the order in which modules finished."""

    outputs: dict[str, torch.Tensor]
    calls: dict[str, int]
    order: dict[str, int]
    modules: dict[str, nn.Module]
    final: torch.Tensor


def module_outputs(module: nn.Module, x: np.ndarray) -> ModuleOutputs:
    outputs: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    order: dict[str, int] = {}
    modules = dict(module.named_modules())
    handles = []

    def hook(name: str):
        def fn(_mod, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            order[name] = len(order) if name not in order else order[name]
            if isinstance(out, torch.Tensor):
                outputs[name] = out.detach().clone()
        return fn

    for name, mod in modules.items():
        if name:
            handles.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            final = module(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    # completion order: a module finishes after everything it contains
    return ModuleOutputs(outputs, calls, order, modules, final.detach())


def node_values(gm: torch.fx.GraphModule, x: torch.Tensor) -> dict[str, Any]:
    """Every node's value when ``gm`` runs on ``x``."""
    values: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        Recorder(gm).run(x)
    return values


def _module_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


# --------------------------------------------------------------------------- TFLite


class _LocationResolver:
    """Turns litert-torch location strings into module paths of the deployable graph.

    A location is ``<root class>/.../<module>.<Class>_<attr>/...``; each segment
    is matched against the children of the module reached so far.
    """

    def __init__(self, root: nn.Module, numels: dict[str, int] | None = None) -> None:
        self.root = root
        cls = type(root)
        self.root_prefix = f"{cls.__module__}.{cls.__qualname__}_"
        self.numels = numels or {}  # module path -> its output's element count, to tell list items apart
        self._cache: dict[tuple[str, int | None], str | None] = {}

    def _fits(self, path: str, numel: int | None) -> bool:
        """Whether some module under ``path`` outputs ``numel`` elements (unknown sizes fit)."""
        if numel is None or not self.numels:
            return True
        return any(n == numel for p, n in self.numels.items() if p == path or p.startswith(path + "."))

    def short(self, name: str) -> str:
        """A tensor name without the wrapper segments above the deployable graph."""
        return re.sub(r"[^;]*?" + re.escape(self.root_prefix) + r"[^/;]*/", "", name)

    def resolve(self, location: str, numel: int | None = None) -> str | None:
        key = (location, numel)
        if key in self._cache:
            return self._cache[key]
        segments = location.split("/")
        start = next((i for i, s in enumerate(segments) if s.startswith(self.root_prefix)), None)
        path: str | None = None
        if start is not None:
            current, parts = self.root, []
            for seg in segments[start + 1:]:
                child = next((name for name, mod in current.named_children()
                              if seg == f"{type(mod).__module__}.{type(mod).__qualname__}_{name}"), None)
                if child is None:
                    # A module called out of a ModuleList (``for block in self.level3``) is named by
                    # its index alone (``EESP_2``), without the list; accept it only when exactly one
                    # list of ``current`` has such a child, else stop here (the parent is still right).
                    here = ".".join(parts)
                    hits = [f"{lname}.{name}" for lname, lst in current.named_children()
                            if isinstance(lst, nn.ModuleList)
                            for name, mod in lst.named_children()
                            if seg == f"{type(mod).__module__}.{type(mod).__qualname__}_{name}"]
                    if len(hits) > 1:  # the same index in several lists: keep those whose sizes fit the tensor
                        hits = [h for h in hits if self._fits(f"{here}.{h}" if here else h, numel)]
                    if len(hits) != 1:
                        break
                    child = hits[0]
                parts.append(child)
                current = current.get_submodule(child)
            path = ".".join(parts)
        self._cache[key] = path
        return path


def tensor_locations(name: str) -> list[str]:
    """The locations a litert-torch tensor name lists (fused ops joined by ';', then a counter)."""
    pieces = name.split(";")
    if len(pieces) > 1 and (pieces[-1] == "" or pieces[-1].isdigit()):
        pieces = pieces[:-1]
    return [p for p in pieces if p]


def _inside(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor + ".")


def _weighted_first(paths: Sequence[str], modules: dict[str, nn.Module]) -> str:
    """The location that names the computing layer: a conv/linear if there is one, else the first."""
    for p in paths:
        if isinstance(modules.get(p), (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            return p
    return paths[0]


def _tflite_interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp = Interpreter(model_path=str(path),
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                             experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    return interp


def _tflite_value(interp: Any, detail: dict) -> np.ndarray:
    value = np.asarray(interp.get_tensor(detail["index"]))
    if np.issubdtype(value.dtype, np.integer):
        scale, zero = detail.get("quantization", (0.0, 0))
        if scale:
            return (value.astype(np.float32) - zero) * np.float32(scale)
    return value.astype(np.float32)


def _matching_layout(value: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """``ref`` laid out like ``value`` (NCHW -> NHWC when that is what the tensor is), or None."""
    if ref.ndim == 4 and value.shape == (ref.shape[0], ref.shape[2], ref.shape[3], ref.shape[1]) \
            and value.shape != ref.shape:
        return ref.transpose(0, 2, 3, 1)
    if value.shape == ref.shape:
        return ref
    if ref.ndim == 4 and value.shape == (ref.shape[0], ref.shape[2], ref.shape[3], ref.shape[1]):
        return ref.transpose(0, 2, 3, 1)
    return None


def locate_tflite(path: Path, deployable: nn.Module, x: np.ndarray, threshold: float, *, nhwc: bool = False,
                  runtime: str = "", precision: str = "fp32") -> dict[str, Any]:
    interp = _tflite_interpreter(path)
    signatures = interp.get_signature_list()
    runner = interp.get_signature_runner(next(iter(signatures)))
    (in_name, in_detail), = runner.get_input_details().items()
    feed = x.transpose(0, 2, 3, 1) if nhwc else x
    if np.issubdtype(in_detail["dtype"], np.integer):
        scale, zero = in_detail["quantization"]
        info = np.iinfo(in_detail["dtype"])
        feed = np.clip(np.round(feed / scale) + zero, info.min, info.max).astype(in_detail["dtype"])
    (out_name, out_value), = runner(**{in_name: np.ascontiguousarray(feed)}).items()
    out_detail = runner.get_output_details()[out_name]
    out = np.asarray(out_value, dtype=np.float32)
    if np.issubdtype(out_detail["dtype"], np.integer):
        s, z = out_detail["quantization"]
        out = (np.asarray(out_value, dtype=np.float32) - z) * s
    ref = module_outputs(deployable, x)
    output_error = rel_error(out, ref.final.numpy())

    details = {d["index"]: d for d in interp.get_tensor_details()}
    ops = sorted(interp._get_ops_details(), key=lambda o: o["index"])
    resolver = _LocationResolver(deployable, {p: int(v.numel()) for p, v in ref.outputs.items()})
    op_locs: list[list[str]] = []
    for op in ops:
        outs = [details[i] for i in op["outputs"] if i in details]
        paths = [resolver.resolve(loc, int(np.prod(d["shape"]))) for d in outs[:1]
                 for loc in tensor_locations(d["name"])]
        op_locs.append([p for p in paths if p is not None])

    # last op touching each module's subtree
    last_op: dict[str, int] = {}
    for i, paths in enumerate(op_locs):
        for p in paths:
            parts = p.split(".") if p else []
            for depth in range(1, len(parts) + 1):
                last_op[".".join(parts[:depth])] = i
    infinity = len(ref.order) + 1
    tensor_to_modules: dict[int, list[str]] = {}
    for mod_path, i in last_op.items():
        if ref.calls.get(mod_path) != 1 or mod_path not in ref.outputs:
            continue  # called several times (shared) or not a tensor-valued module
        if any(ref.order.get(p, infinity) > ref.order[mod_path] for p in op_locs[i]):
            continue  # the op also computes something that runs after this module: output not materialised
        outs = ops[i]["outputs"]
        if len(outs):
            tensor_to_modules.setdefault(int(outs[0]), []).append(mod_path)

    producer = {int(t): i for i, op in enumerate(ops) for t in op["outputs"]}
    compared: dict[int, Compared] = {}
    order_of: dict[int, int] = {}
    for t, mods in tensor_to_modules.items():
        value = _tflite_value(interp, details[t])
        mods = sorted(mods, key=lambda m: -m.count("."))
        for m in mods:
            r = _matching_layout(value, ref.outputs[m].numpy())
            if r is None:
                continue
            i = producer[t]
            layer = _weighted_first(op_locs[i], ref.modules) if op_locs[i] else m
            compared[t] = Compared(layer, resolver.short(details[t]["name"]), ops[i]["op_name"], rel_error(value, r),
                                   fused=[p for p in dict.fromkeys(op_locs[i]) if p != layer])
            order_of[t] = i
            break
    method = "tflite-intermediates"
    notes = ["LiteRT built-in kernels (no XNNPACK delegate) with experimental_preserve_all_tensors; "
             "tensors matched to module outputs through litert-torch's location names"]
    if len(compared) < MIN_MAPPED:
        named = len(compared)
        compared, order_of = _align_tflite_convs(interp, ops, details, deployable, x)
        if len(compared) < MIN_MAPPED:
            return _bisect_tflite(path, deployable, x, threshold, precision,
                                  note=f"only {named} TFLite tensors map to modules by name and {len(compared)} "
                                       "convolutions by weights")
        method = "tflite-conv-alignment"
        notes = [f"LiteRT built-in kernels with experimental_preserve_all_tensors; the tensor names carry no module "
                 f"paths ({named} mapped), so each convolution / fully-connected op is paired with the exported "
                 "graph's conv/linear node whose weight it holds (per-output-channel cosine > "
                 f"{ALIGN_MIN_COSINE}, shape-checked, filters with one weight per channel left out; a batch norm "
                 "folded into a conv is compared after the norm)"]

    tensors = sorted(compared, key=lambda t: order_of[t])
    index_of = {t: k for k, t in enumerate(tensors)}
    # nearest compared tensors upstream of every tensor, in execution order
    upstream: dict[int, frozenset[int]] = {}
    for op in ops:
        found: set[int] = set()
        for s_ in op["inputs"]:
            s_ = int(s_)
            if s_ >= 0:
                found |= {s_} if s_ in compared else upstream.get(s_, frozenset())
        for t in op["outputs"]:
            upstream[int(t)] = frozenset(found)
    entries = [compared[t] for t in tensors]
    for t in tensors:
        compared[t].inputs = sorted(index_of[s_] for s_ in upstream.get(t, ()) if s_ in index_of)
    reproduced = output_error > threshold
    if not reproduced:
        notes.append(f"the built-in kernels' output is within the threshold ({output_error:.3g}): the failure "
                     f"seen on {runtime or 'the failing runtime'} does not reproduce on the reference kernels")
    return summarize(method, entries, threshold, output_rel_error=_num(output_error),
                     reproduced=reproduced, notes=notes)


#: TFLite op -> (filter input index, output-channel axis of its filter)
_TFLITE_WEIGHTED = {"CONV_2D": (1, 0), "DEPTHWISE_CONV_2D": (1, 3), "TRANSPOSE_CONV": (1, 0),
                    "FULLY_CONNECTED": (1, 0)}
#: Minimum mean |cosine| between a TFLite filter and a PyTorch weight, per output channel, to pair them.
ALIGN_MIN_COSINE = 0.99
_BATCH_NORMS = ("batch_norm", "_native_batch_norm_legit")


def _weight_in_tflite_layout(node: torch.fx.Node, weight: torch.Tensor, op_name: str) -> np.ndarray | None:
    w = weight.detach().float().numpy()
    target = node.target
    if target is torch.ops.aten.linear.default:
        return w if op_name == "FULLY_CONNECTED" else None
    if w.ndim != 4:
        return None
    if target is torch.ops.aten.conv_transpose2d.input:
        return w.transpose(1, 2, 3, 0) if op_name == "TRANSPOSE_CONV" else None  # (I,O,kh,kw) -> (O,kh,kw,I)
    if op_name == "DEPTHWISE_CONV_2D":
        return w.transpose(1, 2, 3, 0)  # (C*M,1,kh,kw) -> (1,kh,kw,C*M)
    if op_name == "CONV_2D":
        return w.transpose(0, 2, 3, 1)  # (O,I,kh,kw) -> (O,kh,kw,I)
    return None


def _channel_cosine(a: np.ndarray, b: np.ndarray, axis: int) -> float:
    """Mean |cosine| between ``a`` and ``b`` per slice along ``axis`` (blind to per-channel scales)."""
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0).reshape(a.shape[axis], -1)
    b = np.moveaxis(np.asarray(b, dtype=np.float64), axis, 0).reshape(b.shape[axis], -1)
    num = np.abs((a * b).sum(1))
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    ok = den > 0
    return float((num[ok] / den[ok]).mean()) if ok.any() else 0.0


def _align_tflite_convs(interp: Any, ops: list[dict], details: dict[int, dict], deployable: nn.Module,
                        x: np.ndarray) -> tuple[dict[int, Compared], dict[int, int]]:
    """Pair TFLite conv/FC ops with the exported graph's conv/linear nodes by the weights they hold.

    Used when the tensor names carry no module paths (e.g. PT2E-quantized
    int8 graphs). A conv followed by a batch norm is compared after the norm
    (converters fold it into the conv).
    """
    xt = torch.from_numpy(x)
    with torch.no_grad():
        ep = torch.export.export(deployable, (xt,), strict=False)
    gm = ep.module()
    values = node_values(gm, xt)
    params = dict(gm.named_parameters()) | dict(gm.named_buffers())
    weighted = (torch.ops.aten.conv2d.default, torch.ops.aten.conv_transpose2d.input, torch.ops.aten.linear.default)
    candidates = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in weighted:
            continue
        w_node = n.args[1]
        if not (isinstance(w_node, torch.fx.Node) and w_node.op == "get_attr" and w_node.target in params):
            continue
        ref_node = n
        users = list(n.users)
        if len(users) == 1 and any(b in str(users[0].target) for b in _BATCH_NORMS):
            ref_node = users[0]
            if not isinstance(values.get(ref_node.name), torch.Tensor):  # tuple-valued: take its getitem 0
                ref_node = next((u for u in ref_node.users if u.args[1:] == (0,)), ref_node)
        value = values.get(ref_node.name)
        if isinstance(value, (tuple, list)):
            value = value[0]
        if isinstance(value, torch.Tensor):
            candidates.append((n, params[w_node.target], value.numpy(), ref_node))
    matched: set[int] = set()
    compared: dict[int, Compared] = {}
    order_of: dict[int, int] = {}
    for i, op in enumerate(ops):
        spec = _TFLITE_WEIGHTED.get(op["op_name"])
        if spec is None or len(op["inputs"]) <= spec[0] or not len(op["outputs"]):
            continue
        f_index, axis = spec
        f_idx, out_idx = int(op["inputs"][f_index]), int(op["outputs"][0])
        try:
            filt = np.asarray(interp.get_tensor(f_idx))
        except ValueError:
            continue
        if filt.ndim == 0 or filt.size // max(filt.shape[axis], 1) < 2:
            continue  # one weight per channel (a 1x1 depth-wise affine): any per-channel scale matches it
        out = _tflite_value(interp, details[out_idx])
        best = None
        for k, (node, weight, ref, _ref_node) in enumerate(candidates):
            if k in matched:
                continue
            w = _weight_in_tflite_layout(node, weight, op["op_name"])
            if w is None or w.shape != filt.shape:
                continue
            r = _matching_layout(out, ref)
            if r is None:
                continue
            score = _channel_cosine(filt, w, axis)
            if score >= ALIGN_MIN_COSINE and (best is None or score > best[0] + 1e-6):
                best = (score, k, r)
        if best is None:
            continue
        _, k, r = best
        matched.add(k)
        node, _, _, ref_node = candidates[k]
        fused = [_module_of(ref_node)] if ref_node is not node and _module_of(ref_node) else []
        compared[out_idx] = Compared(_module_of(node) or node.name, f"{op['op_name']}#{op['index']} ~ {node.name}",
                                     op["op_name"], rel_error(out, r), fused=fused)
        order_of[out_idx] = i
    return compared, order_of


# --------------------------------------------------------------------------- Core ML (MIL interpreter)

_MIL_SUFFIXES = re.compile(r"(_cast_fp16|_cast_fp32|_to_fp16|_to_fp32|_has_output_shape)+$")


def locate_coreml(path: Path, deployable: nn.Module, x: np.ndarray, threshold: float) -> dict[str, Any]:
    from converters.coreml import _export
    from espnet_mobile.runtimes.mil_interpreter import MILProgram

    program = MILProgram(path)
    (in_name,) = program.input_types
    outs = program.run({in_name: x}, keep=True)
    out = np.asarray(next(iter(outs.values())), dtype=np.float32)
    ep = _export(deployable, torch.from_numpy(x))
    values = node_values(ep.module(), torch.from_numpy(x))
    nodes = {n.name: n for n in ep.graph.nodes}
    with torch.no_grad():
        final = deployable(torch.from_numpy(x)).numpy()
    output_error = rel_error(out, final)
    quantized = "quantize" in program.op_types()

    unit_scale_dq = set()
    if quantized:
        for op in program.ops:
            if op.type == "dequantize":
                scale = program.operand(op, "scale")
                if isinstance(scale, np.ndarray) and scale.size == 1 and float(scale) == 1.0:
                    unit_scale_dq.add(op.outputs[0])
    rescaled: set[str] = set()
    entries: list[Compared] = []
    index_of: dict[str, int] = {}
    upstream_of: dict[str, set[int]] = {}
    skipped = 0
    for e in program.trace:
        ups: set[int] = set()
        for i in e.inputs:
            if i in index_of:
                ups.add(index_of[i])
            else:
                ups |= upstream_of.get(i, set())
        upstream_of[e.name] = ups
        if quantized and e.op_type not in ("quantize", "dequantize") and (
                any(i in rescaled for i in e.inputs)
                or (e.op_type in ("add", "sub") and any(i in unit_scale_dq for i in e.inputs))):
            rescaled.add(e.name)  # scaled by coremltools' distributive_quantized_binary_op_scale_normalization
            continue
        if not np.issubdtype(e.value.dtype, np.floating):
            continue
        base = _MIL_SUFFIXES.sub("", e.name)
        node = nodes.get(base)
        if node is None or base not in values:
            continue
        target = node
        if quantized and node.target is torch.ops.aten.conv2d.default:
            bn = next((u for u in node.users if "batch_norm" in str(u.target)), None)
            if bn is not None:  # PT2E folded this batch norm into the conv: compare with its output
                target = bn
        ref_value = values.get(target.name)
        if isinstance(ref_value, (tuple, list)):
            ref_value = ref_value[0]
        if not isinstance(ref_value, torch.Tensor) or tuple(ref_value.shape) != e.value.shape:
            skipped += 1
            continue
        shown = target
        if e.op_type in ("conv", "conv_transpose", "linear") and "batch_norm" in str(target.target):
            src = target.args[0]
            if isinstance(src, torch.fx.Node) and src.target in (torch.ops.aten.conv2d.default,
                                                                  torch.ops.aten.conv_transpose2d.input,
                                                                  torch.ops.aten.linear.default):
                shown = src  # the MIL conv is the conv with its batch norm fused, named after the norm
        layer = _module_of(shown) or shown.name
        c = Compared(layer, e.name, e.op_type, rel_error(e.value, ref_value.numpy()), inputs=sorted(ups))
        if shown is not target:
            c.fused = [_module_of(target) or target.name]
        index_of[e.name] = len(entries)
        entries.append(c)
    notes = ["MIL reference interpreter (not the Core ML runtime): every MIL var compared with the same-named "
             "node of the deployable graph's torch.export"]
    if quantized:
        notes.append("int8: values rescaled by coremltools' quantized add normalisation are not compared; "
                     "convolutions are compared after their folded batch norm")
    return summarize("mil-intermediates", entries, threshold, output_rel_error=_num(output_error),
                     reproduced=output_error > threshold, notes=notes)


# --------------------------------------------------------------------------- ExecuTorch


#: Bytes of the ETDump debug buffer (output tensors of the logged events).
ETDUMP_DEBUG_BUFFER_BYTES = 256 << 20


def run_in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh process; a native abort there becomes a RuntimeError here.

    The ExecuTorch runtime asserts (and so aborts the process) when an ETDump
    debug buffer fills up; run in-process, that ended the whole parity run.
    """
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result()
        except concurrent.futures.process.BrokenProcessPool:
            raise RuntimeError(f"{getattr(fn, '__name__', fn)} ended its process abnormally "
                               "(a native abort or crash in the runtime)") from None


def etdump_summary(path: Path, x: np.ndarray) -> dict[str, Any]:
    """What the artifact's own ETDump exposes: operator events, and how many carry output tensors.

    Runs in a child process (:func:`run_in_child`).
    """
    return run_in_child(_etdump_summary_here, Path(path), x)


def _etdump_summary_here(path: Path, x: np.ndarray) -> dict[str, Any]:
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        program = Runtime.get().load_program(Path(path), enable_etdump=True,
                                             debug_buffer_size=ETDUMP_DEBUG_BUFFER_BYTES)
        method = program.load_method("forward")
        method.execute([torch.from_numpy(x)])
        etdump, buffer = Path(tmp) / "run.etdp", Path(tmp) / "run.bin"
        program.write_etdump_result_to_file(str(etdump), str(buffer))
        with contextlib.redirect_stdout(io.StringIO()):
            inspector = Inspector(etdump_path=str(etdump), debug_buffer_path=str(buffer))
        events = [ev for block in inspector.event_blocks if block.name == "Execute" for ev in block.events]
    with_outputs = [ev for ev in events if ev.debug_data]
    return {"events": len(events), "events_with_outputs": len(with_outputs),
            "examples": [ev.name for ev in events[:3]]}


def locate_executorch(path: Path, deployable: nn.Module, x: np.ndarray, threshold: float, *,
                      delegate: str = "xnnpack", precision: str = "fp32") -> dict[str, Any]:
    notes: list[str] = []
    artifact_out = None
    try:
        from converters.executorch import run_pte

        artifact_out = run_pte(path, torch.from_numpy(x)).numpy()
        summary = etdump_summary(path, x)
        notes.append(f"the artifact's ETDump has {summary['events']} operator events "
                     f"({', '.join(summary['examples'])}, ...) and {summary['events_with_outputs']} with output "
                     f"tensors (the delegate call's own output): XNNPACK delegation hides the intermediates "
                     f"(per-operator profiling events only, no debug handles)")
    except Exception as err:  # the runtime may lack ETDump support
        notes.append(f"the artifact's ETDump could not be read: {type(err).__name__}: {err}"[:300])
    if delegate != "xnnpack" or precision != "fp32":
        return {"method": "none", "layer": None, "notes": notes,
                "reason": f"{delegate} {precision}: a re-lowering cannot reproduce this artifact here "
                          "(int8 needs the artifact's calibration data; other delegates do not run on this host)"}
    return _numeric_gap(deployable, x, threshold, artifact_out, notes)


def _numeric_gap(deployable: nn.Module, x: np.ndarray, threshold: float, artifact_out: np.ndarray | None,
                 notes: list[str]) -> dict[str, Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools import Inspector
    from executorch.devtools.inspector.numerical_comparator.numerical_comparator_base import (
        NumericalComparatorBase,
    )
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    xt = torch.from_numpy(x)
    with torch.no_grad():
        ep = torch.export.export(deployable, (xt,), strict=False)
        final = deployable(xt).numpy()
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner(per_op_mode=True)],
                                       generate_etrecord=True)
    et_program = edge.to_executorch()
    etrecord = et_program.get_etrecord()
    etrecord.update_representative_inputs([(xt,)])

    class RelativeMax(NumericalComparatorBase):
        def element_compare(self, a: Any, b: Any) -> float:  # a: exported graph (AOT), b: runtime
            ref, out = torch.as_tensor(a).float(), torch.as_tensor(b).float()
            return rel_error(out.numpy(), ref.numpy()) if ref.shape == out.shape else math.nan

    with tempfile.TemporaryDirectory() as tmp:
        pte, etdump, buffer, rec = (Path(tmp) / n for n in ("perop.pte", "run.etdp", "run.bin", "etrecord.bin"))
        pte.write_bytes(et_program.buffer)
        etrecord.save(str(rec))
        program = Runtime.get().load_program(pte, enable_etdump=True, debug_buffer_size=256 << 20)
        out = program.load_method("forward").execute([xt])[0].numpy()
        program.write_etdump_result_to_file(str(etdump), str(buffer))
        with contextlib.redirect_stdout(io.StringIO()):
            inspector = Inspector(etdump_path=str(etdump), debug_buffer_path=str(buffer), etrecord=str(rec))
            frame = inspector.calculate_numeric_gap(RelativeMax())
    nodes = {n.name: n for n in ep.graph.nodes}
    entries: list[Compared] = []
    for _, row in frame.iterrows():
        names = list(row["aot_ops"])
        if not names:
            continue
        gap = row["gap"]
        gap = float(gap[0] if isinstance(gap, (list, tuple)) else gap)
        if math.isnan(gap):
            continue
        node = nodes.get(names[-1])
        layer = _module_of(node) if node is not None else ""
        entries.append(Compared(layer or names[-1], "+".join(names), "xnnpack", gap))
    position = {n.name: i for i, n in enumerate(ep.graph.nodes)}
    entries.sort(key=lambda e: position.get(e.node.split("+")[-1], len(position)))
    # upstream: the previous compared node along the exported graph
    pos = {e.node.split("+")[-1]: k for k, e in enumerate(entries)}
    for k, e in enumerate(entries):
        node = nodes.get(e.node.split("+")[-1])
        ups: set[int] = set()
        stack = list(node.all_input_nodes) if node is not None else []
        seen = set()
        while stack:
            n = stack.pop()
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.name in pos and pos[n.name] < k:
                ups.add(pos[n.name])
            else:
                stack.extend(n.all_input_nodes)
        e.inputs = sorted(ups)
    output_error = rel_error(out, final)
    reproduced = artifact_out is not None and rel_error(out, artifact_out) <= max(threshold, 1e-5)
    notes.append("deployable graph re-lowered with XnnpackPartitioner(per_op_mode=True) and an ETRecord; "
                 "Inspector.calculate_numeric_gap pairs each delegate call's output with its exported op")
    if not reproduced:
        notes.append("the per-op program's output differs from the artifact's: the failure is not reproduced by "
                     "re-lowering the reference model (artifact built from other weights/options, or it depends "
                     "on whole-graph delegation)")
    return summarize("executorch-numeric-gap", entries, threshold, output_rel_error=_num(output_error),
                     reproduced=reproduced, notes=notes)


# --------------------------------------------------------------------------- bisection


def _prefix_module(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node], k: int) -> tuple[torch.fx.GraphModule,
                                                                                       list[str]]:
    """``gm`` cut after ``nodes[k]``: returns every value of the prefix still needed later, and their names."""
    keep = {n.name for n in nodes[:k + 1]}
    position = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    cut = position[nodes[k].name]
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    outputs: list[torch.fx.Node] = []
    for n in gm.graph.nodes:
        if n.op == "output" or position[n.name] > cut:
            continue
        if n.op == "call_module" and "guard" in str(n.target):
            continue
        env[n] = graph.node_copy(n, lambda a: env[a])
    for n in nodes[:k + 1]:
        later = [u for u in n.users if u.name not in keep]
        if n is nodes[k] or later:
            outputs.append(n)
    graph.output(tuple(env[n] for n in outputs))
    graph.eliminate_dead_code()
    return torch.fx.GraphModule(gm, graph), [n.name for n in outputs]


def bisect_graph(deployable: nn.Module, x: np.ndarray, run_prefix: Callable[[nn.Module, torch.Tensor],
                                                                              Sequence[np.ndarray]],
                 threshold: float, *, seconds: float = BISECT_SECONDS) -> dict[str, Any]:
    """Binary-search the first exported node whose value the backend gets wrong.

    ``run_prefix(module, x)`` converts a prefix module with the backend and
    returns its outputs. The prefix ending at node ``k`` outputs every value
    that later nodes use, so an error born at or before ``k`` is visible in
    it; the smallest such ``k`` is the culprit.
    """
    xt = torch.from_numpy(x)
    with torch.no_grad():
        ep = torch.export.export(deployable, (xt,), strict=False)
    gm = ep.module()
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"
             and isinstance(n.meta.get("val"), torch.Tensor)]
    values = node_values(gm, xt)
    started = time.perf_counter()
    evaluated: dict[int, float] = {}

    def error_at(k: int) -> float:
        if k not in evaluated:
            module, names = _prefix_module(gm, nodes, k)
            outs = run_prefix(module, xt)
            evaluated[k] = max(rel_error(o, values[n].numpy()) for o, n in zip(outs, names, strict=True))
        return evaluated[k]

    lo, hi = -1, len(nodes) - 1
    if error_at(hi) <= threshold:
        return {"method": "bisect", "layer": None, "threshold": threshold, "reproduced": False,
                "output_rel_error": _num(evaluated[hi]), "details": [],
                "reason": "the converted whole graph is within the threshold: the failure does not reproduce"}
    finished = True
    while hi - lo > 1:
        if time.perf_counter() - started > seconds:
            finished = False
            break
        mid = (lo + hi) // 2
        if error_at(mid) > threshold:
            hi = mid
        else:
            lo = mid
    culprit = nodes[hi]
    details = [{"layer": _module_of(nodes[k]) or nodes[k].name, "node": nodes[k].name,
                "op": str(nodes[k].target), "rel_error": _num(err)} for k, err in sorted(evaluated.items())]
    result = {"method": "bisect", "layer": _module_of(culprit) or culprit.name, "node": culprit.name,
              "op": str(culprit.target), "rel_error": _num(evaluated[hi]), "threshold": threshold,
              "reproduced": True, "steps": len(evaluated), "details": details}
    if not finished:
        result["layer"] = None
        result["narrowed_to"] = [nodes[max(lo, 0)].name, culprit.name]
        result["reason"] = f"time budget of {seconds:.0f} s spent after {len(evaluated)} conversions"
    return result


def _bisect_tflite(path: Path, deployable: nn.Module, x: np.ndarray, threshold: float, precision: str,
                   note: str) -> dict[str, Any]:
    if precision == "int8":
        return {"method": "none", "layer": None, "reason": f"{note}; an int8 artifact cannot be re-converted "
                                                           "without its calibration data, so no bisection"}

    def run_prefix(module: nn.Module, xt: torch.Tensor) -> list[np.ndarray]:
        import litert_torch

        config = None
        if precision == "fp16":
            from litert_torch.generative.quantize import quant_recipes

            config = quant_recipes.full_fp16_recipe()
        with contextlib.redirect_stdout(io.StringIO()):
            edge = litert_torch.convert(module.eval(), (xt,), quant_config=config)
        outs = edge(xt)
        outs = outs if isinstance(outs, (tuple, list)) else [outs]
        return [np.asarray(o, dtype=np.float32) for o in outs]

    result = bisect_graph(deployable, x, run_prefix, threshold)
    result.setdefault("notes", []).append(f"{note}: bisected the exported deployable graph, converting prefixes "
                                          "with litert-torch")
    return result
