"""Training and held-out data for QAT: labelled datasets, synthetic scenes, or photos for distillation.

Every random choice is a pure function of ``(seed, phase, sample position)``:
sample ``p`` of a run is the same image with the same crop, scale and flip
whether the run is resumed, uninterrupted, or split over several processes
(process ``r`` of ``w`` takes positions ``r*b .. r*b+b-1`` of each global batch
of ``w*b``). Nothing depends on a generator's history, so a checkpoint needs no
data-loader state.

Held-out split:

* ``synthetic[:N]``: N scenes (default 16) generated at the input size, seeds
  0..N-1; training scenes use seeds from 100000 and never overlap;
* ``cityscapes:`` / ``voc:`` / ``camvid:``: the ``val`` split, each image resized to
  the input size as the apps do (:func:`espnet_mobile.preprocess.preprocess`),
  labels by nearest neighbour; training uses the ``train`` split;
* ``distill:DIR``: every fourth photo in name order (at least one) is held out,
  the first ``eval_limit`` of them are scored, each in :data:`HOLDOUT_VIEWS` fixed
  crops; their labels are the teacher's argmax, computed once; with a labelled
  ``eval_data`` (``--eval-data camvid:DIR``) every photo trains and that dataset's
  ``val`` split, with its labels, is scored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from espnet_mobile.data import IGNORE, DataSpec, iter_samples, parse_spec
from espnet_mobile.errors import UserError

DATA_KINDS = ("synthetic", "cityscapes", "voc", "camvid", "distill")
SYNTHETIC_TRAIN_SCENES = 512
SYNTHETIC_TRAIN_FIRST_SEED = 100_000
#: Random scale of a training crop, relative to the scale at which the image just covers the crop.
SCALE_RANGE = (1.0, 1.75)
#: Held-out views of a distillation photo: (relative side, centre y, centre x); 1.0 is the whole photo.
HOLDOUT_VIEWS = ((1.0, 0.5, 0.5), (0.7, 0.5, 0.5), (0.6, 0.3, 0.3), (0.6, 0.3, 0.7), (0.6, 0.7, 0.3),
                 (0.6, 0.7, 0.7))
HOLDOUT_EVERY = 4
CACHE_IMAGES = 64
PHASES = {"fp32": 1, "qat": 2, "calibration": 3}


@dataclass(frozen=True)
class QATData:
    """What training draws from and what evaluation scores."""

    spec: str
    kind: str  # one of DATA_KINDS
    train: list[Callable[[], tuple[np.ndarray, np.ndarray | None]]]
    train_names: list[str]
    heldout_inputs: np.ndarray  # (N, 3, H, W) float32 in [0, 1]
    heldout_labels: np.ndarray | None  # (N, H, W) uint8; None for distill until the teacher labels them
    heldout_names: list[str] = field(default_factory=list)
    eval_data: str | None = None  # the labelled dataset scoring a distill: run, if any

    @property
    def distill(self) -> bool:
        return self.kind == "distill"


class _Cache:
    """A small LRU of decoded training images (a dataset of thousands does not fit)."""

    def __init__(self, size: int) -> None:
        self.size, self.items = size, OrderedDict()

    def get(self, key, make):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = make()
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


_CACHE = _Cache(CACHE_IMAGES)


def parse_data(text: str) -> tuple[str, DataSpec | Path]:
    """``synthetic[:N]``, ``cityscapes:DIR``, ``voc:DIR``, ``camvid:DIR`` or ``distill:DIR``."""
    kind, sep, rest = text.partition(":")
    if kind == "distill":
        if not sep or not rest:
            raise UserError("distill needs a folder of photos: --data distill:DIR")
        folder = Path(rest)
        if not folder.is_dir():
            raise UserError(f"data folder {folder} does not exist")
        return "distill", folder
    if kind not in DATA_KINDS:
        raise UserError(f"unknown data spec {text!r}; use synthetic, cityscapes:DIR, voc:DIR, camvid:DIR "
                        "or distill:DIR")
    spec = parse_spec(text)
    if spec.kind not in DATA_KINDS:
        raise UserError(f"--data {text!r} has no labels; use distill:DIR for unlabelled photos")
    return spec.kind, spec


def _heldout_from_samples(samples, height: int, width: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from espnet_mobile.preprocess import preprocess, resize_mask_nearest

    inputs, labels, names = [], [], []
    for s in samples:
        inputs.append(preprocess(s.rgb, height, width)[0])
        labels.append(resize_mask_nearest(s.label, height, width))
        names.append(s.name)
    if not inputs:
        raise UserError("the held-out split is empty")
    return np.stack(inputs), np.stack(labels).astype(np.uint8), names


def _view(rgb: np.ndarray, side: float, cy: float, cx: float, height: int, width: int) -> np.ndarray:
    """A crop of ``side`` of the photo (keeping the model's aspect), centred at (cy, cx), at the input size."""
    h, w = rgb.shape[:2]
    cover = max(height / h, width / w)
    ch, cw = min(height / cover * side, h), min(width / cover * side, w)  # min: float rounding past the edge
    y0 = max(0.0, min(cy * h - ch / 2, h - ch))
    x0 = max(0.0, min(cx * w - cw / 2, w - cw))
    return _resize_box(rgb, (x0, y0, x0 + cw, y0 + ch), width, height)


def _holdout_views(rgb: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """The :data:`HOLDOUT_VIEWS` of a photo as model inputs: (3, H, W) float32 in [0, 1] each."""
    return [_view(rgb, *view, height, width).transpose(2, 0, 1).astype(np.float32) / 255.0 for view in HOLDOUT_VIEWS]


def _resize_box(rgb: np.ndarray, box, width: int, height: int) -> np.ndarray:
    img = Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR, box=box)
    return np.asarray(img, dtype=np.uint8)


def load_data(text: str, *, height: int, width: int, num_classes: int, eval_limit: int | None = None,
              eval_data: str | None = None) -> QATData:
    """Open a ``--data`` spec: lazy training samples and the held-out inputs (and labels)."""
    from espnet_mobile.data import LAYOUTS
    from espnet_mobile.data.images import list_images, load_rgb

    kind, spec = parse_data(text)
    if kind == "distill":
        files = list_images(spec)
        if eval_data is not None:
            eval_kind, eval_spec = parse_data(eval_data)
            if eval_kind in ("distill", "synthetic"):
                raise UserError(f"--eval-data {eval_data!r} has no labels; use camvid:DIR, cityscapes:DIR or voc:DIR")
            if not files:
                raise UserError(f"distill:{spec} has no photos")
            heldout = _heldout_from_samples(iter_samples(eval_spec, split="val", limit=eval_limit), height, width)
            if not len(heldout[0]):
                raise UserError(f"--eval-data {eval_data}: no val split to score")
            return QATData(text, kind, [_photo_loader(f) for f in files], [f.name for f in files], heldout[0],
                           heldout[1], heldout[2], eval_data=eval_data)
        if len(files) < 2:
            raise UserError(f"distill:{spec} needs at least 2 photos (one is held out), found {len(files)}")
        held = [f for i, f in enumerate(files) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1] or [files[-1]]
        train = [f for f in files if f not in held]
        # --eval-limit caps the photos scored (each in every view); the rest stay out of training, so
        # the training set does not depend on how much is scored.
        scored = held[:eval_limit]  # None scores them all, as for the labelled datasets
        views, names = [], []
        for f in scored:
            views += _holdout_views(load_rgb(f), height, width)
            names += [f"{f.stem}#{j}" for j in range(len(HOLDOUT_VIEWS))]
        loaders = [_photo_loader(f) for f in train]
        return QATData(text, kind, loaders, [f.name for f in train], np.stack(views), None, names)

    if kind == "synthetic":
        heldout = _heldout_from_samples(iter_samples(spec, split="val", height=height, width=width,
                                                     num_classes=num_classes), height, width)
        gen_h, gen_w = round(height * SCALE_RANGE[1]), round(width * SCALE_RANGE[1])
        loaders = [_synthetic_loader(SYNTHETIC_TRAIN_FIRST_SEED + i, gen_h, gen_w, num_classes)
                   for i in range(SYNTHETIC_TRAIN_SCENES)]
        names = [f"synthetic_{SYNTHETIC_TRAIN_FIRST_SEED + i}" for i in range(SYNTHETIC_TRAIN_SCENES)]
        return QATData(text, kind, loaders, names, heldout[0], heldout[1], heldout[2])

    pairs = LAYOUTS[kind](spec.path, "train")
    if not pairs:
        raise UserError(f"no {kind} training samples (split 'train') under {spec.path}")
    heldout = _heldout_from_samples(iter_samples(spec, split="val", limit=eval_limit), height, width)
    loaders = [_pair_loader(kind, img, label) for _, img, label in pairs]
    return QATData(text, kind, loaders, [name for name, _, _ in pairs], heldout[0], heldout[1], heldout[2])


def _photo_loader(path: Path):
    def load():
        from espnet_mobile.data.images import load_rgb

        return _CACHE.get(("photo", str(path)), lambda: (load_rgb(path), None))

    return load


def _synthetic_loader(seed: int, height: int, width: int, num_classes: int):
    def load():
        from espnet_mobile.data import synthetic

        return _CACHE.get(("synthetic", seed, height, width, num_classes),
                          lambda: synthetic.scene(seed, height, width, num_classes))

    return load


def _pair_loader(kind: str, img: Path, label: Path):
    def make():
        from espnet_mobile.data import _read_label
        from espnet_mobile.data.images import load_rgb

        rgb, lab = load_rgb(img), _read_label(label)
        if lab.shape != rgb.shape[:2]:
            raise UserError(f"{label} is {lab.shape[::-1]} but its image is {rgb.shape[1::-1]}")
        if kind == "camvid":
            lab = np.where(lab >= 11, IGNORE, lab).astype(np.uint8)
        return rgb, lab

    def load():
        return _CACHE.get((kind, str(img)), make)

    return load


# --------------------------------------------------------------------------- class weights

#: ESPNet's own training weighs class c by 1 / ln(CLASS_WEIGHT_OFFSET + share of c among the labelled
#: training pixels): a class with a 1% share weighs 9.6, the most common one about 3.
CLASS_WEIGHT_OFFSET = 1.10
CLASS_WEIGHTS = ("none", "inverse-log")


def class_weights(data: QATData, num_classes: int) -> np.ndarray:
    """Loss weight per class from the training labels (ESPNet's inverse-log weighting), float32 (num_classes,)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for load in data.train:
        label = load()[1]
        if label is None:
            raise UserError("--class-weights needs labels: the training data has none (for distill: photos, the "
                            "weights come from the teacher's labels instead)")
        counts += class_pixels(label, num_classes)
    return inverse_log_weights(counts)


def class_pixels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Scored pixels of each class in label masks (IGNORE skipped), int64 (num_classes,)."""
    kept = labels[labels != IGNORE].astype(np.int64)
    return np.bincount(kept, minlength=num_classes)[:num_classes]


def inverse_log_weights(counts: np.ndarray) -> np.ndarray:
    """1 / ln(CLASS_WEIGHT_OFFSET + share) per class, float32."""
    share = counts / max(int(counts.sum()), 1)
    return (1.0 / np.log(CLASS_WEIGHT_OFFSET + share)).astype(np.float32)


# --------------------------------------------------------------------------- sampling


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng([seed, *words])


def sample_index(seed: int, phase: str, position: int, n: int) -> int:
    """Training item of sample ``position``: a fresh permutation of the training set per epoch."""
    epoch, offset = divmod(position, n)
    return int(_rng(seed, PHASES[phase], 7, epoch).permutation(n)[offset])


def augment(rgb: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, height: int,
            width: int, scale_range: tuple[float, float] = SCALE_RANGE) -> tuple[np.ndarray, np.ndarray | None]:
    """Random scale (``scale_range`` of the covering scale), random crop, random horizontal flip.

    ``(1.0, 1.0)`` trains on whole frames resized to the input size, as evaluation sees them.
    """
    h, w = rgb.shape[:2]
    scale = max(height / h, width / w) * rng.uniform(*scale_range)
    ch, cw = min(height / scale, h), min(width / scale, w)
    y0, x0 = rng.uniform(0, h - ch), rng.uniform(0, w - cw)
    flip = rng.random() < 0.5
    box = (x0, y0, x0 + cw, y0 + ch)
    out = _resize_box(rgb, box, width, height)
    lab = None
    if label is not None:
        lab = np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST, box=box),
                         dtype=np.uint8)
    if flip:
        out = out[:, ::-1]
        lab = None if lab is None else lab[:, ::-1]
    return out, lab


