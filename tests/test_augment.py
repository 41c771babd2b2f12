import torch

from blitz.data import augment


def batch(n=16):
    return torch.arange(n * 3 * 8 * 8, dtype=torch.float32).view(n, 3, 8, 8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flip_mirrors_about_half_and_is_deterministic():
    x = batch(200)
    out = augment.flip(x, gen())
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 60 < sum(flipped) < 140
    assert torch.equal(out, augment.flip(x, gen()))
    assert not torch.equal(out, augment.flip(x, gen(1)))


def test_alternating_flip_alternates_per_image():
    x, rows = batch(6), torch.arange(6)
    even, odd = augment.alternating_flip(x, rows, 0), augment.alternating_flip(x, rows, 1)
    for i in range(6):
        assert torch.equal(even[i], x[i]) != torch.equal(odd[i], x[i])


def test_translate_keeps_shape_and_values_and_shifts_within_pad():
    x = batch(50)
    out = augment.translate(x, 2, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for o, p in zip(out, padded):  # every output is one of the 25 crops of its padded input
        crops = [p[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(o, c) for c in crops)
    assert torch.equal(out, augment.translate(x, 2, gen()))
    assert not torch.equal(out, x)


def test_cutout_zeros_exactly_one_square_per_image():
    x = batch(20) + 1  # no zeros to start with
    out = augment.cutout(x, 3, gen())
    zeros = (out == 0).all(1)  # (N, H, W): blanked pixels
    assert zeros.flatten(1).sum(1).tolist() == [9] * 20
    assert out.min() >= 0 and torch.equal(out[out != 0], x[out != 0])
