import pytest
import torch

from blitz.errors import BlitzError
from blitz.models import create_model, list_models
from blitz.models.walkthrough import grad_fn_chain, walk_through, watched_parameter


def test_walk_through_shows_every_seed_step():
    lines = []
    diff = walk_through(out=lines.append)
    text = "\n".join(lines)
    assert "(conv1): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1))" in text
    assert "learnable parameters: 10 tensors" in text
    assert "conv1.weight   [6, 1, 5, 5]" in text
    assert "(1, 32, 32) -> unsqueeze(0) -> (1, 1, 32, 32)" in text
    assert "grad_fn=<MseLossBackward" in text
    assert "conv1.bias.grad before backward\ntensor([0., 0., 0., 0., 0., 0.])" in text
    assert "(frozen)" not in text
    assert diff < 1e-6


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_walk_through_works_for_every_model(name, in_channels):
    lines = []
    diff = walk_through(name, in_channels=in_channels, out=lines.append)
    text = "\n".join(lines)
    torch.manual_seed(0)
    watched, param = watched_parameter(create_model(name, 10, in_channels))
    assert param.requires_grad and f"  {watched} " in text  # listed under its real name
    before = text.split(f"{watched}.grad before backward\n")[1].split(f"\n{watched}.grad after")[0]
    after = text.split(f"{watched}.grad after backward\n")[1].split("\n\n")[0]
    assert before.startswith("tensor([0., 0.") and "grad_fn" not in before
    assert after != before  # backward filled in a gradient
    assert f"random 1x{in_channels}x32x32 input" in text
    assert text.count("largest difference between the two updates") == 1
    assert diff < 1e-6  # the hand update and torch.optim.SGD agree, frozen parameters aside


@pytest.mark.parametrize("name", list_models())
def test_the_watched_parameter_is_the_first_learnable_bias(name):
    net = create_model(name, in_channels=3)
    watched, param = watched_parameter(net)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    biases = [n for n in names if n.endswith(".bias")]
    assert watched == (biases[0] if biases else names[0])
    assert param is dict(net.named_parameters())[watched]


def test_watched_parameter_without_any_bias_is_the_first_learnable_one():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.Linear(4, 2, bias=False))
    net[0].weight.requires_grad = False
    assert watched_parameter(net)[0] == "1.weight"


@pytest.mark.parametrize("in_channels", [0, -1, 2.5, 10**6])
def test_bad_in_channels_is_a_clear_error(in_channels):
    with pytest.raises(BlitzError, match=f"invalid value {in_channels} for --in-channels"):
        walk_through(in_channels=in_channels, out=lambda line: None)


@pytest.mark.parametrize("seed", [-1, 10**23])
def test_a_seed_torch_cannot_take_is_a_clear_error(seed):
    with pytest.raises(BlitzError, match=f"invalid value {seed} for --seed: expected an integer"):
        walk_through(seed=seed, out=lambda line: None)


def test_grad_fn_chain_walks_back_to_the_first_convolution():
    net = create_model("lenet", in_channels=1)
    loss = torch.nn.MSELoss()(net(torch.randn(1, 1, 32, 32)), torch.randn(1, 10))
    chain = grad_fn_chain(loss)
    assert chain[:3] == ["MseLossBackward0", "AddmmBackward0", "ReluBackward0"]
    assert chain[-1] == "ConvolutionBackward0" and chain.count("ConvolutionBackward0") == 2
