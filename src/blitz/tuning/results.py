"""What a study leaves: ``tune.csv`` (a row a trial), ``best.toml`` (the winner's settings, for
``blitz train --config``), the leaderboard, and the trials' run directories worth keeping."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from blitz.config.loading import settings_toml
from blitz.training.rundir import RunDir
from blitz.tuning.job import Job, Tested
from blitz.tuning.trial import remove_run, trial_dir
from blitz.utils.cells import text_cell
from blitz.utils.writes import write_atomic

KEPT = 3  # the top trials whose run directories stay
SHOWN = 5  # rows of the printed leaderboard


def ranked(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Finished trials, best validation figure first (the earlier trial first on a tie)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(done, key=lambda t: (-float(t.value or 0), t.number))


def csv_text(trials: list[FrozenTrial], job: Job) -> str:
    """tune.csv: trial, state, validation figure (``val_accuracy``, or ``val_map`` for several
    labels an image), seconds, epochs, kept run, settings, error."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys, score = list(job.space), f"val_{job.figure_key}"
    writer.writerow(["trial", "state", score, "seconds", "epochs", "run_dir", *keys, "error"])
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        kept = attrs.get("run_dir", "") if Path(attrs.get("run_dir", "-")).is_dir() else ""
        writer.writerow([
            t.number, t.state.name.lower(), "" if t.value is None else t.value,
            attrs.get("seconds", ""), attrs.get("epochs", ""), text_cell(kept),
            *(_cell(t.params.get(key, "")) for key in keys),
            text_cell(attrs.get("error", "")),
        ])  # fmt: skip
    return buf.getvalue()


def _cell(value: Any) -> Any:
    """A setting's cell: a number as it is, a choice's text as no spreadsheet formula."""
    return text_cell(value) if isinstance(value, str) else value


def best_toml(job: Job, best: FrozenTrial, total: int) -> str:
    """The winner's whole settings as a settings file (``blitz train --config best.toml``)."""
    cfg = job.config(best.params)
    about = (
        f"blitz tune's best of {total} trials: trial {best.number}, validation {job.figure} "
        f"{100 * float(best.value or 0):.2f} %"
    )
    return f"# {about}\n" + settings_toml(replace(cfg, description=about))


def keep_top(trials: list[FrozenTrial], out: Path) -> None:
    """Run directories of the top KEPT trials stay; the others' (here) go. Running trials (of
    another process) are left alone."""
    top = {t.number for t in ranked(trials)[:KEPT]}
    for t in trials:
        if t.number not in top and t.state != TrialState.RUNNING:
            remove_run(RunDir(trial_dir(out, t.number)))


def settings_text(params: dict[str, Any]) -> str:
    """``lr=0.05 batch_size=128``: a trial's settings by their short names."""
    return " ".join(f"{key.split('.')[-1]}={_value(v)}" for key, v in params.items())


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def leaderboard(study: optuna.Study, tested: Tested | None, figure: str) -> list[str]:
    """The top trials by their validation ``figure`` and what the test said, as printed lines."""
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    lines = [
        f"{len(trials)} trials, scored by validation {figure}: "
        f"{states[TrialState.COMPLETE]} finished, {states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL]} failed"
        + (f", {states[TrialState.RUNNING]} running" if states[TrialState.RUNNING] else ""),
        f"{'rank':>4}  {'trial':>5}  {'validation':>10}  {'seconds':>7}  settings",
    ]
    for rank, t in enumerate(ranked(trials)[:SHOWN], 1):
        seconds = t.user_attrs.get("seconds", 0)
        lines.append(
            f"{rank:>4}  {t.number:>5}  {100 * float(t.value or 0):>8.2f} %  {seconds:>7.1f}  "
            + settings_text(t.params)
        )
    if tested:
        lines.append(tested_line(tested))
    return lines


def tested_line(tested: Tested) -> str:
    how = "retrained from best.toml" if tested.retrained else "retrained from best.toml earlier"
    return (
        f"winner: trial {tested.trial}, {how} into {tested.run_dir}: validation {tested.figure} "
        f"{100 * tested.validation:.2f} %, test {100 * tested.test:.2f} % (the test set's only "
        "use: trials never saw it)"
    )


def write_csv(path: Path, trials: list[FrozenTrial], job: Job) -> None:
    write_atomic(path, csv_text(trials, job).encode())
