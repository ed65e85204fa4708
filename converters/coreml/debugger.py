"""Core ML layer debugger: the ML program run in the MIL reference interpreter, every var compared with the
exported graph's node of the same name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from converters.debug import (
    Compared,
    _module_of,
    _num,
    node_values,
    rel_error,
    summarize,
)

# --------------------------------------------------------------------------- Core ML (MIL interpreter)

_MIL_SUFFIXES = re.compile(r"(_cast_fp16|_cast_fp32|_to_fp16|_to_fp32|_has_output_shape)+$")


def locate_coreml(path: Path, deployable: nn.Module, x: np.ndarray, threshold: float) -> dict[str, Any]:
    from converters.coreml.conversion import _export
    from converters.coreml.mil_interpreter import MILProgram

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


def locate(path: Path, art: dict, deployable: nn.Module, x: np.ndarray, threshold: float, *,
           runtime: str = "") -> dict[str, Any]:
    """The backend contract's debugger entry point (see :mod:`espnet_mobile.parity.culprit`)."""
    return locate_coreml(path, deployable, x, threshold)
