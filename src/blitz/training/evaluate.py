"""Predictions, the confusion matrix, and the figures that are views of it: accuracy, per-class
precision, recall, F1 and support, balanced accuracy, macro and weighted F1. Top-5 accuracy
alone needs more than the matrix: a flag per image, taken from the logits."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blitz.config.settings import UNMIRRORED, Config
from blitz.config.types import concrete
from blitz.data.dataset import AnySplit
from blitz.data.preprocess import normalize
from blitz.training.devices import autocast
from blitz.training.distributed import SINGLE, gather_rows, shard, sum_over_ranks

TOP_K = 5  # top-5 accuracy, where there are more classes than that


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate a batch by (dy, dx) pixels, filling from a reflection of the edge."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def certainty(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """(N,) how sure a model is of each image: its top class's probability, or with several
    labels an image, its least certain label's distance from even odds (the smallest
    |logit|: one label near probability 0.5 makes the image's label set doubtful)."""
    logits = logits.float()
    return logits.abs().amin(1) if multi_label else logits.softmax(1).amax(1)


def tta_logits(
    model: nn.Module, x: torch.Tensor, tta: str, share: float = 1.0, multi_label: bool = False
) -> torch.Tensor:
    """Logits averaged over test-time views: none, a mirror (flip), two 1-pixel shifts
    (translate: what suits digits and text), or the mirrors of those three (flip-translate).
    ``share`` < 1 (``train.tta_share``): only that share of the batch, its least confident
    images by the plain view (``certainty``), sees them; the rest keep the plain view's
    logits. A fixed count per batch: the same shapes each time, no recompiling."""
    count = math.ceil(share * len(x))
    if tta != "none" and count < len(x):
        logits = model(x)
        doubt = certainty(logits, multi_label).topk(count, largest=False).indices
        return logits.index_copy(0, doubt, tta_logits(model, x[doubt], tta).to(logits.dtype))

    def view(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(v) + model(v.flip(-1))) if tta in UNMIRRORED else model(v)

    if tta in ("none", "flip"):
        return view(x)
    shifted = view(_shift(x, -1, -1)) + view(_shift(x, 1, 1))
    return 0.5 * view(x) + 0.25 * shifted  # airbench's weighting


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    tta: str = "none",
    channels_last: bool = False,
    share: float = 1.0,
    multi_label: bool = False,
) -> torch.Tensor:
    """Logits (N, K) for batches of uint8 images (B, C, H, W), on the model's device (TTA on
    ``share`` of each batch: see ``tta_logits``)."""
    device = next(model.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    outputs = []
    for images in batches:
        x = normalize(images.to(device), mean, std)
        x = x.contiguous(memory_format=memory_format)
        outputs.append(tta_logits(model, x, tta, share, multi_label).float())
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
    return _share(matrix.diag(), matrix.sum(1)).tolist()


def _share(part: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """part / whole as float64, 0 where whole is 0 (a count's part is then 0 too)."""
    return part.double() / whole.clamp(min=1).double()


@dataclass
class ClassScores:
    """Per-class figures (K,), views of one confusion matrix. Where a ratio has nothing to
    divide by it is 0, not NaN: a class never predicted has precision 0, a class with no test
    images recall 0, and F1 is 0 where both are. The averages leave out the classes a figure
    does not exist for, as scikit-learn does: balanced accuracy averages recall over the
    classes with test images, macro F1 averages F1 over the classes that are either in the
    test set or predicted."""

    precision: torch.Tensor  # (K,) float64: right / predicted as the class (column sums)
    recall: torch.Tensor  # (K,) float64: right / test images of the class (row sums)
    f1: torch.Tensor  # (K,) float64: harmonic mean of the two
    support: torch.Tensor  # (K,) int64: test images of the class
    predicted: torch.Tensor  # (K,) int64: test images predicted as the class

    @property
    def balanced_accuracy(self) -> float:
        return _mean(self.recall[self.support > 0])

    @property
    def macro_f1(self) -> float:
        return _mean(self.f1[(self.support > 0) | (self.predicted > 0)])

    @property
    def weighted_f1(self) -> float:
        return float(_share((self.f1 * self.support).sum(), self.support.sum()))

    def records(self, classes: list[str]) -> dict[str, dict[str, float | int]]:
        """Class name -> its precision, recall, F1 and support (metrics.json's per_class)."""
        columns = zip(self.precision.tolist(), self.recall.tolist(), self.f1.tolist())
        return {
            name: {"precision": p, "recall": r, "f1": f, "support": n}
            for name, (p, r, f), n in zip(classes, columns, self.support.tolist())
        }


def _mean(values: torch.Tensor) -> float:
    """The mean, 0 for no values (a matrix of no images)."""
    return float(values.mean()) if len(values) else 0.0


def class_scores(matrix: torch.Tensor) -> ClassScores:
    """Precision, recall, F1 and support per class, from a (K, K) confusion matrix."""
    right, support, predicted = matrix.diag(), matrix.sum(1), matrix.sum(0)
    return ClassScores(
        precision=_share(right, predicted),
        recall=_share(right, support),
        # 2PR / (P + R) with P = right / predicted, R = right / support, in counts: exact,
        # and 0 without a division by zero when the class is neither present nor predicted
        f1=_share(2 * right, support + predicted),
        support=support,
        predicted=predicted,
    )


def top_k_hits(logits: torch.Tensor, labels: torch.Tensor, k: int = TOP_K) -> torch.Tensor | None:
    """(N,) bool: whether each image's true class is among its k highest logits; None with k
    classes or fewer, where every image would count as a hit."""
    if logits.shape[1] <= k:
        return None
    return (logits.topk(k, 1).indices == labels[:, None]).any(1)


@dataclass
class Evaluation:
    """What testing a model on a split found: the confusion matrix, and per test image its
    prediction, the prediction's probability and the loss; and its logits, for calibration."""

    matrix: torch.Tensor  # (K, K) confusion matrix
    predicted: torch.Tensor  # (N,) int64
    confidence: torch.Tensor  # (N,) softmax probability of the predicted class
    loss: torch.Tensor  # (N,) cross-entropy against the true class
    top5: torch.Tensor | None = None  # (N,) bool: true class in the 5 highest logits; K > 5 only
    # (N, K) float32 on the CPU, for calibration; None past KEPT_LOGITS values (or not asked)
    logits: torch.Tensor | None = None

    @property
    def accuracy(self) -> float:
        return accuracy(self.matrix)

    @property
    def top5_accuracy(self) -> float | None:
        """The share of images whose true class is in their top 5; None with 5 classes or fewer."""
        if self.top5 is None:
            return None
        return int(self.top5.sum()) / max(len(self.top5), 1)


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Evaluation:
    """The evaluation of logits (N, K) against labels (N,)."""
    logits, labels = logits.reshape(-1, num_classes).float(), labels.to(logits.device)
    confidence, predicted = logits.softmax(1).max(1)
    loss = F.cross_entropy(logits, labels, reduction="none")
    matrix = confusion_matrix(labels, predicted, num_classes)
    return Evaluation(matrix, predicted, confidence, loss, top_k_hits(logits, labels), logits)


# pixels per channel in an evaluation batch: 1000 images up to 64 x 64, fewer of larger ones
# (a batch of 1000 photos at 224 px would hold gigabytes of activations)
EVAL_PIXELS = 1000 * 64 * 64
# logits an evaluation keeps for calibration (N x K values): ImageNet's 50,000 x 1,000 fit;
# past it (a million images of 10,000 classes) the run says calibration was left out
KEPT_LOGITS = 2**28


def eval_batch_rows(cfg: Config) -> int:
    """Images per evaluation batch: ``train.eval_batch_size``, fewer for large images."""
    fits = max(1, EVAL_PIXELS // concrete(cfg.data.image_size) ** 2)
    return min(cfg.train.eval_batch_size, fits)


def evaluate(
    model: nn.Module, split: AnySplit, cfg: Config, num_classes: int, world=SINGLE
) -> Evaluation:
    """Test a model on every image of a split, with the run's normalisation and TTA. Under
    torchrun each process tests its share: the confusion matrices are summed, and every
    process gets every image's prediction (three numbers an image, four with a top-5 flag)
    and its logits (up to KEPT_LOGITS values in all)."""
    logits, rows = rank_logits(model, split, cfg, world)
    mine = score(logits, split.labels[rows], num_classes)  # (0, K) logits: a process with no rows
    matrix = sum_over_ranks(mine.matrix, world).cpu()
    columns = [mine.predicted.double(), mine.confidence, mine.loss]
    columns += [] if mine.top5 is None else [mine.top5.double()]  # every rank has the same K
    every = gather_rows(torch.stack(columns, 1), world).cpu()  # class numbers exact in float64
    top5 = None if mine.top5 is None else every[:, 3].bool()
    kept = None  # calibration's logits: every image's, unless they would crowd out memory
    if len(split) * num_classes <= KEPT_LOGITS and mine.logits is not None:
        kept = gather_rows(mine.logits.reshape(-1, num_classes).cpu(), world)
    scored = every[:, 0].long(), every[:, 1].float(), every[:, 2].float()
    return Evaluation(matrix, *scored, top5, kept)


def rank_logits(
    model: nn.Module, split: AnySplit, cfg: Config, world=SINGLE
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of a split's rows, and their logits, with the run's normalisation
    and TTA."""
    train = cfg.train
    rows = shard(torch.arange(len(split)), world)
    device = next(model.parameters()).device
    batches = rows.split(eval_batch_rows(cfg))
    images = (images for _, images, _ in split.load(batches, device))
    with autocast(train.precision, device):
        mean, std = concrete(cfg.data.mean), concrete(cfg.data.std)
        multi_label = split.labels.ndim == 2
        logits = predict_logits(
            model, images, mean, std, train.tta, train.channels_last, train.tta_share, multi_label
        )
    return logits, rows


@dataclass(frozen=True)
class Scores:
    """A model's figures on one set of images, as metrics.json records them: accuracy, and the
    views of the confusion matrix (per class: precision, recall, F1, support)."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    weighted_f1: float
    top5_accuracy: float | None  # None with 5 classes or fewer
    per_class: dict[str, dict[str, float]]


def scores(result: Evaluation, classes: list[str], digits: int = 6) -> Scores:
    """The figures of a test, rounded to ``digits``."""
    views, top5 = class_scores(result.matrix), result.top5_accuracy
    return Scores(
        accuracy=round(result.accuracy, digits),
        balanced_accuracy=round(views.balanced_accuracy, digits),
        macro_f1=round(views.macro_f1, digits),
        weighted_f1=round(views.weighted_f1, digits),
        top5_accuracy=None if top5 is None else round(top5, digits),
        per_class={
            c: {key: round(value, digits) for key, value in record.items()}
            for c, record in views.records(classes).items()
        },
    )


def worst_errors(result: Evaluation, labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of up to ``count`` misclassified samples, highest loss (surest mistake) first."""
    wrong = result.predicted != labels
    order = result.loss.masked_fill(~wrong, -math.inf).argsort(descending=True, stable=True)
    return order[: min(count, int(wrong.sum()))]


def confused_pairs(matrix: torch.Tensor, count: int) -> list[tuple[int, int, int]]:
    """The ``count`` largest off-diagonal cells as (true class, predicted class, images)."""
    # from the non-zero cells (at most one per image), not a sort of all K x K of them
    cells = matrix.nonzero()  # (cells, 2) in row-major order: ties stay in it
    cells = cells[cells[:, 0] != cells[:, 1]]
    values = matrix[cells[:, 0], cells[:, 1]]
    order = values.argsort(descending=True, stable=True)[:count]
    return [(t, p, v) for (t, p), v in zip(cells[order].tolist(), values[order].tolist())]


def worst_classes(matrix: torch.Tensor, count: int) -> list[int]:
    """The ``count`` classes with the lowest F1, worst first."""
    return class_scores(matrix).f1.argsort(stable=True)[:count].tolist()


def chance_note(matrix: torch.Tensor) -> str | None:
    """A warning when the accuracy is no better than always answering the largest class."""
    counts = matrix.sum(1)
    baseline = int(counts.max()) / max(int(counts.sum()), 1) if counts.numel() else 0.0
    if accuracy(matrix) > baseline + 0.01:
        return None
    return (
        f"warning: the model learned nothing useful: its accuracy ({100 * accuracy(matrix):.1f} "
        f"%) is no better than always answering the largest class ({100 * baseline:.1f} %). "
        "Train longer (--epochs), try another --lr, or check that the images differ between "
        "classes"
    )
