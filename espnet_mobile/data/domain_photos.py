"""Photos of a model's own domain, for agreement checks, golden vectors and int8 calibration.

A street-scene model (Cityscapes, CamVid) shown a photo of a cat is unsure of every
pixel; its argmax then flips on noise, and fp32-vs-int8 agreement measures that noise
rather than quantization. So every check that compares an artifact with the reference
uses photos of the model's domain unless the user names a folder:

* street scenes (``cityscapes`` and ``camvid`` models): the Cityscapes frames of the
  photo folder (``*_leftImg8bit.*``) and CamVid frames from the datasets folder
  (``$ESPNET_MOBILE_DATASETS/camvid``: ``val/`` for checks, ``train/`` for calibration,
  so calibration never sees a photo the check scores); the model's own dataset first;
* PASCAL VOC models: the other photos of the photo folder (everyday scenes).

Photos come from ``$ESPNET_MOBILE_IMAGES`` and ``$ESPNET_MOBILE_DATASETS``; every
caller says which photos it used (``PhotoChoice.description``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGES_ENV = "ESPNET_MOBILE_IMAGES"
DATASETS_ENV = "ESPNET_MOBILE_DATASETS"
STREET_DATASETS = ("cityscapes", "camvid")
# File names of street scenes in a photo folder: Cityscapes frames, and the frame of ESPNet's
# sample video (a street scene pasted beside its segmentation, so no use as a photo of any domain).
CITYSCAPES_FRAME = "*_leftImg8bit.*"
NOT_A_PLAIN_PHOTO = ("espnet_sample.*",)
CHECK_PHOTOS = 16
CALIBRATION_PHOTOS = 64


@dataclass(frozen=True)
class PhotoChoice:
    """Photos picked for a purpose, and a sentence that says where they came from."""

    paths: list[Path]
    description: str


def domain(entry) -> str:
    return "street scenes" if entry.dataset in STREET_DATASETS else "PASCAL VOC scenes"


def _env_dir(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value and Path(value).is_dir() else None


def evenly(paths: list[Path], count: int) -> list[Path]:
    """``count`` paths spread over the whole sorted list (a sequence's frames are alike in runs)."""
    if len(paths) <= count:
        return paths
    return [paths[round(i * (len(paths) - 1) / max(1, count - 1))] for i in range(count)]


def _matches(path: Path, patterns: tuple[str, ...]) -> bool:
    return any(path.match(p) for p in patterns)


def domain_photos(entry, purpose: str = "check", count: int | None = None, *,
                  images_dir: Path | None = None, datasets_dir: Path | None = None) -> PhotoChoice | None:
    """Photos of ``entry``'s domain for ``purpose`` (``check`` or ``calibration``); None when there are none.

    ``images_dir`` and ``datasets_dir`` default to ``$ESPNET_MOBILE_IMAGES`` and ``$ESPNET_MOBILE_DATASETS``.
    """
    from espnet_mobile.data.images import IMAGE_SUFFIXES

    if purpose not in ("check", "calibration"):
        raise ValueError(f"purpose must be 'check' or 'calibration', got {purpose!r}")
    count = count or (CHECK_PHOTOS if purpose == "check" else CALIBRATION_PHOTOS)
    images_dir = images_dir or _env_dir(IMAGES_ENV)
    datasets_dir = datasets_dir or _env_dir(DATASETS_ENV)
    photos = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if images_dir is not None else []
    photos = [p for p in photos if not _matches(p, NOT_A_PLAIN_PHOTO)]

    if entry.dataset not in STREET_DATASETS:
        chosen = [p for p in photos if not _matches(p, (CITYSCAPES_FRAME,))][:count]
        if not chosen:
            return None
        return PhotoChoice(chosen, f"{len(chosen)} everyday photos from {images_dir}")

    groups: dict[str, tuple[list[Path], str]] = {}
    frames = [p for p in photos if _matches(p, (CITYSCAPES_FRAME,))]
    if frames:
        groups["cityscapes"] = (frames, f"Cityscapes frames from {images_dir}")
    split = "val" if purpose == "check" else "train"
    camvid_dir = datasets_dir / "camvid" / split if datasets_dir is not None else None
    if camvid_dir is not None and camvid_dir.is_dir():
        groups["camvid"] = (sorted(camvid_dir.glob("*.png")), f"CamVid {split} frames from {camvid_dir}")
    order = [entry.dataset] + [d for d in STREET_DATASETS if d != entry.dataset]
    chosen, parts = [], []
    for name in order:
        if name not in groups or len(chosen) >= count:
            continue
        paths, where = groups[name]
        picked = evenly(paths, count - len(chosen))
        if picked:
            chosen += picked
            parts.append(f"{len(picked)} {where}")
    if not chosen:
        return None
    return PhotoChoice(chosen, " + ".join(parts))


def folder_photos(folder: Path, count: int | None = None) -> PhotoChoice:
    """Every photo of a folder the user named (at most ``count``)."""
    from espnet_mobile.data.images import list_images

    paths = list_images(folder)[:count]
    return PhotoChoice(paths, f"{len(paths)} photos from {folder}")
