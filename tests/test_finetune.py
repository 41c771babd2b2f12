"""Fine-tuning a pretrained timm model: the image size and normalisation its weights expect,
batched augmentation (random-resized crops, TrivialAugment, MixUp and CutMix), layer-wise
learning rates, a frozen body that keeps its batch-norm statistics, timm's hub weights (read
offline from the fake cache conftest makes), the finetune preset, the same preprocessing in
evaluation, predict and the exported model, and an exact resume."""

import copy
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import blitz
from blitz import cli
from blitz.config.settings import HUB, TTAS
from blitz.data import augment
from blitz.data.dataset import ImageData, Split
from blitz.data.images import decode_image
from blitz.data.preprocess import normalize
from blitz.data.sources import load_data
from blitz.errors import BlitzError
from blitz.models import create_model
from blitz.models.configs import build_config
from blitz.models.timm_models import fetch_hub_weights, load_pretrained
from blitz.training.checkpoint import load_checkpoint
from blitz.training.context import RunContext, silent
from blitz.training.engine import build_loop, train
from blitz.training.evaluate import evaluate
from blitz.training.loop import TrainHooks
from blitz.training.optim import build_optimizers
from blitz.training.progress import Progress
from blitz.training.rundir import RunDir
from blitz.training.step import compute_loss, prepare_batch
from conftest import folder_files, run_blitz, write_folder
from test_faults import assert_same_run, start_blitz, wait_all

pytestmark = [pytest.mark.timm]

pytest.importorskip("timm", reason="the timm extra is not installed")

RESNET = "timm:resnet10t"  # the smallest timm ResNet: pretrained at 176 px, ImageNet's mean
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Batches of a few tiny images: one thread computes them as fast as two, and many times
    faster than two that wait on each other while other work keeps the cores busy (here and in
    the blitz processes started)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def blitz_in_process(capsys, *args) -> tuple[int, str, str]:
    """``blitz ARGS`` in this process (no interpreter to start): status, stdout, stderr."""
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# -- the image size and normalisation a model's pretrained weights expect ("auto") ----------


def test_auto_preprocessing_is_a_timm_models_pretrained_one_else_the_seeds():
    data = build_config("seed", {"model.name": RESNET}).data
    assert (data.image_size, data.mean, data.std) == (176, IMAGENET_MEAN, IMAGENET_STD)
    assert data.chosen == (
        "image_size 176, mean 0.485/0.456/0.406, std 0.229/0.224/0.225: "
        "timm:resnet10t's pretrained weights would expect them (its weights are random here: "
        "--pretrained loads them; --image-size for another size)"
    )
    loaded = build_config("finetune", {"model.name": RESNET}).data.chosen
    assert loaded.endswith(": timm:resnet10t's pretrained weights expect them")
    for preset in ("seed", "fast-cpu"):  # lenet, convnet
        data = build_config(preset).data
        assert (data.image_size, data.mean, data.std) == (32, (0.5,) * 3, (0.5,) * 3), preset
        assert data.chosen == "", preset


def test_an_explicit_image_size_or_mean_wins_over_auto():
    data = build_config(
        "seed", {"model.name": RESNET, "data.image_size": 48, "data.mean": [0.1, 0.2, 0.3]}
    ).data
    assert (data.image_size, data.mean, data.std) == (48, (0.1, 0.2, 0.3), IMAGENET_STD)
    assert data.chosen.startswith("std 0.229/0.224/0.225: timm:resnet10t's")
    assert build_config("seed", {"model.name": "lenet", "data.image_size": 48}).data.chosen == ""


def test_a_presets_normalisation_is_dropped_with_its_model():
    cifar = (0.4914, 0.4822, 0.4465)  # fast-gpu's, for its airbench net
    assert build_config("fast-gpu").data.mean == cifar
    assert build_config("fast-gpu", {"model.name": "airbench"}).data.mean == cifar  # the same
    assert build_config("fast-gpu", {"model.name": RESNET}).data.mean == IMAGENET_MEAN
    assert build_config("fast-gpu", {"model.name": "lenet"}).data.mean == (0.5,) * 3
    # the finetune preset's size is its resnet18's (224); another timm model brings its own
    assert build_config("finetune").data.image_size == 224
    assert build_config("finetune", {"model.name": RESNET}).data.image_size == 176
    overridden = build_config("finetune", {"model.name": RESNET, "data.image_size": 64})
    assert overridden.data.image_size == 64


