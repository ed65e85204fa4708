"""ExecuTorch layer debugger: the deployable graph lowered one op per delegate call with an ETRecord, run with
an ETDump debug buffer in a child process, and paired op by op with ExecuTorch's Inspector."""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from converters.debug import (
    Compared,
    _module_of,
    _num,
    rel_error,
    summarize,
)

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
    import os

    from converters.processes import exit_with_parent

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
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


def locate(path: Path, art: dict, deployable: nn.Module, x: np.ndarray, threshold: float, *,
           runtime: str = "") -> dict[str, Any]:
    """The backend contract's debugger entry point (see :mod:`espnet_mobile.parity.culprit`)."""
    return locate_executorch(path, deployable, x, threshold, delegate=art.get("delegate", "xnnpack"),
                             precision=art.get("precision", "fp32"))