def batch(data: QATData, *, seed: int, phase: str, step: int, global_batch: int, rank: int, world: int,
          height: int, width: int, scale_range: tuple[float, float] = SCALE_RANGE
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """This process's share of global batch ``step``: (b, 3, H, W) float32 in [0, 1] and (b, H, W) labels."""
    local = global_batch // world
    images, labels = [], []
    n = len(data.train)
    for j in range(rank * local, (rank + 1) * local):
        position = step * global_batch + j
        rgb, label = data.train[sample_index(seed, phase, position, n)]()
        out, lab = augment(rgb, label, _rng(seed, PHASES[phase], 11, position), height, width, scale_range)
        images.append(out.transpose(2, 0, 1).astype(np.float32) / 255.0)
        labels.append(lab)
    x = np.ascontiguousarray(np.stack(images))
    y = None if labels[0] is None else np.ascontiguousarray(np.stack(labels))
    return x, y


def training_views(data: QATData, *, seed: int, count: int, height: int, width: int) -> np.ndarray:
    """Up to ``count`` training images, each cut into :data:`HOLDOUT_VIEWS` as held-out photos are: (N, 3, H, W).

    What training crops can show, at the zooms the held-out crops use: a class the teacher finds
    only when zoomed in is missed by a look at whole photos.
    """
    views = []
    for i in _training_picks(data, seed, count):
        views += _holdout_views(data.train[i]()[0], height, width)
    return np.stack(views)


def _training_picks(data: QATData, seed: int, count: int) -> list[int]:
    """All training items, or ``count`` of them drawn once per seed (the same draw for every caller)."""
    n = len(data.train)
    return list(range(n)) if n <= count else sorted(_rng(seed, PHASES["calibration"]).choice(n, count, False))


def calibration_inputs(data: QATData, *, seed: int, count: int, height: int, width: int) -> list[np.ndarray]:
    """Inputs for the PTQ baseline: training images resized whole (and flipped), as ``convert`` calibrates."""
    from espnet_mobile.preprocess import preprocess

    out = []
    for i in _training_picks(data, seed, count):
        rgb, _ = data.train[i]()
        out.append(preprocess(rgb, height, width))
        out.append(preprocess(np.ascontiguousarray(rgb[:, ::-1]), height, width))
    return out
