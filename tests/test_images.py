"""decode_image: large JPEGs decode at a reduced scale and still match a full decode."""

import io

import numpy as np
from PIL import Image

from blitz.images import decode_image


def jpeg(width: int, height: int, mode: str = "RGB") -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    channels = [x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)]
    array = np.stack(channels, -1).astype(np.uint8)
    img = Image.fromarray(array).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def full_decode(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.array(img.convert("RGB").resize((size, size), Image.BILINEAR))


def test_a_large_jpeg_decoded_at_reduced_scale_matches_a_full_decode():
    data = jpeg(1600, 1200)
    with Image.open(io.BytesIO(data)) as img:
        assert img.draft("RGB", (64, 64)) is not None  # libjpeg really scales this one down
    image = decode_image(data, "big.jpg", 64)
    assert image.shape == (64, 64, 3)
    difference = np.abs(image.astype(int) - full_decode(data, 64).astype(int))
    assert difference.max() > 0  # decoded at 1/8 scale: not the full decode's pixels ...
    assert difference.mean() < 2 and difference.max() < 16  # ... but close to them


def test_jpegs_at_the_requested_size_and_grey_ones_decode_as_before():
    small = jpeg(32, 32)
    assert (decode_image(small, "small.jpg", 32) == full_decode(small, 32)).all()
    grey = jpeg(400, 300, mode="L")
    image = decode_image(grey, "grey.jpg", 48)
    assert image.shape == (48, 48, 3) and (image[..., 0] == image[..., 2]).all()
    assert np.abs(image.astype(int) - full_decode(grey, 48).astype(int)).mean() < 2
