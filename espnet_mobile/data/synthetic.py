"""Deterministic synthetic labelled scenes: test data that needs no files.

Each scene is a textured gradient background (class 0) with a few ellipses and
rectangles, each of one class whose colour is fixed per class (with noise),
so a network can learn the mapping. Same seed, same scene, on every machine.
"""

from __future__ import annotations

import numpy as np


def class_colour(class_index: int) -> np.ndarray:
    """A fixed, well separated RGB colour per class."""
    rng = np.random.default_rng(10_000 + class_index)
    return rng.integers(30, 226, size=3).astype(np.float64)


def scene(seed: int, height: int, width: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (H, W, 3), label uint8 (H, W)) for one seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    top, bottom = rng.uniform(40, 215, size=(2, 3))
    t = yy / max(height - 1, 1)
    img = top[None, None] * (1 - t[..., None]) + bottom[None, None] * t[..., None]
    img += 12.0 * np.sin(xx[..., None] / rng.uniform(3, 9) + rng.uniform(0, 6, size=3))
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, num_classes)) if num_classes > 1 else 0
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.08, 0.3) * height, rng.uniform(0.08, 0.3) * width
        if rng.random() < 0.5:
            region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        else:
            region = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        colour = class_colour(cls) + rng.normal(0, 6, size=3)
        img[region] = colour + rng.normal(0, 4, size=(int(region.sum()), 3))
        label[region] = cls
    return np.clip(np.round(img), 0, 255).astype(np.uint8), label


def scenes(count: int, height: int, width: int, num_classes: int, *, first_seed: int = 0):
    """``count`` scenes with consecutive seeds."""
    return [scene(first_seed + i, height, width, num_classes) for i in range(count)]
