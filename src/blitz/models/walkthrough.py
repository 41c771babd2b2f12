"""The seed's first half as a walk-through: network, parameters, loss, grad_fn, backprop, update."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from blitz.config.checks import MAX_SEED, check_range
from blitz.models import check_channels, create_model

Print = Callable[[str], None]
SKIP = {"AccumulateGrad", "TBackward0"}  # leaves and weight transposes: not the data path


def grad_fn_chain(tensor: torch.Tensor) -> list[str]:
    """Names of autograd nodes from ``tensor`` back to the input, along the data path."""
    names, node = [], tensor.grad_fn
    while node is not None:
        names.append(type(node).__name__)
        children = [fn for fn, _ in node.next_functions if fn is not None]
        node = next((fn for fn in children if type(fn).__name__ not in SKIP), None)
    return names


def walk_through(
    model_name: str = "lenet",
    in_channels: int = 1,
    seed: int = 0,
    lr: float = 0.01,
    out: Print = print,
) -> float:
    """Print each step of the seed's first half; returns max |hand update - torch.optim update|."""
    check_channels(in_channels, "--in-channels")
    check_range("--seed", seed, 0, MAX_SEED)
    torch.manual_seed(seed)
    net = create_model(model_name, num_classes=10, in_channels=in_channels)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        # one image has no batch statistics (on a 1x1 map not a single value per channel)
        net.eval()
        out("(batch norm runs on its running statistics here: the seed's input is one image)")
    out("== 1. Define the network ==")
    output = _show_network(net, in_channels, out)

    out("\n== 2. Mini-batches only: one sample needs unsqueeze(0) ==")
    single = torch.randn(in_channels, 32, 32)
    out(f"{tuple(single.shape)} -> unsqueeze(0) -> {tuple(single.unsqueeze(0).shape)}")

    out("\n== 3. Loss: nn.MSELoss against a random target ==")
    target = torch.randn(1, 10)
    loss = nn.MSELoss()(output, target)
    out(str(loss))
    out("loss.grad_fn chain: " + " -> ".join(grad_fn_chain(loss)))

    out("\n== 4. Backprop ==")
    name, watched = watched_parameter(net)
    output.backward(torch.rand(1, 10), retain_graph=True)  # the seed's random-gradient backward
    net.zero_grad(set_to_none=False)  # zeros, as in the seed (the default now sets None)
    out(f"{name}.grad before backward\n{watched.grad}")
    loss.backward()
    out(f"{name}.grad after backward\n{watched.grad}")

    out(f"\n== 5. Update the weights (lr {lr}) ==")
    return _compare_updates(net, lr, out)


def _show_network(net: nn.Module, in_channels: int, out: Print) -> torch.Tensor:
    """Print the network and its parameters; returns its output for a random input."""
    out(str(net))
    learnable = [p for p in net.parameters() if p.requires_grad]
    out(
        f"learnable parameters: {len(learnable)} tensors, "
        f"{sum(p.numel() for p in learnable):,} values"
    )
    for name, p in net.named_parameters():  # frozen ones too (airbench's whitening, BN scales)
        out(f"  {name:<14} {list(p.shape)}" + ("" if p.requires_grad else " (frozen)"))
    inputs = torch.randn(1, in_channels, 32, 32)
    output = net(inputs)
    out(f"output for a random 1x{in_channels}x32x32 input:\n{output}")
    return output


def watched_parameter(net: nn.Module) -> tuple[str, nn.Parameter]:
    """The first learnable bias (LeNet's is the seed's conv1.bias), else the first learnable
    parameter: the one whose gradient step 4 shows before and after backward."""
    learnable = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    biases = (item for item in learnable if item[0].rpartition(".")[2] == "bias")
    return next(biases, learnable[0])


def _compare_updates(net: nn.Module, lr: float, out: Print) -> float:
    """One SGD step by hand (w -= lr * grad) and one by torch.optim.SGD, from the same gradients.

    Frozen parameters have no gradient: SGD leaves them alone, and so does the hand update."""
    with_grads = [(p, p.grad) for p in net.parameters() if p.grad is not None]
    params = [p for p, _ in with_grads]
    by_hand = [p.detach() - lr * grad for p, grad in with_grads]
    torch.optim.SGD(params, lr=lr).step()
    diff = max((a - p.detach()).abs().max().item() for a, p in zip(by_hand, params))
    out("by hand:          for f in net.parameters(): f.data.sub_(f.grad.data * lr)")
    out("with torch.optim: optim.SGD(net.parameters(), lr=lr).step()")
    out(
        f"largest difference between the two updates: {diff:.1e}"
        + (" (they agree)" if diff < 1e-7 else "")
    )
    out("other update rules: --optimizer nesterov | adam | rmsprop (torch.optim)")
    return diff
