"""Segment photos with a reference model: palette mask, overlay, and class shares.

    python -m espnet_mobile.predict photo.jpg [more.png ...] [--model ID] [--out DIR]

Each image goes through the same pre- and post-processing as the apps
(:mod:`espnet_mobile.preprocess`): resized to the model's input size, and the
mask resized back to the image's own size so it lines up with the photo.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from espnet_mobile.data.images import load_rgb, palette_image, save_png_atomic
from espnet_mobile.errors import UserError, run_cli
from espnet_mobile.preprocess import argmax_mask, overlay, preprocess, resize_mask_nearest


@dataclass
class Prediction:
    image: Path
    mask: np.ndarray  # (H, W) class indices at the image's size
    shares: dict[str, float]  # class name -> fraction of pixels


def segment(model: torch.nn.Module, entry, rgb: np.ndarray) -> np.ndarray:
    """Class-index mask (H, W) for an RGB uint8 image of any size."""
    from espnet_mobile.deploy import reference_forward

    x = torch.from_numpy(preprocess(rgb, entry.input_height, entry.input_width))
    logits = reference_forward(model, entry, x)
    if logits.shape[-2:] != x.shape[-2:]:  # ESPNet-C: logits at 1/8
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return resize_mask_nearest(argmax_mask(logits.numpy()), *rgb.shape[:2])


def class_shares(mask: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    total = counts.sum()
    return {classes[i]: counts[i] / total for i in np.argsort(-counts) if counts[i] > 0}


def predict_files(images: list[Path], model_id: str, out: Path,
                  weights: str | None = None) -> list[Prediction]:
    from espnet_mobile import PRETRAINED, create_model
    from espnet_mobile.zoo import get_entry

    entry = get_entry(model_id)
    # Read every image first: a bad file fails before any model work or output.
    photos = [(path, load_rgb(path)) for path in images]
    model = create_model(model_id, weights=weights or PRETRAINED)
    results = []
    for path, rgb in photos:
        mask = segment(model, entry, rgb)
        stem = path.stem
        save_png_atomic(palette_image(mask, entry.data.palette), out / f"{stem}_mask.png")
        save_png_atomic(Image.fromarray(overlay(rgb, mask, entry.data.palette)), out / f"{stem}_overlay.png")
        results.append(Prediction(path, mask, class_shares(mask, entry.data.classes)))
    return results


def main(argv: list[str] | None = None) -> int:
    from espnet_mobile.zoo import DEFAULT_MODEL_ID

    parser = argparse.ArgumentParser(prog="python -m espnet_mobile.predict",
                                     description="Segment images with a reference model.")
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help=f"zoo id (default {DEFAULT_MODEL_ID})")
    parser.add_argument("--weights", default=None,
                        help="checkpoint path (default: the published checkpoint)")
    parser.add_argument("--out", type=Path, default=Path("predictions"),
                        help="output folder for <name>_mask.png and <name>_overlay.png")
    args = parser.parse_args(argv)

    def body() -> int:
        if len({p.stem for p in args.images}) != len(args.images):
            raise UserError("two input images share a file name stem; their outputs would collide")
        for pred in predict_files(args.images, args.model, args.out, args.weights):
            shares = ", ".join(f"{name} {share:.1%}" for name, share in pred.shares.items() if share >= 0.001)
            print(f"{pred.image}: {shares}")
            print(f"  -> {args.out / (pred.image.stem + '_mask.png')}, "
                  f"{args.out / (pred.image.stem + '_overlay.png')}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
