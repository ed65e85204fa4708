"""Find, fetch, verify and load the authors' checkpoints.

Resolution order for a zoo entry: an explicit path, then the folder named by
``ESPNET_MOBILE_WEIGHTS`` (laid out as ``<folder>/<espnet|espnetv2>/<file>``),
then the user cache, then a download from the authors' repository at a pinned
commit. Files found in the folder, the cache or the network must match the
zoo's sha256; an explicit path is the user's own checkpoint (for example a
fine-tuned one) and is only required to fit the architecture.

Checkpoints are always read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from espnet_mobile.errors import UserError
from espnet_mobile.files import atomic_path, sha256_path
from espnet_mobile.zoo import DOWNLOAD_HOST, ZooEntry

WEIGHTS_ENV = "ESPNET_MOBILE_WEIGHTS"
CACHE_ENV = "ESPNET_MOBILE_CACHE"
MIRROR_ENV = "ESPNET_MOBILE_MIRROR"


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    sha256: str
    source: str  # "explicit", "env", "cache" or "download"


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $ESPNET_MOBILE_CACHE, else the XDG cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "espnet_mobile" / "weights"


def download_url(entry: ZooEntry) -> str:
    """The pinned URL of a checkpoint; ``ESPNET_MOBILE_MIRROR`` replaces the host."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return entry.url.replace(DOWNLOAD_HOST, mirror.rstrip("/"), 1)
    return entry.url


def _how_to_supply(entry: ZooEntry) -> str:
    return (f"download {entry.url} yourself and pass its path (--weights PATH), or put it in "
            f"${WEIGHTS_ENV}/{entry.weights_subdir}/{entry.checkpoint}")


def download(url: str, dest: Path, expected_sha256: str, *, progress: bool = True,
             timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` through a temporary file; keep it only if the hash matches."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = _progress_bar(total, dest.name) if progress else None
            while block := response.read(1 << 16):
                out.write(block)
                digest.update(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise UserError(f"downloaded {url} has sha256 {actual}, expected {expected_sha256}; "
                            "the file was discarded (a proxy or mirror may serve a different file)")
    return dest


def _progress_bar(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total or None, unit="B", unit_scale=True, desc=f"downloading {name}",
                file=sys.stderr)


def resolve_weights(entry: ZooEntry, explicit: str | Path | None = None, *,
                    allow_download: bool = True, progress: bool = True) -> ResolvedWeights:
    """Locate the checkpoint for ``entry`` in the documented order."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist; check the path")
        return ResolvedWeights(path, sha256_path(path), "explicit")

    candidates: list[tuple[Path, str]] = []
    if os.environ.get(WEIGHTS_ENV):
        folder = Path(os.environ[WEIGHTS_ENV])
        candidates += [(folder / entry.weights_subdir / entry.checkpoint, "env"),
                       (folder / entry.checkpoint, "env")]
    cached = cache_dir() / entry.checkpoint
    candidates.append((cached, "cache"))
    for path, source in candidates:
        if path.is_file():
            actual = sha256_path(path)
            if actual != entry.sha256:
                raise UserError(f"{path} has sha256 {actual}, expected {entry.sha256} for "
                                f"{entry.model_id}; delete it or replace it with the published file")
            return ResolvedWeights(path, actual, source)

    if not allow_download:
        raise UserError(f"no local copy of {entry.checkpoint}; {_how_to_supply(entry)}")
    url = download_url(entry)
    try:
        download(url, cached, entry.sha256, progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"cannot download {url} ({reason}); {_how_to_supply(entry)}") from None
    return ResolvedWeights(cached, entry.sha256, "download")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and return its tensors.

    Accepts a bare state dict, or a dict holding one under ``state_dict`` or
    ``model`` (training checkpoints); strips a DataParallel ``module.`` prefix.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist; check the path") from None
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} is truncated, corrupt or not a PyTorch file "
                        f"({first_line[:160]}); re-download it or pass a valid checkpoint") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strictly load ``state`` into ``model``; explain every mismatch.

    The only tolerance: BatchNorm's ``num_batches_tracked`` counters, which
    ESPNet (v1) checkpoints predate and which never affect inference.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = "; ".join(items[:8]) + (f"; ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{title}: {shown}")
        raise UserError(f"checkpoint {source} does not fit this architecture: " + " | ".join(parts)
                        + " - pick the model id that matches the checkpoint")
    filled = {k: state.get(k, expected[k]) for k in expected}
    model.load_state_dict(filled, strict=True)
