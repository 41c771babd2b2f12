"""Summarise bench/gpu.sh's runs: accuracy over seeds, GPU times, compile and cold-start costs.

    python bench/gpu.py RUN_DIR... [--json FILE]

The first seed's process ran with an empty compile cache ("cold"); the others reused it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from summary import markdown_table, mean_std, read_metrics, spread, write_json


def summarise(runs: list[dict]) -> tuple[list[list[str]], dict]:
    cold, warm = runs[0], runs[1:] or runs[:1]
    gpu_seconds = [m["train_seconds"] + m["eval_seconds"] for m in runs]
    rows = [
        ["GPU", cold["device_name"]],
        ["runs (seeds)", f"{len(runs)} ({runs[0]['seed']}-{runs[-1]['seed']})"],
        ["test accuracy (mean +- std)", mean_std([m["test_accuracy"] for m in runs])],
        ["train_seconds", spread([m["train_seconds"] for m in runs])],
        ["eval_seconds (TTA)", spread([m["eval_seconds"] for m in runs])],
        ["train + eval seconds (airbench's measure)", spread(gpu_seconds)],
        [
            "compile seconds: cold cache / warm cache",
            f"{cold['compile_seconds']:.1f} / "
            f"{statistics.median(m['compile_seconds'] for m in warm):.1f}",
        ],
        [
            "total seconds, process start to accuracy: cold / warm",
            f"{cold['total_seconds']:.1f} / "
            f"{statistics.median(m['total_seconds'] for m in warm):.1f}",
        ],
    ]
    payload = {"runs": runs, "median_train_eval_seconds": statistics.median(gpu_seconds)}
    return rows, payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows, payload = summarise(read_metrics(args.run_dirs))
    print(markdown_table(["fast-gpu", "value"], rows))
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
