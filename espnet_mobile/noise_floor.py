"""How much of the fp32 model's own argmax survives input noise of one 8-bit level.

An int8 artifact is judged by its argmax agreement with the fp32 reference. That figure
means something only where the fp32 decision is itself stable: if moving each input value
by one level of an 8-bit image (the smallest change such an image can carry) already changes
3% of the pixels, an int8 agreement of 97% is a demand on fp32's indecision as much as on
int8. This module measures that floor on the same photos the agreement is measured on, in
PyTorch: the reference's argmax on each photo against its argmax on the photo with every value
moved by -1, 0 or +1 levels at random (several seeds, pooled). Values at 0 or 1 are clamped, so
saturated pixels move less and the floor reads slightly high on photos with many of them.

``python -m espnet_mobile.noise_floor --model ID`` prints it per photo; the zoo sweep puts
it beside each model's int8 agreement (docs/zoo.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from espnet_mobile.errors import UserError, run_cli

#: Largest move of one input value, in levels of an 8-bit image (1/255 of the [0, 1] range).
DEFAULT_LEVELS = 1
#: Noise draws per photo; the agreement is pooled over them.
DEFAULT_SEEDS = 2


def perturb(x: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
    """``x`` (RGB in [0, 1]) with each value moved by a random whole number of levels in [-levels, levels]."""
    steps = torch.randint(-levels, levels + 1, x.shape, generator=generator).to(x.dtype)
    return (x + steps / 255.0).clamp(0.0, 1.0)


def input_noise_agreement(model: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[torch.Tensor], *,
                          levels: int = DEFAULT_LEVELS, seeds: int = DEFAULT_SEEDS,
                          ) -> tuple[float, list[float]]:
    """Pooled share of pixels whose argmax is unchanged by :func:`perturb`, and the share per input.

    ``model`` maps (1, 3, H, W) RGB in [0, 1] to (1, C, h, w) logits. The seeds are fixed
    (0 .. seeds-1), so the same model and photos give the same figure.
    """
    if levels < 1 or seeds < 1:
        raise ValueError(f"levels and seeds must be at least 1, got {levels} and {seeds}")
    agree = total = 0
    per_input = []
    with torch.no_grad():
        for x in inputs:
            reference = model(x).argmax(1)
            same = 0
            for seed in range(seeds):
                noisy = perturb(x, levels, torch.Generator().manual_seed(seed))
                same += int((model(noisy).argmax(1) == reference).sum())
            agree += same
            total += reference.numel() * seeds
            per_input.append(same / (reference.numel() * seeds))
    return agree / max(total, 1), per_input


@dataclass
class NoiseFloor:
    """The floor of one model on one set of photos."""

    model_id: str
    input_size: str
    photos: str
    agreement: float
    per_photo: dict[str, float] = field(default_factory=dict)
    levels: int = DEFAULT_LEVELS
    seeds: int = DEFAULT_SEEDS


def measure(model_id: str, *, photos: Sequence[Path] | None = None, photos_description: str = "",
            limit: int | None = None, input_size: tuple[int, int] | None = None, weights: str | None = None,
            levels: int = DEFAULT_LEVELS, seeds: int = DEFAULT_SEEDS) -> NoiseFloor:
    """The floor of zoo model ``model_id`` on ``photos`` (default: the photos ``parity`` checks it on)."""
    import espnet_mobile as em
    from espnet_mobile.data.domain_photos import domain_photos
    from espnet_mobile.data.images import load_rgb
    from espnet_mobile.deploy import reference_forward
    from espnet_mobile.preprocess import preprocess
    from espnet_mobile.zoo import get_entry

    entry = get_entry(model_id)
    if photos is None:
        choice = domain_photos(entry, "check", limit)
        if choice is None:
            raise UserError(f"no photos of {model_id}'s domain: set $ESPNET_MOBILE_IMAGES (and "
                            "$ESPNET_MOBILE_DATASETS for CamVid frames) or pass --images DIR")
        photos, photos_description = choice.paths, choice.description
    elif limit is not None:
        photos = list(photos)[:limit]
    if not photos:
        raise UserError("no photos to measure the noise floor on")
    height, width = input_size or (entry.input_height, entry.input_width)
    model = em.create_model(model_id, weights=weights or em.PRETRAINED).eval()
    inputs = [torch.from_numpy(preprocess(load_rgb(p), height, width)).reshape(1, 3, height, width) for p in photos]
    pooled, per_input = input_noise_agreement(lambda x: reference_forward(model, entry, x), inputs,
                                              levels=levels, seeds=seeds)
    return NoiseFloor(model_id, f"{height}x{width}", photos_description or f"{len(photos)} photos", pooled,
                      {str(p): a for p, a in zip(photos, per_input, strict=True)}, levels, seeds)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m espnet_mobile.noise_floor",
        description="Argmax agreement of a zoo model's fp32 reference with itself under input noise of one "
                    "8-bit level: a yardstick for an int8 artifact's agreement with fp32 on the same photos.")
    parser.add_argument("--model", required=True, help="zoo id")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of photos (default: the model's domain, as parity picks them)")
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N photos (default: 16 of the model's domain, or every photo of --images)")
    parser.add_argument("--input-size", default=None, metavar="HxW", help="default: the zoo's")
    parser.add_argument("--weights", default=None, help="checkpoint (default: the published one)")
    parser.add_argument("--levels", type=int, default=DEFAULT_LEVELS,
                        help="largest move of one input value, in 8-bit levels (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="noise draws per photo (default %(default)s)")
    args = parser.parse_args(argv)
    for name in ("limit", "levels", "seeds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if args.images is not None and not args.images.is_dir():
        raise UserError(f"--images: {args.images} is not a folder")
    if args.input_size:
        from espnet_mobile.preprocess import parse_input_size

        args.input_size = parse_input_size(args.input_size)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from espnet_mobile.data.domain_photos import folder_photos
        from espnet_mobile.zoo import get_entry

        args = parse_args(argv)
        get_entry(args.model)  # an unknown id fails before any photo is read
        photos, description = None, ""
        if args.images is not None:
            choice = folder_photos(args.images, args.limit)
            photos, description = choice.paths, choice.description
        floor = measure(args.model, photos=photos, photos_description=description, limit=args.limit,
                        input_size=args.input_size, weights=args.weights, levels=args.levels, seeds=args.seeds)
        print(f"{floor.model_id} at {floor.input_size}, {floor.photos}; each input value moved by up to "
              f"{floor.levels} level(s) of 255, {floor.seeds} draws per photo")
        for path, share in floor.per_photo.items():
            print(f"  {share:7.2%}  {Path(path).name}")
        print(f"fp32 argmax unchanged on {floor.agreement:.2%} of the pixels")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
