"""One image file -> a fixed-size uint8 array: conversion, resizing, and refusing bad files."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from blitz.errors import BlitzError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
# 16-bit grey images: PIL's convert() would clip them to 255 (white); scale them down instead
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class BadImage(BlitzError):
    """An image file that cannot be decoded (corrupt, truncated, too large to be safe)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"cannot decode image {name}: {reason}")
        self.reason = reason


def decode_image(
    data: bytes, name: str, size: int, resized: list[int] | None = None, mode: str = "RGB"
) -> np.ndarray:
    """One image file as (size, size, channels) uint8, converted and resized as needed."""
    try:
        with warnings.catch_warnings():
            # a file that decodes to a huge image is refused, not decoded (a decompression bomb)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                # a JPEG much larger than size decodes at 1/2, 1/4 or 1/8 scale (still >= size)
                img.draft(mode, (size, size))
                img = _to_8bit(img).convert(mode)
                if img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                    if resized is not None:
                        resized[0] += 1
                return np.array(img).reshape(size, size, -1)  # writable: torch wants that
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(name, f"refused as a possible decompression bomb: {exc}") from None
    except UnidentifiedImageError:  # its message names a BytesIO, not the file
        raise BadImage(name, "not a readable image: corrupt, truncated or not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(name, str(exc)) from None


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode not in _WIDE_MODES:
        return img
    wide = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.round(wide / 257), 0, 255).astype(np.uint8), "L")
