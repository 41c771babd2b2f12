"""The model registry: ``@register_model``, ``create_model(name, ...)``, ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable

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


# Explicit imports register each family (no star-import magic).
from blitz.models import airbench, convnet, lenet  # noqa: E402,F401
