import copy
import math

import pytest
import torch
import torch.nn.functional as F

from blitz.config.data_settings import DataConfig
from blitz.config.settings import OPTIMIZERS
from blitz.data import augment
from blitz.data.sources import load_data
from blitz.models import create_model
from blitz.models.configs import build_config
from blitz.training.context import RunContext, silent
from blitz.training.engine import build_loop, lr_factor, train, warm_up
from blitz.training.evaluate import evaluate
from blitz.training.loop import TrainHooks, planned_steps
from blitz.training.progress import Progress
from blitz.training.resume import choose_kernels
from blitz.training.step import compute_loss, train_step

CPU = torch.device("cpu")


def quiet_run(cfg) -> RunContext:
    return RunContext(cfg, CPU, log=silent, quiet=True)


def test_cosine_warms_up_then_falls_to_zero_along_a_half_cosine():
    cosine = build_config("seed", {"optim.schedule": "cosine", "optim.warmup": 0.2}).optim
    factors = [lr_factor(s, 100, cosine) for s in (0, 9, 19, 20, 60, 100)]
    assert factors == pytest.approx([0.05, 0.5, 1.0, 1.0, 0.5, 0.0])  # no step at rate 0


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains_and_a_frozen_body_stays_put(optimizer):
    """Each update rule moves the weights; with the body frozen (optim.freeze) only the
    classifier head (lenet's fc3) moves, whatever the rule and its weight decay."""
    settings = {"optim.name": optimizer, "optim.lr": 0.01, "optim.weight_decay": 0.01}
    settings.update({"train.batch_size": 16, "train.max_steps": 4, "train.log_every": 0})
    data = load_data("shapes:64", log=silent)
    moved = {}
    for freeze in (0.0, 0.99):
        cfg = build_config("seed", {**settings, "optim.freeze": freeze})
        torch.manual_seed(0)
        model = create_model("lenet", 10, 3)
        before = copy.deepcopy(model.state_dict())
        train(quiet_run(cfg), data, model)
        after = model.state_dict()
        moved[freeze] = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved[0.0] == set(before)  # every weight learns
    assert moved[0.99] == {"fc3.weight", "fc3.bias"}  # only the head


def test_schedules_are_pure_functions_of_the_step():
    cfg = build_config("seed").optim
    assert [lr_factor(s, 100, cfg) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    onecycle = build_config("seed", {"optim.schedule": "onecycle", "optim.warmup": 0.2}).optim
    assert lr_factor(0, 100, onecycle) == pytest.approx(0.05)  # the first step learns
    assert lr_factor(9, 100, onecycle) == pytest.approx(0.5)
    assert lr_factor(20, 100, onecycle) == pytest.approx(1.0)
    assert lr_factor(0, 1, onecycle) == 1.0  # a run of one step: at the full rate
    assert lr_factor(60, 100, onecycle) == pytest.approx(0.5)
    assert lr_factor(100, 100, onecycle) == 0.0
    linear = build_config("seed", {"optim.schedule": "linear"}).optim
    assert lr_factor(25, 100, linear) == pytest.approx(0.75)


def test_mse_loss_uses_one_hot_targets():
    cfg = build_config("seed", {"optim.loss": "mse"}).optim
    logits = torch.zeros(2, 3)
    loss = compute_loss(logits, torch.tensor([0, 2]), cfg)
    assert loss.item() == pytest.approx(2 / 6)


def test_planned_steps_respects_max_steps():
    cfg = build_config("seed", {"train.batch_size": 10, "train.epochs": 3})
    assert planned_steps(cfg, 95) == 30
    cfg = build_config("seed", {"train.batch_size": 10, "train.max_steps": 7})
    assert planned_steps(cfg, 95) == 7


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam", "rmsprop"])
def test_training_on_shapes_learns(optimizer):
    lr = {"sgd": 0.03, "nesterov": 0.03, "adam": 0.003, "rmsprop": 0.001}[optimizer]
    cfg = build_config(
        "seed",
        {
            "optim.name": optimizer,
            "optim.lr": lr,
            "optim.momentum": 0.0 if optimizer == "rmsprop" else 0.9,
            "train.batch_size": 32,
            "train.epochs": 6,
            "train.log_every": 0,
            "train.eval_every_epoch": True,
        },
    )
    data = load_data(DataConfig(source="shapes:2200", val_fraction=0.1))  # 1980 train
    torch.manual_seed(0)
    model = create_model("lenet", 10, 3)
    state = train(quiet_run(cfg), data, model).state
    assert state.step == 6 * 62 and len(state.history) == 6
    assert evaluate(model, data.test, cfg, 10).accuracy > 0.5  # chance is 0.1
    result = evaluate(model, data.val, cfg, 10)
    best = max(h["val_accuracy"] for h in state.history)  # the run keeps the best epoch's
    assert result.accuracy == pytest.approx(best, abs=1e-6) and state.best_accuracy == best
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]


