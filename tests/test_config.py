import dataclasses
from typing import Literal, get_args, get_origin, get_type_hints

import pytest

from blitz.config.checks import FLAGS
from blitz.config.loading import list_presets, parse_value
from blitz.config.settings import SECTIONS
from blitz.errors import BlitzError
from blitz.models.configs import build_config, config_from_dict


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
    overrides = {"optim.lr": 0.1, "train.epochs": 3, "model.name": "convnet"}
    cfg = build_config("seed", {**overrides, "model.options.depth": 2})
    assert cfg.optim.lr == 0.1 and cfg.train.epochs == 3
    assert cfg.model.options == {"depth": 2}
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


def test_another_model_does_not_inherit_the_presets_model_options():
    options = {"widths": [16, 16, 64], "whiten": True}
    assert build_config("fast-cpu").model.options == options
    assert build_config("fast-cpu", {"model.name": "lenet"}).model.options == {}
    assert build_config("fast-cpu", {"model.name": "convnet"}).model.options == options
    mine = {"model.name": "convnet", "model.options.widths": [4, 4, 4]}
    assert build_config("seed", mine).model.options == {"widths": [4, 4, 4]}


def test_a_presets_low_res_goes_with_its_model_and_image_size():
    base = build_config("seed", {"model.name": "convnet", "data.low_res": 24}).data
    assert base.low_res == 24  # set explicitly: kept
    raw = {"model": {"name": "convnet"}, "data": {"low_res": 16}}  # a preset's, or --config's
    assert build_config("seed", base=raw).data.low_res == 16
    assert build_config("seed", {"model.name": "airbench"}, base=raw).data.low_res == 0
    assert build_config("seed", {"data.image_size": 64}, base=raw).data.low_res == 0
    both = {"data.image_size": 64, "data.low_res": 48}
    assert build_config("seed", both, base=raw).data.low_res == 48
    assert raw == {"model": {"name": "convnet"}, "data": {"low_res": 16}}  # left as it was


def test_explicit_epochs_are_obeyed_whole_not_cut_by_the_presets_step_cap():
    assert build_config("fast-cpu").train.max_steps == 150
    assert build_config("fast-cpu", {"train.epochs": 3}).train.max_steps == 0
    both = {"train.epochs": 3, "train.max_steps": 50}
    assert build_config("fast-cpu", both).train.max_steps == 50


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
        ({"model.options.width": 8}, "unknown option 'width'.*lenet takes no options"),
        ({"train.epochs.x": 1}, "epochs is not a table"),
    ],
)
def test_bad_values_name_the_option(overrides, message):
    with pytest.raises(BlitzError, match=message):
        build_config("seed", overrides)


