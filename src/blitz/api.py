"""blitz from Python (a notebook, a script): ``train`` and ``load`` give a ``Run`` to look at,
predict with, evaluate, report and export. ``blitz train`` is a layer over ``plan_training``,
``plan_resume`` and ``run_training``. Light to import: torch loads on first use."""

from __future__ import annotations

import base64
import dataclasses
import difflib
import html
import inspect
import io
import itertools
import os
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property, wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import quote

from blitz.config.settings import SECTIONS, TRAIN_FLAGS
from blitz.diagnosis.findings import DEFAULT_FOLDS, NEAR_BITS, Diagnosis  # light: no torch
from blitz.errors import BlitzError, path_too_long

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from blitz.config.settings import Config
    from blitz.training.checkpoint import Checkpoint, ModelFacts
    from blitz.training.evaluate import Scores
    from blitz.training.multilabel import MultiLabelScores
    from blitz.training.rundir import Metrics, RunDir
    from blitz.tuning.job import Result as TuneResult

# train()'s keywords (argparse's names for `blitz train`'s options) -> the settings they set
KEYWORDS = {flag.keyword: key for key, flag in TRAIN_FLAGS.items()}
DEFAULT_PRESET = "fast-cpu"
CLASSES_SHOWN = 10  # class names in a Run's summary
KINDS = {str: "a string", os.PathLike: "a path", bool: "True or False", int: "an integer",
         float: "a number", dict: "a dict", type(None): "None"}  # fmt: skip
Function = TypeVar("Function", bound=Callable[..., Any])


def checked(function: Function) -> Function:
    """Arguments of another type than ``function``'s annotations are a BlitzError naming the
    argument and the types it takes (not a TypeError or AttributeError from deep inside, or a
    wrong one found only after training)."""
    signature = inspect.signature(function)
    where = "blitz." + function.__qualname__.removesuffix(".__init__")  # blitz.Run(...)

    @wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        annotated = _types(function)
        for name, value in signature.bind(*args, **kwargs).arguments.items():
            allowed = annotated.get(name)
            if allowed and not isinstance(value, allowed):
                *others, last = [KINDS.get(t, t.__name__) for t in allowed]
                expected = f"{', '.join(others)} or {last}" if others else last
                raise BlitzError(
                    f"{where}: {name} must be {expected}, not "
                    f"{_short(value)} ({type(value).__name__})"
                )
            if isinstance(value, str | os.PathLike) and "\0" in str(os.fspath(value)):
                # no path holds one: os calls raise ValueError("embedded null byte")
                raise BlitzError(f"{where}: {name} holds a NUL character: {_short(value)}")
        try:
            return function(*args, **kwargs)
        except OSError as exc:  # a path too long, given or read from a file: said as such
            if (error := path_too_long(exc)) is None:
                raise
            raise error from None

    return typing.cast(Function, call)


@cache
def _types(function: Callable[..., Any]) -> dict[str, tuple[type, ...]]:
    """Parameter -> the classes its annotation allows (generics by their origin: ``dict[str,
    Any]`` is ``dict``); none for ``Any``. Read at the first call: the classes that the
    annotations name only for type checkers are imported here."""
    from blitz.training.evaluate import Scores
    from blitz.training.multilabel import MultiLabelScores
    from blitz.training.rundir import Metrics
    from blitz.tuning.job import Result

    names = {"Metrics": Metrics, "Scores": Scores, "TuneResult": Result,
             "MultiLabelScores": MultiLabelScores}  # fmt: skip
    hints = typing.get_type_hints(function, localns=names)
    out = {}
    for name, hint in hints.items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        options = typing.get_args(hint) if union else (hint,)
        if name != "return" and Any not in options:
            out[name] = tuple(typing.get_origin(t) or t for t in options)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


