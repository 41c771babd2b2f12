"""Devices: choosing one, timing on it honestly, mixed precision, and fitting the settings a
preset leaves to the machine; one code path for all."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import replace

import torch

from blitz.config.settings import Config, Precision
from blitz.errors import BlitzError

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NO_FAST_BF16 = "no AMX or AVX512-BF16 on this CPU"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available[name]:
        raise BlitzError(f"--device {name} is not available on this machine: use auto or cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The accelerator's marketing name (e.g. 'NVIDIA H200'), or the CPU's architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that timings are honest (a no-op on CPU)."""
    getattr(torch, device.type).synchronize()


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 is faster than fp32 here: on GPUs, and on CPUs with AMX or AVX512-BF16."""
    if device.type != "cpu":
        return device.type == "cuda"
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private: may be missing
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """``auto`` is bf16 where it is fast (see ``fast_bf16``) and fp32 elsewhere (emulated bf16
    is slow); any other precision is kept."""
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def autocast(precision: Precision, device: torch.device) -> torch.autocast:
    """Mixed precision for forward passes, the same code on every device."""
    dtype = AUTOCAST_DTYPES[resolve_precision(precision, device)]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler:
    """fp16 gradients underflow unless the loss is scaled up (and steps whose gradients
    overflowed are skipped); at other precisions a disabled scaler passes everything through,
    so the training step is one code path."""
    fp16 = resolve_precision(precision, device) == "fp16"
    return torch.amp.GradScaler(device.type, enabled=fp16)


def fit_to_device(cfg: Config, device: torch.device, log: Callable[[str], None]) -> Config:
    """The settings a preset leaves to the machine (``auto``) made concrete for ``device``; one
    log line says which of them fell short of a GPU's choice, and why. An explicit half
    precision that this CPU emulates is kept, with a warning."""
    train = cfg.train
    precision = resolve_precision(train.precision, device)
    # torch.compile took 2 minutes on 2 CPU cores and made airbench's CPU step no faster
    compiles = device.type == "cuda" if train.compile == "auto" else train.compile
    fallbacks = []
    if train.precision == "auto" and precision == "fp32":
        why = NO_FAST_BF16 if device.type == "cpu" else f"bf16 is not fast on {device.type}"
        fallbacks.append(f"train.precision=auto -> fp32 ({why})")
    if train.compile == "auto" and not compiles:
        fallbacks.append("train.compile=auto -> false (compiling pays off on a GPU only)")
    if fallbacks:
        log(f"{cfg.preset} on {device.type}: " + "; ".join(fallbacks))
    if device.type == "cpu" and precision != "fp32" and not fast_bf16(device):
        log(
            f"warning: train.precision={precision} is emulated here ({NO_FAST_BF16}), much "
            "slower than fp32 (which train.precision=auto picks here)"
        )
    return replace(cfg, train=replace(train, precision=precision, compile=compiles))
