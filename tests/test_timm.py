"""timm's models through blitz: built for the data, started from weights files, saved in
checkpoints, and trained and exported from the command line."""

import json
import sys

import pytest
import torch

from blitz.api import train
from blitz.errors import BlitzError
from blitz.models import create_model, model_preprocessing, timm_models
from blitz.models.configs import build_config
from blitz.models.timm_models import load_pretrained
from blitz.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from conftest import run_blitz

pytestmark = [pytest.mark.timm]

pytest.importorskip("timm", reason="the timm extra is not installed")

# test_vit: timm's VisionTransformer at a tiny size (vit_tiny_patch16_224 takes 2 s to build)
MODELS = ["timm:resnet10t", "timm:mobilenetv3_small_050", "timm:test_vit"]
RESNET = "timm:resnet10t"


def save(state: dict, path):
    """``state`` written as a .safetensors or a torch file, by the path's suffix."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file  # timm's dependency

        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def load(model, path) -> list[str]:
    """``load_pretrained``, returning what it logged."""
    logged = []
    load_pretrained(model, str(path), logged.append)
    return logged


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("classes", [2, 7])
@pytest.mark.parametrize("channels", [1, 3])
def test_a_timm_model_is_built_for_the_datas_classes_and_channels(name, classes, channels):
    model = create_model(name, num_classes=classes, in_channels=channels).eval()
    size = model_preprocessing(name).image_size  # a ViT takes only the size it is built for
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes) and torch.isfinite(out).all()


def test_preprocessing_is_the_pretrained_weights_or_none_for_blitzs_own_models():
    size, mean, std = model_preprocessing("timm:vit_base_patch16_224.augreg_in21k")
    assert (size, mean, std) == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert model_preprocessing(RESNET).mean == (0.485, 0.456, 0.406)
    assert model_preprocessing("lenet") is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm:resnet10", "timm has no model 'resnet10' (--model timm:resnet10): did you mean"),
        ("timm:resnet18.nope", "did you mean resnet18."),  # a pretrained tag timm lacks
        ("timm:hf-hub:timm/resnet18", "timm has no model 'hf-hub:timm/resnet18'"),  # no network
    ],
)
def test_an_unknown_timm_name_is_named_with_close_matches(name, message):
    with pytest.raises(BlitzError, match="list timm's models with") as error:
        build_config("seed", {"model.name": name})
    assert message in str(error.value)


def test_a_missing_timm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(BlitzError, match=r"pip install 'blitz\[timm\]'"):
        create_model(RESNET)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pretrained_weights_fill_the_body_and_a_head_for_other_classes_starts_afresh(
    tmp_path, suffix
):
    source = create_model(RESNET, num_classes=5).state_dict()
    path = save(source, tmp_path / f"weights{suffix}")
    model = create_model(RESNET, num_classes=7)
    fresh_head = model.fc.weight.clone()
    logged = load(model, path)
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert torch.equal(ours["fc.weight"], fresh_head) and fresh_head.shape[0] == 7
    assert logged == [
        f"pretrained weights from {path}: {len(source) - 2} tensors loaded; the classifier "
        "head (fc) starts afresh"
    ]


def test_pretrained_weights_for_the_same_classes_load_whole_and_a_grey_stem_is_adapted(tmp_path):
    source = create_model(RESNET, num_classes=7, in_channels=3).state_dict()
    path = save(source, tmp_path / "weights.pth")
    model = create_model(RESNET, num_classes=7, in_channels=1)
    logged = load(model, path)
    ours = model.state_dict()
    assert torch.equal(ours["fc.weight"], source["fc.weight"])
    # timm's adaptation: an RGB filter summed over its channels sees grey as it saw RGB
    assert torch.allclose(ours["conv1.0.weight"], source["conv1.0.weight"].sum(1, keepdim=True))
    assert "the first conv (conv1.0) adapted" in logged[0] and "head too" in logged[0]


def test_a_training_checkpoint_and_ddp_prefixes_are_unwrapped(tmp_path):
    source = create_model(RESNET).state_dict()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.items()}}
    model = create_model(RESNET)
    load(model, save(wrapped, tmp_path / "checkpoint.pth.tar"))
    assert torch.equal(model.state_dict()["fc.weight"], source["fc.weight"])


@pytest.mark.parametrize(
    ("name", "write", "message"),
    [
        ("w.pt", lambda p: p.write_bytes(b"\x93NUMPY not weights" * 99), "cannot read"),
        ("w.safetensors", lambda p: p.write_bytes(bytes(range(256))), "cannot read"),
        ("w.pt", lambda p: torch.save([1, 2, 3], p), "holds no state dict (names -> tensors)"),
        ("w.pt", lambda p: torch.save({"lr": 0.1}, p), "but a dict of 1 entries"),
        ("w.pth", lambda p: torch.save({}, p), "but an empty dict"),
        ("w.pt", lambda p: None, "no such file"),
    ],
)
def test_a_file_that_holds_no_weights_is_a_clear_error(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(BlitzError) as error:
        load(create_model(RESNET), path)
    assert f"--pretrained {path}" in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_another_architectures_weights_are_named_as_not_fitting(tmp_path):
    path = save(create_model("timm:mobilenetv3_small_050").state_dict(), tmp_path / "m.pt")
    with pytest.raises(BlitzError) as error:
        load(create_model(RESNET), path)
    message = str(error.value)
    assert f"--pretrained {path} does not fit timm's resnet10t" in message
    assert "tensors missing: conv1.0.weight" in message and "unknown to the model" in message


def test_a_file_past_the_size_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = save(create_model(RESNET).state_dict(), tmp_path / "w.pt")
    monkeypatch.setattr(timm_models, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(BlitzError, match="more than the 1000 B a weights file may be"):
        load(create_model(RESNET), path)


def test_pretrained_is_for_timm_models_only(tmp_path):
    with pytest.raises(
        BlitzError, match=r"--pretrained needs a --model timm:NAME .*convnet is blitz's own.*--init"
    ):
        build_config("seed", {"model.name": "convnet", "model.pretrained": "w.pt"})
    with pytest.raises(BlitzError, match="load into timm models only"):
        load(create_model("lenet"), tmp_path / "w.pt")


@pytest.mark.slow
def test_a_checkpoint_rebuilds_the_model_without_the_pretrained_file(tmp_path):
    weights = save(create_model(RESNET, num_classes=9).state_dict(), tmp_path / "w.safetensors")
    cfg = build_config("seed", {"model.name": RESNET, "model.pretrained": str(weights)})
    model = create_model(RESNET, num_classes=3)
    load(model, weights)
    save_checkpoint(tmp_path / "model.pt", Checkpoint.of(model, cfg, ["a", "b", "c"]))
    weights.unlink()  # the trained weights are in the checkpoint: the file is not needed
    ckpt = load_checkpoint(tmp_path / "model.pt")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.build_model()(images), model.eval()(images))
    assert ckpt.cfg.model.pretrained == str(weights)


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_and_export_a_timm_model_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    result = run_blitz("train", "--data", "shapes:100", "--model", RESNET, "--image-size", "32",
                       "--epochs", "1", "--max-steps", "2", "--out", out)  # fmt: skip
    assert f"model: {RESNET}" in result.stdout and "Accuracy of the network" in result.stdout
    assert json.loads((out / "config.json").read_text())["model"]["name"] == RESNET
    export = run_blitz("export", out, "--format", "onnx")
    assert "checked against PyTorch" in export.stdout and (out / "model.onnx").is_file()


@pytest.mark.slow
def test_train_starts_from_the_pretrained_file(tmp_path, capsys):
    weights = save(create_model(RESNET).state_dict(), tmp_path / "w.safetensors")
    train("shapes:100", model=RESNET, pretrained=weights, image_size=32, epochs=1, max_steps=1,
          out=tmp_path / "run")  # fmt: skip
    assert f"pretrained weights from {weights}" in capsys.readouterr().out
