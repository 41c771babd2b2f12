"""The model registry: ``@register_model``, ``create_model(name, ...)``, ``list_models()``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import torch
from torch import nn

from blitz.config.checks import MAX_IMAGE_SIZE, check_range, check_type, check_value
from blitz.errors import BlitzError, did_you_mean
from blitz.models.timm_models import (
    INSTALL,
    PREFIX,
    Preprocessing,
    check_timm_name,
    timm_factory,
    timm_preprocessing,
)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
BUILT_IN = ("num_classes", "in_channels")  # every factory's arguments, not options
# Channels in any layer: more is a typo, and would exhaust memory before any clearer error.
MAX_CHANNELS = 4096


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory ``fn(num_classes, in_channels, **options)`` under its name.

    Options are the factory's other keyword arguments: their annotations are checked (as the
    settings' are) before it runs, and it checks their ranges with ``check_range``. The first line
    of its docstring says what the model is for (``blitz models`` prints it)."""
    _REGISTRY[fn.__name__.replace("_", "-")] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _choices() -> str:
    return ", ".join(list_models()) + f", or {PREFIX}NAME for any of timm's models ({INSTALL})"


def check_model_name(name: str) -> None:
    """A BlitzError naming ``--model`` unless ``name`` is registered or one of timm's
    (``timm:resnet18``): these are checked against timm's own list."""
    if name.startswith(PREFIX):
        check_timm_name(name.removeprefix(PREFIX))
    else:
        expected = "one of " + _choices() + did_you_mean(name, _REGISTRY)
        check_value(name in _REGISTRY, "model.name", name, expected)


def _factory(name: str) -> Callable[..., nn.Module]:
    if name.startswith(PREFIX):
        return timm_factory(name.removeprefix(PREFIX))
    if name not in _REGISTRY:
        raise BlitzError(f"unknown model {name!r}: choose one of " + _choices())
    return _REGISTRY[name]


def model_preprocessing(name: str) -> Preprocessing | None:
    """The input size, mean and std a timm model was pretrained with; None for blitz's own
    models (trained from scratch: the data's statistics serve)."""
    check_model_name(name)
    return timm_preprocessing(name.removeprefix(PREFIX)) if name.startswith(PREFIX) else None


def model_summary(name: str) -> str:
    """What the model ``name`` is for: the first line of its factory's docstring."""
    return (inspect.getdoc(_factory(name)) or "").partition("\n")[0]


def option_defaults(name: str) -> dict[str, Any]:
    """The options the model ``name`` declares (its factory's keyword arguments), with defaults."""
    params = inspect.signature(_factory(name)).parameters.values()
    return {
        p.name: p.default for p in params if p.name not in BUILT_IN and p.kind is not p.VAR_KEYWORD
    }


def model_options(name: str) -> list[str] | None:
    """The options the model ``name`` takes (its factory's keyword arguments); None: any."""
    params = inspect.signature(_factory(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return list(option_defaults(name))


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options, converted to their annotations; a BlitzError names any unknown option (and
    lists those the model takes) or any value of the wrong type."""
    accepted = model_options(name)
    unknown = [key for key in options if accepted is not None and key not in accepted]
    if unknown:
        takes = "takes " + ", ".join(accepted) if accepted else "takes no options"
        raise BlitzError(
            f"unknown option {unknown[0]!r} (model.options.{unknown[0]}) for model {name!r}: "
            f"{name} {takes}"
        )
    hints = get_type_hints(_factory(name))
    return {
        key: check_type(f"model.options.{key}", value, hints.get(key, Any))
        for key, value in options.items()
    }


def check_widths(widths: tuple[int, ...]) -> None:
    """Channels of each stage: at least one stage, each in [1, MAX_CHANNELS]."""
    check_value(
        len(widths) > 0, "model.options.widths", list(widths), "a non-empty list of integers"
    )
    for width in widths:
        check_range("model.options.widths", width, 1, MAX_CHANNELS)


def check_channels(value: object, key: str) -> None:
    """A model's input channels: an integer in [1, MAX_CHANNELS] (``key`` names the option)."""
    check_range(key, check_type(key, value, int), 1, MAX_CHANNELS)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, **options: object
) -> nn.Module:
    """Build a registered model; unknown names, options or bad values give a clear BlitzError."""
    factory, options = _factory(name), check_options(name, options)
    check_range("num_classes", check_type("num_classes", num_classes, int), 1)
    check_channels(in_channels, "in_channels")
    return factory(num_classes=num_classes, in_channels=in_channels, **options)


def check_input_size(model: nn.Module, name: str, channels: int, size: int) -> None:
    """Fail early, and clearly, if the model cannot take images of this size (LeNet's linear
    layers are sized for the seed's 32 x 32), naming the sizes it takes."""
    if failure := _failure(model, channels, size):
        raise BlitzError(
            f"model {name!r} cannot take {size}x{size} images ({failure}): it takes "
            f"{_sizes_taken(model, channels)}; choose --image-size among them, or another "
            "model (blitz models lists the sizes each takes)"
        )


def _failure(model: nn.Module, channels: int, size: int) -> str | None:
    """Why two blank images of ``size`` do not go through the model (its error's first line);
    None if they do."""
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, channels, size, size, device=device))
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    finally:
        model.train(was_training)
    return None


def count_parameters(model: nn.Module) -> int:
    """How many values the model holds in its parameters, frozen ones included."""
    return sum(p.numel() for p in model.parameters())


def input_sizes(model: nn.Module, channels: int) -> tuple[int, int | None]:
    """The smallest and largest side of the square images the model takes (None: no largest).

    Found by trying sides. A model that takes twice its smallest side pools globally; fixed
    linear layers (LeNet's) take only the few sides that pool to theirs."""
    takes = functools.partial(_takes, model, channels)
    smallest = next(size for size in range(1, MAX_IMAGE_SIZE + 1) if takes(size))
    larger = range(smallest + 1, 2 * smallest + 1)
    return smallest, next((size - 1 for size in larger if not takes(size)), None)


def _takes(model: nn.Module, channels: int, size: int) -> bool:
    return _failure(model, channels, size) is None


def _sizes_taken(model: nn.Module, channels: int) -> str:
    """The sides ``input_sizes`` finds, in words: "32 to 35 pixels", "8 pixels or more"."""
    smallest, largest = input_sizes(model, channels)
    if largest is None:
        return f"{smallest} pixels or more"
    return f"{smallest} pixels" if largest == smallest else f"{smallest} to {largest} pixels"


# Explicit imports register each family (no star-import magic).
from blitz.models import airbench, convnet, lenet  # noqa: E402,F401
