"""Shared by the backends' layer debuggers: line up an artifact's intermediate tensors with the PyTorch
deployable graph's and name the first layer whose relative error exceeds the precision's threshold and
jumps against its inputs' errors (see espnet_mobile/parity/culprit.py for the methods per backend)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

#: Relative error (max |diff| / max |reference| of a tensor) above which a layer is off, per precision.
THRESHOLDS = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.25}


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


