"""A page that sets runs side by side (``blitz report A B ...``): their figures, the settings
that differ and the curves overlaid, self-contained as ``report.html`` is."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from blitz.config.loading import flatten
from blitz.errors import BlitzError
from blitz.outputs.html import img, page, section, table
from blitz.outputs.plots import NUMBERS_UP_TO, overlay_png
from blitz.outputs.predict import printable
from blitz.outputs.trust import calibration_rows
from blitz.training.metrics import Metrics
from blitz.training.multilabel import FIGURES, NAMES
from blitz.training.progress import read_metrics_csv
from blitz.training.rundir import RunDir
from blitz.utils.writes import write_atomic


def write_comparison(run_dirs: list[RunDir], out: Path) -> Path:
    """A page comparing runs: metrics side by side, config differences, curves overlaid."""
    names = [d.path.name for d in run_dirs]
    if len(set(names)) < len(names):  # runs/a/run and runs/b/run (or a run twice): number them
        names = [f"{i}. {d}" for i, d in enumerate(run_dirs, 1)]
    metrics = {n: d.read_metrics() for n, d in zip(names, run_dirs)}
    configs = {n: flatten(settings_of(d)) for n, d in zip(names, run_dirs)}
    curves = {
        n: (metrics[n].history, _in_epochs(read_metrics_csv(d.csv), metrics[n]))
        for n, d in zip(names, run_dirs)
    }
    sections = [
        section("Metrics", _side_by_side(metrics)),
        section("Settings that differ", _config_diff(configs)),
        section("Curves", img(overlay_png(curves, "epochs", "epoch"), "curves overlaid")),
    ]
    text = page("blitz: comparison of runs", html.escape(", ".join(names)), sections)
    write_atomic(out, printable(text).encode())
    return out


def _in_epochs(rows: list[dict], metrics: Metrics) -> list[dict]:
    """Rows with an ``epochs`` column (steps / steps per epoch): runs with other batch sizes
    take other numbers of steps, so only epochs line their curves up."""
    per_epoch = metrics.steps_per_epoch or metrics.steps / max(metrics.epochs, 1)
    return [{**row, "epochs": row["step"] / per_epoch} for row in rows]


def _side_by_side(metrics: dict[str, Metrics]) -> str:
    keys = {
        "test accuracy": lambda m: f"{100 * m.test_accuracy:.2f} %",
        "model": lambda m: f"{m.model} ({m.parameters:,} parameters)",
        "data": lambda m: m.data,
        "preset": lambda m: m.preset,
        "epochs / steps": lambda m: f"{m.epochs} / {m.steps}",
        "training time": lambda m: f"{m.train_seconds:.1f} s",
        "device": lambda m: m.device,
        **calibration_rows(),
    }
    if any(m.multi_label for m in metrics.values()):
        keys = {**keys, **_multilabel_rows()}
    rows = [(key, *(get(m) for m in metrics.values())) for key, get in keys.items()]
    classes = {tuple(m.classes) for m in metrics.values()}
    if len(classes) == 1 and len(next(iter(classes))) <= NUMBERS_UP_TO:  # same classes, few
        for c in next(iter(classes)):
            rows.append((f"{_class_figure(metrics)}: {c}",
                         *(_per_class(m, c) for m in metrics.values())))  # fmt: skip
    return table(rows, ("", *metrics))


def _multilabel_rows() -> dict[str, Any]:
    """Compare's rows of the multi-label figures ("" for a single-label run)."""

    def figure(key: str) -> Any:
        def shown(m: Metrics) -> str:
            if not m.multi_label:
                return ""
            value = m.multilabel[key]
            return f"{value:.4f}" if key == "hamming_loss" else f"{100 * value:.2f} %"

        return shown

    return {NAMES[key]: figure(key) for key in FIGURES}


def _class_figure(metrics: dict[str, Metrics]) -> str:
    """What compare shows per class: accuracy, or a multi-label run's AP (or both, mixed)."""
    kinds = {m.multi_label for m in metrics.values()}
    return "AP" if kinds == {True} else "accuracy / AP" if len(kinds) > 1 else "accuracy"


def _per_class(m: Metrics, name: str) -> str:
    share = m.per_class[name]["ap"] if m.multi_label else m.per_class_accuracy[name]
    return f"{100 * share:.1f} %"


def _config_diff(configs: dict[str, dict[str, Any]]) -> str:
    keys = sorted(set().union(*configs.values()))
    rows = [
        (key, *(json.dumps(c.get(key, "—")) for c in configs.values()))
        for key in keys
        if len({json.dumps(c.get(key)) for c in configs.values()}) > 1
    ]
    return table(rows, ("setting", *configs)) if rows else "<p>The settings are identical.</p>"


def settings_of(run_dir: RunDir) -> dict[str, Any]:
    """The settings as plain data: the saved ones, or none if they cannot be read."""
    try:
        return run_dir.read_config().to_dict()
    except BlitzError:
        return {}
