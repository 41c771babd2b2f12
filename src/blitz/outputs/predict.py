"""Classify image files with a trained run: top-k classes and probabilities per image."""

from __future__ import annotations

import csv
import functools
import io
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

from blitz.data.folders import Member, is_hidden, read_member
from blitz.data.images import IMAGE_EXTENSIONS, BadImage, decode_image
from blitz.errors import BlitzError
from blitz.files import open_regular
from blitz.training.checkpoint import ModelFacts
from blitz.training.evaluate import predict_logits
from blitz.training.rundir import check_output
from blitz.utils.cells import text_cell
from blitz.utils.writes import write_atomic

Prediction = tuple[Path, list[tuple[str, float]]]
Name = TypeVar("Name", Path, int)  # what a prediction is of: a file, or a place in a list
BATCH_BYTES = 256 * 2**20  # decoded images per batch: 256 CIFAR images are 0.8 MB, 4096 px 48 MB
OnSkip = Callable[[Path, str], None]  # (file, why it was skipped)
# the network, or a runner of its export: uint8 images (N, C, S, S) -> logits (N, K)
Model = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]
UNKNOWN = "unknown"  # the label of an image whose top probability is below --min-confidence


def collect_images(paths: list[Path]) -> list[Path]:
    """Image files named directly or found (recursively) in the folders given, not hidden ones
    (as in a dataset: ``data.folders.is_hidden``). Entries that are not regular files (pipes,
    devices, dangling links) are kept: reading one names it."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():  # a folder named x.png is a folder: its images are found below
            found = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            shown = (p for p in found if not is_hidden(p.relative_to(path).as_posix()))
            files += sorted(p for p in shown if not p.is_dir())
        elif os.path.lexists(path):
            files.append(path)
        else:
            raise BlitzError(
                f"{for_terminal(str(path))} does not exist: pass image files or folders of images"
            )
    if not files:
        raise BlitzError("no images found in " + ", ".join(for_terminal(str(p)) for p in paths))
    return files


def read_image_file(path: Path) -> bytes:
    """The bytes of a regular file of at most ``MAX_FILE_BYTES``, or a BadImage naming it: a
    pipe would hang the read and a device (a link to /dev/zero) never end it."""
    name = for_terminal(str(path))
    try:
        info = path.stat()
    except OSError as exc:  # gone, a dangling link, a folder we may not enter
        raise BadImage(name, f"cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadImage(
            name, "not a regular file (a folder, pipe, device or socket), so not an image"
        )
    # opened non-blocking and checked again: a pipe put in its place since stat() is refused
    opener = functools.partial(open_regular, path)
    return read_member(Member(name, "file", info.st_size, opener))


def predict_files(
    facts: ModelFacts,
    model: Model,
    files: list[Path],
    top_k: int,
    batch_size: int = 256,
    on_skip: OnSkip | None = None,
    calibrated: bool = True,
) -> list[Prediction]:
    """Top-k (class, probability) per file; images of any size or mode are converted and
    resized. A file that cannot be read or decoded is skipped and passed to ``on_skip``
    (default: named on stderr), so the others' predictions are kept; none at all is an error.
    Probabilities are calibrated (the run's temperature) unless ``calibrated`` is False."""
    failed: list[tuple[Path, str]] = []

    def skip(path: Path, reason: str) -> None:
        failed.append((path, reason))
        (on_skip or _report_skip)(path, reason)

    results: list[Prediction] = []
    with tqdm(total=len(files), desc="predict", unit="image", disable=None) as bar:  # tty only
        # a batch holds at most BATCH_BYTES of decoded pixels, whatever the checkpoint's size
        pixels = facts.in_channels * facts.image_size**2
        batch_size = max(1, min(batch_size, BATCH_BYTES // pixels))
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            good, arrays = _decode_files(chunk, facts, skip)
            if good:
                results += classify(facts, model, good, arrays, top_k, calibrated)
            bar.update(len(chunk))
    if not results:
        raise _nothing_classified(len(files), *failed[0])
    return results


def _nothing_classified(count: int, path: Path, reason: str) -> BlitzError:
    name = for_terminal(str(path))
    if count == 1:
        return BlitzError(f"cannot classify {name}: {reason}")
    first = f"the first, {name}: {reason}"
    return BlitzError(f"none of the {count} images could be classified ({first})")


def _decode_files(
    files: list[Path], facts: ModelFacts, skip: OnSkip
) -> tuple[list[Path], list[np.ndarray]]:
    good, arrays = [], []
    for f in files:
        try:
            arrays.append(decode(facts, read_image_file(f), for_terminal(str(f))))
            good.append(f)
        except BadImage as exc:
            skip(f, exc.reason)
    return good, arrays


def decode(facts: ModelFacts, data: bytes, name: str) -> np.ndarray:
    """An encoded image (a file's bytes, an upload) as the model takes it: (S, S, C) uint8,
    upright, in the model's mode, resized and cropped (``data.images.decode_image``)."""
    return decode_image(data, name, facts.image_size, mode=facts.image_mode)


def probabilities(
    facts: ModelFacts, model: Model, arrays: list[np.ndarray], calibrated: bool = True
) -> torch.Tensor:
    """Class probabilities (N, K) of decoded images (``decode``): the one place where blitz
    turns images into probabilities (predict, the API, serve). ``model``: the network (the
    run's normalisation and test-time views are applied here), or a runner of its export
    (uint8 images in, logits out, with those and the temperature inside). Calibrated by the
    run's temperature unless ``calibrated`` is False. A multi-label model's probabilities are
    each class's own (a sigmoid), which no temperature calibrates."""
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, C, S, S) uint8
    if isinstance(model, torch.nn.Module):
        logits = predict_logits(model, [images], facts.mean, facts.std, facts.tta)
    else:  # the export divided its logits by the temperature: undone, to be done once below
        logits = model(images) * facts.temperature
    if facts.multi_label:
        return logits.sigmoid()
    # temperature scaling here and nowhere else: every prediction's probabilities pass this line
    return (logits / (facts.temperature if calibrated else 1.0)).softmax(1)


def top_classes(
    facts: ModelFacts, probs: torch.Tensor, top_k: int
) -> list[list[tuple[str, float]]]:
    """Each row's ``top_k`` (class, probability), best first (a multi-label model's: every
    class, since its answer is every label over its threshold)."""
    k = len(facts.classes) if facts.multi_label else min(top_k, len(facts.classes))
    top = probs.topk(k, dim=1)
    return [
        [(facts.classes[c], prob) for c, prob in zip(i, p)]
        for p, i in zip(top.values.tolist(), top.indices.tolist())
    ]


def classify(
    facts: ModelFacts,
    model: Model,
    names: list[Name],
    arrays: list[np.ndarray],
    top_k: int,
    calibrated: bool = True,
) -> list[tuple[Name, list[tuple[str, float]]]]:
    """(name, top-k classes) of each decoded image."""
    probs = probabilities(facts, model, arrays, calibrated)
    return list(zip(names, top_classes(facts, probs, top_k)))


def _report_skip(path: Path, reason: str) -> None:
    # tqdm.write: the message goes above the progress bar instead of through it
    tqdm.write(f"skipped {for_terminal(str(path))}: {reason}", file=sys.stderr)


def printable(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name shown as ``\\xNN`` (never a crash)."""
    # Such a name reaches Python as lone surrogates (surrogateescape), which no UTF-8 output
    # can hold: give back its bytes, and show the ones that are not UTF-8 the way Python does.
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte (a Windows name)
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


CONTROL = {code: f"\\x{code:02x}" for code in (*range(32), *range(127, 160))}


def for_terminal(text: str) -> str:
    """``printable``, and control characters shown as ``\\xNN``: a file name's newline would
    split a line, its escape sequence drive the terminal."""
    return printable(text).translate(CONTROL)


def _text(text: str) -> str:
    """A text cell of the predictions' CSV: printable, and no spreadsheet formula."""
    return text_cell(printable(text))


def check_min_confidence(value: float | None, what: str = "--min-confidence") -> None:
    """A probability in [0, 1] (or None: always answer)."""
    if value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value <= 1
    if not ok:  # NaN fails the comparison too
        raise BlitzError(
            f"invalid {what} {value!r}: expected a probability in [0, 1] (0.8: answer only "
            "where the top class is at least 80 % likely)"
        )


def decide(top: list[tuple[str, float]], min_confidence: float | None) -> str:
    """The top class, or UNKNOWN where its probability is below ``min_confidence``."""
    if min_confidence is not None and top[0][1] < min_confidence:
        return UNKNOWN
    return top[0][0]


def format_prediction(
    prediction: Prediction, min_confidence: float | None = None, labels: list[str] | None = None
) -> str:
    """``path: class 97.1 %, class 2.0 %``; below ``min_confidence``, ``path: unknown (below
    80.0 %: class 41.0 %, ...)``; a multi-label model's ``labels``, ``path: cat, dog (cat 97.1
    %, dog 80.3 %, bird 2.0 %)``."""
    path, top = prediction
    shown = ", ".join(f"{for_terminal(c)} {100 * p:.1f} %" for c, p in top)
    if labels is not None:
        return f"{for_terminal(str(path))}: {for_terminal(', '.join(labels)) or '(none)'} ({shown})"
    if decide(top, min_confidence) == UNKNOWN and min_confidence is not None:
        shown = f"{UNKNOWN} (below {100 * min_confidence:.1f} %: {shown})"
    return f"{for_terminal(str(path))}: {shown}"


def write_csv(
    predictions: list[Prediction],
    path: Path,
    min_confidence: float | None = None,
    labels: list[list[str]] | None = None,
    delimiter: str = " ",
) -> None:
    """Columns: path (then, with ``min_confidence``, label: the top class or unknown; with a
    multi-label model's ``labels``, labels: each image's, joined by ``delimiter``, as the run's
    table listed them), then class_i and prob_i for each of the top k. UTF-8, with the bytes of
    non-UTF-8 names as ``\\xNN`` (as printed), so any CSV reader can read every row; a text that
    begins like a spreadsheet formula (``=``, ``+``, ``-``, ``@``) with an apostrophe in front."""
    check_output(path, "the CSV")
    k = len(predictions[0][1]) if predictions else 0
    label = [] if min_confidence is None else ["label"]
    label += [] if labels is None else ["labels"]
    header = ["path", *label]
    header += [col for i in range(1, k + 1) for col in (f"class_{i}", f"prob_{i}")]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row, (file, top) in enumerate(predictions):
        decided = [] if min_confidence is None else [_text(decide(top, min_confidence))]
        decided += [] if labels is None else [_text(delimiter.join(labels[row]))]
        cells = [v for c, p in top for v in (_text(c), f"{p:.6f}")]
        writer.writerow([_text(str(file)), *decided, *cells])
    write_atomic(path, out.getvalue().encode())
