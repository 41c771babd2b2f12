"""Devices: choosing one, timing on it honestly, and mixed precision; one code path for all."""

from __future__ import annotations

import platform

import torch

from blitz.errors import BlitzError


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


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """Mixed precision for forward passes, the same code on every device; ``auto`` picks bf16
    where it is fast (see ``fast_bf16``) and fp32 elsewhere (emulated bf16 is slow)."""
    if precision == "auto":
        precision = "bf16" if fast_bf16(device) else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
