"""One pass over every image, as a stream (a dataset larger than memory is never held whole):
what it is (mode, size, file size), whether it decodes at all, and its fingerprints: a digest
of its decoded pixels (exact copies) and two perceptual hashes (near copies)."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import torch
from PIL import Image

from blitz.data.dataset import ImageData, Log, progress_bar
from blitz.data.images import BadImage
from blitz.data.layout import Layout
from blitz.data.sources import find_source
from blitz.data.sources.folder import list_layout, load_spec_path, read_images

CHUNK = 512  # images taken from a set held in memory at a time
SMALL = 16


@dataclass
class ImageFacts:
    """What one pass learnt of an image. ``problem`` says why it cannot be read (the rest is
    then empty)."""

    image: str  # its id, as sets.csv names it
    role: str
    label: int
    width: int = 0
    height: int = 0
    mode: str = ""
    file_bytes: int = -1  # -1: an image held in memory (a built-in dataset), not a file
    digest: bytes = b""  # of its decoded pixels: equal for exact copies only
    phash: int = 0  # 64-bit perceptual hashes (imagehash's DCT and difference hashes)
    dhash: int = 0
    small: bytes = b""  # SMALL x SMALL grey pixels: a near copy's are nearly the same
    problem: str = ""


def placements(data: ImageData) -> dict[str, tuple[str, int]]:
    """Each image's id -> (its set, its label), as the data's sets hold them."""
    where = {}
    for role, split in data.sets().items():
        for image, label in zip(split.row_ids(role), split.labels.tolist()):
            where[image] = (role, label)
    return where


def scan(data: ImageData, spec: str, log: Log, only_sets: bool = False) -> list[ImageFacts]:
    """The facts of every image of ``data``: read from its files where ``spec`` is a folder,
    archive or table (with the files that do not decode, which no set holds, unless
    ``only_sets``), else from the decoded images of its sets."""
    where = placements(data)
    layout = _layout(spec, log)
    if layout is None:
        facts = _in_memory(data)
        return list(progress_bar(facts, "checking images", log, len(where)))
    # a multi-label layout never gets here (blitz doctor refuses multi-label data)
    listed = {f: (role, int(label)) for role, pairs in layout.sets.items() for f, label in pairs}  # type: ignore[arg-type]
    wanted = where if only_sets else {**listed, **where}
    files = read_images(Path(spec).expanduser(), set(wanted))
    seen = [
        inspect_file(name, data, *wanted[name])
        for name, data in progress_bar(files, "checking files", log, len(wanted))
    ]
    gone = set(wanted) - {facts.image for facts in seen}
    return seen + [ImageFacts(n, *wanted[n], problem="disappeared while read") for n in gone]


def _layout(spec: str, log: Log) -> Layout | None:
    """The files of a folder, archive or table; None for a source held in memory."""
    source, _ = find_source(spec)
    return list_layout(Path(spec).expanduser(), log) if source.load is load_spec_path else None


def inspect_file(name: str, data: bytes | BadImage, role: str, label: int) -> ImageFacts:
    """An image file's facts, or why it cannot be read (empty, truncated, corrupt, a bomb)."""
    if isinstance(data, BadImage):
        return ImageFacts(name, role, label, problem=data.reason)
    if not data:
        return ImageFacts(name, role, label, file_bytes=0, problem="empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                mode = img.mode
                img.load()  # a truncated file fails here, not at open
                facts = fingerprint(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return ImageFacts(name, role, label, file_bytes=len(data), problem="too many pixels")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "corrupt"
        reason = "not a readable image" if "identify" in str(exc) else str(exc)
        return ImageFacts(name, role, label, file_bytes=len(data), problem=reason)
    facts.image, facts.role, facts.label, facts.mode, facts.file_bytes = (
        name, role, label, mode, len(data))  # fmt: skip
    return facts


def fingerprint(img: Image.Image) -> ImageFacts:
    """Size, pixel digest and perceptual hashes of a decoded image (id and set left blank)."""
    rgb = img.convert("RGB")  # a grey or palette copy of a colour image is the same picture
    digest = hashlib.blake2b(rgb.tobytes(), digest_size=16, person=b"%dx%d" % rgb.size).digest()
    small = rgb.convert("L").resize((SMALL, SMALL), Image.Resampling.BILINEAR).tobytes()
    return ImageFacts(
        "", "", -1, *rgb.size, img.mode, digest=digest, phash=_bits(imagehash.phash(rgb)),
        dhash=_bits(imagehash.dhash(rgb)), small=small,
    )  # fmt: skip


def _bits(image_hash: imagehash.ImageHash) -> int:
    return int(np.packbits(image_hash.hash.flatten()).view(">u8")[0])


def _in_memory(data: ImageData) -> Iterator[ImageFacts]:
    """Facts of the decoded images of a source with no files (shapes, CIFAR-10, MNIST)."""
    for role, split in data.sets().items():
        ids, labels = split.row_ids(role), split.labels.tolist()
        for rows in torch.arange(len(split)).split(CHUNK):
            for row, image in zip(rows.tolist(), split.images_at(rows).cpu()):
                pixels = image.permute(1, 2, 0).numpy()  # (H, W, C)
                img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
                facts = fingerprint(img)
                facts.image, facts.role, facts.label = ids[row], role, labels[row]
                yield facts