@pytest.mark.slow
def test_blitz_train_says_what_auto_chose_and_records_it(tmp_path, capsys):
    folder = write_folder(tmp_path / "fruit", folder_files(per_class=2))
    out, tiny = tmp_path / "run", "timm:test_efficientnet"  # 100k parameters, pretrained at 160
    status, stdout, err = blitz_in_process(
        capsys, "train", "--data", folder, "--model", tiny, "--image-size", "auto",
        "--max-steps", 1, "--batch-size", 6, "--out", out,
    )  # fmt: skip
    assert status == 0, err
    auto = [line for line in stdout.splitlines() if line.startswith("auto ")]
    assert auto == [
        "auto image_size 160, mean 0.485/0.456/0.406, std 0.229/0.224/0.225: "
        "timm:test_efficientnet's pretrained weights would expect them (its weights are "
        "random here: --pretrained loads them; --image-size for another size)"
    ]
    saved = json.loads((out / "config.json").read_text())["data"]
    assert (saved["image_size"], saved["mean"]) == (160, list(IMAGENET_MEAN))
    assert RunDir(out).load_model().model.image_size == 160  # what predict and export use


def test_image_size_on_the_command_line_is_auto_or_a_number(capsys):
    assert cli.main(["train", "--image-size", "big"]) == 2
    expected = "invalid value 'big' for --image-size (data.image_size): expected an integer or auto"
    assert expected in capsys.readouterr().err


def test_grey_images_are_normalised_with_the_average_of_an_rgb_mean_and_std():
    grey = torch.arange(0, 256, 5, dtype=torch.uint8).view(1, 1, 1, -1)
    expected = (grey.float() / 255 - sum(IMAGENET_MEAN) / 3) / (sum(IMAGENET_STD) / 3)
    assert torch.allclose(normalize(grey, IMAGENET_MEAN, IMAGENET_STD), expected)


# -- batched augmentation ------------------------------------------------------------------


