"""``blitz models``: the model registry, with sizes, options and what each is for."""

from __future__ import annotations

import argparse

from blitz.cli.options import wrap


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help="list the models: size, image sizes, options, what each is for")


def main(args: argparse.Namespace) -> None:
    from blitz.models import list_models

    print(f"{'model':<10}{'parameters':>11}{'per class':>11}  {'image sizes':<13}options")
    for name in list_models():
        print(_model_row(name))
    note = (
        "parameters: with 10 classes and 3 input channels; the classifier head holds 'per class' "
        "more for each further class. image sizes: the sides (--image-size) a model takes. "
        "options: change one with --set model.options.NAME=VALUE. timm:NAME: any of timm's "
        "models (pip install 'blitz[timm]'; list them with "
        "python -c \"import timm; print(timm.list_models('resnet*'))\"), e.g. --model "
        "timm:resnet18, at its pretrained input size; --pretrained starts it from timm's "
        "weights (fetched once), --pretrained FILE from a weights file; --preset finetune "
        "does it all."
    )
    print("\n" + wrap(note, ""))


def _model_row(name: str) -> str:
    """Two lines: the model's facts, then what it is for."""
    from blitz.models import (
        count_parameters,
        create_model,
        input_sizes,
        model_summary,
        option_defaults,
    )

    model = create_model(name, num_classes=10, in_channels=3)
    count = count_parameters(model)
    per_class = count_parameters(create_model(name, num_classes=11, in_channels=3)) - count
    smallest, largest = input_sizes(model, name, 3)
    sizes = f">= {smallest}" if largest is None else f"{smallest} to {largest}"
    options = [f"{key}={_toml(value)}" for key, value in option_defaults(name).items()]
    facts = f"{name:<10}{count:>11,}{per_class:>11,}  {sizes:<13}{' '.join(options) or 'none'}"
    return facts + "\n" + wrap(" " * 10 + model_summary(name), " " * 10)


def _toml(value: object) -> str:
    """A default as --set takes it: tuples as lists."""
    return str(list(value)) if isinstance(value, tuple) else str(value)
