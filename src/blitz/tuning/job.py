"""What a study searches, recorded with it (the settings to start from, the ones fixed for every
trial, the space and the pruner: a resumed study, and every process that joins it, takes this
record, so that all its trials are comparable), and what it found. Imports no Optuna."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from blitz.config.checks import option_name
from blitz.config.settings import Config
from blitz.data.sources import load_data, recorded_spec
from blitz.errors import BlitzError
from blitz.models.configs import build_config
from blitz.training.context import Log, silent
from blitz.training.metrics import Metrics
from blitz.tuning.space import Space, space_from_raw

VAL_FRACTION = 0.1  # split off as the validation set where the data has none
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class Job:
    """A study's fixed part (plain data: it is stored with the study as it is)."""

    preset: str  # the preset the settings start from ("custom" with a --config file)
    base: dict[str, Any] | None  # the raw settings of a --config file, else None
    fixed: dict[str, Any]  # settings by key, the same for every trial (data.source included)
    space: dict[str, dict[str, Any]]  # key -> Dimension.to_raw()
    pruner: str = "median"
    notes: list[str] = field(default_factory=list)  # what tune decided for the user, said once
    multi_label: bool = False  # several labels an image: trials are scored by macro mAP

    @property
    def figure(self) -> str:
        """What trials are scored by, as the page and the lines name it."""
        return "macro mAP" if self.multi_label else "accuracy"

    @property
    def figure_key(self) -> str:
        """That figure's key in a run's validation record (an epoch's has ``val_`` before it)."""
        return "map" if self.multi_label else "accuracy"

    def test_score(self, metrics: Metrics) -> float:
        """A run's figure on its test set (a trial's run holds its test set out: validation's)."""
        return metrics.multilabel["map"] if self.multi_label else metrics.test_accuracy

    def config(self, params: dict[str, Any]) -> Config:
        """A trial's settings: the fixed ones with its ``params`` (setting key -> value)."""
        return build_config(self.preset, {**self.fixed, **params}, self.base)

    @property
    def dimensions(self) -> Space:
        return space_from_raw(self.space)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> Job:
        return Job(**raw)


def with_validation(job: Job, log: Log) -> Job:
    """``job`` with a validation set to score trials on: the data's own, else one split off its
    training images (``data.val_fraction`` 0.1, recorded with the study and in best.toml). Data
    without a test set is refused: the winner could not be tested once on held-out images."""
    cfg = job.config({}).data
    data = load_data(cfg, silent)
    # a path as an absolute one: helpers, a resumed study and best.toml read the same data
    source = recorded_spec(cfg.source)
    job = replace(job, fixed={**job.fixed, "data.source": source}, multi_label=data.multi_label)
    if data.test_is_val:
        raise BlitzError(
            f"{data.name} has no test set: blitz tune scores trials on validation and tests the "
            "winner once on held-out images: add a test/ folder, or split one off with "
            "--test-fraction 0.2"
        )
    if data.val is not None:
        return job
    key = "data.val_fraction"
    if key in job.fixed:  # 0, or a fraction the data refused
        raise BlitzError(
            f"{option_name(key)} {job.fixed[key]} leaves {data.name} without a validation set, "
            "which blitz tune scores every trial on: give a fraction such as 0.1"
        )
    note = (
        f"{data.name} has no validation set: every trial splits {100 * VAL_FRACTION:g} % of the "
        f"training images off as one ({option_name(key).split()[0]} {VAL_FRACTION:g}, kept in "
        "best.toml)"
    )
    log(note)
    return replace(job, fixed={**job.fixed, key: VAL_FRACTION}, notes=[*job.notes, note])


def check_pruner(name: str) -> None:
    if name not in PRUNERS:
        raise BlitzError(f"unknown pruner {name!r}: choose " + ", ".join(PRUNERS))


@dataclass(frozen=True)
class Tested:
    """The winner, trained again from best.toml and tested once on the test set."""

    trial: int  # the winning trial's number
    run_dir: str
    validation: float  # the retrained run's validation figure (the trial's, if it replays)
    test: float  # its test figure: the only test the study takes
    retrained: bool = True  # False: the test was taken before (by this or another process)
    figure: str = "accuracy"  # the figure both are (``Job.figure``)


@dataclass(frozen=True)
class Result:
    """What a study found; ``tested`` is None with ``search_only``."""

    out: Path
    trials: int
    best_trial: int | None
    best_params: dict
    best_validation: float | None
    tested: Tested | None
    files: dict[str, Path]
