"""QAT checkpoints: tensors and primitive containers only, written atomically, read with ``weights_only=True``.

A checkpoint is a dict::

    format, version        "espnet-mobile-qat", 1
    config                 the run's settings (model, backend, data, input size, steps, seed, ...)
    phase, step            "fp32" | "qat" | "done", and steps completed in that phase
    fp32_state             reference-model state dict: the fp32 model QAT starts from
                           (during the fp32 phase: the model being fine-tuned)
    qat_state              state dict of the prepared PT2E graph (phase "qat" / "done")
    optimizer              optimizer state dict of the current phase
    rng                    torch / numpy / python generator states
    baselines, history     metrics measured so far (so a resumed run does not redo them)
    wall_seconds           time spent so far, over every resumed run

The prepared graph itself is not pickled: :func:`espnet_mobile.qat.load_qat_module`
rebuilds it from ``config`` (same model, backend and size give the same graph)
and loads ``qat_state`` into it.

Writing goes to a temporary file in the same folder, is flushed to disk, read
back with ``weights_only=True``, and only then renamed over the previous
checkpoint; a crash at any point leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from espnet_mobile.errors import UserError

FORMAT = "espnet-mobile-qat"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """Every generator the run could touch, as tensors and primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal),
                   "gauss": None if gauss is None else float(gauss)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically; the previous file survives any failure."""
    _torch_save_atomic(Path(path), {"format": FORMAT, "version": VERSION, **payload}, verify=_read)


def _torch_save_atomic(path: Path, obj: Any, verify: Any = None) -> None:
    """``torch.save`` to a temporary file, flushed to disk, (read back by ``verify``,) then renamed."""
    from espnet_mobile.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if verify is not None:
            verify(tmp)  # never rename a file we cannot read back
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"QAT checkpoint {path} does not exist") from None
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"QAT checkpoint {path} is truncated or corrupt ({first}); it was left untouched - "
                        "restore it, or start again without --resume in a new --out folder") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not a QAT checkpoint written by python -m espnet_mobile.qat")
    if obj.get("version") != VERSION:
        raise UserError(f"QAT checkpoint {path} has format version {obj.get('version')}; "
                        f"this espnet-mobile reads version {VERSION}")
    for key in ("config", "phase", "step"):
        if key not in obj:
            raise UserError(f"QAT checkpoint {path} lacks {key!r}; it is incomplete")
    return obj


def load(path: Path) -> dict[str, Any]:
    """Read and validate a checkpoint (``weights_only=True``); a bad file is a one-line :class:`UserError`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    return _read(path)


def save_plain(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write a bare state dict (e.g. fp32 reference weights for ``convert --weights``) atomically."""
    _torch_save_atomic(Path(path), state)
