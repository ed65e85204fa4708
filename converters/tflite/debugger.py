"""TFLite layer debugger: every tensor kept by the Interpreter matched to the module it came from, int8
convolutions matched by their weights, or a bisection over converted prefixes of the graph."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from converters.debug import (
    MIN_MAPPED,
    Compared,
    _module_of,
    _num,
    bisect_graph,
    module_outputs,
    node_values,
    rel_error,
    summarize,
)

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


def locate(path: Path, art: dict, deployable: nn.Module, x: np.ndarray, threshold: float, *,
           runtime: str = "") -> dict[str, Any]:
    """The backend contract's debugger entry point (see :mod:`espnet_mobile.parity.culprit`)."""
    return locate_tflite(path, deployable, x, threshold, nhwc=art.get("input_layout") == "NHWC",
                         runtime=runtime, precision=art.get("precision", "fp32"))
