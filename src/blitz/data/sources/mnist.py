"""``mnist``: torchvision's MNIST, downloaded into the cache on first use; one channel, resized
to the image size (the seed's LeNet wants 32x32)."""

from __future__ import annotations

from blitz.config.data_settings import DataConfig
from blitz.config.types import concrete
from blitz.data.cache import cache_dir, cache_folder
from blitz.data.dataset import ImageData, Log, Split, resize_splits
from blitz.data.download import downloading
from blitz.data.sources import register_source


@register_source("mnist")
def load_mnist(arg: str, cfg: DataConfig, log: Log) -> ImageData:
    """MNIST's 60,000 training and 10,000 test digits, classes "0" to "9"."""
    from torchvision.datasets import MNIST

    root = cache_dir() / "mnist"
    if not root.is_dir():  # a first download: a cache it cannot write to is one clear error
        cache_folder("mnist")
    with downloading(f"MNIST could not be loaded or downloaded into {root}"):
        sets = [MNIST(str(root), train=train, download=True) for train in (True, False)]
    train, test = (Split(s.data.unsqueeze(1), s.targets.long()) for s in sets)
    data = ImageData("mnist", [str(d) for d in range(10)], train, test)
    return resize_splits(data, concrete(cfg.image_size), log)
