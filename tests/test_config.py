import pytest

from blitz.config import build_config, config_from_dict, list_presets, parse_value
from blitz.errors import BlitzError


def test_seed_preset_is_the_seeds_recipe():
    cfg = build_config("seed")
    assert (cfg.model.name, cfg.train.batch_size, cfg.train.epochs) == ("lenet", 4, 2)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.001, 0.9)
    assert cfg.optim.loss == "cross-entropy"
    assert cfg.data.mean == (0.5, 0.5, 0.5) and cfg.data.std == (0.5, 0.5, 0.5)
    assert cfg.train.log_every == 2000


def test_every_preset_loads_and_has_a_description():
    for name, description in list_presets().items():
        assert description
        assert build_config(name).preset == name


def test_overrides_and_round_trip():
    cfg = build_config("seed", {"optim.lr": 0.1, "train.epochs": 3, "model.options.width": 8})
    assert cfg.optim.lr == 0.1 and cfg.train.epochs == 3
    assert cfg.model.options == {"width": 8}
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


def test_another_model_does_not_inherit_the_presets_model_options():
    assert build_config("fast-cpu").model.options == {"widths": [8, 16, 32]}
    assert build_config("fast-cpu", {"model.name": "lenet"}).model.options == {}
    assert build_config("fast-cpu", {"model.name": "convnet"}).model.options == {
        "widths": [8, 16, 32]
    }
    mine = {"model.name": "convnet", "model.options.widths": [4, 4, 4]}
    assert build_config("seed", mine).model.options == {"widths": [4, 4, 4]}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lr": -1.0}, "--lr"),
        ({"train.batch_size": 0}, "--batch-size"),
        ({"optim.name": "adamw2"}, "--optimizer"),
        ({"train.epochs": 0}, "--epochs"),
        ({"optim.lrr": 0.1}, "unknown setting optim.lrr"),
        ({"nonsense.key": 1}, "SECTION.KEY"),
        ({"optim.lr": "fast"}, "invalid"),
    ],
)
def test_bad_values_name_the_option(overrides, message):
    with pytest.raises(BlitzError, match=message):
        build_config("seed", overrides)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(BlitzError, match="unknown preset 'sede'.*seed"):
        build_config("sede")


def test_parse_value_reads_toml_scalars():
    assert parse_value("3") == 3
    assert parse_value("5e-4") == 5e-4
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("cifar10") == "cifar10"
