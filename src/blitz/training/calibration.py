"""Calibration: how far a model's probabilities are from the frequencies they claim (expected
and maximum calibration error over equal-width bins, negative log-likelihood, Brier score), and
temperature scaling (Guo et al. 2017), which divides the logits by one number T fitted on the
validation set: the predicted class, hence accuracy, is unchanged by construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

BINS = 15  # Guo et al.'s equal-width bins of the top probability
TEMPERATURE_RANGE = (0.05, 20.0)  # past these, a fit is a degenerate set, not a calibration
MIN_FIT_IMAGES = 20  # validation images a temperature is fitted on, at least
FIGURES = ("ece", "mce", "nll", "brier")
THRESHOLDS = (0.5, 0.7, 0.9)  # --min-confidence values marked on the risk-coverage curve


@dataclass
class Reliability:
    """The reliability diagram's bins: images, mean top probability and accuracy in each."""

    edges: list[
        float
    ]  # BINS + 1 boundaries; bin m holds top probabilities in (edges[m], edges[m+1]]
    counts: list[int]
    confidence: list[float]  # 0 in an empty bin
    accuracy: list[float]  # 0 in an empty bin


def reliability(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> Reliability:
    """Bin images by their top probability (N,) in equal-width bins (lo, hi]; ``correct`` (N,)
    says whether each prediction was right."""
    edges = torch.from_numpy(np.linspace(0.0, 1.0, bins + 1))  # the reference's edges exactly
    where = torch.bucketize(confidence.double(), edges[1:-1])  # (lo, hi]: right=False
    counts = torch.bincount(where, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, where, confidence.double())
    right = torch.zeros(bins, dtype=torch.float64).index_add_(0, where, correct.double())
    safe = counts.clamp(min=1).double()
    return Reliability(edges.tolist(), counts.tolist(), (conf_sum / safe).tolist(),
                       (right / safe).tolist())  # fmt: skip


def calibration_figures(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> dict:
    """ECE, MCE, NLL, Brier score and the images per bin, for probabilities (N, K) against
    labels (N,)."""
    probs = probs.double()
    picked = probs.gather(1, labels.long()[:, None]).squeeze(1)
    return _figures(probs, picked.clamp(min=1e-300).log(), labels, bins)


def logit_figures(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, bins: int = BINS
) -> dict:
    """``calibration_figures`` of softmax(logits / temperature), its NLL from log-softmax (exact
    where a probability is too small for a float)."""
    log_probs = F.log_softmax(logits.double() / temperature, dim=1)
    picked = log_probs.gather(1, labels.long()[:, None]).squeeze(1)
    return _figures(log_probs.exp(), picked, labels, bins)


def _figures(probs: torch.Tensor, log_true: torch.Tensor, labels: torch.Tensor, bins: int) -> dict:
    top, predicted = probs.max(1)
    found = reliability(top, predicted == labels, bins)
    counts = torch.tensor(found.counts, dtype=torch.float64)
    accuracy, confidence = (
        torch.tensor(v, dtype=torch.float64) for v in (found.accuracy, found.confidence)
    )
    gaps = (accuracy - confidence).abs()
    n = max(len(labels), 1)
    one_hot = F.one_hot(labels.long(), probs.shape[1]).double()
    return {
        "ece": float((counts * gaps).sum() / n),
        "mce": float(gaps[counts > 0].max()) if len(labels) else 0.0,
        "nll": float(-log_true.mean()) if len(labels) else 0.0,
        "brier": float(((probs - one_hot) ** 2).sum(1).mean()) if len(labels) else 0.0,
        "bin_counts": found.counts,
    }


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on these (validation) images:
    L-BFGS on log T, so that T stays positive. Never worse than T = 1 on them."""
    logits = logits.detach().double().clone()  # not an inference tensor: autograd saves it
    labels = labels.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(nll)
    fitted = min(max(math.exp(log_t.item()), TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1])
    if not math.isfinite(fitted) or _nll(logits, labels, fitted) > _nll(logits, labels, 1.0):
        return 1.0
    return fitted


def _nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(F.cross_entropy(logits / temperature, labels))


def risk_coverage(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[list, list, list]:
    """Answering only the images whose top probability is at least a threshold: for each number
    of images answered (most confident first), the share answered (coverage), the accuracy on
    them, and the threshold that answers them."""
    order = confidence.double().argsort(descending=True, stable=True)
    right = correct[order].double().cumsum(0)
    answered = torch.arange(1, len(order) + 1, dtype=torch.float64)
    coverage = answered / max(len(order), 1)
    return coverage.tolist(), (right / answered).tolist(), confidence[order].double().tolist()


def top_probability(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's top probability after the temperature (N,), and whether its top class
    is right (N,)."""
    confidence, predicted = (logits.double() / temperature).softmax(1).max(1)
    return confidence, predicted == labels


@dataclass
class Calibration:
    """What a run found: the temperature, where it was fitted, and the figures before and after
    it, per set ("test", and "validation" where it is apart from the test set)."""

    temperature: float = 1.0
    fitted_on: str | None = None  # "validation", or None: no validation set, T = 1
    sets: dict[str, dict[str, dict]] = field(default_factory=dict)  # set -> before/after -> figures
    note: str = ""

    def record(self) -> dict[str, Any]:
        """As metrics.json keeps it."""
        return {
            "temperature": round(self.temperature, 6),
            "fitted_on": self.fitted_on,
            "bins": BINS,
            **{role: _rounded(figures) for role, figures in self.sets.items()},
            **({"note": self.note} if self.note else {}),
        }

    def summary(self, scored: str = "test") -> str:
        """One line for the terminal: the scored set's ECE, NLL and Brier before and after T
        (``scored``: its name, "validation" where the data has no test set)."""
        figures = self.sets.get("test")
        if not figures:
            return f"calibration: {self.note}"
        before, after = figures["before"], figures.get("after", figures["before"])
        line = (
            f"calibration ({scored}, {BINS} bins): ECE {100 * before['ece']:.2f} % -> "
            f"{100 * after['ece']:.2f} %, NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
            f"Brier {before['brier']:.4f} -> {after['brier']:.4f}, temperature "
            f"{self.temperature:.3f}"
        )
        return line + (f" ({self.note})" if self.note else "")


def _rounded(value: Any) -> Any:
    """Figures to 6 digits, as metrics.json keeps the others; counts as they are."""
    if isinstance(value, dict):
        return {key: _rounded(v) for key, v in value.items()}
    return round(value, 6) if isinstance(value, float) else value


def calibrate(
    test_logits: torch.Tensor,
    test_labels: torch.Tensor,
    val_logits: torch.Tensor | None,
    val_labels: torch.Tensor | None,
    test_is_val: bool = False,
) -> Calibration:
    """Fit T on the validation logits (never the test set's) and measure both sets before and
    after it. Where no temperature can be fitted (``_unfit``) T stays 1 and the note says why."""
    if val_logits is None or val_labels is None:
        why = "no validation set to fit a temperature on (--val-fraction 0.1 splits one off)"
    else:
        why = _unfit(val_logits, val_labels)
    if why or val_logits is None or val_labels is None:
        before = logit_figures(test_logits, test_labels)
        note = f"{why}: probabilities are left as the model gives them"
        return Calibration(1.0, None, {"test": {"before": before}}, note)
    temperature = fit_temperature(val_logits, val_labels)
    sets = {"test": _before_after(test_logits, test_labels, temperature)}
    note = ""
    if test_is_val:  # the scored set is the one T was fitted on: its "after" is optimistic
        note = "fitted on the scored set itself: the data has no test set"
    else:
        sets["validation"] = _before_after(val_logits, val_labels, temperature)
    return Calibration(temperature, "validation", sets, note)


def _unfit(logits: torch.Tensor, labels: torch.Tensor) -> str:
    """Why these validation images cannot fit a temperature ("" if they can): too few of them
    (the fit follows their noise), or every one predicted right (their NLL falls as T shrinks,
    without end: T would stop at the range's floor and every probability at 100 %)."""
    if len(labels) < MIN_FIT_IMAGES:
        return (
            f"{len(labels)} validation images are too few to fit a temperature on (it takes "
            f"{MIN_FIT_IMAGES})"
        )
    if bool((logits.argmax(1) == labels).all()):
        return "every validation image is predicted right: no error to fit a temperature on"
    return ""


def measure(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> Calibration:
    """The figures of a set before and after a temperature already fitted (``blitz eval``)."""
    if temperature == 1.0:
        note = (
            "the run has no temperature: its validation set could not fit one (metrics.json's "
            "calibration note says why), or it is older"
        )
        return Calibration(1.0, None, {"test": {"before": logit_figures(logits, labels)}}, note)
    return Calibration(
        temperature, "validation", {"test": _before_after(logits, labels, temperature)}
    )


def _before_after(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    return {
        "before": logit_figures(logits, labels),
        "after": logit_figures(logits, labels, temperature),
    }