@pytest.mark.slow
def test_seed_format_running_loss_lines():
    cfg = build_config("seed", {"train.max_steps": 50, "train.log_every": 20})
    lines = []
    ctx = RunContext(cfg, CPU, log=lines.append, quiet=True)
    train(ctx, load_data("shapes:400"), create_model("lenet"))
    assert lines[0].startswith("[1,    20] loss: ") and lines[1].startswith("[1,    40] loss: ")
    assert lines[-1] == "Finished Training"


def small_convnet(overrides: dict):
    """A seed config for a tiny convnet, and that net (the same initial weights every call)."""
    cfg = build_config(
        "seed", {"model.name": "convnet", "model.options.widths": [8, 16], **overrides}
    )
    torch.manual_seed(0)
    return cfg, create_model("convnet", 10, 3, widths=[8, 16])


def loop_for(cfg, model, data):
    return build_loop(quiet_run(cfg), data, model, Progress(cfg, silent, True), TrainHooks())


FP16 = {"train.precision": "fp16", "optim.lr": 0.05, "train.batch_size": 32}


@pytest.mark.slow
def test_fp16_trains_through_a_loss_scaler_that_checkpoints_keep():
    cfg, model = small_convnet({**FP16, "train.epochs": 3, "train.eval_every_epoch": False})
    loop = train(quiet_run(cfg), load_data("shapes:256"), model)
    losses = [record["train_loss"] for record in loop.state.history]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0] - 0.2
    scale = loop.stateful["scaler"].state_dict()["scale"]  # what a checkpoint records
    assert 1 <= scale <= 2**16 and math.log2(scale).is_integer()
    fp32, model = small_convnet({})
    assert "scaler" not in loop_for(fp32, model, load_data("shapes:64")).stateful


