"""The batched Muon step (optim.muon_batched) against torch.optim.Muon's, matrix by matrix."""

import copy

import pytest
import torch

from blitz.models import create_model
from blitz.models.configs import build_config
from blitz.training.muon import BatchedMuon, newton_schulz
from blitz.training.optim import CompiledStep, build_optimizers


def _twins() -> tuple[torch.optim.Muon, BatchedMuon]:
    """fast-gpu's Muon (filter renormalisation included) over two copies of one airbench net:
    per matrix, and batched; its last three filter banks share one shape (16, 144)."""
    torch.manual_seed(0)
    models = [create_model("airbench", 10, 3, widths=[8, 16, 16]) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    plain = build_optimizers(models[0], build_config("fast-gpu").optim)[0]
    batched_cfg = build_config("fast-gpu", {"optim.muon_batched": True}).optim
    batched = build_optimizers(models[1], batched_cfg)[0]
    assert type(plain) is torch.optim.Muon and isinstance(batched, BatchedMuon)
    return plain, batched


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _step_both(plain: torch.optim.Muon, batched, lr: float) -> None:
    """One step of each on the same random gradients; ``batched``: the optimizer or its
    CompiledStep."""
    optimizer = getattr(batched, "optimizer", batched)
    for one, other in zip(_params(plain), _params(optimizer)):
        one.grad = torch.randn_like(one)
        other.grad = one.grad.clone()
    for group, twin in zip(plain.param_groups, optimizer.param_groups):
        group["lr"] = twin["lr"] = lr
    plain.step()
    (batched if callable(batched) else batched.step)()


def _max_difference(plain: torch.optim.Muon, batched: torch.optim.Muon) -> float:
    pairs = list(zip(_params(plain), _params(batched)))
    pairs += [
        (plain.state[p]["momentum_buffer"], batched.state[q]["momentum_buffer"]) for p, q in pairs
    ]
    return max((p - q).abs().max().item() for p, q in pairs)


@pytest.fixture
def fp32_newton_schulz(monkeypatch):
    """Both run Newton-Schulz in fp32, their only cast to bf16 made a copy in fp32: bf16's
    rounding of a batched matrix product may differ from one matrix's, the maths does not."""
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self.float().clone())


def test_batched_muon_steps_as_torch_muon_through_rate_changes_and_a_restore(fp32_newton_schulz):
    plain, batched = _twins()
    shapes = [p.shape for p in _params(batched)]
    assert len(set(shapes)) < len(shapes), "no two filter banks share a shape: nothing batched"
    for lr in (0.24, 0.2, 0.1):
        _step_both(plain, batched, lr)
    assert _max_difference(plain, batched) < 1e-6
    saved = {"plain": plain.state_dict(), "batched": batched.state_dict()}
    saved = copy.deepcopy({**saved, "weights": _params(batched)})
    assert saved["batched"]["state"].keys() == saved["plain"]["state"].keys()  # torch's layout
    _step_both(plain, batched, 0.05)  # a step the restore undoes
    with torch.no_grad():
        for p, q, weight in zip(_params(plain), _params(batched), saved["weights"]):
            p.copy_(weight)
            q.copy_(weight)
    plain.load_state_dict(saved["batched"])  # each takes the other's state: the same layout
    batched.load_state_dict(saved["plain"])
    for lr in (0.3, 0.0, 0.12):
        _step_both(plain, batched, lr)
    assert _max_difference(plain, batched) < 1e-6


def test_batched_muon_covers_tall_matrices_weight_decay_and_its_rate_adjustments(
    fp32_newton_schulz,
):
    torch.manual_seed(1)
    shapes = [(24, 6), (24, 6), (6, 24), (6, 24), (6, 24), (5, 5)]
    weights = [torch.randn(shape) for shape in shapes]
    settings = {"lr": 0.05, "weight_decay": 0.1, "momentum": 0.9, "ns_steps": 5}
    for options in ({"nesterov": False, "adjust_lr_fn": "match_rms_adamw"}, {"nesterov": True}):
        plain = torch.optim.Muon(
            [torch.nn.Parameter(w.clone()) for w in weights], **settings, **options
        )
        batched = BatchedMuon(
            [torch.nn.Parameter(w.clone()) for w in weights], **settings, **options
        )
        for lr in (0.05, 0.02):
            _step_both(plain, batched, lr)
        assert _max_difference(plain, batched) < 1e-6


def test_batched_muon_in_bf16_agrees_with_torch_muon_to_bf16_rounding():
    plain, batched = _twins()
    for lr in (0.24, 0.2):
        _step_both(plain, batched, lr)
    assert _max_difference(plain, batched) < 1e-2  # filters of norm sqrt(rows), entries ~0.1


@pytest.mark.slow
def test_compiled_batched_muon_steps_as_torch_muon(fp32_newton_schulz, monkeypatch):
    # dynamo traces as it does for inductor; the "eager" backend runs the traced ops as they are
    monkeypatch.setattr(torch, "compile", lambda fn: torch._dynamo.optimize("eager")(fn))
    torch._dynamo.reset()
    plain, batched = _twins()
    compiled = CompiledStep(batched)
    for lr in (0.24, 0.1, 0.0):
        _step_both(plain, compiled, lr)
    assert batched.param_groups[0]["lr"] == 0.0  # floats between steps, as CompiledStep's
    assert _max_difference(plain, batched) < 1e-6


def test_newton_schulz_with_its_products_apart_is_the_same_maths(fp32_newton_schulz):
    # some torch versions' Muon sums its products apart from them (use_addmm off)
    stack = torch.randn(3, 16, 40)
    fused = newton_schulz(stack, (3.4445, -4.7750, 2.0315), 3, 1e-7)
    apart = newton_schulz(stack, (3.4445, -4.7750, 2.0315), 3, 1e-7, fused=False)
    assert torch.allclose(fused, apart, atol=1e-5)
    assert fused.abs().max() > 0.1  # an update of substance, not zeros
