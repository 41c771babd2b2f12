import pytest
import torch

from blitz.errors import BlitzError
from blitz.models import _REGISTRY, create_model, list_models, model_options

SEED_PRINT = """Net(
  (conv1): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1))
  (conv2): Conv2d(6, 16, kernel_size=(5, 5), stride=(1, 1))
  (fc1): Linear(in_features=400, out_features=120, bias=True)
  (fc2): Linear(in_features=120, out_features=84, bias=True)
  (fc3): Linear(in_features=84, out_features=10, bias=True)
)"""


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_backward_shapes(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=in_channels)
    x = torch.randn(5, in_channels, 32, 32)
    out = model(x)
    assert out.shape == (5, 7)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_lenet_is_the_seeds_network():
    net = create_model("lenet", num_classes=10, in_channels=1)
    assert str(net) == SEED_PRINT
    params = list(net.parameters())
    assert len(params) == 10
    assert params[0].shape == (6, 1, 5, 5)
    assert sum(p.numel() for p in params) == 61706
    assert create_model("lenet", in_channels=3).conv1.weight.shape == (6, 3, 5, 5)


def test_unknown_model_names_the_choices():
    with pytest.raises(BlitzError, match="unknown model 'resnet9000'.*lenet"):
        create_model("resnet9000")


@pytest.mark.parametrize("name", list_models())
def test_an_unknown_option_is_named_with_the_ones_the_model_takes(name):
    with pytest.raises(BlitzError) as error:
        create_model(name, wdith=3)
    message = str(error.value)
    assert "unknown option 'wdith' (model.options.wdith)" in message and repr(name) in message
    accepted = model_options(name)
    assert accepted is not None  # every built-in factory declares its options
    assert (", ".join(accepted) if accepted else "no options") in message


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"in_channels": 0}, "invalid value 0 for in_channels: expected an integer in [1, 4096]"),
        ({"in_channels": -3}, "invalid value -3 for in_channels"),
        ({"in_channels": 10**6}, "invalid value 1000000 for in_channels"),
        ({"in_channels": 3.0}, "invalid value 3.0 for in_channels: expected an integer"),
        ({"num_classes": 0}, "invalid value 0 for num_classes: expected an integer >= 1"),
        ({"num_classes": "ten"}, "invalid value 'ten' for num_classes: expected an integer"),
    ],
)
def test_bad_construction_arguments_are_clear_errors(name, arguments, message):
    with pytest.raises(BlitzError) as error:
        create_model(name, **arguments)
    assert message in str(error.value)


WIDTHS = [name for name in list_models() if "widths" in model_options(name)]


@pytest.mark.parametrize("name", WIDTHS)
@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ([], "invalid value [] for model.options.widths: expected a non-empty list of integers"),
        ([8, 0], "invalid value 0 for model.options.widths: expected an integer in [1, 4096]"),
        ([-8], "invalid value -8 for model.options.widths"),
        ([8, 16.5], "invalid value [8, 16.5] for model.options.widths: expected a list of int"),
        ([8.0], "expected a list of integers"),
        ([True], "expected a list of integers"),
        ("wide", "invalid value 'wide' for model.options.widths: expected a list of integers"),
        ([10**6], "invalid value 1000000 for model.options.widths"),
    ],
)
def test_bad_widths_are_named_when_the_model_is_built(name, widths, message):
    with pytest.raises(BlitzError) as error:
        create_model(name, widths=widths)
    assert message in str(error.value)


@pytest.mark.parametrize("name", WIDTHS)
def test_widths_from_toml_lists_build_that_many_stages(name):
    model = create_model(name, num_classes=4, in_channels=3, widths=[4, 6, 8])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {4, 6, 8} <= {c.out_channels for c in convs}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"depth": 0}, "invalid value 0 for model.options.depth: expected an integer in [1, 64]"),
        ({"depth": 2.5}, "invalid value 2.5 for model.options.depth: expected an integer"),
        ({"stem": -1}, "invalid value -1 for model.options.stem: expected an integer in [0, 4096]"),
        ({"pool": "avg"}, "invalid value 'avg' for model.options.pool: expected max | stride"),
    ],
)
def test_bad_convnet_options_are_named(options, message):
    with pytest.raises(BlitzError) as error:
        create_model("convnet", **options)
    assert message in str(error.value)


def test_a_bug_inside_a_model_is_not_reported_as_a_bad_option(monkeypatch):
    def broken(num_classes: int = 10, in_channels: int = 3, width: int = 4) -> torch.nn.Module:
        return torch.nn.Linear(in_channels, width, bais=True)  # a typo in the model's code

    monkeypatch.setitem(_REGISTRY, "broken", broken)
    with pytest.raises(TypeError, match="bais"):
        create_model("broken", width=8)


def test_model_options_are_checked_when_settings_are_built():
    from blitz.models.configs import build_config

    with pytest.raises(BlitzError, match="unknown option 'width'.*convnet takes widths"):
        build_config("seed", {"model.name": "convnet", "model.options.width": 8})
    with pytest.raises(BlitzError, match=r"model.options.pool: expected max \| stride"):
        build_config("seed", {"model.name": "convnet", "model.options.pool": 3})
