"""Update rules and learning-rate schedules: torch.optim's, with Muon for conv filters."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from blitz.config import OptimConfig


def param_groups(
    params: list[nn.Parameter], cfg: OptimConfig, head: set[int], scales: dict[int, float]
) -> list[dict]:
    """Decay weight matrices and filters only (decaying norms and biases hurts small nets);
    the classifier may have its own learning rate, and each body layer its ``scales`` times
    lr (``optim.layer_decay``)."""
    head_lr = cfg.head_lr or cfg.lr
    # lr x weight_decay (the shrinkage per step) is the same for the head as for the body
    head_decay = cfg.weight_decay * cfg.lr / head_lr
    groups = [
        {
            "params": [p for p in params if id(p) in head],
            "lr": head_lr,
            "weight_decay": head_decay,
            "head": True,  # the one group that learns while the body is frozen (optim.freeze)
        }
    ]
    body = [p for p in params if id(p) not in head]
    for scale in sorted({scales.get(id(p), 1.0) for p in body}):
        layer = [p for p in body if scales.get(id(p), 1.0) == scale]
        groups.append({"params": [p for p in layer if p.ndim >= 2], "lr": cfg.lr * scale})
        groups.append(
            {"params": [p for p in layer if p.ndim < 2], "lr": cfg.lr * scale, "weight_decay": 0.0}
        )
    for group in groups:
        group["base_lr"] = group["lr"]
    return [g for g in groups if g["params"]]


def layer_scales(model: nn.Module, decay: float, head: set[int]) -> dict[int, float]:
    """Each body parameter's learning-rate scale under layer-wise decay (as timm's and BEiT's
    ``layer_decay``): 1 for the layer next to the head, ``decay`` for the one before, and so
    on down to the stem; empty when ``decay`` is 0 (off)."""
    if not decay:
        return {}
    named = [(name, p) for name, p in model.named_parameters() if id(p) not in head]
    layers = _layer_ids(model, named)  # timm's give the head a layer too: it is not the last
    last = max((layers[name] for name, _ in named), default=0)
    return {id(p): decay ** (last - layers[name]) for name, p in named}


def _layer_ids(model: nn.Module, named: list[tuple[str, nn.Parameter]]) -> dict[str, int]:
    """Parameter name -> layer, counted from the input: timm's own grouping of its models'
    blocks, else a new layer at each weight matrix or filter bank (its bias and the norm
    after it belong to it)."""
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        return group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    layers, layer = {}, -1
    for name, p in named:
        layer += p.ndim >= 2
        layers[name] = max(layer, 0)
    return layers


def _head_params(model: nn.Module) -> set[int]:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    return {id(p) for m in last for p in m.parameters()}


def flatten_filters(model: nn.Module) -> list[nn.Parameter]:
    """Reparametrise every trainable conv filter as a 2-D matrix (out, in*k*k), as
    torch.optim.Muon requires; returns those matrices."""
    for conv in [m for m in model.modules() if isinstance(m, nn.Conv2d)]:
        if conv.weight.requires_grad:
            parametrize.register_parametrization(conv, "weight", _Unflatten(conv.weight.shape))
    return [
        p for n, p in model.named_parameters() if n.endswith("parametrizations.weight.original")
    ]


def unflatten_filters(model: nn.Module) -> None:
    """Back to plain conv weights, so checkpoints load into a plain model."""
    for conv in [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]:
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)


class _Unflatten(nn.Module):
    def __init__(self, shape: torch.Size):
        super().__init__()
        self.shape = shape

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(len(weight), -1)


def _renormalize_filters(optimizer: torch.optim.Optimizer, *_) -> None:
    # As airbench does: Muon's updates have a fixed size, so fixing each filter bank's norm
    # keeps the effective step size constant (batch norm makes the scale irrelevant otherwise).
    group = optimizer.param_groups[0]
    if not group["lr"]:  # frozen (optim.freeze): the filters stay as they are
        return
    with torch.no_grad():
        for p in group["params"]:
            p.mul_(len(p) ** 0.5 / p.norm())


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """The update rules named in the config: SGD, Nesterov-SGD, Adam, RMSProp (the seed's), or
    Muon for conv filters with SGD-Nesterov for the rest."""
    optimizers = []
    if cfg.name == "muon":
        muon = torch.optim.Muon(
            flatten_filters(model),
            lr=cfg.muon_lr,
            momentum=cfg.muon_momentum,
            weight_decay=0.0,
            ns_steps=3,  # airbench: three Newton-Schulz iterations are enough, and faster
        )
        muon.param_groups[0]["base_lr"] = cfg.muon_lr
        muon.register_step_pre_hook(_renormalize_filters)
        optimizers.append(muon)
    taken = {id(p) for o in optimizers for g in o.param_groups for p in g["params"]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    head = _head_params(model)
    groups = param_groups(params, cfg, head, layer_scales(model, cfg.layer_decay, head))
    if cfg.name in ("sgd", "nesterov", "muon"):
        nesterov = cfg.name != "sgd"
        optimizers.append(
            torch.optim.SGD(
                groups,
                lr=cfg.lr,
                momentum=cfg.momentum,
                nesterov=nesterov,
                weight_decay=cfg.weight_decay,
            )
        )
    elif cfg.name == "adam":
        optimizers.append(torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
    elif cfg.name == "adamw":  # decoupled weight decay (what fine-tuning recipes use)
        optimizers.append(torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
    else:
        optimizers.append(
            torch.optim.RMSprop(
                groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        )
    return optimizers


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``: a pure function."""
    progress = step / max(total, 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "linear":
        return max(0.0, 1 - progress)
    if progress < cfg.warmup:  # onecycle, cosine: linear warm-up, then decay to zero
        return progress / cfg.warmup
    rest = (progress - cfg.warmup) / (1 - cfg.warmup)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(rest, 1.0)))
    return max(0.0, 1 - rest)


def body_frozen(step: int, total: int, cfg: OptimConfig) -> bool:
    """Whether ``step`` falls in the first ``optim.freeze`` of the steps (only the head learns)."""
    return step < cfg.freeze * total
