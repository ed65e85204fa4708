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
    The Core ML program runs in :mod:`converters.coreml.mil_interpreter`,
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

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

import converters
from converters.debug import THRESHOLDS


def locate(rec: Any, art: dict, path: Path, model: nn.Module, entry: Any, x: np.ndarray) -> dict[str, Any]:
    """Name the first layer where ``art`` (at ``path``) departs from the PyTorch deployable graph.

    ``rec`` is the failing parity record (its ``judged_as`` precision picks the
    threshold), ``model`` the reference model, ``entry`` its zoo entry and ``x``
    one NCHW float input of the artifact's shape. The backend's own debugger
    (``Backend.debugger``) does the comparison, on the deployable graph after the
    rewrites the artifact's delegate was converted with.
    """
    import importlib

    from espnet_mobile.deploy import make_deployable

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected one NCHW input, got shape {x.shape}")
    if art.get("target") not in converters.names():
        return {"method": "none", "layer": None, "reason": f"no culprit search for target {art.get('target')!r}"}
    backend = converters.backend(art["target"])
    if backend.debugger is None:
        return {"method": "none", "layer": None, "reason": f"no layer debugger for target {art['target']!r}"}
    deployable = make_deployable(model, entry, height=x.shape[2], width=x.shape[3])
    if backend.rewrite is not None and art.get("delegate") != backend.default_delegate:
        deployable = backend.rewrite(deployable, art["delegate"])
    precision = getattr(rec, "judged_as", None) or art.get("precision", "fp32")
    threshold = THRESHOLDS.get(precision, THRESHOLDS["fp32"])
    debugger = importlib.import_module(backend.debugger)
    return debugger.locate(Path(path), art, deployable, x, threshold, runtime=getattr(rec, "runtime", ""))
