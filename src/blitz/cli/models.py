"""``blitz models``: the model registry, with sizes, options and what each is for.

The facts come from ``models.json`` beside this module: computing them builds every model,
which needs torch (seconds to import), and a listing should answer at once. ``current_facts``
computes them from the registry; ``python tests/test_docs.py`` writes the file afresh, and a test
fails when it is stale."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from typing import Any

from blitz.cli.options import wrap

FACTS = "models.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help="list the models: size, image sizes, options, what each is for")


def main(args: argparse.Namespace) -> None:
    facts = json.loads(resources.files(__package__).joinpath(FACTS).read_text(encoding="utf-8"))
    print(f"{'model':<10}{'parameters':>11}{'per class':>11}  {'image sizes':<13}options")
    for model in facts:
        print(_model_row(model))
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


def current_facts() -> list[dict[str, Any]]:
    """Each registered model's facts, from the registry itself (builds every model)."""
    from blitz.models import (
        count_parameters,
        create_model,
        input_sizes,
        list_models,
        model_summary,
        option_defaults,
    )

    facts = []
    for name in list_models():
        model = create_model(name, num_classes=10, in_channels=3)
        count = count_parameters(model)
        per_class = count_parameters(create_model(name, num_classes=11, in_channels=3)) - count
        smallest, largest = input_sizes(model, 3)
        options = {key: _toml(value) for key, value in option_defaults(name).items()}
        facts.append(
            {
                "name": name,
                "parameters": count,
                "per_class": per_class,
                "sizes": [smallest, largest],
                "options": options,
                "summary": model_summary(name),
            }
        )
    return facts


def facts_json() -> str:
    """The text of ``models.json``, as ``current_facts`` finds them."""
    return json.dumps(current_facts(), indent=1) + "\n"


def _model_row(model: dict[str, Any]) -> str:
    """Two lines: the model's facts, then what it is for."""
    smallest, largest = model["sizes"]
    sizes = f">= {smallest}" if largest is None else f"{smallest} to {largest}"
    options = " ".join(f"{key}={value}" for key, value in model["options"].items()) or "none"
    name = model["name"]
    facts = f"{name:<10}{model['parameters']:>11,}{model['per_class']:>11,}  {sizes:<13}{options}"
    under_options = " " * (len(facts) - len(options))  # a long list goes on in its column
    return wrap(facts, under_options) + "\n" + wrap(" " * 10 + model["summary"], " " * 10)


def _toml(value: object) -> str:
    """A default as --set takes it: ``[32,64,128]``, ``true``."""
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)