def first_gradient(cfg, model) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's gradient as the backward pass sees it, and the head's weight after the step."""
    data = load_data("shapes:64")
    loop = loop_for(cfg, model, data)
    seen = []
    model.head.weight.register_hook(seen.append)
    rows = torch.arange(32)
    train_step(loop, rows, data.train.images[rows], data.train.labels[rows], 1.0)
    return seen[0], model.head.weight.detach()


def test_fp16_gradients_are_scaled_up_in_backward_and_unscaled_for_the_step():
    fp16, model16 = small_convnet(FP16)
    fp32, model32 = small_convnet({**FP16, "train.precision": "fp32"})
    grad16, weight16 = first_gradient(fp16, model16)
    grad32, weight32 = first_gradient(fp32, model32)
    # the loss was multiplied by 2**16 (fp16's small gradients would underflow otherwise) ...
    assert torch.allclose(grad16 / 2**16, grad32, rtol=0.05, atol=1e-4)
    # ... and the optimizer stepped with the true gradient: the same update as in fp32
    assert torch.allclose(weight16, weight32, atol=1e-3)


class Snapshot(TrainHooks):
    """Keeps (or restores) what a checkpoint holds at a step: weights, stateful, TrainState."""

    def __init__(self, model, at=None, saved=None):
        self.model, self.at, self.saved = model, at, saved

    def start(self, loop):
        self.stateful, state, stateful = loop.stateful, loop.state, loop.stateful
        if self.saved:
            self.model.load_state_dict(self.saved["model"])
            for name, obj in stateful.items():
                obj.load_state_dict(self.saved[name])
            state.load_dict(self.saved["state"], CPU)

    def after_step(self, state):
        if state.step == self.at:
            saved = {name: obj.state_dict() for name, obj in self.stateful.items()}
            self.saved = copy.deepcopy(
                {**saved, "model": self.model.state_dict(), "state": state.to_dict()}
            )


@pytest.mark.slow
def test_an_fp16_run_resumed_from_its_saved_state_ends_bitwise_the_same():
    cfg, model = small_convnet({**FP16, "train.max_steps": 6, "train.eval_every_epoch": False})
    data = load_data("shapes:256")
    whole = Snapshot(model, at=3)
    train(quiet_run(cfg), data, model, hooks=whole)
    assert "scaler" in whole.saved  # the loss scale is part of what is resumed
    _, resumed = small_convnet({})
    train(quiet_run(cfg), data, resumed, hooks=Snapshot(resumed, saved=whole.saved))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


@pytest.mark.slow
def test_warm_up_tests_one_batch_and_restores_every_state():
    cfg, model = small_convnet(
        {
            **FP16,
            "optim.ema": 0.9,
            "train.max_steps": 1,
            "train.eval_batch_size": 50,
            "train.tta": "flip",
        }
    )
    data = load_data("shapes:1000")  # 200 test images: 4 batches of 50
    loop = loop_for(cfg, model, data)
    before = copy.deepcopy({"model": model.state_dict(), "ema": loop.ema.state_dict()})
    seen = {"train": 0, "test": 0}

    def count(kind):
        return lambda module, args, out: seen.update({kind: seen[kind] + len(args[0])})

    model.register_forward_hook(count("train"))
    loop.ema.module.register_forward_hook(count("test"))
    warm_up(loop, data, CPU)
    assert seen == {"train": 32, "test": 50 * 2}  # max_steps=1: one step; a batch, 2 TTA views
    after = {"model": model.state_dict(), "ema": loop.ema.state_dict()}
    for part, tensors in before.items():
        for name, tensor in tensors.items():
            assert torch.equal(tensor, after[part][name]), (part, name)
    assert loop.state.step == 0 and not loop.optimizers[0].state


def test_low_res_trains_the_first_steps_on_downscaled_batches_then_full_size():
    cfg, model = small_convnet(
        {"data.low_res": 16, "data.low_res_until": 0.4, "train.max_steps": 10,
         "train.batch_size": 16, "train.eval_every_epoch": False}
    )  # fmt: skip
    sides = []
    model.register_forward_pre_hook(lambda m, args: sides.append(args[0].shape[-1]))
    train(quiet_run(cfg), load_data("shapes:256"), model)
    assert sides == [16] * 4 + [32] * 6


def test_a_low_res_run_resumed_at_the_switch_ends_bitwise_the_same():
    low = {"data.low_res": 16, "data.low_res_until": 0.5, "data.flip": "random"}
    cfg, model = small_convnet({**low, "train.max_steps": 6, "train.eval_every_epoch": False})
    data = load_data("shapes:256")
    whole = Snapshot(model, at=3)
    train(quiet_run(cfg), data, model, hooks=whole)
    _, resumed = small_convnet({})
    train(quiet_run(cfg), data, resumed, hooks=Snapshot(resumed, saved=whole.saved))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_downscale_averages_over_what_each_pixel_covers():
    ones = torch.ones(2, 3, 32, 32)
    assert torch.allclose(augment.downscale(ones, 24), torch.ones(2, 3, 24, 24))
    stripes = torch.zeros(1, 1, 32, 32)
    stripes[..., ::2] = 1  # a 1-pixel pattern a plain bilinear resize would alias
    halved = augment.downscale(stripes, 16)[..., 1:-1]  # the edge pixels weigh fewer neighbours
    assert torch.allclose(halved, torch.full((1, 1, 16, 14), 0.5), atol=1e-6)
    assert augment.downscale(stripes, 32) is stripes


@pytest.mark.parametrize(
    ("shape", "size"),
    [((5, 3, 32, 32), 24), ((4, 1, 40, 28), 20), ((2, 3, 17, 33), 16), ((2, 3, 20, 20), 24)],
)
def test_downscale_is_torchs_antialiased_bilinear_resize(shape, size):
    images = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    expected = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    assert torch.allclose(augment.downscale(images, size), expected, atol=1e-5)


def test_kernels_are_deterministic_or_the_fastest_as_the_run_asks():
    was = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        # each run sets both ways: a notebook's second run does not inherit the first's choice
        for deterministic in (True, False, True):
            choose_kernels(build_config("seed", {"train.deterministic": deterministic}))
            assert torch.are_deterministic_algorithms_enabled() == deterministic
            assert torch.backends.cudnn.benchmark == (not deterministic)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=True)
        torch.backends.cudnn.benchmark = was[1]


class StopAt(TrainHooks):
    def after_step(self, state):
        if state.step == 3:
            raise KeyboardInterrupt


def test_a_stopped_run_closes_its_logs(monkeypatch):
    closed = []
    monkeypatch.setattr(Progress, "close", lambda self, failed=False: closed.append(True))
    cfg, model = small_convnet({"train.max_steps": 6})
    with pytest.raises(KeyboardInterrupt):
        train(quiet_run(cfg), load_data("shapes:64"), model, hooks=StopAt())
    assert closed == [True]  # metrics.csv and TensorBoard's events are flushed and closed


def test_of_epochs_as_accurate_the_one_of_lowest_validation_loss_is_kept():
    """A validation set of a few images is all right within epochs: the first such epoch is
    no better than a later one that is surer (lower loss); a NaN loss is never better."""
    from types import SimpleNamespace

    from blitz.training.engine import _note_best
    from blitz.training.loop import TrainState

    net = torch.nn.Linear(2, 2)
    loop = SimpleNamespace(state=TrainState(), cfg=build_config("seed"), eval_net=net)
    figures = [(0.5, 0.2), (1.0, 0.6), (1.0, 0.3), (1.0, 0.4), (1.0, math.nan), (1.0, 0.3)]
    for epoch, (accuracy, loss) in enumerate(figures, 1):
        loop.state.epoch = epoch
        with torch.no_grad():
            net.weight.fill_(epoch)
        _note_best(loop, accuracy, loss)
    assert (loop.state.best_epoch, loop.state.best_loss) == (3, 0.3)
    assert loop.state.best_weights["weight"][0, 0] == 3
