from blitz.inspect import grad_fn_chain, walk_through


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
    assert diff < 1e-6


def test_grad_fn_chain_walks_back_to_the_first_convolution():
    import torch

    from blitz.models import create_model

    net = create_model("lenet", in_channels=1)
    loss = torch.nn.MSELoss()(net(torch.randn(1, 1, 32, 32)), torch.randn(1, 10))
    chain = grad_fn_chain(loss)
    assert chain[:3] == ["MseLossBackward0", "AddmmBackward0", "ReluBackward0"]
    assert chain[-1] == "ConvolutionBackward0" and chain.count("ConvolutionBackward0") == 2
