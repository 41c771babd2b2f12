"""Classify image files with a trained run: top-k classes and probabilities per image."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from blitz.errors import BlitzError
from blitz.evaluate import predict_logits
from blitz.images import IMAGE_EXTENSIONS, decode_image

Prediction = tuple[Path, list[tuple[str, float]]]


def collect_images(paths: list[Path]) -> list[Path]:
    """Image files named directly or found (recursively) in the folders given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise BlitzError(f"{path} does not exist: pass image files or folders of images")
    if not files:
        raise BlitzError("no images found in " + ", ".join(map(str, paths)))
    return files


def predict_files(
    ckpt: dict[str, Any],
    model: torch.nn.Module,
    files: list[Path],
    top_k: int,
    batch_size: int = 256,
) -> list[Prediction]:
    """Top-k (class, probability) per file; images of any size or mode are converted and resized."""
    mode = "L" if ckpt["in_channels"] == 1 else "RGB"
    size, classes = ckpt["image_size"], ckpt["classes"]
    k = min(top_k, len(classes))
    results: list[Prediction] = []
    bar = tqdm(total=len(files), desc="predict", unit="image", disable=None)  # None: tty only
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays = [decode_image(f.read_bytes(), str(f), size, mode=mode) for f in chunk]
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        probs = predict_logits(model, [images], ckpt["mean"], ckpt["std"]).softmax(1)
        top = probs.topk(k, dim=1)
        for f, p, i in zip(chunk, top.values.tolist(), top.indices.tolist()):
            results.append((f, [(classes[c], prob) for c, prob in zip(i, p)]))
        bar.update(len(chunk))
    bar.close()
    return results


def format_prediction(prediction: Prediction) -> str:
    """``path: class 97.1 %, class 2.0 %``."""
    path, top = prediction
    return f"{path}: " + ", ".join(f"{c} {100 * p:.1f} %" for c, p in top)


def write_csv(predictions: list[Prediction], path: Path) -> None:
    """Columns: path, then class_i and prob_i for each of the top k."""
    k = len(predictions[0][1]) if predictions else 0
    header = ["path"] + [col for i in range(1, k + 1) for col in (f"class_{i}", f"prob_{i}")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for file, top in predictions:
            writer.writerow([str(file)] + [v for c, p in top for v in (c, f"{p:.6f}")])
