"""``cifar10``: the official ``cifar-10-python.tar.gz``, downloaded into the cache on first use
and checked against its MD5, then read as any archive path is."""

from __future__ import annotations

from pathlib import Path

from blitz.config.data_settings import DataConfig
from blitz.data.cache import cache_dir, cache_folder
from blitz.data.dataset import ImageData, Log
from blitz.data.download import downloading
from blitz.data.sources import register_source
from blitz.data.sources.folder import load_path
from blitz.errors import BlitzError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


@register_source("cifar10")
def load_cifar10(arg: str, cfg: DataConfig, log: Log) -> ImageData:
    """CIFAR-10's 50,000 training and 10,000 test images (decoded once, then cached)."""
    return load_path(_download(), cfg, log, name="cifar10")


def _download() -> Path:
    """The official CIFAR-10 archive in the cache, downloaded (and checked) on first use."""
    from torchvision.datasets.utils import check_integrity, download_url

    archive = cache_dir() / "cifar10" / "cifar-10-python.tar.gz"
    if archive.exists():  # checked when it was downloaded; re-hashing 170 MB costs a second
        return archive
    root = cache_folder("cifar10")
    where = f"to use CIFAR-10 without a network, put {archive.name} in {root}"
    with downloading(f"downloading {CIFAR10_URL} failed ({where})"):
        download_url(CIFAR10_URL, str(root), archive.name, CIFAR10_MD5)
    if not check_integrity(str(archive), CIFAR10_MD5):
        raise BlitzError(f"downloaded {archive} is corrupt (MD5 mismatch); delete it and retry")
    return archive
