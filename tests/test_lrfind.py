"""The learning-rate range test trains with the engine's own step, for every model and preset."""

import math

import pytest
import torch

from blitz.cli import build_parser
from blitz.config.loading import list_presets
from blitz.config.settings import OPTIMIZERS
from blitz.data.preprocess import normalize
from blitz.data.sources import load_data
from blitz.models import list_models
from blitz.models.configs import build_config
from blitz.training.context import RunContext, silent
from blitz.training.devices import fit_to_device
from blitz.training.distributed import SINGLE, epoch_batches
from blitz.training.engine import build_loop, train, train_at_factors
from blitz.training.progress import Progress
from blitz.training.step import compute_loss
from blitz.workflows.lrfind import lr_find, suggested_settings
from blitz.workflows.runs import build_model
from conftest import run_blitz

CPU = torch.device("cpu")


def quiet_run(preset: str, overrides: dict) -> RunContext:
    """A run context on the CPU, with the preset fitted to it (as ``blitz lr-find`` does)."""
    cfg = fit_to_device(build_config(preset, overrides), CPU, silent)
    return RunContext(cfg, CPU, log=silent, quiet=True)


def check_sweep(ctx: RunContext, steps: int) -> None:
    sweep = lr_find(ctx, load_data("shapes:64", silent), steps=steps)
    assert 1 <= len(sweep.lrs) == len(sweep.losses) <= steps
    assert math.isfinite(sweep.losses[0]) and 0 < sweep.suggestion < 10


@pytest.mark.slow
@pytest.mark.parametrize("model", list_models())
def test_lr_find_runs_for_every_model(model):
    check_sweep(quiet_run("seed", {"model.name": model, "train.batch_size": 16}), steps=5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_lr_find_runs_for_every_preset(preset):
    # 3 steps: torch.optim.Muon's bf16 matrix products on full-width airbench are slow on a CPU
    check_sweep(quiet_run(preset, {"train.batch_size": 16}), steps=3)


@pytest.mark.slow
def test_lr_find_trains_with_the_engine_step():
    # fast-gpu's recipe, small: whitening (prepare), flips and shifts, summed loss, Muon + SGD
    small = {"model.options.widths": [8, 16, 16], "train.batch_size": 32, "train.max_steps": 1}
    ctx = quiet_run("fast-gpu", small)
    data = load_data("shapes:200", silent)
    sweep = lr_find(ctx, data, steps=5)
    # the first loss comes before any update: it is training's first loss, if the step is one
    trained = train(ctx, data, build_model(ctx, data)).state.history[0]["train_loss"]
    assert sweep.losses[0] == pytest.approx(trained, abs=2e-6)
    # a step of its own (no whitening, no augmentation: lr-find's old one) sees another loss
    cfg, model = ctx.cfg, build_model(ctx, data)
    rows = epoch_batches(len(data.train), cfg.train.batch_size, cfg.train.seed, 0, SINGLE)[0]
    x = normalize(data.train.images[rows], cfg.data.mean, cfg.data.std)
    plain = compute_loss(model(x), data.train.labels[rows], cfg.optim).item() / len(rows)
    assert abs(plain - sweep.losses[0]) > 1e-3


@pytest.mark.slow
def test_the_sweep_moves_every_group_with_the_schedules_proportions():
    ctx = quiet_run("fast-gpu", {"model.options.widths": [8, 8, 8], "train.batch_size": 16})
    data = load_data("shapes:64", silent)
    loop = build_loop(ctx, data, build_model(ctx, data), Progress(ctx.cfg, silent, True), None)
    losses = list(train_at_factors(loop, [0.5, 0.25], CPU))
    assert len(losses) == 2 and loop.state.step == 2
    muon, sgd = loop.optimizers
    assert muon.param_groups[0]["lr"] == pytest.approx(ctx.cfg.optim.muon_lr * 0.25)
    assert all(g["lr"] == pytest.approx(g["base_lr"] * 0.25) for g in sgd.param_groups)


def test_the_suggestion_keeps_the_other_groups_in_proportion():
    fast_gpu = build_config("fast-gpu").optim
    scaled = {"optim.lr": fast_gpu.lr / 10, "optim.head_lr": fast_gpu.head_lr / 10}
    scaled["optim.muon_lr"] = fast_gpu.muon_lr / 10
    assert suggested_settings(fast_gpu, fast_gpu.lr / 10) == pytest.approx(scaled)
    assert suggested_settings(build_config("seed").optim, 0.01) == {"optim.lr": 0.01}


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_every_command_offers_every_optimizer(command):
    for name in OPTIMIZERS:
        assert build_parser().parse_args([command, "--optimizer", name]).optimizer == name


@pytest.mark.slow
@pytest.mark.subprocess
def test_lr_find_command_with_muon_on_a_gpu_preset(tmp_path):
    out = tmp_path / "lr.png"
    args = ["--preset", "fast-gpu", "--model", "convnet", "--optimizer", "muon", "--steps", "5"]
    result = run_blitz("lr-find", "--data", "shapes:50", *args, "--out", out)
    assert result.stdout.count("fast-gpu on cpu: ") == 1  # fitted to the machine, as train is
    suggestion = result.stdout.splitlines()[-1]
    assert " --set optim.head_lr=" in suggestion and " --set optim.muon_lr=" in suggestion
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("decades", [8, 0.5])  # a full sweep; one that diverged early
def test_the_lr_find_plot_labels_its_ticks_in_plain_text(monkeypatch, decades):
    from blitz.outputs import plots

    labels = []

    def drawn(fig):  # what figure_png would save, drawn where the labels are made
        fig.canvas.draw()
        axis = fig.axes[0].xaxis
        labels.extend(t.get_text() for t in axis.get_ticklabels(which="both") if t.get_text())
        return b""

    monkeypatch.setattr(plots, "figure_png", drawn)
    lrs = [1e-7 * 10 ** (decades * i / 99) for i in range(100)]
    plots.lr_find_png(lrs, [2.0 - i / 100 for i in range(100)], lrs[50])
    assert labels and not any("$" in label or "\\" in label for label in labels), labels
