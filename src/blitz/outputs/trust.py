"""The report's views of how far to trust a run: calibration before and after its temperature
(a reliability diagram with the images per bin, a table), the risk-coverage curve that helps
choose ``--min-confidence``, and Grad-CAM heat maps of its worst errors."""

from __future__ import annotations

import html
from collections.abc import Callable

import torch

from blitz.errors import BlitzError
from blitz.outputs.html import img, section, table
from blitz.outputs.plots import reliability_png, risk_coverage_png
from blitz.training.calibration import (
    BINS,
    FIGURES,
    THRESHOLDS,
    reliability,
    risk_coverage,
    top_probability,
)
from blitz.training.checkpoint import Checkpoint
from blitz.training.evaluate import Evaluation, score
from blitz.training.metrics import Metrics

NAMES = {"ece": "ECE", "mce": "MCE", "nll": "NLL", "brier": "Brier score"}


def calibrated(result: Evaluation, labels: torch.Tensor, temperature: float) -> Evaluation:
    """The evaluation with probabilities and losses after the temperature (the same
    predictions: dividing the logits by T > 0 keeps their order)."""
    if result.logits is None or temperature == 1.0:
        return result
    return score(result.logits / temperature, labels, result.logits.shape[1])


def calibration_section(
    metrics: Metrics, result: Evaluation, labels: torch.Tensor, temperature: float
) -> str:
    """Figures, reliability diagrams and the risk-coverage curve of the scored set."""
    if result.logits is None:
        return section("Calibration", "<p class='note'>Left out: too many images x classes "
                       "to keep their logits.</p>")  # fmt: skip
    logits, record = result.logits, metrics.calibration
    fitted = record.get("fitted_on") is not None
    panels = {"before temperature scaling": reliability(*top_probability(logits, labels), BINS)}
    if fitted:
        after = reliability(*top_probability(logits, labels, temperature), BINS)
        panels[f"after (T = {temperature:.3g})"] = after
    curves = {"calibrated": risk_coverage(*top_probability(logits, labels, temperature))}
    if fitted:
        curves["raw"] = risk_coverage(*top_probability(logits, labels))
    body = (
        f"<p class='note'>{html.escape(_explain(record, temperature))}</p>"
        + _figures_table(record)
        + f"<div>{img(reliability_png(panels), 'reliability diagram')}</div>"
        + f"<h3>Abstaining</h3><div>{img(risk_coverage_png(curves, THRESHOLDS), 'risk-coverage')}"
        + "<p class='note'>Accuracy on the images a <code>--min-confidence P</code> answers "
        "(calibrated top probability at least P; the others are labelled unknown), against "
        "the share it answers; P = 0.5, 0.7 and 0.9 are marked.</p></div>"
    )
    return section("Calibration and abstaining", body)


def _explain(record: dict, temperature: float) -> str:
    how = (
        f"{BINS} equal-width bins of the top probability; ECE: the gap between accuracy and "
        "mean top probability, averaged over the bins by their images; MCE: the largest gap; "
        "NLL: mean negative log-likelihood; Brier: mean squared error of the probabilities. "
    )
    if record.get("fitted_on") is None:
        why = record.get("note") or "this run recorded no temperature (a run from before it)"
        return how + f"No temperature scaling: {why}."
    note = f" ({record['note']})" if record.get("note") else ""
    return how + (
        f"Temperature scaling divides the logits by T = {temperature:.4g}, fitted on the "
        f"validation set{note}; predict, the API and export use it. The predictions, and so "
        "the accuracy, are the same."
    )


def _figures_table(record: dict) -> str:
    rows = []
    for role in ("test", "validation"):
        for when, figures in (record.get(role) or {}).items():
            rows.append((f"{role}, {when}", *(_cell(key, figures[key]) for key in FIGURES)))
    head = ("set", *(NAMES[key] for key in FIGURES))
    return table(rows, head) if rows else ""


def _cell(key: str, value: float) -> str:
    return f"{100 * value:.2f} %" if key in ("ece", "mce") else f"{value:.4f}"


def calibration_rows() -> dict[str, Callable[[Metrics], str]]:
    """The comparison page's rows: test ECE and NLL before -> after temperature, and T."""

    def change(key: str) -> Callable[[Metrics], str]:
        def shown(m: Metrics) -> str:
            figures = m.calibration.get("test") or {}
            if "before" not in figures:
                return "—"  # a run from before calibration was measured
            before = _cell(key, figures["before"][key])
            return (
                f"{before} → {_cell(key, figures['after'][key])}" if "after" in figures else before
            )

        return shown

    return {
        "test ECE (before → after T)": change("ece"),
        "test NLL (before → after T)": change("nll"),
        "temperature": lambda m: f"{m.calibration['temperature']:.4g}" if m.calibration else "—",
    }


def heat_map_pngs(
    ckpt: Checkpoint | None, images: torch.Tensor, targets: list[int]
) -> tuple[list[bytes], str]:
    """Grad-CAM overlays (PNG bytes) of images (N, C, H, W) for the classes ``targets``, and
    a note: what they show, or why there are none."""
    if ckpt is None or not len(images):
        return [], ""
    from blitz.outputs.explain import heat_maps, overlay_png

    try:
        maps = heat_maps(ckpt.build_model(), ckpt.model, images, targets)
    except BlitzError as exc:  # grad-cam not installed, or a model it cannot explain
        return [], f"No heat maps: {exc}."
    note = (
        "Beside each, its Grad-CAM heat map for the predicted class (red: where the evidence "
        "for it lies; blitz explain draws them for any image)."
    )
    return [overlay_png(image, heat) for image, heat in zip(images, maps)], note
