"""``Run``: a finished run to look at, predict with, evaluate, explain, report, export and
serve; ``load`` opens one, ``serve`` serves one over HTTP."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from blitz.api.common import checked, echo
from blitz.api.images import decoded, predict_in_memory
from blitz.errors import BlitzError

if TYPE_CHECKING:
    import torch

    from blitz.config.settings import Config
    from blitz.training.checkpoint import Checkpoint
    from blitz.training.evaluate import Scores
    from blitz.training.metrics import Metrics
    from blitz.training.multilabel import MultiLabelScores

CLASSES_SHOWN = 10  # class names in a Run's summary


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
        return predict_in_memory(facts, model, decoded(items, facts), top_k, calibrated)

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
        from blitz.workflows.finished import eval_run

        source = None if data is None else os.fspath(data)
        result = eval_run(self._dir, source, silent if quiet else echo)
        if not isinstance(result, Evaluation):
            return result.scores
        return scores(result, self.classes)

    def report(self) -> Path:
        """Write report.html again (from the run's files and data); returns its path."""
        from blitz.training.context import silent
        from blitz.workflows.finished import rebuild_report

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
