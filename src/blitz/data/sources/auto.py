"""``auto``, the default: CIFAR-10 if it is cached or can be downloaded, else ``shapes``, so
that a first command works offline."""

from __future__ import annotations

from dataclasses import replace

from blitz.config.data_settings import DataConfig
from blitz.data.cache import cache_dir
from blitz.data.dataset import ImageData, Log
from blitz.data.sources import load_source, register_source
from blitz.errors import BlitzError


@register_source("auto")
def load_auto(arg: str, cfg: DataConfig, log: Log) -> ImageData:
    """CIFAR-10, or the generated shapes with a note saying why and how to get CIFAR-10."""
    try:
        return load_source(replace(cfg, source="cifar10"), log)
    except BlitzError as exc:
        log(
            f"CIFAR-10 is not in the cache and could not be downloaded ({exc}). "
            "Using the generated 'shapes' dataset instead, so that this command works "
            "offline. To use CIFAR-10, put cifar-10-python.tar.gz in "
            f"{cache_dir() / 'cifar10'} or pass --data PATH (an image folder or archive)."
        )
        return load_source(replace(cfg, source="shapes"), log)
