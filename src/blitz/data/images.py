"""One image file -> a fixed-size uint8 array: conversion, resizing, and refusing bad files."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from blitz.errors import BlitzError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
# 16-bit grey images: PIL's convert() would clip them to 255 (white); scale them down instead
# (float images, mode "F", have their own scaling: see _scale_float)
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# how decode_image resizes: what an export's description tells its users (outputs.export)
RESIZE_FILTER = Image.Resampling.BILINEAR
RESIZE = "shorter side to the image size, then the middle cropped square (PIL ImageOps.fit)"


class BadImage(BlitzError):
    """An image file that cannot be decoded (corrupt, truncated, too large to be safe)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"cannot decode image {name}: {reason}")
        self.name, self.reason = name, reason

    def __reduce__(self):  # pickled from a decoding process
        return BadImage, (self.name, self.reason)


def check_pixels(name: str, width: int, height: int) -> None:
    """Refuse an image in memory larger than a file may decode to (PIL's MAX_IMAGE_PIXELS, 89
    million: past it a file is taken for a decompression bomb), before any copy is made."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise BlitzError(
            f"{name} is {width}x{height} ({width * height:,} pixels), more than the {limit:,} "
            "an image may have (PIL.Image.MAX_IMAGE_PIXELS, as for files): downscale it first"
        )


def decode_image(
    data: bytes, name: str, size: int, resized: list[int] | None = None, mode: str = "RGB"
) -> np.ndarray:
    """One image file as (size, size, channels) uint8: turned upright as its EXIF orientation
    says, converted, and where it is not size x size already, its shorter side resized to
    size and its middle cropped (the aspect ratio kept: a photo is not squashed)."""
    try:
        with warnings.catch_warnings():
            # a file that decodes to a huge image is refused, not decoded (a decompression bomb)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                # a JPEG much larger than size decodes at 1/2, 1/4 or 1/8 scale (still >= size)
                img.draft(mode, (size, size))
                _upright(img)
                img = _to_8bit(img).convert(mode)
                if img.size != (size, size):
                    img = ImageOps.fit(img, (size, size), RESIZE_FILTER)
                    if resized is not None:
                        resized[0] += 1
                return np.array(img).reshape(size, size, -1)  # writable: torch wants that
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(name, f"refused as a possible decompression bomb: {exc}") from None
    except UnidentifiedImageError:  # its message names a BytesIO, not the file
        raise BadImage(name, "not a readable image: corrupt, truncated or not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(name, str(exc)) from None


def _upright(img: Image.Image) -> None:
    """Turn a photo the way its EXIF orientation says (cameras store it sideways and say so)."""
    with warnings.catch_warnings():
        # a corrupt EXIF block only loses its orientation: the photo itself is still good
        warnings.simplefilter("ignore", UserWarning)
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an upright image


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode == "F":
        return _grey(_scale_float(np.asarray(img, dtype=np.float64)))
    if img.mode in _WIDE_MODES:
        return _grey(np.asarray(img, dtype=np.float64) / 257)
    return img


def _scale_float(values: np.ndarray) -> np.ndarray:
    # PIL's convert() would clip floats to 0-255, so the usual [0, 1] float image came out
    # black. Values all within [0, 1] are that convention (scikit-image, OpenCV, most float
    # TIFF writers) and are scaled by 255; any other image is taken as 0-255 already (what
    # tools that save 8-bit data as float write), and clipped. NaN is black.
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() >= 0 and finite.max() <= 1:
        values = values * 255
    return np.nan_to_num(values, nan=0.0)  # infinities become the largest floats: clipped


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
