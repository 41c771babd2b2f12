"""export: every registered model, in both formats, matches the model in eval mode (batch norm
with its running statistics) on new images; a NaN or infinite difference is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from blitz.data.preprocess import normalize
from blitz.errors import BlitzError
from blitz.models import create_model, list_models
from blitz.models.configs import build_config
from blitz.outputs.export import FORMATS, TOLERANCE, export_model, random_images, run_export
from blitz.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from blitz.training.evaluate import tta_logits
from conftest import run_blitz

SIZES = {"lenet": 32}  # lenet's linear layers need 32x32; the others take the faster 16


def saved_checkpoint(tmp_path: Path, name: str) -> dict:
    """A checkpoint of ``name`` whose batch norms have running statistics far from 0 and 1."""
    size = SIZES.get(name, 16)
    cfg = build_config("fast-cpu", {"model.name": name, "data.image_size": size})
    torch.manual_seed(0)
    model = create_model(name, 3, 3, **cfg.model.options).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size) * 2 + 1)
    save_checkpoint(tmp_path / "model.pt", Checkpoint.of(model, cfg, ["a", "b", "c"]))
    return load_checkpoint(tmp_path / "model.pt")


def eval_logits(ckpt: dict, images: torch.Tensor) -> torch.Tensor:
    """The model's logits in eval mode, over the preset's test-time views as the export's."""
    model = ckpt.build_model().eval()
    with torch.no_grad():
        return tta_logits(model, normalize(images, ckpt.model.mean, ckpt.model.std), ckpt.model.tta)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", list_models())
def test_the_export_of_every_model_matches_it_in_eval_mode(tmp_path, name, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    ckpt = saved_checkpoint(tmp_path, name)
    out = tmp_path / f"model{FORMATS[fmt]}"
    assert export_model(ckpt.model, ckpt.build_model(), fmt, out) <= TOLERANCE
    images = random_images(ckpt.model, 3, seed=7)  # not the batch size of the export's example
    expected = eval_logits(ckpt, images)
    assert (run_export(fmt, out, images) - expected).abs().max() <= TOLERANCE
    model = ckpt.build_model()
    if has_batch_norm(model):  # so batch statistics would have been caught
        with torch.no_grad():
            in_train_mode = model.train()(normalize(images, ckpt.model.mean, ckpt.model.std))
        assert (in_train_mode - expected).abs().max() > 100 * TOLERANCE


def test_an_export_that_gives_nan_is_refused(tmp_path, monkeypatch):
    ckpt = saved_checkpoint(tmp_path, "lenet")
    nan = torch.full((5, 3), float("nan"))
    monkeypatch.setattr("blitz.outputs.export.run_export", lambda *args: nan)
    with pytest.raises(BlitzError, match="NaN or infinite"):
        export_model(ckpt.model, ckpt.build_model(), "torchscript", tmp_path / "m.pt")


@pytest.mark.slow
def test_a_model_with_nan_weights_is_not_exported_as_checked(tmp_path):
    ckpt = saved_checkpoint(tmp_path, "lenet")  # a checkpoint of NaNs is refused at load
    model = ckpt.build_model()
    with torch.no_grad():  # the weights of a run that diverged, handed over from Python
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(BlitzError, match="weights are broken"):
        export_model(ckpt.model, model, "torchscript", tmp_path / "m.pt")


@pytest.mark.parametrize("where", ["missing/m.pt", "."])
def test_an_output_path_that_cannot_be_written_fails_before_the_export(tmp_path, where):
    ckpt = saved_checkpoint(tmp_path, "lenet")
    out = tmp_path / where
    with pytest.raises(BlitzError, match="does not exist|is a folder"):
        export_model(ckpt.model, ckpt.build_model(), "torchscript", out)
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_checkpoint_that_claims_4096_pixel_images_is_refused_before_tracing(tmp_path):
    # a hand-edited run: a small model whose checkpoint says 4096 x 4096 (45.9 GB to trace
    # with three test-time views)
    settings = {"model.options.widths": [16, 16, 64], "train.tta": "translate"}
    cfg = build_config("fast-cpu", {"model.name": "convnet", "data.image_size": 4096, **settings})
    save_checkpoint(
        tmp_path / "model.pt",
        Checkpoint.of(create_model("convnet", 3, 3, **cfg.model.options), cfg, ["a", "b", "c"]),
    )
    result = run_blitz("export", tmp_path, "--format", "torchscript", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "image size 4096x4096 needs about 45.9 GB" in result.stderr
    assert "more than the 4 GB an export may take" in result.stderr
    assert not list(tmp_path.glob("model.torchscript.pt*"))
