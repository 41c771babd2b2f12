"""Several labels per image: sigmoid outputs and binary cross-entropy, the thresholds that turn
probabilities into label sets (one per class, chosen on the validation set for that class's
best F1, or one for all), and the figures that fit: macro mAP, micro and macro F1, subset
accuracy, Hamming loss, and per class precision, recall, F1, AP and support, computed by
scikit-learn (imported when first scored: ``import blitz`` stays light)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blitz.config.checks import option_name
from blitz.config.settings import Config, OptimConfig
from blitz.data.dataset import AnySplit
from blitz.errors import BlitzError
from blitz.training.distributed import SINGLE, gather_rows
from blitz.training.evaluate import rank_logits
from blitz.training.tables import text_table

DEFAULT_THRESHOLD = 0.5  # a class the validation set has no positive image of keeps this
FIGURES = ("map", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
NAMES = {
    "map": "macro mAP",
    "micro_f1": "micro F1",
    "macro_f1": "macro F1",
    "subset_accuracy": "subset accuracy",
    "hamming_loss": "Hamming loss",
}
COLUMNS = ("class", "precision", "recall", "F1", "AP", "support", "threshold")


def check_settings(cfg: Config, multi_label: bool, log: Callable[[str], None]) -> None:
    """Settings made for one class per image are refused for multi-label data (or turned off,
    and said), never silently wrong; the multi-label ones are refused for single-label data."""
    if not multi_label:
        if cfg.train.threshold != "auto":
            raise BlitzError(f"{option_name('train.threshold')} is for multi-label data only")
        return
    refused = {
        "optim.loss": (cfg.optim.loss != "cross-entropy", "multi-label trains with binary "
                       "cross-entropy: drop --loss"),
        "train.sampler": (cfg.train.sampler != "shuffle", "drawing classes equally often needs "
                          "one class per image: use --class-weights balanced (per-class "
                          "positive weights) instead"),
    }  # fmt: skip
    for key, (bad, why) in refused.items():
        if bad:
            raise BlitzError(f"{option_name(key)} does not apply to multi-label data: {why}")
    if cfg.data.mixup or cfg.data.cutmix:
        log("note: MixUp and CutMix are turned off for multi-label data (they mix one class "
            "per image)")  # fmt: skip
    if cfg.optim.class_weights == "balanced":
        log("multi-label: --class-weights balanced weighs each class's positive images by its "
            "negatives / positives (BCE's pos_weight)")  # fmt: skip


def bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, cfg: OptimConfig, pos_weight: torch.Tensor | None
) -> torch.Tensor:
    """Binary cross-entropy of each class's logit against its 0/1 target (``pos_weight``: per
    class, what a positive image weighs: ``--class-weights balanced``). Label smoothing moves
    the targets to 1 - s + s/K and s/K, as timm's BinaryCrossEntropy does."""
    smoothing = cfg.label_smoothing
    targets = targets.to(logits.dtype) * (1 - smoothing) + smoothing / logits.shape[1]
    return F.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction=cfg.reduction
    )


def exact_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many images' label sets are exactly right at probability 0.5 (a logit over 0)."""
    return ((logits > 0) == labels.bool()).all(1).sum()


def split_logits(
    model: torch.nn.Module, split: AnySplit, cfg: Config, world=SINGLE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) of every image of a split and its multi-hot labels, on the CPU (under
    torchrun each process scores its share, and every process gets them all)."""
    logits, rows = rank_logits(model, split, cfg, world)
    k = split.labels.shape[1]
    logits = gather_rows(logits.reshape(-1, k).float(), world).cpu()
    return logits, gather_rows(split.labels[rows.to(split.labels.device)].float(), world).cpu()


def choose_thresholds(
    probs: torch.Tensor, labels: torch.Tensor, fixed: float | str
) -> tuple[list[float], list[int]]:
    """Per class, the threshold (a label is predicted at a probability >= it) that maximises the
    class's F1 on these images (the validation set's), or ``fixed`` for every class; and the
    classes with no positive image here, which keep DEFAULT_THRESHOLD (or ``fixed``). The
    threshold lies halfway between the lowest probability it takes in and the highest below
    it: the same decisions on these images, none of them on the edge (at a cut equal to an
    image's probability, a rounding elsewhere would flip that image's label)."""
    from sklearn.metrics import precision_recall_curve

    k = probs.shape[1]
    absent = [c for c in range(k) if not labels[:, c].any()]
    if fixed != "auto":
        return [float(fixed)] * k, absent
    chosen = []
    for c in range(k):
        if c in absent:
            chosen.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(labels[:, c].numpy(), probs[:, c].numpy())
        f1 = 2 * precision * recall / (precision + recall).clip(min=1e-12)
        cut = float(cuts[int(f1[:-1].argmax())])  # the last point has no threshold
        under = probs[:, c][probs[:, c] < cut]
        chosen.append((cut + (float(under.max()) if len(under) else 0.0)) / 2)
    return chosen, absent


def predicted_sets(probs: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """(N, K) bool: each label whose probability is at least its class's threshold."""
    return probs >= torch.tensor(thresholds, dtype=probs.dtype)


