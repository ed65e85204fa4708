"""espnet-mobile: ESPNet and ESPNetv2 segmentation, from the authors' checkpoints to phones.

The Python API (each also a command, ``espnet-mobile <command>`` or ``python -m espnet_mobile.<command>``):

* :func:`create_model` - the reference PyTorch model of a zoo id;
* :func:`convert_model` - artifacts for ExecuTorch, Core ML and LiteRT in a bundle (:class:`ConversionSummary`);
* :func:`espnet_mobile.evaluate.evaluate` - the reference and a bundle's artifacts against labels
  (:class:`Evaluation`; the module has the command's name, so the function is imported from it);
* :func:`check_parity` - every artifact on every runtime here against the reference (:class:`ParityResult`).

Packages: ``models`` (the networks), ``zoo`` (checkpoints as data, weights, dataset statistics),
``data`` (photos, datasets, photos of a model's domain), ``deploy`` (the deployable graph and int8
equalization), ``bundle`` (manifest, golden vectors, schema), ``parity`` (checks, reports, the
culprit search), ``qat`` (quantization-aware training). The backends live in the top-level
``converters`` package.
"""

from __future__ import annotations

from pathlib import Path

import torch

from espnet_mobile.errors import UserError

__version__ = "0.1.0"

PRETRAINED = "pretrained"
# Imported on first use: the commands and the toolchains behind them are heavy.
_LAZY = {"DEFAULT_MODEL_ID": "espnet_mobile.zoo", "ZOO": "espnet_mobile.zoo", "ZooEntry": "espnet_mobile.zoo",
         "get_entry": "espnet_mobile.zoo", "ConversionSummary": "espnet_mobile.convert",
         "ConvertOptions": "espnet_mobile.convert", "Evaluation": "espnet_mobile.evaluate",
         "ParityResult": "espnet_mobile.parity", "check_parity": "espnet_mobile.parity"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
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
    from espnet_mobile.zoo import get_entry
    from espnet_mobile.zoo.weights import load_into, load_state_dict, resolve_weights

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


def convert_model(model_id: str | None = None, *, targets: list[str] | None = None,
                  precisions: list[str] | None = None, out: str | Path = "artifacts", jobs: int | None = None,
                  log=print, **options):
    """Convert a zoo model to every target (or ``targets``) into ``<out>/<model_id>/``; a ConversionSummary.

    ``options`` are the fields of :class:`espnet_mobile.convert.ConvertOptions` (``weights``,
    ``calibration``, ``images``, ``qat_checkpoint``, ``input_size``, ``eval_dataset``, ``force``, ...).
    """
    import converters
    from espnet_mobile import convert
    from espnet_mobile.zoo import DEFAULT_MODEL_ID

    opts = convert.ConvertOptions(targets=list(targets or converters.names()), model_id=model_id or DEFAULT_MODEL_ID,
                                  precisions=precisions, out=Path(out), jobs=jobs, **options)
    return convert.run(opts, log=log)


__all__ = [
    "DEFAULT_MODEL_ID",
    "PRETRAINED",
    "ZOO",
    "UserError",
    "ZooEntry",
    "build_model",
    "check_parity",
    "convert_model",
    "create_model",
    "get_entry",
]
