import pytest
import torch

from blitz.errors import BlitzError
from blitz.models import create_model, list_models

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