@dataclass(frozen=True)
class MultiLabelScores:
    """A multi-label model's figures on one set (metrics.json's ``multilabel`` record)."""

    map: float  # macro mean average precision, over the classes with positive images here
    micro_f1: float
    macro_f1: float
    subset_accuracy: float  # the share of images whose predicted label set is exactly right
    hamming_loss: float  # the share of (image, class) decisions that are wrong
    thresholds: list[float]
    per_class: dict[str, dict[str, float]]  # precision, recall, f1, ap, support, threshold

    def record(self) -> dict:
        return {**{key: getattr(self, key) for key in FIGURES}, "thresholds": self.thresholds,
                "per_class": self.per_class}  # fmt: skip


def multilabel_scores(
    probs: torch.Tensor, labels: torch.Tensor, thresholds: list[float], classes: list[str],
    digits: int = 6,
) -> MultiLabelScores:  # fmt: skip
    """The figures of probabilities (N, K) against multi-hot labels (N, K) at ``thresholds``."""
    from sklearn import metrics

    y, p = labels.numpy().astype(int), probs.numpy()
    guess = predicted_sets(probs, thresholds).numpy().astype(int)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y, guess, average=None, zero_division=0
    )
    present = [c for c in range(len(classes)) if support[c] > 0]
    ap = [float(metrics.average_precision_score(y[:, c], p[:, c])) if support[c] else 0.0
          for c in range(len(classes))]  # fmt: skip
    r = lambda value: round(float(value), digits)  # noqa: E731
    per_class = {
        name: {"precision": r(precision[c]), "recall": r(recall[c]), "f1": r(f1[c]),
               "ap": r(ap[c]), "support": int(support[c]), "threshold": r(thresholds[c])}
        for c, name in enumerate(classes)
    }  # fmt: skip
    return MultiLabelScores(
        map=r(sum(ap[c] for c in present) / max(len(present), 1)),
        micro_f1=r(metrics.f1_score(y, guess, average="micro", zero_division=0)),
        macro_f1=r(metrics.f1_score(y, guess, average="macro", zero_division=0)),
        subset_accuracy=r(metrics.accuracy_score(y, guess)),
        hamming_loss=r(metrics.hamming_loss(y, guess)),
        thresholds=[r(t) for t in thresholds],
        per_class=per_class,
    )


def chance_note(scores: MultiLabelScores, labels: torch.Tensor) -> str | None:
    """A warning when the macro mAP is no better than random scores give: a class's AP is then
    its share of positive images, so the baseline is those shares' mean (the classes present)."""
    present = labels.sum(0) > 0
    if not present.any():
        return None
    baseline = float(labels.float().mean(0)[present].mean())
    if scores.map > baseline + 0.02:  # random scores' APs scatter a little around their share
        return None
    return (
        f"warning: the model learned nothing useful: its macro mAP ({100 * scores.map:.1f} %) is "
        f"no better than random scores give (each label's share of the images, averaged: "
        f"{100 * baseline:.1f} %). Train longer (--epochs), try another --lr, or check that the "
        "images differ with their labels"
    )


def format_scores(scores: MultiLabelScores, role: str) -> str:
    """The figures as the terminal shows them: a line, then a table of the classes."""
    line = ", ".join(
        f"{NAMES[key]} {getattr(scores, key):.4f}" if key == "hamming_loss"
        else f"{NAMES[key]} {100 * getattr(scores, key):.2f} %"
        for key in FIGURES
    )  # fmt: skip
    rows = [COLUMNS] + [
        (name, *(f"{100 * v[key]:.1f} %" for key in ("precision", "recall", "f1", "ap")),
         str(v["support"]), f"{v['threshold']:.3f}")
        for name, v in scores.per_class.items()
    ]  # fmt: skip
    table = text_table(rows)
    return f"multi-label figures on the {role} set: {line}\n{table}"
