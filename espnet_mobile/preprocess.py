"""The pre- and post-processing contract shared by Python, the Android and the iOS apps.

Every step is a small, fully specified algorithm (no library resampler whose
rounding we cannot reproduce), so the Kotlin and Swift ports compute the same
numbers from the same bytes. The bundle's manifest names these steps and the
golden vectors prove the ports agree.

Pre-processing (image -> model input):
  1. decode to 8-bit RGB, EXIF orientation applied (``espnet_mobile.data.images.load_rgb``);
  2. resize to the model's H x W by bilinear interpolation with half-pixel
     centres: source coordinate ``(dst + 0.5) * in / out - 0.5`` clamped to
     ``[0, in - 1]``, computed in float64 on the 0-255 values;
  3. divide by 255 and store float32 NCHW (RGB). Normalization is inside the model.

Post-processing (logits -> mask):
  1. argmax over the class axis, the lowest index winning ties;
  2. resize the mask to the image size by nearest neighbour with half-pixel
     centres: source index ``floor((dst + 0.5) * in / out)`` clamped to ``in - 1``;
  3. colourize with the palette; overlay = ``floor(img * (1 - a) + colour * a + 0.5)``, a = 0.5.
"""

from __future__ import annotations

import numpy as np


def parse_input_size(text: str) -> tuple[int, int]:
    """``--input-size HxW`` as (height, width): the size photos are resized to here."""
    from espnet_mobile.errors import UserError

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--input-size must look like 256x256 (height x width), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise UserError(f"--input-size must be positive, got {text!r}")
    return h, w

PREPROCESSING_SPEC = {
    "decode": "8-bit RGB, EXIF orientation applied",
    "resize": "bilinear, half-pixel centres, edge clamp, float64 on 0-255 values",
    "scale": "divide by 255 to [0, 1], float32",
    "layout": "NCHW",
    "normalization": "baked into the model",
}
POSTPROCESSING_SPEC = {
    "argmax": "over the class axis; lowest index wins ties",
    "mask_resize": "nearest neighbour, half-pixel centres",
    "overlay": "floor(image * (1 - alpha) + colour * alpha + 0.5), alpha 0.5",
}
OVERLAY_ALPHA = 0.5


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: left source index, right source index, right weight."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    left = np.floor(src).astype(np.int64)
    right = np.minimum(left + 1, n_in - 1)
    return left, right, src - left


def resize_bilinear(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (height, width, 3) float64 on the 0-255 scale."""
    img = rgb.astype(np.float64)
    y0, y1, wy = _bilinear_axis(img.shape[0], height)
    x0, x1, wx = _bilinear_axis(img.shape[1], width)
    rows = img[y0] * (1.0 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    return rows[:, x0] * (1.0 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def preprocess(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> (1, 3, height, width) float32 in [0, 1]: the artifacts' input."""
    resized = resize_bilinear(rgb, height, width) / 255.0
    return np.ascontiguousarray(resized.transpose(2, 0, 1)[None].astype(np.float32))


def argmax_mask(logits: np.ndarray) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) logits -> (H, W) uint8 class indices (first max wins)."""
    logits = np.asarray(logits)
    if logits.ndim == 4:
        logits = logits[0]
    return np.argmax(logits, axis=0).astype(np.uint8)


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    ys = np.minimum(np.floor((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.int64),
                    mask.shape[0] - 1)
    xs = np.minimum(np.floor((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.int64),
                    mask.shape[1] - 1)
    return mask[ys][:, xs]


def colorize(mask: np.ndarray, palette) -> np.ndarray:
    return np.asarray(palette, dtype=np.uint8)[mask]


def overlay(rgb: np.ndarray, mask: np.ndarray, palette, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the colourized mask (same size as ``rgb``) over the photo."""
    blended = rgb.astype(np.float64) * (1.0 - alpha) + colorize(mask, palette).astype(np.float64) * alpha
    return np.floor(blended + 0.5).astype(np.uint8)
