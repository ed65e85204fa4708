"""Per-dataset input statistics, computed the way ESPNet (v1)'s authors computed them.

ESPNet's training code (``train/loadData.py`` in sacmehta/ESPNet) does not use fixed
ImageNet figures: it reads every photo of the training list with OpenCV (BGR order,
0-255), takes each channel's mean and standard deviation over that one photo, and
averages those per-photo figures over the list (float32 accumulators). The network
is then trained on ``(bgr - mean) / std / 255``. A checkpoint therefore expects the
statistics of the dataset it was trained on; feeding the CamVid checkpoint the
Cityscapes figures turns its output into noise (16 mIoU instead of about 70).

``python -m espnet_mobile.zoo --dataset-stats camvid:DIR`` runs this on a copy of a
dataset, so anyone can re-derive the figures the zoo records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from espnet_mobile.errors import UserError


@dataclass(frozen=True)
class ChannelStats:
    """Mean and std per channel in ``color_order``, on the 0-255 scale."""

    color_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    images: int
    source: str

    def describe(self) -> str:
        mean = ", ".join(f"{v:.8g}" for v in self.mean)
        std = ", ".join(f"{v:.8g}" for v in self.std)
        return (f"{self.source}: {self.images} photos, {self.color_order} 0-255, "
                f"mean [{mean}], std [{std}]")


def training_photos(spec_text: str) -> tuple[str, list[Path]]:
    """The training photos of a dataset spec (``camvid:DIR``, ``cityscapes:DIR``, ``voc:DIR``)."""
    from espnet_mobile import data

    spec = data.parse_spec(spec_text)
    if spec.kind not in data.LAYOUTS:
        raise UserError(f"--dataset-stats takes camvid:DIR, cityscapes:DIR or voc:DIR, got {spec_text!r}")
    pairs = data.LAYOUTS[spec.kind](spec.path, "train")
    if not pairs:
        raise UserError(f"no {spec.kind} training photos under {spec.path} (expected the 'train' split)")
    return f"{spec.kind}:{spec.path} split train", [image for _, image, _ in pairs]


def authors_channel_stats(photos: list[Path], source: str = "",
                          progress: Callable[[int, int], None] | None = None) -> ChannelStats:
    """Average over ``photos`` of each photo's per-channel mean and (population) std, BGR 0-255.

    Mirrors the authors' loop: float64 figures per photo added into float32 sums,
    then divided by the photo count in float32.
    """
    from espnet_mobile.data.images import load_rgb

    if not photos:
        raise UserError("no photos to compute statistics from")
    mean = np.zeros(3, dtype=np.float32)
    std = np.zeros(3, dtype=np.float32)
    for i, path in enumerate(photos):
        bgr = load_rgb(path)[:, :, ::-1]
        for c in range(3):
            mean[c] += np.mean(bgr[:, :, c])
            std[c] += np.std(bgr[:, :, c])
        if progress is not None:
            progress(i + 1, len(photos))
    mean /= len(photos)
    std /= len(photos)
    return ChannelStats("BGR", tuple(float(v) for v in mean), tuple(float(v) for v in std),
                        len(photos), source)


def dataset_stats(spec_text: str, progress: Callable[[int, int], None] | None = None) -> ChannelStats:
    source, photos = training_photos(spec_text)
    return authors_channel_stats(photos, source, progress)
