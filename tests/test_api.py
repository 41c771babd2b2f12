"""blitz from Python: train and load a Run, predict on files, PIL images and tensors alike,
evaluate, report, export; its Jupyter view escapes names; mistakes are BlitzErrors."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import blitz
from blitz.data.sources.shapes import CLASSES as SHAPES
from blitz.data.sources.shapes import make_shapes
from blitz.errors import BlitzError
from blitz.outputs.export import run_export
from blitz.training.evaluate import predict_logits
from conftest import folder_files, write_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> blitz.Run:
    root = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BLITZ_DATA", str(root / "cache"))
        return blitz.train(
            data="shapes:200",
            epochs=2,
            max_steps=10,
            set={"optim.weight_decay": 5e-4},
            quiet=True,
            out=root / "run",
        )


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Six shapes as uint8 (N, C, H, W), drawn afresh."""
    return make_shapes(6, seed=7)[0]


@pytest.mark.slow
def test_train_returns_the_finished_run_with_its_settings(run):
    recorded = json.loads((run.path / "metrics.json").read_text())
    assert run.accuracy == recorded["test_accuracy"] == run.metrics.test_accuracy
    assert run.classes == list(SHAPES)
    assert (run.config.train.epochs, run.config.train.max_steps) == (2, 10)
    assert run.config.optim.weight_decay == 5e-4 and run.config.data.source == "shapes:200"
    again = blitz.load(run.path)
    assert again.metrics == run.metrics and again.path == run.path


def test_a_path_a_pil_image_and_a_tensor_get_the_same_probabilities(run, images, tmp_path):
    pils = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    for i, pil in enumerate(pils):
        pil.save(tmp_path / f"{i}.png")
    from_folder = run.predict(tmp_path, top_k=3)
    from_files = run.predict([str(tmp_path / f"{i}.png") for i in range(len(pils))], top_k=3)
    from_pil = run.predict(pils, top_k=3)
    from_batch = run.predict(images, top_k=3)
    from_floats = run.predict([image.float() / 255 for image in images], top_k=3)
    assert [p.image for p in from_folder] == [tmp_path / f"{i}.png" for i in range(len(pils))]
    assert [p.image for p in from_pil] == list(range(len(pils)))
    expected = [p.top for p in from_files]
    for predictions in (from_folder, from_pil, from_batch, from_floats):
        assert [p.top for p in predictions] == expected
    for p in from_pil:
        probabilities = [prob for _, prob in p.top]
        assert len(p.top) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert {c for c, _ in p.top} <= set(SHAPES) and p.label == p.top[0][0]


def test_the_model_is_a_fresh_eval_copy_that_predict_agrees_with(run, images):
    model, facts = run.model, run._checkpoint.model
    assert isinstance(model, torch.nn.Module) and not model.training
    assert run.model is not model  # changing a copy cannot change what predict uses
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (facts.mean, facts.std))
    with torch.no_grad():
        logits = model((images.float() / 255 - mean) / std)
        views = predict_logits(model, [images], facts.mean, facts.std, facts.tta)
    assert logits.shape == (len(images), len(run.classes))
    probabilities = views.softmax(1).max(1)
    predicted = run.predict(images)
    assert [p.label for p in predicted] == [run.classes[i] for i in probabilities.indices]
    assert [p.probability for p in predicted] == pytest.approx(probabilities.values.tolist())


def test_a_larger_or_grey_image_is_resized_and_converted_as_a_file_is(run, tmp_path):
    image = Image.new("L", (50, 40), 90)
    image.save(tmp_path / "grey.png")
    assert run.predict(image)[0].top == run.predict(tmp_path / "grey.png")[0].top


def test_a_large_jpeg_straight_from_image_open_is_decoded_as_its_file(run, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "photo.jpg", quality=90)  # 2x the size and more
    from_file = run.predict(tmp_path / "photo.jpg")[0].top
    with Image.open(tmp_path / "photo.jpg") as opened:
        assert run.predict(opened)[0].top == from_file  # decoded at half scale, as the file is
        full = opened.convert("RGB")  # loaded: its pixels at full size
    assert run.predict(full)[0].top != from_file  # what it was before, and still is for pixels


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.full((3, 32, 32), 2.0), "values in [0, 1]"),
        (torch.zeros(32, 32, dtype=torch.uint8), "(C, H, W) or (N, C, H, W)"),
        (torch.zeros(2, 32, 32, dtype=torch.uint8), "2 channels"),
        (torch.zeros(3, 32, 32, dtype=torch.int64), "torch.int64"),
        (torch.zeros(3, 32, 32, device="meta"), "input 0 is a meta tensor"),
        (torch.zeros(3, 32, 32).to_sparse(), "input 0 is a torch.sparse_coo tensor"),
        (torch.nested.nested_tensor([torch.zeros(3, 32, 32)]), "input 0 is a nested tensor"),
        (["a.png", torch.zeros(3, 32, 32, dtype=torch.uint8)], "cannot predict a str"),
        ([], "no images"),
    ],
)
def test_images_that_cannot_be_predicted_are_named(run, images, message):
    with pytest.raises(BlitzError, match=re.escape(message)):
        run.predict(images)


