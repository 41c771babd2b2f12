"""Update rules and learning-rate schedules: torch.optim's, with Muon for conv filters."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from blitz.config.settings import OptimConfig
from blitz.training.muon import BatchedMuon


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
    # getattr: Module's own __getattr__ would type it a Tensor or Module, not a method
    if (group_matcher := getattr(model, "group_matcher", None)) is not None:
        from timm.models import group_parameters

        return group_parameters(model, group_matcher(coarse=False), reverse=True)
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
    # Frozen (optim.freeze: a rate of 0), the filters stay as they are.
    lr = optimizer.param_groups[0]["lr"]
    on_device = isinstance(lr, torch.Tensor)  # CompiledStep's: read there, no sync, no branch
    if not on_device and not lr:
        return
    with torch.no_grad():
        for p in optimizer.param_groups[0]["params"]:
            scale = len(p) ** 0.5 / p.norm()
            p.mul_(torch.where(lr == 0, 1.0, scale) if on_device else scale)


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """The update rules named in the config: SGD, Nesterov-SGD, Adam, RMSProp (the seed's), or
    Muon for conv filters with SGD-Nesterov for the rest."""
    optimizers: list[torch.optim.Optimizer] = []
    if cfg.name == "muon":
        muon = (BatchedMuon if cfg.muon_batched else torch.optim.Muon)(
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


def stepper(
    optimizers: list[torch.optim.Optimizer], scaler: torch.amp.GradScaler, compiled: bool
) -> Callable[[], None]:
    """What takes one step of every optimizer: through fp16's loss scaler (which skips a step
    whose gradients overflowed), or directly, Muon's compiled with ``train.compile``."""
    steps: list[Callable[[], object]]
    if scaler.is_enabled():
        steps = [functools.partial(scaler.step, o) for o in optimizers]
    else:
        steps = [
            CompiledStep(o) if compiled and isinstance(o, torch.optim.Muon) else o.step
            for o in optimizers
        ]

    def step() -> None:
        for one in steps:
            one()

    return step


class CompiledStep:
    """Muon's step, compiled. Eager, it launches a dozen small kernels per filter bank from
    Python (its Newton-Schulz iterations), which leaves a GPU waiting; compiled, they fuse into
    a few. The graph reads each group's learning rate from a tensor on the device, so that the
    schedule's next rate reuses it rather than compiling it again (outside the call the groups
    hold plain floats: logs, checkpoints). It also holds on to the momentum buffers it first
    saw: they are made now, as zeros (what Muon's first step makes), and a state loaded later
    is copied into them (``load_in_place``) rather than replacing them."""

    def __init__(self, optimizer: torch.optim.Muon):
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
        device = optimizer.param_groups[0]["params"][0].device
        self.rates = [torch.zeros((), device=device) for _ in optimizer.param_groups]
        self.optimizer = optimizer
        self._compiled = torch.compile(optimizer.step)
        # torch.optim names its step for the profiler; compiled, dynamo warns that it drops the name
        logging.getLogger("torch._dynamo.variables.ctx_manager").addFilter(_no_profiler_name_note)

    def __call__(self) -> None:
        groups = self.optimizer.param_groups  # load_state_dict replaces the list
        floats = [group["lr"] for group in groups]
        for group, rate, value in zip(groups, self.rates, floats):
            rate.fill_(value)
            group["lr"] = rate
        try:
            self._compiled()
        finally:
            for group, value in zip(groups, floats):
                group["lr"] = value


def _no_profiler_name_note(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Profiler record function")


def load_in_place(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict(saved)``, keeping its state's tensors (with the saved
    values copied into them) where their shapes agree: a compiled step holds on to them."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    live = [dict(optimizer.state.get(p, {})) for p in params]
    optimizer.load_state_dict(saved)
    for p, old in zip(params, live):
        state = optimizer.state.get(p, {})
        for key, value in state.items():
            kept = old.get(key)
            if isinstance(kept, torch.Tensor) and kept.shape == value.shape:
                state[key] = kept.copy_(value)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``: a pure function."""
    progress = step / max(total, 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "linear":
        return max(0.0, 1 - progress)
    if progress < cfg.warmup:  # onecycle, cosine: linear warm-up, then decay to zero
        # from the first step's share of it, not 0: a step at rate 0 would be lost (all of an
        # --epochs 1 run on fewer images than a batch)
        return min(1.0, (step + 1) / (cfg.warmup * total))
    rest = (progress - cfg.warmup) / (1 - cfg.warmup)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(rest, 1.0)))
    return max(0.0, 1 - rest)


def body_frozen(step: int, total: int, cfg: OptimConfig) -> bool:
    """Whether ``step`` falls in the first ``optim.freeze`` of the steps (only the head learns)."""
    return step < cfg.freeze * total