@checked
def train(
    data: str | os.PathLike | None = None,
    preset: str | None = None,
    *,
    config: str | os.PathLike | None = None,
    set: dict[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: str | os.PathLike | None = None,
    quiet: bool = False,
    mlflow: str | None = None,
    **settings: Any,
) -> Run:
    """Train, test and write a run directory as ``blitz train`` does; returns the finished Run.
    ``settings`` are that command's options as keywords (``max_steps=20`` for
    ``--max-steps 20``; ``blitz.api.KEYWORDS`` lists them); ``set`` takes any setting by its
    key (``{"optim.weight_decay": 5e-4}``); ``resume`` continues a stopped run with its saved
    settings; ``mlflow``: a tracking URI, "" for the default, None for no MLflow."""
    started = time.perf_counter()
    if data is not None:
        settings["data"] = data
    overrides = settings_overrides(settings, set)
    if resume is not None:
        starts = {"preset": preset, "config": config, "set": set, "out": out}
        given = [name for name, value in settings.items() if value is not None]
        given += [name for name, value in starts.items() if value]
        given += ["overwrite"] if overwrite else []
        refuse_changes_on_resume("train(resume=...)", resume, given)
        plan = plan_resume(resume)
    else:
        plan = plan_training(preset, overrides, out, config)
    metrics = run_training(plan, overwrite, quiet, mlflow, started)
    return Run(plan.run_dir.path, metrics)


@checked
def tune(
    data: str | os.PathLike | None = None,
    preset: str | None = None,
    *,
    out: str | os.PathLike,
    config: str | os.PathLike | None = None,
    space: str | os.PathLike | dict[str, Any] | None = None,
    trials: int | None = None,
    timeout: int | float | None = None,
    jobs: int = 1,
    pruner: str = "median",
    storage: str | None = None,
    study: str = "blitz",
    resume: bool = False,
    search_only: bool = False,
    search_seed: int = 0,
    search: str = "tpe",
    quiet: bool = False,
    set: dict[str, Any] | None = None,
    **settings: Any,
) -> TuneResult:
    """Search the settings as ``blitz tune`` does (Optuna: TPE, pruned on each epoch's
    validation accuracy): trials are runs scored on validation only; the winner's settings go
    to ``out/best.toml``, and it is trained again and tested once (``result.tested``).
    ``settings`` (``train``'s keywords) and ``set`` are fixed for every trial; ``space`` is a
    TOML file with a [space] table, or that table as a dict; ``resume`` continues the study in
    ``out`` (or ``storage``) with its recorded settings; ``search="random"``: random search
    instead of TPE. Needs pip install 'blitz[tune]'."""
    from blitz.tuning.search import Options
    from blitz.tuning.search import tune as run_study

    if data is not None:
        settings["data"] = data
    fixed = settings_overrides(settings, set)
    opts = Options(Path(out), trials, timeout, jobs, storage, study, resume, search_only, quiet,
                   search_seed, search)  # fmt: skip
    if resume:
        starts = {"data or settings": fixed, "preset": preset, "config": config, "space": space}
        given = [name for name, value in starts.items() if value]
        refuse_changes_on_resume("--resume", out, given + ["pruner"] * (pruner != "median"))
        return run_study(None, opts, _print)
    return run_study(_tune_job(preset, config, space, fixed, pruner), opts, _print)


def _tune_job(
    preset: str | None,
    config: str | os.PathLike | None,
    space: str | os.PathLike | dict[str, Any] | None,
    fixed: dict[str, Any],
    pruner: str,
) -> Any:
    """What a new study searches (``blitz.tuning.job.Job``)."""
    from blitz.config.loading import read_settings_file
    from blitz.tuning.job import Job
    from blitz.tuning.space import default_space, parse_space, read_space, space_to_raw

    if preset and config:
        raise BlitzError("--preset and --config both name the settings to start from: give one")
    base = read_settings_file(Path(config)) if config else None
    job = Job(preset or DEFAULT_PRESET, base, fixed, {}, pruner)
    if isinstance(space, dict):
        dims = parse_space(space, "space")
    elif space is not None:
        dims = read_space(Path(space))
    else:
        dims = default_space(job.config({}), fixed)
    return dataclasses.replace(job, space=space_to_raw(dims))


@checked
def load(run_dir: str | os.PathLike) -> Run:
    """A finished run, from its directory."""
    return Run(run_dir)


@checked
def serve(run_dir: str | os.PathLike, **options: Any) -> None:
    """Serve a finished run as ``blitz serve`` does, until stopped (Ctrl-C, SIGTERM): a page
    at /, a JSON API at /predict. ``options``: that command's options as keywords
    (``port=8080``, ``backend="onnx"``, ``max_batch=32``, ``token=...``, ``cors=("https://x",)``).
    Needs ``pip install 'blitz[serve]'``."""
    from blitz.serving import run

    run(run_dir, **options)


@checked
def doctor(
    data: str | os.PathLike | None = None,
    *,
    run: str | os.PathLike | None = None,
    out: str | os.PathLike = "doctor",
    preset: str = DEFAULT_PRESET,
    folds: int = DEFAULT_FOLDS,
    steps: int = 0,
    near_bits: int = NEAR_BITS,
    settings: dict[str, Any] | None = None,
    quiet: bool = False,
) -> Diagnosis:
    """Check ``data`` (any source train takes, its sets as train makes them) or, with ``run``,
    the sets a finished run used: leakage and copies, unreadable and odd files, class balance,
    and likely label errors by ``folds``-fold cross-validation with ``preset`` (``steps``
    each; 0: the preset's). Writes doctor.html and doctor.csv into ``out``; nothing is ever
    deleted or moved. ``settings``: data settings by key (``{"data.test_fraction": 0.2}``)."""
    from blitz.diagnosis.check import Checks
    from blitz.diagnosis.main import run_doctor
    from blitz.training.context import silent

    checks = Checks(preset, folds, steps, near_bits, dict(settings or {}))
    source = None if data is None else os.fspath(data)
    where = None if run is None else Path(run)
    return run_doctor(source, where, checks, Path(out), silent if quiet else _print)


def settings_overrides(settings: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """train()'s keywords as settings (``max_steps`` -> ``train.max_steps``; None: not given),
    then ``extra``, already by key; an unknown keyword is named with what was meant."""
    unknown = sorted(set(settings) - set(KEYWORDS))
    if unknown:
        raise BlitzError(f"unknown keyword {unknown[0]!r} for blitz.train: {_hint(unknown[0])}")
    overrides = {
        KEYWORDS[name]: os.fspath(value) if isinstance(value, os.PathLike) else value
        for name, value in settings.items()
        if value is not None
    }
    for key in extra or {}:  # the dict's type is checked, not its keys'
        if not isinstance(key, str):
            raise BlitzError(
                f"blitz.train: the keys of set must be settings' names such as "
                f"'optim.weight_decay', not {_short(key)} ({type(key).__name__})"
            )
    return {**overrides, **(extra or {})}


def _hint(name: str) -> str:
    """What an unknown keyword of train() was meant to be."""
    if name == "devices":  # not `device`: several processes are torchrun's, started by the CLI
        return "training in several processes is the command line's: blitz train --devices N"
    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    if matches := [key for key in keys if key.endswith(f".{name}")]:  # a setting by its name
        keyword = {key: word for word, key in KEYWORDS.items()}.get(matches[0])
        return f"did you mean {keyword}?" if keyword else f"pass set={{{matches[0]!r}: ...}}"
    own = [p for p in inspect.signature(train).parameters if p != "settings"]
    if close := difflib.get_close_matches(name, [*KEYWORDS, *own], 1):
        return f"did you mean {close[0]}?"
    return "see help(blitz.train) for the keywords, or pass any setting with set={key: value}"


def refuse_changes_on_resume(option: str, run_dir: str | os.PathLike, given: list[str]) -> None:
    """A resumed run must replay its saved settings: a changed one would break that silently.
    ``option`` and ``given`` are spelled as the caller's user typed them."""
    if given:
        raise BlitzError(
            f"{option} continues {run_dir} with the settings saved in it: drop "
            + ", ".join(given)
            + " (to change settings, start a new run)"
        )


class TrainingPlan(NamedTuple):
    """What a training call will do; nothing is written yet."""

    cfg: Config
    run_dir: RunDir
    resume: Checkpoint | None  # the checkpoint to continue from


def plan_training(
    preset: str | None,
    overrides: dict[str, Any],
    out: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
) -> TrainingPlan:
    """A new run: a preset (or a settings file, ``config``) with overrides, and its folder."""
    from blitz.config.loading import read_settings_file
    from blitz.models.configs import build_config
    from blitz.training.rundir import RunDir
    from blitz.workflows.runs import elastic_resume

    if preset and config:
        raise BlitzError("--preset and --config both name the settings to start from: give one")
    base = read_settings_file(Path(config)) if config else None
    cfg = build_config(preset or DEFAULT_PRESET, overrides, base)
    run_dir = RunDir(Path(out)) if out else RunDir.default(cfg.preset)
    return TrainingPlan(cfg, run_dir, elastic_resume(run_dir))  # torchrun restarted: carry on


def plan_resume(run_dir: str | os.PathLike) -> TrainingPlan:
    """A stopped run, continued from its newest checkpoint with its saved settings."""
    from blitz.training.rundir import RunDir

    folder = RunDir(Path(run_dir))
    resume = folder.load_resumable()
    return TrainingPlan(resume.cfg, folder, resume)


def run_training(
    plan: TrainingPlan,
    overwrite: bool,
    quiet: bool,
    mlflow: str | None,
    started: float,
    on_result: Callable[[Metrics], None] | None = None,
) -> Metrics | None:
    """Carry out a plan (``started``: when the caller began, for the run's total time;
    ``on_result``: called with the metrics before the pictures and report are drawn). Under
    torchrun every process trains and only the first returns the metrics."""
    from blitz.training.context import silent
    from blitz.training.distributed import finish
    from blitz.workflows.runs import train_run

    cfg, run_dir, resume = plan
    with _owning(run_dir):
        if resume is None and _first_process():
            run_dir.prepare(overwrite)
        log = silent if quiet else _print
        metrics = train_run(cfg, run_dir, log, quiet, started, resume, mlflow, on_result=on_result)
    finish()
    return metrics


def _print(message: str) -> None:
    print(message, flush=True)


def _first_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def _owning(run_dir: RunDir) -> Iterator[None]:
    """The first process locks the run directory while it trains; a run refused before it
    wrote anything leaves no empty folder behind."""
    if not _first_process():
        yield
        return
    with run_dir.lock():
        try:
            yield
        except BaseException:  # refused, interrupted, or its output pipe closed
            run_dir.remove_if_unused()  # only a run with no checkpoint yet: nothing is lost
            raise


@dataclass(frozen=True)
class ImagePrediction:
    """One image's most probable classes, best first."""

    image: Path | int  # the file, or the image's place among the images passed
    top: list[tuple[str, float]]  # (class, probability)
    abstained: bool = False  # its top probability was below predict's min_confidence
    labels: list[str] | None = None  # a multi-label run's: every label over its threshold

    @property
    def label(self) -> str:
        """The top class, or "unknown" where the prediction abstained."""
        return "unknown" if self.abstained else self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]


class Run:
    """A finished run: what it measured, and its model to predict with, evaluate, report
    and export."""

    @checked
    def __init__(self, path: str | os.PathLike, metrics: Metrics | None = None) -> None:
        from blitz.training.rundir import RunDir

        self._dir = RunDir(Path(path))
        self.metrics = self._dir.read_metrics() if metrics is None else metrics

    @property
    def path(self) -> Path:
        return self._dir.path

    @property
    def accuracy(self) -> float:
        """On the test set (the validation set if there was none: see ``metrics.test_set``)."""
        return self.metrics.test_accuracy

    @property
    def classes(self) -> list[str]:
        return self.metrics.classes

    @cached_property
    def config(self) -> Config:
        """The run's settings, as saved in config.json."""
        return self._dir.read_config()

    @cached_property
    def _checkpoint(self) -> Checkpoint:
        return self._dir.load_model()

    @property
    def model(self) -> torch.nn.Module:
        """A fresh copy of the trained network, in evaluation mode on the CPU: it maps images
        of the run's size (``config.data.image_size``), normalised with its mean and std, to
        logits. ``predict`` resizes, normalises and averages the run's test-time views for you."""
        return self._checkpoint.build_model()

    @cached_property
    def _model(self) -> torch.nn.Module:
        return self.model  # predict's own copy, built once

    @checked
    def predict(
        self,
        images: Any,
        top_k: int = 1,
        calibrated: bool = True,
        min_confidence: float | int | None = None,
    ) -> list[ImagePrediction]:
        """The ``top_k`` classes of each image: files or folders of them (a file that cannot
        be read is named on stderr and left out), PIL images, or tensors, uint8 (C, H, W) or
        (N, C, H, W) in 0-255 or float in [0, 1]; a list of any one kind. Images are converted
        and resized as ``blitz predict`` does. Probabilities are calibrated by the run's
        temperature (``calibrated=False``: the network's own); an image whose top probability
        is below ``min_confidence`` is labelled "unknown" (``abstained``)."""
        from blitz.outputs.predict import UNKNOWN, check_min_confidence, decide

        if isinstance(top_k, bool) or top_k < 1:  # an int (checked): True is one too
            raise BlitzError(f"invalid top_k {top_k!r}: expected an integer >= 1")
        check_min_confidence(min_confidence, "min_confidence")
        facts = self._checkpoint.model
        if facts.multi_label and min_confidence is not None:
            raise BlitzError("min_confidence is for single-label runs: a multi-label run answers "
                             "every label over its class's threshold")  # fmt: skip
        found = self._predictions(images, top_k, calibrated)
        return [
            ImagePrediction(name, top, decide(top, min_confidence) == UNKNOWN,
                            facts.labels_over(top))
            for name, top in found
        ]  # fmt: skip

    def _predictions(self, images: Any, top_k: int, calibrated: bool) -> list[tuple[Any, list]]:
        from blitz.outputs.predict import collect_images, predict_files

        items = list(images) if isinstance(images, (list, tuple)) else [images]
        facts, model = self._checkpoint.model, self._model
        if items and all(isinstance(item, (str, os.PathLike)) for item in items):
            files = collect_images([Path(item) for item in items])
            return list(predict_files(facts, model, files, top_k, calibrated=calibrated))
        return _predict_in_memory(facts, model, _decoded(items, facts), top_k, calibrated)

    @checked
    def explain(
        self, images: Any, out: str | os.PathLike, class_name: str | None = None
    ) -> list[Path]:
        """Grad-CAM heat maps over image files (or folders of them), written as PNGs into the
        folder ``out``: each for its predicted class, or for ``class_name``. Needs the
        grad-cam package (``pip install 'blitz[explain]'``); returns the files written."""
        from blitz.outputs.explain import explain_files
        from blitz.outputs.predict import collect_images

        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not all(isinstance(item, (str, os.PathLike)) for item in items):
            raise BlitzError("explain takes image files or folders: save in-memory images first")
        files = collect_images([Path(item) for item in items])
        done = explain_files(self._checkpoint.model, self.model, files, Path(out), class_name)
        return [explanation.written for explanation in done]

    @checked
    def evaluate(
        self, data: str | os.PathLike | None = None, quiet: bool = False
    ) -> Scores | MultiLabelScores:
        """Test the model on the run's own test set, or on ``data`` (a spec as for train): its
        accuracy and the views of its confusion matrix, in the shape of
        ``run.metrics.test_scores``; a multi-label run's figures at its thresholds (mAP, F1,
        subset accuracy, Hamming loss, per class), as ``run.metrics.multilabel`` has them."""
        from blitz.training.context import silent
        from blitz.training.evaluate import Evaluation, scores
        from blitz.workflows.runs import eval_run

        source = None if data is None else os.fspath(data)
        result = eval_run(self._dir, source, silent if quiet else _print)
        if not isinstance(result, Evaluation):
            return result.scores
        return scores(result, self.classes)

    def report(self) -> Path:
        """Write report.html again (from the run's files and data); returns its path."""
        from blitz.training.context import silent
        from blitz.workflows.runs import rebuild_report

        return Path(rebuild_report(self._dir, silent))

    @checked
    def export(self, format: str = "onnx", out: str | os.PathLike | None = None) -> Path:
        """Write the model as ONNX or TorchScript, normalisation included, checked against
        PyTorch; ``out`` defaults to model.onnx (model.torchscript.pt) in the run directory."""
        from blitz.outputs.export import FORMATS, default_path, export_model

        if format not in FORMATS:
            raise BlitzError(f"unknown export format {format!r}: choose " + " or ".join(FORMATS))
        path = Path(out) if out is not None else default_path(self.path, format)
        export_model(self._checkpoint.model, self.model, format, path)
        return path

    def serve(self, **options: Any) -> None:
        """Serve this run over HTTP until stopped: see ``blitz.serve``."""
        serve(self.path, **options)

    def __repr__(self) -> str:
        m = self.metrics
        return f"Run({str(self.path)!r}: {m.model} on {m.data}, {self._scored})"

    @property
    def _scored(self) -> str:
        """``test accuracy 93.75 %`` (validation, for a run without a test set; a multi-label
        run's macro mAP)."""
        return self.metrics.headline

    def _repr_html_(self) -> str:
        """Jupyter's view: the figures, the training curves and a link to report.html.
        Every string is escaped: class and data names come from folders."""
        from blitz.outputs.plots import curves_png
        from blitz.training.progress import read_metrics_csv

        m = self.metrics
        sets = ", ".join(f"{count} {role}" for role, count in m.sets.items())
        shown = m.classes[:CLASSES_SHOWN] + (["…"] if len(m.classes) > CLASSES_SHOWN else [])
        rows = [
            ("result", f"{self._scored} after {m.steps} steps ({m.epochs} epochs)"),
            ("model", f"{m.model} ({m.parameters:,} parameters), preset {m.preset}"),
            ("data", f"{m.data} ({sets or f'{m.test_images} test'} images)"),
            (f"{len(m.classes)} classes", ", ".join(shown)),
        ]
        table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
        png = base64.b64encode(curves_png(m.history, read_metrics_csv(self._dir.csv))).decode()
        return (
            f"<div><b>blitz run</b> <code>{_e(str(self.path))}</code><table>{table}</table>"
            f"<img src='data:image/png;base64,{png}' alt='training curves' "
            f"style='max-width:100%'><br>{self._report_link()}</div>"
        )

    def _report_link(self) -> str:
        report = self._dir.report
        if not report.exists():
            return "no report.html: <code>run.report()</code> writes it"
        try:
            href = Path(os.path.relpath(report)).as_posix()  # a notebook serves its own folder
        except ValueError:  # another drive (Windows)
            href = report.resolve().as_uri()
        return f"<a href='{_e(quote(href))}' target='_blank'>report.html</a>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _decoded(items: list[Any], facts: ModelFacts) -> Iterator[np.ndarray]:
    """Each in-memory image as blitz decodes a file: encoded losslessly (TIFF keeps every
    mode and the EXIF orientation), then decoded, converted and resized as files are."""
    from blitz.outputs.predict import decode

    for index, image in enumerate(_pil_images(items)):
        buffer = io.BytesIO()
        try:
            image.save(buffer, format="TIFF", exif=image.getexif())
        except (OSError, ValueError) as exc:
            raise BlitzError(
                f"image {index} (mode {image.mode}) cannot be classified ({exc}): convert it "
                "first, e.g. image.convert('RGB')"
            ) from None
        yield decode(facts, buffer.getvalue(), f"image {index}")


def _pil_images(items: list[Any]) -> Iterator[Image.Image]:
    import torch
    from PIL import Image

    from blitz.data.images import check_pixels

    for index, item in enumerate(items):
        if isinstance(item, Image.Image):
            check_pixels(f"input {index}", *item.size)  # its copies would be the size again
            yield item
        elif isinstance(item, torch.Tensor):
            _check_dense(item, index)
            batch = item if item.dim() == 4 else _one_image(item)
            check_pixels(f"input {index}", batch.shape[-1], batch.shape[-2])
            yield from (_tensor_to_pil(image) for image in batch)
        else:
            raise BlitzError(
                f"cannot predict a {type(item).__name__}: pass image files or folders, PIL "
                "images or tensors (a list of one kind)"
            )


def _check_dense(tensor: torch.Tensor, index: int) -> None:
    import torch

    # a meta tensor has no values, a sparse or nested one no plain (C, H, W) layout
    if tensor.is_meta or tensor.is_nested or tensor.layout != torch.strided:
        kind = "meta" if tensor.is_meta else "nested" if tensor.is_nested else str(tensor.layout)
        raise BlitzError(
            f"input {index} is a {kind} tensor: pass a dense tensor that holds its values "
            "(tensor.to_dense(), or one made on the CPU or a GPU)"
        )


def _one_image(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 3:
        raise BlitzError(
            f"a tensor of shape {tuple(tensor.shape)} is no image: expected (C, H, W) or "
            "(N, C, H, W)"
        )
    return tensor.unsqueeze(0)


def _tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W), uint8 in 0-255 or float in [0, 1], C 1, 3 or 4 -> a PIL image."""
    import torch
    from PIL import Image

    if image.shape[0] not in (1, 3, 4):
        raise BlitzError(
            f"an image tensor of shape {tuple(image.shape)} has {image.shape[0]} channels: "
            "expected (C, H, W) with C 1 (grey), 3 (RGB) or 4 (RGBA)"
        )
    if image.dtype.is_floating_point:
        image = image.detach().cpu().float()
        if not (image.isfinite().all() and image.min() >= 0 and image.max() <= 1):
            raise BlitzError(
                "a float image tensor must hold values in [0, 1]: scale it, or pass uint8 "
                "values in 0-255"
            )
        image = (image * 255).round().to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise BlitzError(f"an image tensor of {image.dtype}: expected uint8 (0-255) or float")
    pixels = image.detach().cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def _predict_in_memory(
    facts: ModelFacts,
    model: torch.nn.Module,
    arrays: Iterator[np.ndarray],
    top_k: int,
    calibrated: bool = True,
) -> list[tuple[int, list[tuple[str, float]]]]:
    """Classify decoded images in batches of at most ``predict.BATCH_BYTES``, as files are."""
    from blitz.outputs.predict import BATCH_BYTES, classify

    per_batch = max(1, BATCH_BYTES // (facts.in_channels * facts.image_size**2))
    results: list[tuple[int, list[tuple[str, float]]]] = []
    while batch := list(itertools.islice(arrays, per_batch)):
        places = list(range(len(results), len(results) + len(batch)))
        results += classify(facts, model, places, batch, top_k, calibrated)
    if not results:
        raise BlitzError("no images to predict: pass at least one")
    return results
