"""espnet-mobile: ESPNet and ESPNetv2 segmentation, from the authors' checkpoints to phones."""

from __future__ import annotations

from pathlib import Path

import torch

from espnet_mobile.errors import UserError

__version__ = "0.1.0"

PRETRAINED = "pretrained"
# Re-exported from espnet_mobile.zoo lazily, so `python -m espnet_mobile.zoo`
# does not find its own module already imported by the package.
_ZOO_NAMES = ("DEFAULT_MODEL_ID", "ZOO", "ZooEntry", "get_entry")


def __getattr__(name: str):
    if name in _ZOO_NAMES:
        from espnet_mobile import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'espnet_mobile' has no attribute {name!r}")


def build_model(entry) -> torch.nn.Module:
    """The architecture of a zoo entry, randomly initialized, in eval mode."""
    from espnet_mobile.models import ESPNet, ESPNetEncoder, ESPNetv2Segmentation

    hp = entry.hparams
    if entry.arch == "espnetv2":
        model: torch.nn.Module = ESPNetv2Segmentation(entry.num_classes, s=float(hp["s"]))
    elif entry.arch == "espnet":
        model = ESPNet(entry.num_classes, p=int(hp["p"]), q=int(hp["q"]),
                       reinforced_skip=bool(hp.get("reinforced_skip", False)))
    elif entry.arch == "espnet_c":
        model = ESPNetEncoder(entry.num_classes, p=int(hp["p"]), q=int(hp["q"]), variant="C")
    else:
        raise ValueError(f"zoo entry {entry.model_id} has unknown arch {entry.arch!r}")
    return model.eval()


def create_model(model_id: str, *, weights: str | Path | None = None) -> torch.nn.Module:
    """Reference model for ``model_id`` in eval mode.

    ``weights``: None for random initialization; a path to a checkpoint in the
    authors' format (strictly loaded); or ``"pretrained"`` to resolve the
    published checkpoint (``$ESPNET_MOBILE_WEIGHTS``, the cache, or a download).
    The model expects input normalized the authors' way (see the zoo entry's
    ``normalization``) and returns logits NCHW.
    """
    from espnet_mobile.weights import load_into, load_state_dict, resolve_weights
    from espnet_mobile.zoo import get_entry

    entry = get_entry(model_id)
    model = build_model(entry)
    if weights is None:
        return model
    if str(weights) == PRETRAINED:
        path = resolve_weights(entry).path
    else:
        path = Path(weights)
    load_into(model, load_state_dict(path), source=str(path))
    return model.eval()


__all__ = [
    "DEFAULT_MODEL_ID",
    "PRETRAINED",
    "ZOO",
    "UserError",
    "ZooEntry",
    "build_model",
    "create_model",
    "get_entry",
]
