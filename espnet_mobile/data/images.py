"""Reading photos of any mode and size, and turning them into model input and back.

Every mode Pillow opens is accepted: RGB, RGBA (alpha dropped), L, LA, P,
CMYK, 16-bit greyscale (scaled to 8 bits); EXIF orientation is applied so
the mask lines up with what a viewer shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from espnet_mobile.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array, upright per its EXIF tag."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"image {path} does not exist; check the path")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an image")
    if path.stat().st_size == 0:
        raise UserError(f"image {path} is empty (0 bytes); pass a real image file")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb_array(img)
    except Image.DecompressionBombError as err:
        raise UserError(f"{path} is too large to decode safely ({err}); pass a photo of at most "
                        f"{Image.MAX_IMAGE_PIXELS * 2:,} pixels (downscale it first)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path} is not a readable image ({err}); pass a JPEG, PNG or other "
                        "image Pillow can open") from None


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow image -> (H, W, 3) uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or data.max() > 255 else 255.0
        grey = np.clip(np.round(data / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        data = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.round(data * (255.0 if data.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def palette_image(mask: np.ndarray, palette: tuple[tuple[int, int, int], ...]) -> Image.Image:
    """A 'P' mode image whose pixel values are class indices and whose palette is the dataset's."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [v for colour in palette for v in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def save_png_atomic(img: Image.Image, path: Path) -> None:
    """Write a PNG whole or not at all (see :mod:`espnet_mobile.files`)."""
    import io

    from espnet_mobile.files import write_bytes_atomic

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(Path(path), buf.getvalue())


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; an empty or missing folder is a user error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return found