# (setting, value, what the message says is expected): each as `--set KEY=VALUE` would give it
BAD_SETTINGS = [
    ("train.epochs", 2.5, "an integer"),
    ("train.epochs", True, "an integer"),
    ("train.epochs", 10**7, "an integer in [1, 1000000]"),
    ("train.batch_size", 64.0, "an integer"),
    ("train.batch_size", 2**21, "an integer in [1, 1048576]"),
    ("train.max_steps", 1.5, "an integer"),
    ("train.max_steps", -1, "an integer >= 0"),
    ("train.eval_batch_size", 0, "an integer in [1, 1048576]"),
    ("train.seed", 10**23, "an integer in [0, 9223372036854775807]"),
    ("train.seed", -1, "an integer in [0, 9223372036854775807]"),
    ("train.tensorboard", 1, "true or false"),
    ("train.precision", "fp8", "fp32 | bf16 | fp16 | auto"),
    ("train.device", "tpu", "auto | cpu | cuda | mps"),
    ("train.tta", "rotate", "none | flip | translate | flip-translate"),
    ("train.checkpoint_minutes", "often", "a finite number"),
    ("data.image_size", 32.5, "an integer"),
    ("data.image_size", 5000, "an integer in [8, 4096]"),
    ("data.image_size", 4, "an integer in [8, 4096]"),
    ("data.translate", 100000, "an integer in [0, 16]"),
    ("data.translate", -1, "an integer in [0, 16]"),
    ("data.cutout", 33, "an integer in [0, 32]"),
    ("data.low_res", 40, "an integer in [8, 32]"),
    ("data.low_res", 4, "an integer in [8, 32]"),
    ("data.low_res_until", 1.5, "a number in [0, 1]"),
    ("data.mean", "abc", "a list of numbers"),
    ("data.mean", [0.5, "a", 0.5], "a list of numbers"),
    ("data.mean", [0.5, 0.5], "as many values as data.std"),
    ("data.std", [], "a non-empty list of numbers > 0"),
    ("data.std", [0.5, 0, 0.5], "a non-empty list of numbers > 0"),
    ("data.flip", "sideways", "none | random | alternate"),
    ("data.source", 3, "a string"),
    ("data.source", "data\0x", "no NUL character"),  # a settings file's "\u0000"
    ("train.init", "run\0", "no NUL character"),
    ("data.skip_bad_images", "yes", "true or false"),
    ("data.workers", True, "an integer or auto"),
    ("data.workers", "-2", "an integer or auto"),
    ("data.workers", -2, "an integer >= 0"),
    ("data.max_memory", "lots", "auto, or a size"),
    ("optim.lr", "abc", "a finite number"),
    ("optim.lr", True, "a finite number"),
    ("optim.lr", float("inf"), "a finite number"),
    ("optim.lr", 0, "a number > 0"),
    ("optim.momentum", 1, "a number in [0, 1)"),
    ("optim.name", "adamw2", "sgd | nesterov | adam | adamw | rmsprop | muon"),
    ("optim.loss", "hinge", "cross-entropy | mse"),
    ("optim.reduction", "max", "mean | sum"),
    ("optim.schedule", "cos", "constant | onecycle | linear | cosine"),
    ("optim.warmup", 1.5, "a fraction in [0, 1)"),
    ("model.options", 5, "a table of settings"),
    ("model.name", 5, "a string"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_SETTINGS)
def test_bad_settings_name_the_option_and_what_it_expects(key, value, expected):
    with pytest.raises(BlitzError) as error:
        build_config("seed", {key: value})
    message = str(error.value)
    assert (
        message.startswith("invalid value")
        and key in message
        and ("expected " + expected) in message
    )
    if key in FLAGS:  # the flag too, for who typed that
        assert f"{FLAGS[key]} ({key})" in message


def _wrong_values(hint):
    """Values of the wrong type for a setting of this annotation."""
    origin = get_origin(hint)
    if origin is Literal:
        return ["no-such-choice", 1]
    if origin is tuple:
        return ["abc", [True], 1.0]
    if origin is dict:
        return [5, "abc"]
    wrong = {int: [2.5, 64.0, True, "3x"], float: ["abc", True, float("nan")], bool: [1, "yes"]}
    wrong[str] = [3, True, 1.5, None]
    return wrong.get(hint, [1.5, None])  # int | str, bool | "auto", ...: none of their arms


SETTINGS = [
    (f"{section}.{name}", hint)
    for section, cls in SECTIONS.items()
    for name, hint in get_type_hints(cls).items()
    if name in {f.name for f in dataclasses.fields(cls)}  # settings, not attributes
]


@pytest.mark.parametrize(("key", "hint"), SETTINGS, ids=[key for key, _ in SETTINGS])
def test_every_setting_refuses_values_of_the_wrong_type(key, hint):
    for value in _wrong_values(hint):
        with pytest.raises(BlitzError, match=f"invalid value .* for .*{key}.*: expected"):
            build_config("seed", {key: value})


@pytest.mark.parametrize(
    ("key", "hint"),
    [(key, hint) for key, hint in SETTINGS if get_origin(hint) is Literal],
    ids=[key for key, hint in SETTINGS if get_origin(hint) is Literal],
)
def test_every_choice_of_a_literal_setting_is_accepted(key, hint):
    section, name = key.split(".")
    extra = {"optim.momentum": 0.9}  # nesterov and muon need momentum > 0: the seed's is
    for choice in get_args(hint):
        cfg = build_config("seed", {**extra, key: choice})
        assert getattr(getattr(cfg, section), name) == choice


def test_good_values_of_every_type_pass_and_are_normalised():
    cfg = build_config(
        "seed",
        {
            "optim.lr": 1,  # an int for a float
            "optim.weight_decay": 0,
            "train.checkpoint_minutes": 5,
            "data.mean": [0, 1, 0.5],  # lists for tuples, ints among them
            "data.std": (1, 2, 3),
            "data.workers": "3",  # --workers gives a string
            "data.max_memory": 0,  # TOML's max_memory = 0
            "data.translate": 16,  # the largest allowed for 32x32 images
            "data.cutout": 32,
            "train.seed": 2**63 - 1,
            "train.epochs": 10**6,
            "train.tensorboard": True,
            "model.name": "convnet",
            "model.options.widths": [4, 8],
        },
    )
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert type(cfg.optim.weight_decay) is float and type(cfg.train.checkpoint_minutes) is float
    assert cfg.data.mean == (0.0, 1.0, 0.5) and all(type(m) is float for m in cfg.data.mean)
    assert cfg.data.std == (1.0, 2.0, 3.0)
    assert cfg.data.workers == 3 and cfg.data.max_memory == "0"
    assert cfg.train.seed == 2**63 - 1 and cfg.train.tensorboard is True
    assert cfg.model.options == {"widths": [4, 8]}
    assert config_from_dict(cfg.to_dict()) == cfg  # normalised values survive a round trip


def test_a_section_that_is_not_a_table_is_refused():
    with pytest.raises(BlitzError, match="invalid value 5 for train: expected a table"):
        config_from_dict({"train": 5})


def test_every_flag_named_in_errors_is_an_option_of_blitz_train():
    from blitz.cli import build_parser

    parser = build_parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    assert set(FLAGS.values()) <= set(train._option_string_actions)


def test_the_choice_constants_come_from_the_annotations():
    from blitz.config.settings import DEVICES, LOSSES, OPTIMIZERS, PRECISIONS

    hints = {cls: get_type_hints(cls) for cls in SECTIONS.values()}
    optim, train = hints[SECTIONS["optim"]], hints[SECTIONS["train"]]
    assert get_args(optim["name"]) == OPTIMIZERS and get_args(optim["loss"]) == LOSSES
    assert get_args(train["device"]) == DEVICES and get_args(train["precision"]) == PRECISIONS
    assert "fp16" in PRECISIONS


def test_unknown_preset_lists_the_presets():
    with pytest.raises(BlitzError, match="unknown preset 'sede'.*seed"):
        build_config("sede")


def test_parse_value_reads_toml_scalars():
    assert parse_value("3") == 3
    assert parse_value("5e-4") == 5e-4
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("cifar10") == "cifar10"


def test_settings_cannot_change_once_built():
    cfg = build_config("seed", {"train.epochs": 3})
    for section, key in [(cfg.train, "epochs"), (cfg.data, "source"), (cfg, "preset")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, key, 1)
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=4))
    assert (changed.train.epochs, cfg.train.epochs) == (4, 3)  # a new Config, checked again
