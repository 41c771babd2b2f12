"""Images held in memory (PIL images, tensors) classified as files are: encoded losslessly,
then decoded, converted and resized by the one path ``blitz predict`` takes."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from blitz.errors import BlitzError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image, ImageFile

    from blitz.training.checkpoint import ModelFacts


def decoded(items: list[Any], facts: ModelFacts) -> Iterator[np.ndarray]:
    """Each in-memory image as blitz decodes a file: its file's own bytes where it is one
    straight from ``Image.open`` (not yet loaded), else encoded losslessly (TIFF keeps every
    mode and the EXIF orientation); then decoded, converted and resized as files are."""
    from blitz.outputs.predict import decode

    for index, image in enumerate(_pil_images(items)):
        yield decode(facts, _encoded(image, index), f"image {index}")


def _encoded(image: Image.Image, index: int) -> bytes:
    """The file an unloaded image was opened from (a large JPEG then decodes at the reduced
    scale a file does: ``data.images.decode_image``), or the image as a TIFF."""
    import os
    from pathlib import Path

    from PIL import ImageFile

    from blitz.outputs.predict import read_image_file

    if isinstance(image, ImageFile.ImageFile) and _unread(image):
        return read_image_file(Path(os.fsdecode(image.filename)))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="TIFF", exif=image.getexif())
    except (OSError, ValueError) as exc:
        raise BlitzError(
            f"image {index} (mode {image.mode}) cannot be classified ({exc}): convert it "
            "first, e.g. image.convert('RGB')"
        ) from None
    return buffer.getvalue()


def _unread(image: ImageFile.ImageFile) -> bool:
    """An image opened from a file and not changed: none of its pixels loaded yet, and its
    first frame (a GIF's ``seek(3)`` is another image than the file decodes to)."""
    return bool(image.filename and image.tile) and image.tell() == 0


def _pil_images(items: list[Any]) -> Iterator[Image.Image]:
    import torch
    from PIL import Image

    from blitz.data.images import check_pixels

    for index, item in enumerate(items):
        if isinstance(item, Image.Image):
            check_pixels(f"input {index}", *item.size)  # its copies would be the size again
            yield item
        elif isinstance(item, torch.Tensor):
            _check_dense(item, index)
            batch = item if item.dim() == 4 else _one_image(item)
            check_pixels(f"input {index}", batch.shape[-1], batch.shape[-2])
            yield from (_tensor_to_pil(image) for image in batch)
        else:
            raise BlitzError(
                f"cannot predict a {type(item).__name__}: pass image files or folders, PIL "
                "images or tensors (a list of one kind)"
            )


def _check_dense(tensor: torch.Tensor, index: int) -> None:
    import torch

    # a meta tensor has no values, a sparse or nested one no plain (C, H, W) layout
    if tensor.is_meta or tensor.is_nested or tensor.layout != torch.strided:
        kind = "meta" if tensor.is_meta else "nested" if tensor.is_nested else str(tensor.layout)
        raise BlitzError(
            f"input {index} is a {kind} tensor: pass a dense tensor that holds its values "
            "(tensor.to_dense(), or one made on the CPU or a GPU)"
        )


def _one_image(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 3:
        raise BlitzError(
            f"a tensor of shape {tuple(tensor.shape)} is no image: expected (C, H, W) or "
            "(N, C, H, W)"
        )
    return tensor.unsqueeze(0)


def _tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W), uint8 in 0-255 or float in [0, 1], C 1, 3 or 4 -> a PIL image."""
    import torch
    from PIL import Image

    if image.shape[0] not in (1, 3, 4):
        raise BlitzError(
            f"an image tensor of shape {tuple(image.shape)} has {image.shape[0]} channels: "
            "expected (C, H, W) with C 1 (grey), 3 (RGB) or 4 (RGBA)"
        )
    if image.dtype.is_floating_point:
        image = image.detach().cpu().float()
        if not (image.isfinite().all() and image.min() >= 0 and image.max() <= 1):
            raise BlitzError(
                "a float image tensor must hold values in [0, 1]: scale it, or pass uint8 "
                "values in 0-255"
            )
        image = (image * 255).round().to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise BlitzError(f"an image tensor of {image.dtype}: expected uint8 (0-255) or float")
    pixels = image.detach().cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def predict_in_memory(
    facts: ModelFacts,
    model: torch.nn.Module,
    arrays: Iterator[np.ndarray],
    top_k: int,
    calibrated: bool = True,
) -> list[tuple[int, list[tuple[str, float]]]]:
    """Classify decoded images in batches of at most ``predict.BATCH_BYTES``, as files are."""
    from blitz.outputs.predict import BATCH_BYTES, classify

    per_batch = max(1, BATCH_BYTES // (facts.in_channels * facts.image_size**2))
    results: list[tuple[int, list[tuple[str, float]]]] = []
    while batch := list(itertools.islice(arrays, per_batch)):
        places = list(range(len(results), len(results) + len(batch)))
        results += classify(facts, model, places, batch, top_k, calibrated)
    if not results:
        raise BlitzError("no images to predict: pass at least one")
    return results
