"""torch.compile's kernel cache in ``$BLITZ_DATA/compile``, and recovery from a damaged one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from blitz.data.cache import cache_dir, cache_folder
from blitz.data.dataset import Log
from blitz.errors import BlitzError

CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"  # inductor's FX graphs, C++ and Triton kernels
# what loading a cut-short or overwritten artefact says: a compile killed while the C++ compiler
# wrote a kernel leaves a 0-byte .so ("file too short"); FX-graph pickles torch rebuilds itself
DAMAGE_SIGNS = ("file too short", "invalid elf header", "ran out of input")

T = TypeVar("T")


def compile_cache() -> Path:
    """Blitz's own folder for compiled kernels: ``$BLITZ_DATA/compile``."""
    return cache_dir() / "compile"


def use_compile_cache() -> Path:
    """Point inductor at ``$BLITZ_DATA/compile`` (made if missing) unless the user chose another
    folder in ``TORCHINDUCTOR_CACHE_DIR``; returns the folder compiled kernels go to."""
    chosen = os.environ.get(CACHE_VARIABLE)
    # Importing torchvision imports torch._dynamo, which asks inductor for its cache folder, and
    # inductor writes its default (/tmp/torchinductor_<user>) into the environment then: a value
    # equal to that default is torch's, not the user's, and setdefault would have kept it.
    if chosen is None or os.path.abspath(chosen) == _torch_default():
        os.environ[CACHE_VARIABLE] = str(cache_folder("compile"))
    return Path(os.environ[CACHE_VARIABLE])


def _torch_default() -> str | None:
    try:  # a private function (torch >= 2.4); without it only an unset variable counts as unset
        from torch._inductor.runtime.runtime_utils import default_cache_dir
    except ImportError:
        return None
    return os.path.abspath(default_cache_dir())


def compile_recovering(compile_once: Callable[[], T], log: Log) -> T:
    """Run ``compile_once`` (a compiled warm-up); if it fails on a damaged artefact in blitz's
    compile cache, delete that cache and try once more. A compile that still fails, or fails
    for another reason, is a BlitzError naming the cache and how to train without compiling."""
    folder = Path(os.environ.get(CACHE_VARIABLE, compile_cache()))
    try:
        return compile_once()
    except _compile_errors() as exc:
        if not _owned(folder) or not is_damaged_cache(exc, folder):
            raise compile_error(folder, exc) from None
        log(f"the compile cache in {folder} was damaged (cut short or overwritten): rebuilding it")
    clear_compile_cache(folder)
    try:
        return compile_once()
    except _compile_errors() as exc:
        raise compile_error(folder, exc) from None


def _compile_errors() -> tuple[type[Exception], ...]:
    """What a failed compile raises: dynamo wraps the backend's errors; loading an artefact
    outside it (a lazily compiled backward pass) raises the loader's own."""
    # imported here: importing dynamo writes inductor's default cache into the environment
    from torch._dynamo.exc import TorchDynamoException

    return (TorchDynamoException, OSError, ImportError, EOFError)


def _owned(folder: Path) -> bool:
    """Only blitz's own folder is ever deleted, never torch's default or one the user chose."""
    return os.path.abspath(folder) == os.path.abspath(compile_cache())


def is_damaged_cache(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (or an error it wraps) is a read of a damaged file in ``folder``."""
    text = " ".join(f"{type(e).__name__}: {e}" for e in _chain(exc)).lower()
    return str(folder).lower() in text and any(sign in text for sign in DAMAGE_SIGNS)


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the errors it wraps, outermost first (dynamo keeps the backend's error in
    ``inner_exception``; Python in ``__cause__`` or ``__context__``)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
    return chain


def clear_compile_cache(folder: Path) -> None:
    """Delete ``folder`` and forget what this process loaded from it, so that the next compile
    writes every artefact again."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    torch._dynamo.reset()  # compiled frames and inductor's in-memory code caches


def compile_error(folder: Path, exc: BaseException) -> BlitzError:
    """The error for a compile that failed (after a rebuilt cache, or for another reason):
    the innermost error's first line, the cache, and the way around it."""
    root = _chain(exc)[-1]
    summary = (str(root).strip().splitlines() or [""])[0][:300]
    return BlitzError(
        f"torch.compile failed ({type(root).__name__}: {summary}). Its kernel cache is "
        f"{folder}: delete that folder and try again, or train without compiling "
        "(--set train.compile=false)"
    )
