"""Predictions, the confusion matrix, and accuracies as views of it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blitz.config import Config
from blitz.data import AnySplit
from blitz.devices import autocast
from blitz.distributed import SINGLE, gather_rows, shard, sum_over_ranks
from blitz.preprocess import normalize


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate a batch by (dy, dx) pixels, filling from a reflection of the edge."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def _mirrored(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x) + model(x.flip(-1)))


def tta_logits(model: nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    """Logits averaged over test-time views: none, a mirror, or mirrors of 1-pixel shifts too."""
    if tta == "none":
        return model(x)
    if tta == "flip":
        return _mirrored(model, x)
    shifted = _mirrored(model, _shift(x, -1, -1)) + _mirrored(model, _shift(x, 1, 1))
    return 0.5 * _mirrored(model, x) + 0.25 * shifted  # airbench's weighting


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    tta: str = "none",
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (N, K) for batches of uint8 images (B, C, H, W), on the model's device."""
    device = next(model.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    outputs = []
    for images in batches:
        x = normalize(images.to(device), mean, std)
        outputs.append(tta_logits(model, x.contiguous(memory_format=memory_format), tta).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)  # (0,): a rank with no rows


def confusion_matrix(
    labels: torch.Tensor, predicted: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    flat = labels.to(torch.int64) * num_classes + predicted.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def accuracy(matrix: torch.Tensor) -> float:
    """Fraction of all samples on the diagonal."""
    return int(matrix.diag().sum()) / max(int(matrix.sum()), 1)


def per_class_accuracy(matrix: torch.Tensor) -> list[float]:
    """Recall per true class (row); 0 for a class with no samples."""
    return (matrix.diag().double() / matrix.sum(1).clamp(min=1).double()).tolist()


@dataclass
class Evaluation:
    """What testing a model on a split found: the confusion matrix, and per test image its
    prediction, the prediction's probability and the loss (the logits are not kept)."""

    matrix: torch.Tensor  # (K, K) confusion matrix
    predicted: torch.Tensor  # (N,) int64
    confidence: torch.Tensor  # (N,) softmax probability of the predicted class
    loss: torch.Tensor  # (N,) cross-entropy against the true class

    @property
    def accuracy(self) -> float:
        return accuracy(self.matrix)


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Evaluation:
    """The evaluation of logits (N, K) against labels (N,)."""
    logits, labels = logits.reshape(-1, num_classes).float(), labels.to(logits.device)
    confidence, predicted = logits.softmax(1).max(1)
    loss = F.cross_entropy(logits, labels, reduction="none")
    return Evaluation(confusion_matrix(labels, predicted, num_classes), predicted, confidence, loss)


def evaluate(
    model: nn.Module, split: AnySplit, cfg: Config, num_classes: int, world=SINGLE
) -> Evaluation:
    """Test a model on every image of a split, with the run's normalisation and TTA. Under
    torchrun each process tests its share: the confusion matrices are summed, and every
    process gets every image's prediction (three numbers an image, not its logits)."""
    train = cfg.train
    rows = shard(torch.arange(len(split)), world)
    device = next(model.parameters()).device
    images = (images for _, images, _ in split.load(rows.split(train.eval_batch_size), device))
    with autocast(train.precision, device):
        logits = predict_logits(
            model, images, cfg.data.mean, cfg.data.std, train.tta, train.channels_last
        )
    mine = score(logits, split.labels[rows], num_classes)  # (0, K) logits: a process with no rows
    matrix = sum_over_ranks(mine.matrix, world).cpu()
    per_image = torch.stack([mine.predicted.double(), mine.confidence, mine.loss], 1)
    every = gather_rows(per_image, world).cpu()  # (N, 3): class numbers are exact in float64
    return Evaluation(matrix, every[:, 0].long(), every[:, 1].float(), every[:, 2].float())


def format_accuracy(matrix: torch.Tensor) -> str:
    """The seed's headline sentence, with two decimals."""
    total = int(matrix.sum())
    return f"Accuracy of the network on the {total} test images: {100 * accuracy(matrix):.2f} %"


def format_per_class(matrix: torch.Tensor, classes: list[str]) -> str:
    """A per-class table: correct, total, accuracy."""
    width = max(8, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  correct  total  accuracy"]
    for name, correct, total in zip(classes, matrix.diag().tolist(), matrix.sum(1).tolist()):
        share = 100 * correct / max(total, 1)
        lines.append(f"{name:<{width}}  {correct:7d}  {total:5d}  {share:6.1f} %")
    return "\n".join(lines)


def format_confusion(matrix: torch.Tensor, classes: list[str]) -> str:
    """The confusion matrix as text (rows: truth, columns: prediction), short class names."""
    short = [c[:6] for c in classes]
    width = max(6, len(str(int(matrix.max()))) if matrix.numel() else 1)
    head = " " * 8 + " ".join(f"{s:>{width}}" for s in short)
    rows = [
        f"{s:<8}" + " ".join(f"{v:>{width}d}" for v in row)
        for s, row in zip(short, matrix.tolist())
    ]
    return "\n".join(["confusion matrix (rows: truth, columns: predicted)", head, *rows])


def format_samples(labels: list[int], predicted: list[int], classes: list[str]) -> str:
    """The seed's look at the first test images: ground truth vs predicted class names."""
    truth = " ".join(f"{classes[i]:>5s}" for i in labels)
    guess = " ".join(f"{classes[i]:>5s}" for i in predicted)
    return f"GroundTruth:  {truth}\nPredicted:    {guess}"


def worst_errors(result: Evaluation, labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of up to ``count`` misclassified samples, highest loss (surest mistake) first."""
    wrong = result.predicted != labels
    order = result.loss.masked_fill(~wrong, -math.inf).argsort(descending=True, stable=True)
    return order[: min(count, int(wrong.sum()))]


def confused_pairs(matrix: torch.Tensor, count: int) -> list[tuple[int, int, int]]:
    """The ``count`` largest off-diagonal cells as (true class, predicted class, images)."""
    k = matrix.shape[0]
    off = matrix.clone()
    off.fill_diagonal_(0)
    values, cells = off.flatten().sort(descending=True, stable=True)
    pairs = [(c // k, c % k, v) for v, c in zip(values.tolist(), cells.tolist()) if v > 0]
    return pairs[:count]
