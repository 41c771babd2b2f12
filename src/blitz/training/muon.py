"""Muon with one Newton-Schulz per stack of same-shaped filter banks (``optim.muon_batched``).

torch.optim.Muon orthogonalises each matrix on its own: per step, a dozen matrix products per
filter bank, each its own kernel launch, which leaves a GPU waiting on small nets. Stacked, the
banks of one shape share each product (a batched matrix multiply), as the Hiverge
cifar10-speedrun's record did. The maths is torch.optim.Muon's, matrix by matrix: the same
momentum, Nesterov look-ahead, Newton-Schulz iteration (in bf16, as torch's), learning-rate
adjustment and decoupled weight decay. Its state (a ``momentum_buffer`` per matrix) and its
groups are torch's, so checkpoints move between the two.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon, each group's matrices of one shape updated as one stack."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            shapes: dict[torch.Size, list[torch.Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    shapes[p.shape].append(p)
            for params in shapes.values():
                self._stack_step(group, params)
        return loss

    def _stack_step(self, group: dict, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]  # all are: step() chose them
        buffers = [
            self.state[p].setdefault(
                "momentum_buffer", torch.zeros_like(g, memory_format=torch.preserve_format)
            )
            for p, g in zip(params, grads)
        ]
        grad, buffer = torch.stack(grads), torch.stack(buffers)
        momentum, lr, weight_decay = group["momentum"], group["lr"], group["weight_decay"]
        buffer.lerp_(grad, 1 - momentum)
        torch._foreach_copy_(buffers, list(buffer.unbind(0)))
        update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
        update = newton_schulz(
            update,
            group["ns_coefficients"],
            group["ns_steps"],
            group["eps"],
            group.get("use_addmm", True),  # an option of some torch versions (off there)
        )
        adjusted = lr * _lr_ratio(group["adjust_lr_fn"], params[0].shape)
        if weight_decay:  # torch's multiplies by 1 always; skipping a 1 changes nothing
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        for p, u in zip(params, update.unbind(0)):
            p.add_(u, alpha=-adjusted)


def newton_schulz(
    stack: torch.Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    fused: bool = True,
) -> torch.Tensor:
    """torch.optim.Muon's orthogonalisation (quintic Newton-Schulz in bf16) of each matrix of
    a stack (K, A, B) at once; ``fused``: its products with their sums in one call (addmm), as
    torch does (or, where its ``use_addmm`` is off, apart: the same maths, rounded apart)."""
    a, b, c = coefficients
    x = stack.bfloat16()
    tall = stack.size(-2) > stack.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norms <= 1
    for _ in range(steps):
        gram = x @ x.mT
        if fused:
            gram = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.baddbmm(x, gram, x, beta=a)
        else:
            gram = b * gram + c * gram @ gram
            x = a * x + gram @ x
    return x.mT if tall else x


def _lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's scale of the rate for a matrix of ``shape`` (its ``_adjust_lr``)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "spectral_unclamped":
        return math.sqrt(rows / cols)
    return 1.0