def test_predict_refuses_a_bad_top_k_and_a_missing_file(run, tmp_path):
    with pytest.raises(BlitzError, match="top_k"):
        run.predict(tmp_path, top_k=0)
    with pytest.raises(BlitzError, match="does not exist"):
        run.predict(tmp_path / "missing.png")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda run: blitz.train(out=123), "blitz.train: out must be a string, a path or None"),
        (lambda run: blitz.train(set="x"), "blitz.train: set must be a dict or None, not 'x'"),
        (lambda run: blitz.train(preset=5), "blitz.train: preset must be a string or None"),
        (lambda run: blitz.train(config=5), "blitz.train: config must be a string, a path or"),
        (lambda run: blitz.train(resume=7), "blitz.train: resume must be a string, a path or"),
        (lambda run: blitz.train(mlflow=5), "blitz.train: mlflow must be a string or None"),
        (lambda run: blitz.train(quiet="no"), "blitz.train: quiet must be True or False"),
        (lambda run: blitz.train(set={1: 2}), "blitz.train: the keys of set must be settings'"),
        (lambda run: blitz.train(out="o\0x"), "blitz.train: out holds a NUL character"),
        (lambda run: run.export(out="m\0.onnx"), "blitz.Run.export: out holds a NUL character"),
        (lambda run: blitz.load("r" * 5000), r"path 'rrr.*\(5000 characters\)' is longer than"),
        (lambda run: run.predict("a" * 5000 + ".png"), "is longer than the file system takes"),
        (lambda run: blitz.load(None), "blitz.load: run_dir must be a string or a path, not None"),
        (lambda run: blitz.Run(5), "blitz.Run: path must be a string or a path, not 5 .int."),
        (lambda run: run.evaluate(data=5), "blitz.Run.evaluate: data must be a string, a path"),
        (lambda run: run.export("onnx", out=5), "blitz.Run.export: out must be a string, a"),
        (lambda run: run.predict([], top_k="2"), "blitz.Run.predict: top_k must be an integer"),
    ],
)
def test_arguments_of_the_wrong_type_are_named_with_what_they_take(run, call, message):
    with pytest.raises(BlitzError, match=message):
        call(run)


def _public(run):
    """Every public function and method of the Python API, and a valid call's arguments."""
    methods = [m for m in dir(blitz.Run) if not m.startswith("_")]
    methods = [getattr(run, m) for m in methods if inspect.isfunction(getattr(blitz.Run, m))]
    return [blitz.train, blitz.load, blitz.Run, *methods]


def test_every_annotated_argument_of_the_api_is_checked(run):
    """A new keyword or method is checked too (``api.checked``), whatever its annotation."""
    required = {"run_dir": run.path, "path": run.path, "images": [], "out": run.path / "x"}
    checked = []
    for function in _public(run):
        for name, param in inspect.signature(function).parameters.items():
            if param.annotation in ("Any", param.empty):  # images: files, PIL images, tensors
                continue
            given = {
                n: v for n, v in required.items() if n in inspect.signature(function).parameters
            }
            with pytest.raises(BlitzError, match=f": {name} must be .*, not <object"):
                function(**{**given, name: object()})
            checked.append(f"{function.__name__}({name})")
    assert {"train(overwrite)", "export(format)", "evaluate(quiet)", "Run(metrics)"} <= set(checked)


def test_evaluate_reproduces_the_recorded_figures_in_their_shape(run):
    result = run.evaluate(quiet=True)
    assert result.accuracy == run.metrics.test_accuracy
    assert set(result.per_class) == set(SHAPES)
    assert result == run.metrics.test_scores  # one shape for a set's figures, and the same ones


@pytest.mark.slow
def test_report_and_onnx_export(run, images):
    assert run.report() == run.path / "report.html" and (run.path / "report.html").is_file()
    path = run.export("onnx")
    assert path == run.path / "model.onnx" and path.is_file()
    exported = run_export("onnx", path, images).softmax(1)
    predicted = [p.top[0] for p in run.predict(images)]
    assert [run.classes[i] for i in exported.argmax(1).tolist()] == [c for c, _ in predicted]
    assert torch.allclose(exported.max(1).values, torch.tensor([p for _, p in predicted]))
    with pytest.raises(BlitzError, match="onnx or torchscript"):
        run.export("tflite")


