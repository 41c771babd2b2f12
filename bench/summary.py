"""Shared by the benchmarks: read run directories, summarise numbers, print markdown tables."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
from pathlib import Path

# the vector units CPU kernels use: AVX2 only, AVX-512, or bf16 matrix units (AMX)
CPU_FLAGS = ["avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]


def read_metrics(run_dirs: list[Path]) -> list[dict]:
    """metrics.json of each finished run, in seed order."""
    runs = [json.loads((Path(d) / "metrics.json").read_text()) for d in run_dirs]
    return sorted(runs, key=lambda m: m["seed"])


def spread(values: list[float], unit: str = "s") -> str:
    """``median (min-max)``."""
    return f"{statistics.median(values):.2f} {unit} ({min(values):.2f}-{max(values):.2f})"


def mean_std(values: list[float]) -> str:
    """``mean +- std`` in percent, for accuracies given as fractions."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} % +- {100 * std:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path | None, payload: object) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def describe_machine() -> dict:
    """The CPU's model and flags of interest, its core count, torch's version and capability."""
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    fields = dict(re.findall(r"^(model name|flags)\s*:\s*(.*)$", cpuinfo, re.MULTILINE))
    flags = set(fields["flags"].split()) if "flags" in fields else None
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "flags": None if flags is None else [f for f in CPU_FLAGS if f in flags],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def machine_line(machine: dict) -> str:
    flags = machine["flags"]
    if flags is None:
        listed = "flags unknown (no /proc/cpuinfo)"
    else:
        wide = any(f.startswith(("avx512", "amx")) for f in flags)
        listed = "flags: " + (" ".join(flags) or "none of " + " ".join(CPU_FLAGS))
        listed += "" if wide else "; no AVX-512/AMX"
    return (
        f"machine: {machine['cpu']}, {machine['cpu_count']} CPU cores; {listed}; "
        f"torch {machine['torch']} (CPU capability {machine['cpu_capability']})"
    )
