"""The model registry: ``@register_model``, ``create_model(name, ...)``, ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from blitz.errors import BlitzError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory ``fn(num_classes, in_channels, **options)`` under its name."""
    _REGISTRY[fn.__name__.replace("_", "-")] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, **options: object
) -> nn.Module:
    """Build a registered model; unknown names or options give a clear BlitzError."""
    if name not in _REGISTRY:
        raise BlitzError(f"unknown model {name!r}: choose one of " + ", ".join(list_models()))
    try:
        return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **options)
    except TypeError as exc:
        raise BlitzError(f"invalid options {options} for model {name!r}: {exc}") from None


def check_input_size(model: nn.Module, name: str, channels: int, size: int) -> None:
    """Fail early, and clearly, if the model cannot take images of this size (LeNet's linear
    layers are sized for the seed's 32 x 32)."""
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, channels, size, size, device=device))
    except RuntimeError as exc:
        raise BlitzError(
            f"model {name!r} cannot take {size}x{size} images ({str(exc).splitlines()[0]}): "
            "use the image size it is built for (--image-size 32 for lenet) or a model that "
            "pools globally (convnet, airbench)"
        ) from None
    finally:
        model.train(was_training)


# Explicit imports register each family (no star-import magic).
from blitz.models import airbench, convnet, lenet  # noqa: E402,F401
