"""decode_image: large JPEGs decode at a reduced scale and still match a full decode; photos keep
their aspect ratio (shorter side resized, middle cropped); float TIFFs keep their greys; photos
are turned the way their EXIF orientation says."""

import io

import numpy as np
from PIL import Image, ImageOps

from blitz.data.images import decode_image


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
        return np.array(ImageOps.fit(img.convert("RGB"), (size, size), Image.BILINEAR))


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


def test_a_wide_photo_keeps_its_aspect_ratio_its_middle_cropped():
    array = np.zeros((32, 96, 3), np.uint8)  # three squares side by side: green, red, blue
    array[:, :32, 1] = array[:, 32:64, 0] = array[:, 64:, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    image = decode_image(buf.getvalue(), "wide.png", 16)
    # the middle square, not the three squashed (the edge columns blend with the neighbours)
    assert (image[:, 1:-1] == (255, 0, 0)).all() and (image[..., 0] > 200).all()


def tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.float32), "F").save(buf, format="TIFF")
    return buf.getvalue()


def test_a_float_tiff_in_0_1_decodes_to_its_greys():
    values = np.full((8, 8), 0.2)
    values[:, 4:] = 0.6
    values[0, 0], values[0, 1] = 1.0, 0.0
    image = decode_image(tiff(values), "float.tif", 8)
    expected = np.full((8, 8), 51)  # 0.2 * 255
    expected[:, 4:] = 153
    expected[0, 0], expected[0, 1] = 255, 0
    assert (image == expected[..., None]).all()


def test_a_float_tiff_beyond_0_1_is_taken_as_0_255_and_clipped():
    values = np.array([[100.0, 300.0, -5.0, np.nan]] * 4)
    image = decode_image(tiff(values), "float.tif", 4, mode="L")
    assert image[:, :, 0].tolist() == [[100, 255, 0, 0]] * 4


def test_a_jpeg_with_exif_orientation_6_decodes_turned_90_degrees_clockwise():
    array = np.zeros((32, 32, 3), np.uint8)
    array[:16, :16] = (255, 0, 0)  # stored: red top-left quarter
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    image = decode_image(buf.getvalue(), "sideways.jpg", 32).astype(int)
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert red[4:12, 20:28].all()  # displayed: the red quarter is top-right
    assert not red[4:12, 4:12].any() and not red[20:28].any()
