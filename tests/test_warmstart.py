"""Warm starts (--init): a new run starts from a finished run's weights, every weight for the
same classes, the body for other classes (the head made anew), and a wrong source is named."""

import pytest
import torch

from blitz.api import load, train
from blitz.errors import BlitzError
from blitz.training.checkpoint import load_checkpoint
from conftest import CLASSES, png_bytes, write_folder

TINY = {"preset": "seed", "batch_size": 16, "quiet": True}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BLITZ_DATA", str(root / "cache"))
        train(data="shapes:200", epochs=1, lr=0.02, out=root / "first", **TINY)
    return root / "first"


def weights(run_dir):
    return load_checkpoint(run_dir / "model.pt").state_dict


@pytest.mark.slow
def test_the_same_classes_start_from_every_weight(first, tmp_path):
    # a learning rate of 0 would be refused: this one moves nothing a float32 can show
    second = train(
        data="shapes:200", epochs=1, lr=1e-30, init=first, out=tmp_path / "second", **TINY
    )
    before, after = weights(first), weights(second.path)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert load(second.path).config.train.init == str(first)  # recorded where they came from


@pytest.mark.slow
def test_other_classes_keep_the_body_and_make_a_new_head(first, tmp_path):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    files = {
        f"{c}/{i}.png": png_bytes(tuple(max(0, v - 9 * i) for v in color))
        for c, color in zip(CLASSES, colors)
        for i in range(10)
    }
    root = write_folder(tmp_path / "fruit", files)
    run = train(data=root, epochs=1, lr=1e-30, init=first, out=tmp_path / "fruit-run", **TINY)
    before, after = weights(first), weights(run.path)
    head = [k for k in after if k.startswith("fc3.")]
    assert after["fc3.weight"].shape == (3, 84) and before["fc3.weight"].shape == (10, 84)
    assert all(torch.equal(before[k], after[k]) for k in after if k not in head)


@pytest.mark.slow
def test_a_whitened_first_layer_comes_from_the_init_not_from_the_new_images(tmp_path):
    quick = {"preset": "fast-cpu", "max_steps": 2, "batch_size": 16, "quiet": True}
    source = train(data="shapes:200", out=tmp_path / "shapes", **quick)
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    files = {
        f"{c}/{i}.png": png_bytes(color) for c, color in zip(CLASSES, colors) for i in range(4)
    }
    root = write_folder(tmp_path / "fruit", files)
    run = train(data=root, init=source.path, out=tmp_path / "fruit-run", **quick)
    key = "features.0.0.weight"  # the frozen whitening filters
    assert torch.equal(weights(source.path)[key], weights(run.path)[key])
    fresh = train(data=root, out=tmp_path / "fresh", **quick)  # whitened on these images
    assert not torch.equal(weights(fresh.path)[key], weights(run.path)[key])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"init": "nowhere"}, "no such run directory or checkpoint file"),
        ({"init": "FIRST", "model": "convnet"}, "holds a lenet .* use --model lenet"),
    ],
)
def test_a_wrong_init_is_named(first, tmp_path, settings, message):
    settings = {k: str(first) if v == "FIRST" else v for k, v in settings.items()}
    with pytest.raises(BlitzError, match=message):
        train(data="shapes:200", epochs=1, out=tmp_path / "x", **{**TINY, **settings})
    assert not (tmp_path / "x").exists()
