"""Shared by the benchmarks: read run directories, summarise numbers, print markdown tables."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


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