@pytest.mark.slow
def test_the_jupyter_view_escapes_names_from_folders(tmp_path):
    names = {"apple": "<script>", "banana": "b&'q\"", "cherry": "cherry"}
    files = {
        "/".join(names.get(part, part) for part in rel.split("/")): data
        for rel, data in folder_files(per_class=4).items()
    }
    data = write_folder(tmp_path / "<i>fruit", files)
    run = blitz.train(data=data, epochs=1, max_steps=2, quiet=True, out=tmp_path / "<b>run")
    page = run._repr_html_()
    assert "<script>" not in page and "<i>" not in page and "<b>run" not in page
    assert "&lt;script&gt;" in page and "b&amp;&#x27;q&quot;" in page
    assert "data:image/png;base64," in page and "report.html</a>" in page
    assert "%3Cb%3Erun/report.html" in page  # the link, as a URL
    assert repr(run).startswith("Run(") and "<b>run" in repr(run)


@pytest.mark.parametrize(
    ("settings", "hint"),
    [
        ({"max_step": 3}, "did you mean max_steps?"),
        ({"translate": 2}, "set={'data.translate': ...}"),
        ({"source": "mnist"}, "did you mean data?"),
        ({"overwrit": True}, "did you mean overwrite?"),
        ({"devices": 2}, "blitz train --devices N"),
    ],
)
def test_an_unknown_keyword_is_named_with_what_was_meant(settings, hint, tmp_path):
    with pytest.raises(BlitzError) as raised:
        blitz.train(data="shapes:200", out=tmp_path / "run", **settings)
    assert repr(next(iter(settings))) in str(raised.value) and hint in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_bad_data_is_a_blitz_error_and_leaves_no_folder(tmp_path):
    with pytest.raises(BlitzError, match="missing"):
        blitz.train(data=tmp_path / "missing", quiet=True, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_neither_overwritten_nor_resumed_with_new_settings(run):
    with pytest.raises(BlitzError, match="already holds a finished run"):
        blitz.train(data="shapes:200", quiet=True, out=run.path)
    with pytest.raises(BlitzError, match="settings saved in it: drop epochs, out"):
        blitz.train(resume=run.path, epochs=3, out=run.path)
    with pytest.raises(BlitzError, match="nothing to resume"):
        blitz.train(resume=run.path)


def test_load_refuses_a_folder_without_a_finished_run(tmp_path):
    with pytest.raises(BlitzError, match="no metrics.json"):
        blitz.load(tmp_path)
    with pytest.raises(BlitzError, match="no run directory at .*nope: pass one written by"):
        blitz.load(tmp_path / "nope")


@pytest.mark.subprocess
def test_import_blitz_stays_light():
    code = "import blitz, sys; blitz.train; blitz.Run; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_run_paths_are_paths(run):
    assert isinstance(run.path, Path) and isinstance(blitz.load(str(run.path)).path, Path)


def test_a_notebook_gets_a_progress_bar_though_its_stderr_is_no_terminal(monkeypatch):
    import types

    from tqdm.auto import tqdm as auto

    from blitz.models.configs import build_config
    from blitz.training.progress import Progress

    cfg = build_config("fast-cpu")
    assert not Progress(cfg, print, quiet=False).use_bar  # pytest's stderr: no terminal
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    progress = Progress(cfg, print, quiet=False)
    assert progress.use_bar and not Progress(cfg, print, quiet=True).use_bar
    progress.start_epoch(0, 3)
    assert isinstance(progress.bar, auto)
    progress.bar.close()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_a_20000_pixel_square_tensor_is_refused_before_any_copy(run, dtype):
    # a view of one pixel: the 1.2 GB (4.8 GB as floats) it stands for is never allocated
    huge = torch.zeros(3, 1, 1, dtype=dtype).expand(3, 20000, 20000)
    with pytest.raises(BlitzError, match=r"input 0 is 20000x20000 \(400,000,000 pixels\), more"):
        run.predict(huge)
    with pytest.raises(BlitzError, match="input 1 is 20000x20000"):
        run.predict([huge[:, :32, :32], huge[None]])


def test_a_huge_pil_image_or_file_is_refused_as_files_are(run, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 89 million of a real one cost
    image = Image.new("RGB", (40, 40))
    with pytest.raises(BlitzError, match=r"input 0 is 40x40 \(1,600 pixels\), more than the 1,000"):
        run.predict(image)
    image.save(tmp_path / "big.png")
    with pytest.raises(BlitzError, match="big.png: refused as a possible decompression bomb"):
        run.predict(tmp_path / "big.png")
