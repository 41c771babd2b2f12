"""What answers a batch of decoded images: the run's PyTorch model, or its ONNX export on ONNX
Runtime (exported if missing, and checked against PyTorch before it answers anything). Both go
through ``outputs.predict.probabilities``, the function ``blitz predict`` uses."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blitz.errors import BlitzError
from blitz.files import open_regular
from blitz.outputs.export import (
    CHECK_BATCH,
    TOLERANCE,
    default_path,
    export_model,
    preprocessing,
    random_images,
)
from blitz.outputs.predict import Model, probabilities
from blitz.training.checkpoint import ModelFacts
from blitz.training.metrics import Metrics
from blitz.training.rundir import RunDir
from blitz.version import __version__

HASH_CHARS = 12  # of model.pt's SHA-256, in the run's id
FIGURES = ("test_accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "top5_accuracy")


@dataclass
class Served:
    """A loaded run: its model behind a backend, and what the server says about it."""

    backend: str
    facts: ModelFacts
    model: Model
    run_id: str  # the run directory's name and a hash of its model.pt
    info: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """(N, K) class probabilities of decoded images, as ``blitz predict`` gives them."""
        return probabilities(self.facts, self.model, arrays)

    def warm_up(self) -> None:
        """One forward pass, so the first request does not pay for the lazy set-up."""
        self.probabilities(list(_arrays(random_images(self.facts, 1, seed=3))))


def load_run(run_dir: Path, backend: str, threads: int = 0) -> Served:
    """The run in ``run_dir`` behind ``backend`` ("torch" or "onnx"), read with the same
    checks as ``blitz predict``; ``threads``: ONNX Runtime's (0: its own choice)."""
    folder = RunDir(run_dir)
    ckpt = folder.load_model()
    facts, model = ckpt.model, ckpt.build_model()
    runner: Model = model
    if backend == "onnx":
        runner = _onnx_runner(folder, facts, model, threads)
    run_id = f"{folder.path.resolve().name}@{_model_hash(folder.model)}"
    info = describe(folder, facts, run_id, backend)
    return Served(backend, facts, runner, run_id, info)


def ensure_export(run_dir: Path) -> Path:
    """The run's ONNX export, written (and checked) first if it has none."""
    path = default_path(run_dir, "onnx")
    if not path.exists():
        ckpt = RunDir(run_dir).load_model()
        export_model(ckpt.model, ckpt.build_model(), "onnx", path)
    return path


def _onnx_runner(folder: RunDir, facts: ModelFacts, model: torch.nn.Module, threads: int) -> Model:
    path = ensure_export(folder.path)
    try:
        runner = _OnnxRunner(path, threads)
    except Exception as exc:  # onnxruntime's own errors: not an ONNX model
        raise BlitzError(f"{path} cannot be loaded by ONNX Runtime ({exc}): {_REEXPORT}") from None
    _check_against_torch(facts, model, runner, path)
    return runner


class _OnnxRunner:
    """uint8 images (N, C, S, S) -> logits, on one ONNX Runtime session (normalisation and
    test-time views are inside the export)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"images": images.numpy()})[0])


def _check_against_torch(
    facts: ModelFacts, model: torch.nn.Module, runner: _OnnxRunner, path: Path
) -> None:
    """An export that is stale (made from other weights) or broken is refused at start-up."""
    arrays = list(_arrays(random_images(facts, CHECK_BATCH, seed=2)))
    expected = probabilities(facts, model, arrays)
    try:
        got = probabilities(facts, runner, arrays)
    except Exception as exc:  # onnxruntime's own errors: a file of another input shape
        raise BlitzError(f"{path} cannot run this run's images ({exc}): {_REEXPORT}") from None
    diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
    if not diff <= TOLERANCE:
        raise BlitzError(
            f"{path} gives other probabilities than the run's model.pt (max difference "
            f"{diff:.2e} > {TOLERANCE}): it was exported from other weights; {_REEXPORT}"
        )


_REEXPORT = "delete it and serve again, or run blitz export RUN_DIR --format onnx"


def _arrays(images: torch.Tensor) -> list[np.ndarray]:
    """uint8 (N, C, S, S) as the decoded (S, S, C) arrays predict's decoding gives."""
    return list(images.permute(0, 2, 3, 1).numpy())


def _model_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()[:HASH_CHARS]


def describe(folder: RunDir, facts: ModelFacts, run_id: str, backend: str) -> dict[str, Any]:
    """``/info``: the classes, the preprocessing, the run's test figures, the versions."""
    metrics = folder.read_metrics() if folder.metrics.exists() else None
    versions = {
        "blitz": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if backend == "onnx":
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return {
        "run": run_id,
        "backend": backend,
        "model": facts.name,
        "classes": facts.classes,
        "image_size": facts.image_size,
        "preprocessing": preprocessing(facts),
        "test_time_views": facts.tta,
        "metrics": _figures(metrics),
        "versions": versions,
    }


def _figures(metrics: Metrics | None) -> dict[str, Any] | None:
    if metrics is None:  # a run directory with model.pt alone: it serves, unmeasured
        return None
    figures: dict[str, Any] = {key: getattr(metrics, key) for key in FIGURES}
    return {**figures, "set": metrics.test_set, "images": metrics.test_images}
