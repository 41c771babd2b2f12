"""`blitz models` and `blitz presets` as a user sees them: every registered model and preset."""

import itertools

import pytest
from torch import nn

from blitz.config.loading import list_presets
from blitz.config.settings import UNMIRRORED
from blitz.errors import BlitzError
from blitz.models import check_input_size, create_model, list_models, model_options
from blitz.models.configs import build_config
from conftest import run_blitz

PRESETS = sorted(list_presets())


@pytest.fixture(scope="module")
def models_output() -> str:
    return run_blitz("models").stdout


@pytest.fixture(scope="module")
def presets_output() -> str:
    return run_blitz("presets").stdout


def entry(output: str, name: str) -> list[str]:
    """The lines listing ``name``: the one it starts, then the indented ones under it."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [name])
    rest = itertools.takewhile(lambda line: line.startswith(" "), lines[start + 1 :])
    return [lines[start], *rest]


def takes(model: nn.Module, name: str, size: int) -> bool:
    try:
        check_input_size(model, name, 3, size)
    except BlitzError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_is_listed_with_a_fresh_parameter_count(models_output, name):
    *facts, purpose = entry(models_output, name)  # the options may go on under their column
    row = " ".join(facts)
    model = create_model(name, num_classes=10, in_channels=3)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    per_class = head.in_features + (head.bias is not None)
    count = sum(p.numel() for p in model.parameters())
    assert row.split()[1:3] == [f"{count:,}", f"{per_class:,}"]
    assert all(f" {option}=" in row for option in model_options(name))
    assert purpose.strip()


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_the_listed_image_sizes_are_the_ones_the_model_takes(models_output, name):
    sizes = entry(models_output, name)[0].split()[3:6]
    model = create_model(name)
    if sizes[0] == ">=":
        smallest, largest = int(sizes[1]), None
    else:
        assert sizes[1] == "to"
        smallest, largest = int(sizes[0]), int(sizes[2])
        assert takes(model, name, largest) and not takes(model, name, largest + 1)
    assert takes(model, name, smallest) and not takes(model, name, smallest - 1)
    assert largest is not None or takes(model, name, 3 * smallest + 5)


@pytest.mark.slow
def test_lenet_takes_only_the_seeds_size_give_or_take_pooling(models_output):
    assert entry(models_output, "lenet")[0].split()[3:6] == ["32", "to", "35"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_says_what_data_its_mirroring_suits(presets_output, preset):
    text = " ".join(" ".join(entry(presets_output, preset)).split())
    assert list_presets()[preset] in text
    cfg = build_config(preset)
    flip, tta = cfg.data.flip, cfg.train.tta
    if flip == "none" and tta not in UNMIRRORED:
        assert "no mirroring" in text and "--set" not in text
    else:
        assert "wrong for digits and text" in text
    if flip != "none":
        assert f"data.flip={flip}" in text and "--set data.flip=none" in text
    if tta in UNMIRRORED:
        assert f"train.tta={tta}" in text and f"--set train.tta={UNMIRRORED[tta]}" in text


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_the_advice_to_stop_mirroring_works(presets_output, preset):
    words = " ".join(entry(presets_output, preset)).split()
    overrides = dict(words[i + 1].split("=") for i, word in enumerate(words) if word == "--set")
    tta = build_config(preset).train.tta
    cfg = build_config(preset, overrides)
    assert cfg.data.flip == "none" and cfg.train.tta == UNMIRRORED.get(tta, tta)  # shifts kept


@pytest.mark.slow
def test_both_listings_fit_in_100_columns(models_output, presets_output):
    assert max(map(len, (models_output + presets_output).splitlines())) <= 100
