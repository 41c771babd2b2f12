import pytest
import torch

from blitz.config import build_config
from blitz.data import load_data
from blitz.engine import compute_loss, lr_factor, planned_steps, train
from blitz.evaluate import evaluate
from blitz.models import create_model


def test_schedules_are_pure_functions_of_the_step():
    cfg = build_config("seed").optim
    assert [lr_factor(s, 100, cfg) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    onecycle = build_config("seed", {"optim.schedule": "onecycle", "optim.warmup": 0.2}).optim
    assert lr_factor(0, 100, onecycle) == 0.0
    assert lr_factor(10, 100, onecycle) == pytest.approx(0.5)
    assert lr_factor(20, 100, onecycle) == pytest.approx(1.0)
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
    data = load_data("shapes:2000")
    torch.manual_seed(0)
    model = create_model("lenet", 10, 3)
    state = train(cfg, data, model, torch.device("cpu"), log=lambda m: None, quiet=True).state
    assert state.step == 6 * 63 and len(state.history) == 6
    result = evaluate(model, data.test, cfg, 10)
    assert result.accuracy > 0.5  # chance is 0.1
    assert result.accuracy == pytest.approx(state.history[-1]["test_accuracy"], abs=1e-6)
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]


def test_seed_format_running_loss_lines():
    cfg = build_config("seed", {"train.max_steps": 50, "train.log_every": 20})
    lines = []
    train(
        cfg, load_data("shapes:400"), create_model("lenet"), torch.device("cpu"), lines.append, True
    )
    assert lines[0].startswith("[1,    20] loss: ") and lines[1].startswith("[1,    40] loss: ")
    assert lines[-1] == "Finished Training"
