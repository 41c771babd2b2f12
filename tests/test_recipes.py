"""The recipes of the fast presets: optimizers, schedules, EMA, TTA, whitening, every preset."""

import copy
import json

import pytest
import torch

from blitz.config.loading import list_presets
from blitz.config.types import concrete
from blitz.data.preprocess import normalize
from blitz.data.sources import load_data
from blitz.models import create_model
from blitz.models.configs import build_config
from blitz.training import devices
from blitz.training.checkpoint import load_state
from blitz.training.context import RunContext, silent
from blitz.training.devices import fit_to_device, resolve_precision
from blitz.training.engine import train
from blitz.training.evaluate import _shift, evaluate, tta_logits
from blitz.training.optim import (
    CompiledStep,
    build_optimizers,
    flatten_filters,
    load_in_place,
    unflatten_filters,
)
from conftest import run_blitz

CPU = torch.device("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_every_preset_trains_a_few_steps_on_shapes(preset):
    quick = {"train.max_steps": 3, "train.batch_size": 32, "train.log_every": 0}
    cfg = build_config(preset, {**quick, "train.compile": False})
    data = load_data("shapes:100")
    torch.manual_seed(0)
    model = create_model(cfg.model.name, 10, 3, **cfg.model.options)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = train(RunContext(cfg, CPU, log=silent, quiet=True), data, model).state
    assert state.step == 3
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training changed no weight"
    assert 0 <= evaluate(model, data.test, cfg, 10).accuracy <= 1


def test_weight_decay_spares_norms_and_biases_and_head_has_its_own_rate():
    cfg = build_config("seed", {"optim.weight_decay": 0.1, "optim.head_lr": 0.5})
    model = create_model("convnet", 10, 3)
    (sgd,) = build_optimizers(model, cfg.optim)
    head, weights, others = sgd.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    assert head["lr"] == 0.5 and head["weight_decay"] == pytest.approx(0.1 * 0.001 / 0.5)
    assert all(p.ndim == 4 for p in weights["params"]) and weights["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in others["params"]) and others["weight_decay"] == 0.0


def test_muon_takes_the_conv_filters_as_matrices_and_gives_them_back():
    model = create_model("airbench", 10, 3, widths=[8, 16, 16])
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    muon, sgd = build_optimizers(model, build_config("fast-gpu").optim)
    assert isinstance(muon, torch.optim.Muon) and isinstance(sgd, torch.optim.SGD)
    assert all(p.ndim == 2 for p in muon.param_groups[0]["params"])
    assert len(muon.param_groups[0]["params"]) == 6  # whitening is frozen: not among them
    out = model.eval()(torch.randn(2, 3, 32, 32))  # eval: batch-norm statistics stay put
    assert out.shape == (2, 10)
    unflatten_filters(model)
    assert set(model.state_dict()) == set(plain)
    assert all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())
    assert [p.shape for p in flatten_filters(create_model("lenet"))] == [(6, 75), (16, 150)]


def _muon_twins() -> tuple[torch.nn.Module, torch.optim.Muon, torch.nn.Module, torch.optim.Muon]:
    torch.manual_seed(0)
    models = [create_model("airbench", 10, 3, widths=[8, 8, 8]) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    muons = [build_optimizers(m, build_config("fast-gpu").optim)[0] for m in models]
    return models[0], muons[0], models[1], muons[1]


def _step_both(eager, compiled, lr: float) -> None:
    for one, other in zip(
        eager.param_groups[0]["params"], compiled.optimizer.param_groups[0]["params"]
    ):
        one.grad = torch.randn_like(one)
        other.grad = one.grad.clone()
    eager.param_groups[0]["lr"] = compiled.optimizer.param_groups[0]["lr"] = lr
    eager.step()
    compiled()


@pytest.mark.slow
def test_compiled_muon_steps_as_eager_muon_through_a_changing_rate_and_a_restore(monkeypatch):
    # dynamo traces as it does for inductor; the "eager" backend runs the traced ops as they are
    monkeypatch.setattr(torch, "compile", lambda fn: torch._dynamo.optimize("eager")(fn))
    torch._dynamo.reset()
    model, eager, twin, muon = _muon_twins()
    compiled = CompiledStep(muon)
    saved = copy.deepcopy({"eager": eager.state_dict(), "compiled": muon.state_dict()})
    buffers = [muon.state[p]["momentum_buffer"] for p in muon.param_groups[0]["params"]]
    for lr in (0.2, 0.1):
        _step_both(eager, compiled, lr)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    eager.load_state_dict(saved["eager"])
    load_in_place(muon, saved["compiled"])  # the warm-up's restore
    kept = [muon.state[p]["momentum_buffer"] for p in muon.param_groups[0]["params"]]
    assert [id(b) for b in kept] == [id(b) for b in buffers]
    assert all(b.count_nonzero() == 0 for b in buffers)
    for lr in (0.05, 0.0, 0.3):
        _step_both(eager, compiled, lr)
    # new rates and the restored state reuse the graph; the groups hold floats between steps
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
    assert muon.param_groups[0]["lr"] == 0.3
    load_state(muon, copy.deepcopy(muon.state_dict()), "the optimizer")  # as --resume loads it
    kept = [muon.state[p]["momentum_buffer"] for p in muon.param_groups[0]["params"]]
    assert [id(b) for b in kept] == [id(b) for b in buffers]
    for one, other in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(one, other, atol=1e-3)  # Newton-Schulz runs in bf16


def test_a_frozen_compiled_muon_leaves_the_filters_as_they_are(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn: torch._dynamo.optimize("eager")(fn))
    torch._dynamo.reset()
    _, _, twin, muon = _muon_twins()
    before = [p.clone() for p in muon.param_groups[0]["params"]]
    for p in muon.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    muon.param_groups[0]["lr"] = 0.0  # optim.freeze
    CompiledStep(muon)()
    assert all(torch.equal(p, b) for p, b in zip(muon.param_groups[0]["params"], before))


def test_whitening_layer_decorrelates_patches():
    torch.manual_seed(0)
    model = create_model("airbench", 10, 3, widths=[8, 8, 8])
    mixing = torch.tensor([[1.0, 0.8, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    images = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(64, 3, 16, 16))
    model.prepare(images)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, model.whiten.weight)  # (N, 24, 15, 15)
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = half.T @ half / len(half)
    assert torch.allclose(covariance, torch.eye(12), atol=0.05)


def _correlated_images(count: int = 64, size: int = 16) -> torch.Tensor:
    mixing = torch.tensor([[1.0, 0.8, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    return torch.einsum("dc,nchw->ndhw", mixing, torch.randn(count, 3, size, size))


def test_a_whitened_convnet_keeps_its_patches_leading_directions_decorrelated_and_frozen():
    torch.manual_seed(0)
    model = create_model("convnet", 10, 3, widths=[16, 16], whiten=True)
    conv = model.first_conv()
    assert not conv.weight.requires_grad and model.prepare_images > 0
    images = _correlated_images()
    model.prepare(images)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, conv.weight)  # whole 3x3 patches only
    half = out[:, :8].permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.allclose(half.T @ half / len(half), torch.eye(8), atol=0.05)
    assert torch.allclose(out[:, 8:], -out[:, :8])  # each filter and its negative
    patches = torch.nn.functional.unfold(images, 3).transpose(1, 2).reshape(-1, 27)
    leading = torch.linalg.eigvalsh(patches.T @ patches / len(patches))[-8:]
    norms = conv.weight[:8].flatten(1).norm(dim=1)  # 1 / sqrt(eigenvalue + eps) each
    assert torch.allclose(norms.pow(-2) - 5e-4, leading, rtol=1e-3)


def test_whitening_a_narrow_input_sets_as_many_filter_pairs_as_a_patch_has_values():
    torch.manual_seed(0)
    model = create_model("convnet", 2, 1, widths=[32], whiten=True)  # 9 values, 16 pairs
    before = model.first_conv().weight.clone()
    model.prepare(torch.randn(8, 1, 12, 12))
    changed = (model.first_conv().weight != before).flatten(1).any(dim=1)
    assert changed[:18].all() and not changed[18:].any()
    tiny = create_model("convnet", 2, 3, widths=[8], whiten=True)
    unchanged = tiny.first_conv().weight.clone()
    tiny.prepare(torch.randn(4, 3, 2, 2))  # smaller than a patch: nothing to learn from
    assert torch.equal(tiny.first_conv().weight, unchanged)


def test_training_whitens_from_the_first_images_and_leaves_that_layer_alone():
    cfg = build_config(
        "fast-cpu", {"train.max_steps": 4, "train.batch_size": 32, "train.log_every": 0}
    )
    data = load_data("shapes:100")
    torch.manual_seed(0)
    model = create_model(cfg.model.name, 10, 3, **cfg.model.options)
    model.prepare_images = 40
    train(RunContext(cfg, CPU, log=silent, quiet=True), data, model)
    expected = create_model(cfg.model.name, 10, 3, **cfg.model.options)
    first = data.train.images_at(torch.arange(40))
    expected.prepare(normalize(first, concrete(cfg.data.mean), concrete(cfg.data.std)))
    assert torch.allclose(model.first_conv().weight, expected.first_conv().weight, atol=1e-6)


def test_tta_shift_moves_pixels_by_one():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(_shift(x, 1, 1)[0, 0, 1:, 1:], x[0, 0, :3, :3])
    assert torch.equal(_shift(x, -1, -1)[0, 0, :3, :3], x[0, 0, 1:, 1:])


def test_translate_tta_averages_two_shifts_and_never_mirrors():
    x = torch.rand(2, 1, 6, 6)

    def model(v):  # tells the left half from the right
        return torch.stack([v[..., :3].sum((1, 2, 3)), v[..., 3:].sum((1, 2, 3))], 1)

    shifted = model(_shift(x, -1, -1)) + model(_shift(x, 1, 1))
    assert torch.allclose(tta_logits(model, x, "translate"), 0.5 * model(x) + 0.25 * shifted)
    mirrored = tta_logits(model, x.flip(-1), "translate")
    assert not torch.allclose(tta_logits(model, x, "translate"), mirrored)
    assert torch.allclose(tta_logits(model, x, "flip"), tta_logits(model, x.flip(-1), "flip"))


@pytest.mark.slow
def test_ema_weights_end_up_in_the_model():
    cfg = build_config(
        "seed",
        {"optim.ema": 0.9, "train.batch_size": 16, "train.max_steps": 5, "train.log_every": 0},
    )
    torch.manual_seed(0)
    model = create_model("convnet", 10, 3, widths=[8, 8])
    train(RunContext(cfg, CPU, log=silent, quiet=True), load_data("shapes:100"), model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("fast_bf16", [False, True])
def test_a_gpu_preset_on_a_cpu_says_so_and_takes_what_the_cpu_has(monkeypatch, fast_bf16):
    monkeypatch.setattr(devices, "fast_bf16", lambda device: fast_bf16)  # an AVX2 CPU, or AMX
    lines = []
    cfg = fit_to_device(build_config("fast-gpu"), CPU, lines.append)
    assert cfg.train.precision == ("bf16" if fast_bf16 else "fp32")
    assert cfg.train.compile is False
    assert len(lines) == 1 and lines[0].startswith("fast-gpu on cpu: ")
    assert ("train.precision=auto -> fp32" in lines[0]) is not fast_bf16
    assert "train.compile=auto -> false" in lines[0]


def test_a_gpu_preset_on_a_gpu_keeps_its_choices_and_says_nothing():
    lines = []
    cfg = fit_to_device(build_config("fast-gpu"), torch.device("cuda"), lines.append)
    assert (cfg.train.precision, cfg.train.compile, lines) == ("bf16", True, [])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_an_explicit_half_precision_is_kept_and_warned_about_where_it_is_slow(
    monkeypatch, precision
):
    monkeypatch.setattr(devices, "fast_bf16", lambda device: False)
    lines = []
    chosen = build_config("fast-gpu", {"train.precision": precision, "train.compile": True})
    cfg = fit_to_device(chosen, CPU, lines.append)
    assert (cfg.train.precision, cfg.train.compile) == (precision, True)
    assert len(lines) == 1 and lines[0].startswith(f"warning: train.precision={precision} is")
    monkeypatch.setattr(devices, "fast_bf16", lambda device: True)
    assert fit_to_device(chosen, CPU, lines.append) == cfg and len(lines) == 1


def test_a_cpu_preset_says_nothing_on_a_cpu():
    lines = []
    cfg = build_config("fast-cpu")
    assert fit_to_device(cfg, CPU, lines.append) == cfg and lines == []


@pytest.mark.slow
@pytest.mark.subprocess
def test_blitz_train_fits_a_gpu_preset_to_the_cpu_and_records_what_ran(tmp_path):
    out = tmp_path / "run"
    small = ["--set", "model.options.widths=[8,8,8]", "--batch-size", "32", "--max-steps", "2"]
    args = ["train", "--preset", "fast-gpu", "--device", "cpu", "--data", "shapes:100", *small]
    result = run_blitz(*args, "--out", out)
    assert result.stdout.count("fast-gpu on cpu: ") == 1
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["precision"] == resolve_precision("auto", CPU) and saved["compile"] is False


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_low_res_run_says_which_steps_are_downscaled(tmp_path):
    args = ["train", "--preset", "cpu-30s", "--data", "shapes:100", "--max-steps", "5"]
    result = run_blitz(*args, "--batch-size", "32", "--out", tmp_path / "run")
    expected = "the first 3 of 5 steps train on images downscaled to 24x24"
    assert expected in result.stdout and "the rest at 32x32" in result.stdout
