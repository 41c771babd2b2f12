"""``blitz doctor``: load the data as ``blitz train`` would (or a run's own sets), run every
check, and gather what was found with the thumbnails a person needs to judge it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from blitz.config.settings import Config
from blitz.data.counts import class_counts
from blitz.data.dataset import ImageData, Log
from blitz.data.sources import load_data
from blitz.diagnosis.balance import balance_findings, class_name_findings
from blitz.diagnosis.duplicates import exact_findings, exact_groups, near_findings
from blitz.diagnosis.files import odd_image_findings, unreadable_findings
from blitz.diagnosis.findings import DEFAULT_FOLDS, NEAR_BITS, Diagnosis, Finding, ordered
from blitz.diagnosis.labels import cross_validate, label_findings, run_model_probabilities
from blitz.diagnosis.scan import scan
from blitz.errors import BlitzError
from blitz.models.configs import build_config
from blitz.outputs.plots import image_png
from blitz.training.rundir import RunDir

MAX_FOLDS = 20


@dataclass(frozen=True)
class Checks:
    """How to check: the cheap preset that cross-validates, its folds (0: no label check),
    its step budget (0: the preset's), the near-copy threshold in bits."""

    preset: str = "fast-cpu"
    folds: int = DEFAULT_FOLDS
    steps: int = 0
    near_bits: int = NEAR_BITS
    settings: dict[str, Any] = field(default_factory=dict)  # data settings, by key

    def __post_init__(self) -> None:
        if not (self.folds == 0 or 2 <= self.folds <= MAX_FOLDS):
            raise BlitzError(
                f"invalid --folds {self.folds}: 0 (no label check) or 2 to {MAX_FOLDS}"
            )
        if not 0 <= self.near_bits <= 32:
            raise BlitzError(f"invalid --near-bits {self.near_bits}: an integer from 0 to 32")
        if self.steps < 0:
            raise BlitzError(f"invalid --steps {self.steps}: an integer >= 0 (0: the preset's)")


def diagnose(spec: str | None, run: Path | None, checks: Checks, log: Log) -> Diagnosis:
    """Check the data ``spec`` (its sets as ``blitz train`` makes them), or with ``run`` the
    sets that run recorded, for every kind of finding."""
    timer = _Timer()
    cfg, data, model = timer("load", lambda: _load(spec, run, checks, log))
    facts = timer("scan", lambda: scan(data, cfg.data.source, log, only_sets=run is not None))
    findings = unreadable_findings(facts, data.classes) + odd_image_findings(facts, data.classes)
    findings += exact_findings(exact_groups(facts), data.classes)
    findings += timer("near copies", lambda: near_findings(facts, data.classes, checks.near_bits))
    findings += balance_findings(data) + class_name_findings(data.classes)
    labels, notes = timer("labels", lambda: _labels(data, cfg, checks, model, log))
    findings += labels
    found = ordered(findings)
    return Diagnosis(
        data.name, data.classes, class_counts(data), len(facts), found, timer.seconds, notes,
        thumbnails(data, found), str(run) if run else "",
    )  # fmt: skip


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, work: Any) -> Any:
        started = time.perf_counter()
        result = work()
        self.seconds[name] = round(time.perf_counter() - started, 3)
        return result


Model = tuple[Config, torch.nn.Module]  # a finished run's settings and model


def _load(
    spec: str | None, run: Path | None, checks: Checks, log: Log
) -> tuple[Config, ImageData, Model | None]:
    """The settings the folds train with, the data with its sets, and the run's model."""
    cfg, data, model = _load_any(spec, run, checks, log)
    if data.multi_label:  # its label errors, balance and placements are single-label figures
        raise BlitzError(
            f"blitz doctor checks single-label data, and {data.name} is multi-label (several "
            "labels per image): its label-error search (one class per image) does not apply"
        )
    return cfg, data, model


def _load_any(
    spec: str | None, run: Path | None, checks: Checks, log: Log
) -> tuple[Config, ImageData, Model | None]:
    overrides = {**checks.settings, "data.skip_bad_images": True}
    if checks.steps:
        overrides["train.max_steps"] = checks.steps
    if run is None:
        cfg = build_config(checks.preset, {**overrides, "data.source": spec or "auto"})
        return cfg, load_data(cfg.data, log), None
    if spec is not None:
        raise BlitzError("--run checks the run's own data and sets: drop DATA (or drop --run)")
    run_dir = RunDir(run)
    if not run_dir.model.is_file():
        raise BlitzError(f"{run} holds no model.pt: pass the directory of a finished run to --run")
    ckpt = run_dir.load_model()
    ran = ckpt.cfg
    data_cfg = replace(ran.data, skip_bad_images=True)
    data = load_data(data_cfg, log, run_dir.read_sets())
    sized = {**overrides, "data.source": ran.data.source, "data.image_size": ran.data.image_size}
    return build_config(checks.preset, sized), data, (ran, ckpt.build_model())


def _labels(
    data: ImageData, cfg: Config, checks: Checks, model: Model | None, log: Log
) -> tuple[list[Finding], list[str]]:
    """Label findings from out-of-sample probabilities, and notes on what was not checked."""
    probabilities = {}
    notes = []
    if checks.folds:
        log(f"cross-validating: {checks.folds} models of {cfg.preset}, each trained on "
            f"{checks.folds - 1}/{checks.folds} of the training images")  # fmt: skip
        probabilities = cross_validate(data, cfg, checks.folds, log).probabilities
        notes.append(_agreement(data, probabilities["train"], cfg.preset))
    else:
        notes.append("the training images' labels were not checked (--folds 0)")
    if model is not None:
        probabilities.update(run_model_probabilities(data, *model))
    if not probabilities:
        notes.append("no labels were checked: give --folds K or --run RUN_DIR")
        return [], notes
    return label_findings(data, probabilities), notes


def _agreement(data: ImageData, probabilities: torch.Tensor, preset: str) -> str:
    """How often the out-of-sample models agree with the training labels: label findings are
    only as good as they are (a weak model names many right labels too)."""
    agree = float((probabilities.argmax(1) == data.train.labels.cpu()).float().mean())
    return (
        f"the cross-validated {preset} models agree with {100 * agree:.1f} % of the training "
        "labels; the label findings are as reliable as they are (a stronger --preset, such as "
        "cpu-30s, names fewer right labels as errors)"
    )


def thumbnails(data: ImageData, findings: list[Finding]) -> dict[str, bytes]:
    """PNG thumbnails (the decoded images) of the images the findings name."""
    wanted = {f.image for f in findings} | {f.other for f in findings}
    out = {}
    for role, split in data.sets().items():
        ids = split.row_ids(role)
        rows = [row for row, image in enumerate(ids) if image in wanted]
        if rows:
            for row, image in zip(rows, split.images_at(torch.tensor(rows))):
                out[ids[row]] = image_png(image)
    return out