def coordinates(n: int, h: int, w: int) -> torch.Tensor:
    """(n, 2, h, w): each pixel's row and column, so a crop's output shows where it came from."""
    rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(n, 1, h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([rows, cols], 1)


def test_a_resized_crop_is_seeded_and_keeps_a_constant_image_constant():
    x = torch.randn(8, 3, 16, 24)
    out = augment.resized_crop(x, 0.3, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, augment.resized_crop(x, 0.3, gen()))
    assert not torch.equal(out, augment.resized_crop(x, 0.3, gen(1)))
    assert not torch.equal(out, x)
    grey = torch.full((8, 3, 16, 24), 0.7)
    assert torch.allclose(augment.resized_crop(grey, 0.1, gen()), grey, atol=1e-6)


@pytest.mark.parametrize("min_scale", [0.1, 0.35, 0.8])
def test_a_resized_crop_covers_at_least_its_min_scale_of_the_image(min_scale):
    n, h, w = 300, 24, 40
    out = augment.resized_crop(coordinates(n, h, w), min_scale, gen())
    # output pixels sample the crop at its pixel centres: the span of the source rows (columns)
    # seen is the crop's height (width) times (h - 1) / h, so these are the fractions it covers
    tall = (out[:, 0].amax((1, 2)) - out[:, 0].amin((1, 2))) / (h - 1)
    wide = (out[:, 1].amax((1, 2)) - out[:, 1].amin((1, 2))) / (w - 1)
    area = tall * wide
    assert area.min() >= min_scale * 0.75  # a crop too wide or tall for the image is trimmed
    assert area.max() <= 1 + 1e-5 and out.min() >= 0  # never past the image's edges
    assert out[:, 0].max() <= h - 1 + 1e-4 and out[:, 1].max() <= w - 1 + 1e-4
    if min_scale < 0.5:  # crops of many sizes, not one
        assert area.max() - area.min() > 0.4


@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
def test_auto_augment_changes_images_repeatably_and_leaves_the_global_rng_alone(policy):
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen(5))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    generator = gen()
    out = augment.auto_augment(images, policy, generator)
    assert torch.equal(torch.get_rng_state(), state)  # torch.rand draws as if never called
    assert out.shape == images.shape and out.dtype == torch.uint8
    changed = sum(not torch.equal(a, b) for a, b in zip(out, images))
    assert changed >= 4
    assert torch.equal(out, augment.auto_augment(images, policy, gen()))  # a resume repeats it
    assert not torch.equal(out, augment.auto_augment(images, policy, generator))  # next batch


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_sum_to_one_over_the_rows_label_and_its_partners(mixup, cutmix):
    n = 12
    images = torch.randn(n, 3, 8, 8, generator=gen(2))
    labels = torch.randperm(n, generator=gen(3))  # a class per image: a target names its image
    state = torch.get_rng_state()
    mixed, targets = augment.mix(images, labels, n, mixup, cutmix, gen())
    assert torch.equal(torch.get_rng_state(), state)
    assert mixed.shape == images.shape and targets.shape == (n, n)
    assert torch.allclose(targets.sum(1), torch.ones(n)) and targets.min() >= 0
    again = augment.mix(images, labels, n, mixup, cutmix, gen())
    assert torch.equal(mixed, again[0]) and torch.equal(targets, again[1])
    partnered = 0
    for i in range(n):
        own = float(targets[i, labels[i]])
        others = [int(c) for c in targets[i].nonzero() if c != labels[i]]
        assert len(others) <= 1, targets[i]  # the row's own label and one other, no more
        if not others:
            assert own == pytest.approx(1) and torch.allclose(mixed[i], images[i])
            continue
        partnered += 1
        j = int((labels == others[0]).nonzero())
        share = float(targets[i, others[0]])
        blend = own * images[i] + share * images[j]
        from_i, from_j = (mixed[i] == images[i]).all(0), (mixed[i] == images[j]).all(0)
        if not cutmix:  # MixUp: the two images blended in the targets' proportions
            assert torch.allclose(mixed[i], blend, atol=1e-5)
        elif not mixup:  # CutMix: a box of the other image, its share of the pixels
            assert (from_i | from_j).all() and from_j.float().mean() == pytest.approx(share)
        else:  # one or the other, for the whole batch
            cut = bool((from_i | from_j).all()) and from_j.float().mean() == pytest.approx(share)
            assert cut or torch.allclose(mixed[i], blend, atol=1e-5)
    assert partnered >= n // 2


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_a_training_batch_has_soft_targets_only_when_mixed(mixup):
    settings = {"data.mixup": mixup, "data.crop_scale": 0.5, "data.auto_augment": "trivial"}
    cfg = build_config("seed", settings)
    data, rows = noise_data(16), torch.arange(8)
    run = RunContext(cfg, CPU, log=silent, quiet=True)
    loop = build_loop(
        run, data, create_model("lenet", 3, 3), Progress(cfg, silent, True), TrainHooks()
    )
    labels = data.train.labels[rows]
    inputs, targets = prepare_batch(loop, data.train.images[rows], rows, labels)
    assert inputs.shape == (8, 3, 32, 32) and inputs.dtype == torch.float32
    if mixup:
        assert targets.shape == (8, 3) and torch.allclose(targets.sum(1), torch.ones(8))
    else:
        assert torch.equal(targets, labels)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"optim.label_smoothing": 0.1}, {"optim.loss": "mse"}, {"optim.reduction": "sum"}],
)
def test_one_hot_soft_targets_give_the_loss_of_their_labels(overrides):
    cfg = build_config("seed", overrides).optim
    logits = torch.randn(6, 4, generator=gen())
    labels = torch.tensor([0, 1, 2, 3, 3, 1])
    one_hot = F.one_hot(labels, 4).float()
    hard, soft = compute_loss(logits, labels, cfg), compute_loss(logits, one_hot, cfg)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)


def test_one_hot_soft_targets_give_the_loss_of_their_labels_with_class_weights():
    """--class-weights balanced with MixUp or CutMix: the weighted mean of the loss is the same
    whether the labels come as classes or as (one-hot) soft targets."""
    cfg = build_config("seed", {"optim.class_weights": "balanced", "data.mixup": 0.2}).optim
    logits = torch.randn(6, 4, generator=gen())
    labels = torch.tensor([0, 1, 2, 3, 3, 1])
    weights = torch.tensor([2.0, 1.0, 0.5, 0.25])
    hard = compute_loss(logits, labels, cfg, weights)
    soft = compute_loss(logits, F.one_hot(labels, 4).float(), cfg, weights)
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6)


# -- layer-wise learning rates -------------------------------------------------------------


