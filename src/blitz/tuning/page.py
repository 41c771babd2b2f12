"""``tune.html``: the leaderboard, the winner's one test, and pictures of the search (history,
parameter importances, slices), self-contained and escaped like a run's report."""

from __future__ import annotations

import html
import math
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from optuna.trial import FrozenTrial, TrialState

from blitz.outputs.html import img, page, section, table  # one page style for blitz
from blitz.outputs.plots import figure_png, plain_text
from blitz.tuning.job import Job
from blitz.tuning.results import Tested, ranked, settings_text, tested_line
from blitz.tuning.space import Space
from blitz.utils.writes import write_atomic

ROWS = 20  # trials in the page's leaderboard
SLICES_PER_ROW = 3


def write_page(path: Path, study: optuna.Study, job: Job, tested: Tested | None) -> None:
    trials = study.get_trials(deepcopy=False)
    space = job.dimensions
    figure = job.figure
    sections = [
        section("Leaderboard", _leaderboard(trials, tested)),
        section("Optimisation history", img(history_png(trials, figure), "optimisation history")),
        section("Parameter importances", _importances(study, figure)),
        section("Slices", img(slices_png(trials, space, figure), f"{figure} by setting")),
        section("Search", _search(job, space)),
    ]
    subtitle = html.escape(
        f"study {study.study_name}: {len(trials)} trials, scored by their validation {figure} only"
    )
    write_atomic(path, page("blitz tune", subtitle, sections).encode())


def _leaderboard(trials: list[FrozenTrial], tested: Tested | None) -> str:
    rows = [
        (rank, t.number, f"{100 * float(t.value or 0):.2f} %", t.user_attrs.get("seconds", ""),
         t.user_attrs.get("run_dir", "") if Path(t.user_attrs.get("run_dir", "-")).is_dir()
         else "removed", settings_text(t.params))
        for rank, t in enumerate(ranked(trials)[:ROWS], 1)
    ]  # fmt: skip
    leaders = table(rows, ("rank", "trial", "validation", "seconds", "run", "settings"))
    test = f"<p><b>{html.escape(tested_line(tested))}</b></p>" if tested else ""
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    pruned = sum(t.state == TrialState.PRUNED for t in others)
    note = (
        f"<p class='note'>{pruned} trials pruned, {len(others) - pruned} failed or running "
        "(tune.csv has every trial; pruned trials' runs are removed, and all but the top "
        "three finished ones')</p>"
    )
    return test + leaders + note


def _search(job: Job, space: Space) -> str:
    rows = [(key, dim.describe()) for key, dim in space.items()]
    fixed = [(key, str(value)) for key, value in job.fixed.items()]
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in job.notes)
    return (
        f"<p>{html.escape(f'from preset {job.preset}, pruner {job.pruner}')}</p>"
        + table(rows, ("searched", "over"))
        + (table(fixed, ("fixed for every trial", "value")) if fixed else "")
        + notes
    )


def _importances(study: optuna.Study, figure: str) -> str:
    """Optuna's PED-ANOVA importances (it needs no scikit-learn), drawn here."""
    try:
        with warnings.catch_warnings():  # "experimental"
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as exc:  # too few finished trials, all alike: a picture, not the results
        return f"<p class='note'>{html.escape(f'no importances: {exc}')}</p>"
    if not found:
        return "<p class='note'>not enough finished trials to say</p>"
    return img(importances_png(found, figure), "parameter importances")


@plain_text
def history_png(trials: list[FrozenTrial], figure: str) -> bytes:
    """Each trial's validation ``figure`` by its number (pruned ones at their last epoch's), and
    the best so far."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    values = [100 * float(t.value or 0) for t in done]
    ax.scatter([t.number for t in done], values, label="finished")
    ax.scatter([t.number for t in pruned],
               [100 * t.intermediate_values[max(t.intermediate_values)] for t in pruned],
               marker="x", color="grey", label="pruned (last epoch)")  # fmt: skip
    best, line = -math.inf, []
    for t in done:
        best = max(best, 100 * float(t.value or 0))
        line.append(best)
    ax.step([t.number for t in done], line, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"validation {figure} (%)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


@plain_text
def importances_png(importances: dict[str, float], figure: str) -> bytes:
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for the validation {figure} (PED-ANOVA)")
    fig.tight_layout()
    return figure_png(fig)


@plain_text
def slices_png(trials: list[FrozenTrial], space: Space, figure: str) -> bytes:
    """The validation ``figure`` against each setting searched, one panel a setting."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = list(space) or ["(none)"]
    cols = min(SLICES_PER_ROW, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(t.params[key], 100 * float(t.value or 0)) for t in done if key in t.params]
        dim = space.get(key)
        if dim and dim.kind == "choice":  # categories at positions, named
            labels = [str(v) for v in dim.values]
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
            points = [(labels.index(str(x)), y) for x, y in points]
        if dim and dim.kind == "log":
            ax.set_xscale("log")  # plain tick labels: plain_text would show mathtext as written
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.tick_params(axis="x", labelsize=7)
        ax.scatter([x for x, _ in points], [y for _, y in points], c=range(len(points)),
                   cmap="viridis", s=18)  # fmt: skip
        ax.set_title(key, fontsize=9)
        ax.set_ylabel(f"validation {figure} (%)", fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    return figure_png(fig)
