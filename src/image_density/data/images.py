"""Image files to 8-bit arrays: decoding, grey levels, centre crop, resize.

One grey-level convention for the whole project: ITU-R 601 luma Y = 0.299 R + 0.587 G + 0.114 B,
rounded to 8 bits (`luma_uint8`; PIL's "L" mode uses the same weights in a coarser fixed point and
can differ by 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def luma_uint8(rgb: np.ndarray, axis: int = -1) -> np.ndarray:
    """uint8 RGB (channels along `axis`, which is removed) -> uint8 grey levels, ITU-R 601 luma,
    in exact integer arithmetic: (299 R + 587 G + 114 B) / 1000, halves rounded up."""
    r, g, b = (np.take(rgb, i, axis=axis).astype(np.int32) for i in range(3))
    return ((299 * r + 587 * g + 114 * b + 500) // 1000).astype(np.uint8)


def centre_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def open_image(path: Path) -> Image.Image:
    """Decode an image file fully; one clear error for anything that is not an 8-bit grey or colour image."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # all PIL uses
        raise ValueError(f"cannot decode image {path}: {err}") from None
    if img.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
        raise ValueError(f"image {path}: pixel mode {img.mode!r} is not 8-bit grey or colour")
    return img


def load_image(path: Path, size: int, grayscale: bool) -> np.ndarray:
    """An image file -> uint8 (C, size, size): centre square crop, bicubic resize (antialiased)."""
    img = open_image(path)
    if grayscale and img.mode != "L":
        img = Image.fromarray(luma_uint8(np.asarray(img.convert("RGB"))))
    elif not grayscale:
        img = img.convert("RGB")
    img = centre_square(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    x = np.asarray(img, dtype=np.uint8)
    return x[None] if grayscale else x.transpose(2, 0, 1)


def stack(paths: list[Path], size: int, grayscale: bool, chunk: int = 256):
    """Yield uint8 (B, C, size, size) chunks of the images at `paths`, in order."""
    for start in range(0, len(paths), chunk):
        yield np.stack([load_image(p, size, grayscale) for p in paths[start : start + chunk]])