def rates(name: str, overrides: dict) -> tuple[dict[str, float], dict[str, float], int]:
    """Each parameter's learning rate and weight decay under ``overrides``, and the number of
    parameter groups."""
    cfg = build_config("seed", {"model.name": name, **overrides}).optim
    model = create_model(name, 3, 3)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [g for o in build_optimizers(model, cfg) for g in o.param_groups]
    lr = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    assert sorted(lr) == sorted(names.values())  # every parameter in exactly one group
    return lr, decay, len(groups)


DECAY = {"optim.lr": 0.1, "optim.head_lr": 0.3, "optim.layer_decay": 0.5}
BLOCKS = {  # timm's own grouping of a ResNet's blocks (group_matcher, coarse=False)
    RESNET: ["layer1.0", "layer2.0", "layer3.0", "layer4.0"],
    "timm:resnet18": [f"layer{stage}.{block}" for stage in (1, 2, 3, 4) for block in (0, 1)],
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_layer_decay_slows_each_block_before_the_last_and_the_stem_most(name):
    lr, decay, _ = rates(name, {**DECAY, "optim.weight_decay": 0.05})
    blocks = BLOCKS[name]
    assert lr["fc.weight"] == lr["fc.bias"] == 0.3
    for k, block in enumerate(reversed(blocks)):  # the last block learns at lr
        inside = [p for p in lr if p.startswith(f"{block}.")]
        assert inside and all(lr[p] == pytest.approx(0.1 * 0.5**k) for p in inside), block
    stem = [p for p in lr if not p.startswith(("layer", "fc."))]
    assert stem and all(lr[p] == pytest.approx(0.1 * 0.5 ** len(blocks)) for p in stem)
    # weight matrices and filters decay; norms and biases do not, whatever their layer
    assert decay["conv1.0.weight" if name == RESNET else "conv1.weight"] == 0.05
    assert decay["layer4.0.bn1.weight"] == decay["layer4.0.bn1.bias"] == 0.0


def test_layer_decay_numbers_a_layer_at_each_weight_matrix_of_blitzs_own_models():
    lr, _, _ = rates("lenet", DECAY)
    expected = {"conv1": 0.5**3, "conv2": 0.5**2, "fc1": 0.5, "fc2": 1.0}
    for layer, scale in expected.items():
        assert lr[f"{layer}.weight"] == lr[f"{layer}.bias"] == pytest.approx(0.1 * scale)
    assert lr["fc3.weight"] == lr["fc3.bias"] == 0.3  # the head


@pytest.mark.parametrize("name", ["lenet", RESNET])
def test_no_layer_decay_is_the_three_groups_of_before(name):
    lr, _, groups = rates(name, {"optim.lr": 0.1, "optim.head_lr": 0.3})
    assert groups == 3  # the head; the body's matrices (decayed); its norms and biases
    head = {p for p in lr if p.startswith(("fc3.", "fc."))}
    assert {lr[p] for p in head} == {0.3} and {lr[p] for p in lr if p not in head} == {0.1}


# -- a frozen body keeps its batch-norm statistics ------------------------------------------

HEADS = {"convnet": "head.", RESNET: "fc."}


def noise_data(count: int) -> ImageData:
    """``count`` training images of noise in 3 classes (32 px: batch norm has statistics to
    learn), and a few test images."""
    images = torch.randint(0, 256, (count + 6, 3, 32, 32), dtype=torch.uint8, generator=gen())
    labels = torch.arange(count + 6) % 3
    train, test = Split(images[:count], labels[:count]), Split(images[count:], labels[count:])
    return ImageData("noise", ["a", "b", "c"], train, test)


@pytest.mark.parametrize("name", list(HEADS))
def test_a_frozen_body_keeps_its_batch_norm_statistics(name):
    """With the body frozen (optim.freeze) every entry of the state dict but the head's stays
    put, the batch norms' running statistics included; unfrozen, those learn the data's."""
    settings = {"model.name": name, "data.image_size": 32, "optim.name": "adamw"}
    settings.update({"optim.lr": 0.01, "optim.weight_decay": 0.01, "train.batch_size": 8})
    settings.update({"train.max_steps": 2, "train.log_every": 0})
    options = {"widths": [8, 16]} if name == "convnet" else {}
    data = noise_data(32)
    moved = {}
    for freeze in (0.0, 0.99):
        cfg = build_config("seed", {**settings, "optim.freeze": freeze})
        torch.manual_seed(0)
        model = create_model(name, 3, 3, **options)
        before = copy.deepcopy(model.state_dict())
        train(RunContext(cfg, CPU, log=silent, quiet=True), data, model)
        after = model.state_dict()
        moved[freeze] = {k for k in before if not torch.equal(before[k], after[k])}
    statistics = {k for k in before if k.endswith(("running_mean", "running_var"))}
    assert statistics and statistics <= moved[0.0]
    assert moved[0.99] == {k for k in before if k.startswith(HEADS[name])}  # only the head


# -- timm's hub weights (--pretrained with no file) -----------------------------------------


def cached_weights(hub: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next(hub.glob(f"models--timm--{name}/snapshots/*/model.safetensors")))


@pytest.mark.slow
@pytest.mark.parametrize(("classes", "channels"), [(3, 3), (1000, 3), (3, 1)])
def test_hub_weights_come_from_timms_cache(hub_weights, classes, channels):
    cached = cached_weights(hub_weights, "resnet18.a1_in1k")
    model = create_model("timm:resnet18", num_classes=classes, in_channels=channels)
    logged = []
    load_pretrained(model, HUB, logged.append)
    ours = model.state_dict()
    body = [k for k in cached if not k.startswith(("fc.", "conv1."))]
    assert body and all(torch.equal(ours[k], cached[k]) for k in body)
    stem = cached["conv1.weight"]
    if channels == 1:  # timm's adaptation: an RGB filter summed over its channels
        stem = stem.sum(1, keepdim=True)
    assert torch.allclose(ours["conv1.weight"], stem)
    if classes == 1000:
        assert torch.equal(ours["fc.weight"], cached["fc.weight"])
        assert logged == ["pretrained weights: timm's resnet18.a1_in1k (the classifier head too)"]
    else:
        assert ours["fc.weight"].shape == (classes, 512)
        assert not torch.equal(ours["fc.weight"], cached["fc.weight"][:classes])
        assert logged == [
            "pretrained weights: timm's resnet18.a1_in1k (the classifier head starts afresh)"
        ]


def test_hub_weights_missing_from_an_offline_cache_are_a_clear_error():
    with pytest.raises(BlitzError) as error:
        load_pretrained(create_model(RESNET, 3), HUB, silent)
    message = str(error.value)
    assert message.startswith("cannot fetch timm's pretrained weights for resnet10t.c3_in1k")
    assert "--pretrained FILE" in message and "https://huggingface.co/timm/resnet10t" in message
    assert "\n" not in message


def test_a_model_timm_publishes_no_weights_for_is_a_clear_error():
    untrained = "convnext_atto_rms"  # small, and in timm's registry without weights
    with pytest.raises(BlitzError, match=f"timm publishes no pretrained weights for {untrained}"):
        load_pretrained(create_model(f"timm:{untrained}", 3), HUB, silent)


def test_pretrained_with_no_file_offline_stops_with_one_paragraph(tmp_path, capsys):
    folder = write_folder(tmp_path / "fruit", folder_files())
    out = tmp_path / "run"
    status, _, err = blitz_in_process(
        capsys, "train", "--data", folder, "--model", RESNET, "--pretrained", "--image-size",
        32, "--max-steps", 1, "--quiet", "--out", out,
    )  # fmt: skip
    assert status == 2
    assert err.startswith("blitz: error: cannot fetch timm's pretrained weights for resnet10t")
    assert "--pretrained FILE" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # a run that never started leaves no directory


@pytest.mark.slow
def test_the_finetune_preset_without_weights_stops_before_decoding_and_says_how_to_go_on(
    tmp_path, capsys, cache
):
    folder = write_folder(tmp_path / "fruit", folder_files())
    train = ["train", "--preset", "finetune", "--model", RESNET, "--data", folder,
             "--image-size", 32, "--max-steps", 1, "--quiet"]  # fmt: skip
    status, out, err = blitz_in_process(capsys, *train, "--out", tmp_path / "a")
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("blitz: error: cannot fetch timm's pretrained weights for resnet10t")
    assert err.rstrip().endswith('train from random weights instead: --set model.pretrained=""')
    assert "without --pretrained" not in err  # the preset asked for them, not the user
    assert not (cache / "decoded").exists() and not (tmp_path / "a").exists()  # nothing decoded
    status, _, err = blitz_in_process(capsys, *train, "--set", "model.pretrained=", "--out",
                                      tmp_path / "b")  # fmt: skip
    assert status == 0, err  # the way out it names works


def test_huggingface_hubs_retry_lines_stay_out_of_the_terminal(monkeypatch, capfd, caplog):
    import logging

    import timm

    def offline(*args, **kwargs):
        hub = logging.getLogger("huggingface_hub.utils._http")
        for attempt in range(1, 6):  # what huggingface_hub logs while it retries
            hub.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD")
            hub.warning(f"Retrying in {2**attempt}s [Retry {attempt}/5].")
        raise OSError("cannot reach the Hub")

    monkeypatch.setattr(timm, "create_model", offline)
    level = logging.getLogger("huggingface_hub").level
    with pytest.raises(BlitzError, match="cannot fetch timm's pretrained weights"):
        fetch_hub_weights("timm:resnet18")
    assert capfd.readouterr().err == ""
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert logging.getLogger("huggingface_hub").level == level  # put back afterwards


# -- the finetune preset ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_finetune_preset_trains_from_timms_weights_offline(tmp_path, hub_weights):
    folder = write_folder(tmp_path / "fruit", folder_files())
    out = tmp_path / "run"
    result = run_blitz("train", "--preset", "finetune", "--data", folder, "--image-size", 64,
                       "--max-steps", 3, "--batch-size", 8, "--out", out)  # fmt: skip
    assert (
        "pretrained weights: timm's resnet18.a1_in1k (the classifier head starts afresh)"
        in result.stdout
    )
    assert "Accuracy of the network on the 12 test images" in result.stdout
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"]["image_size"] == 64
    assert (saved["data"]["mean"], saved["data"]["std"]) == (
        list(IMAGENET_MEAN),
        list(IMAGENET_STD),
    )
    assert saved["model"] == {"name": "timm:resnet18", "options": {}, "pretrained": "hub"}
    # three steps at the stem's rate (lr x 0.7 ** 8, under a warm-up) leave it by the hub's
    # weights: the run started from them
    stem = RunDir(out).load_model().state_dict["conv1.weight"]
    cached = cached_weights(hub_weights, "resnet18.a1_in1k")["conv1.weight"]
    assert (stem - cached).abs().max() < 1e-3


# -- the same preprocessing for evaluation, predict and the exported model -------------------

COLOURS = {"blue": (40, 60, 200), "green": (40, 190, 60), "red": (200, 40, 40)}
PHOTO_SIZES = [(300, 200), (200, 320), (517, 233)]  # (width, height): none of them square


def photos(root: Path, per_class: int) -> Path:
    """Train and test folders of noisy photos of odd sizes, a colour per class, a light band
    along the top of each; the first of each class a JPEG stored sideways, upright by its EXIF
    orientation."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 3)):
        for name, colour in COLOURS.items():
            for i in range(count):
                w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
                noise = rng.normal(0, 40, (h, w, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                pixels[: h // 4] = 255 - pixels[: h // 4]
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                if i == 0:
                    exif = Image.Exif()
                    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to show
                    Image.fromarray(pixels).save(path.with_suffix(".jpg"), quality=90, exif=exif)
                else:
                    Image.fromarray(pixels).save(path)
    return root


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    return torch.from_numpy(logits).softmax(1).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("tta", TTAS)
def test_evaluation_predict_and_the_export_see_the_same_images(tmp_path, capsys, tta):
    """The same pixels, and the same test-time views: predict and the export average the
    run's TTA views as its evaluation did."""
    pytest.importorskip("onnxruntime")
    folder = photos(tmp_path / "photos", per_class=6)
    out = tmp_path / "run"
    size = 48
    status, stdout, err = blitz_in_process(
        capsys, "train", "--data", folder, "--model", RESNET, "--image-size", size,
        "--max-steps", 3, "--batch-size", 8, "--lr", 0.01, "--set", f"train.tta={tta}",
        "--out", out,
    )  # fmt: skip
    assert status == 0, err
    assert "auto mean 0.485/0.456/0.406, std 0.229/0.224/0.225: timm:" in stdout
    status, stdout, err = blitz_in_process(capsys, "export", out, "--out", tmp_path / "m.onnx")
    assert status == 0 and "checked against PyTorch" in stdout, err
    # evaluation: the run's own test set, decoded by the data pipeline
    ckpt, run = RunDir(out).load_model(), blitz.load(out)
    cfg = ckpt.cfg
    data = load_data(cfg.data, silent, RunDir(out).read_sets())
    test = data.test
    assert len(test) == 9 and test.images.shape[-2:] == (size, size)
    evaluation = evaluate(ckpt.build_model(), test, cfg, len(data.classes))
    # predict and ONNX: each file decoded on its own, as blitz predict and a deployment do
    files = [folder / name for name in test.files]
    decoded = np.stack([decode_image(f.read_bytes(), f.name, size) for f in files])
    images = decoded.transpose(0, 3, 1, 2).copy()  # (N, C, H, W) uint8
    assert np.array_equal(images, test.images.numpy())  # the very same pixels
    predicted = run.predict(files, top_k=3)
    assert [p.image for p in predicted] == files
    by_predict = np.array([[dict(p.top)[c] for c in data.classes] for p in predicted])
    by_onnx = onnx_probabilities(tmp_path / "m.onnx", images)
    assert np.abs(by_predict - by_onnx).max() < 1e-4
    # evaluation keeps per image its prediction, that one's probability and the loss
    assert evaluation.predicted.tolist() == by_predict.argmax(1).tolist()
    assert np.abs(evaluation.confidence.numpy() - by_predict.max(1)).max() < 1e-4
    truth = by_predict[np.arange(len(files)), test.labels.numpy()]
    assert np.abs(np.exp(-evaluation.loss.numpy()) - truth).max() < 1e-4
    accuracy = float((by_predict.argmax(1) == test.labels.numpy()).mean())
    assert run.evaluate(quiet=True).accuracy == pytest.approx(accuracy, abs=1e-6)


# -- resume ----------------------------------------------------------------------------------

# 12 training images in batches of 2: 6 steps an epoch, 12 in all, the first 4 (0.3 of them)
# with the body frozen; a checkpoint every 2 steps and at the end of each epoch
RESUMABLE = [
    "train", "--preset", "seed", "--model", RESNET, "--image-size", "32", "--batch-size", "2",
    "--epochs", "2", "--lr", "0.05", "--checkpoint-every", "2", "--quiet",
    "--set", "train.eval_every_epoch=true",
    "--set", "data.crop_scale=0.5",
    "--set", "data.auto_augment=trivial",
    "--set", "data.mixup=0.2",
    "--set", "optim.freeze=0.3",
    "--set", "optim.layer_decay=0.7",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_fine_tuning_run_killed_while_frozen_resumes_exactly(tmp_path, cache, capsys):
    """Killed at step 4 (its last checkpoint at step 2, with the body frozen) and resumed in
    another process, a run with every new augmentation, layer decay and a frozen start ends
    bitwise where the same run left alone ends."""
    folder = write_folder(tmp_path / "fruit", folder_files())
    alone, killed = tmp_path / "alone", tmp_path / "killed"
    args = [*RESUMABLE, "--data", folder]
    kill = ["step", 4, signal.SIGKILL, 1]
    process = start_blitz([*args, "--out", killed], cache, harness=kill)
    status, _, err = blitz_in_process(capsys, *args, "--out", alone)  # meanwhile, left alone
    assert status == 0, err
    [(code, err)] = wait_all([process])
    assert code == -signal.SIGKILL, err
    assert load_checkpoint(killed / "last.pt").training.step == 2
    status, _, err = blitz_in_process(capsys, "train", "--resume", killed, "--quiet")
    assert status == 0, err
    assert_same_run(alone, killed)
    history = json.loads((alone / "metrics.json").read_text())["history"]
    assert [record["epoch"] for record in history] == [1, 2]


# -- inspect ---------------------------------------------------------------------------------


def test_inspect_walks_through_a_timm_model_with_batch_norm(capsys):
    status, out, err = blitz_in_process(capsys, "inspect", "--model", RESNET)
    assert status == 0, err
    assert out.startswith("(batch norm runs on its running statistics here")
    assert "== 1. Define the network ==" in out


def test_the_finetune_presets_hub_weights_go_with_timm_models_only():
    assert build_config("finetune", {"model.name": "timm:resnet10t"}).model.pretrained == HUB
    assert build_config("finetune", {"model.name": "convnet"}).model.pretrained == ""
