"""Summarise bench/gpu.sh's runs: accuracy over seeds, GPU times, compile and cold-start costs,
and beside them the `airbench` package's train94 measured in the same run (bench/vs_airbench.py).

    python bench/gpu.py RUN_DIR... [--json FILE] [--airbench AIRBENCH_JSON]

The first seed's process ran with an empty compile cache ("cold"); the others reused it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from summary import markdown_table, mean_std, read_metrics, spread, write_json


def summarise(runs: list[dict], airbench: dict | None) -> tuple[list[str], list[list[str]], dict]:
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
    header = ["", "blitz fast-gpu"]
    if airbench:
        header.append("airbench train94 (PyPI 0.1.8)")
        theirs = airbench["runs"]
        beside = {
            "runs (seeds)": f"{len(theirs)} (0-{len(theirs) - 1}), one process",
            "test accuracy (mean +- std)": mean_std([r["accuracy"] for r in theirs]),
            "train + eval seconds (airbench's measure)": spread([r["seconds"] for r in theirs]),
            "compile seconds: cold cache / warm cache": (
                f"no compile; warm-up {theirs[0]['warmup_seconds']:.1f}"
            ),
            "total seconds, process start to accuracy: cold / warm": (
                f"one process, all seeds: {airbench['whole_seconds']:.1f}"
            ),
        }
        rows = [row + [beside.get(row[0], "")] for row in rows]
        ratio = payload["median_train_eval_seconds"] / airbench["median_seconds"]
        rows.append(["blitz / airbench, train + eval median", f"{ratio:.2f}x", ""])
        payload["airbench"] = airbench
    return header, rows, payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--airbench", type=Path, help="bench/vs_airbench.py's --json output")
    args = parser.parse_args()
    airbench = json.loads(args.airbench.read_text()) if args.airbench else None
    header, rows, payload = summarise(read_metrics(args.run_dirs), airbench)
    print(markdown_table(header, rows))
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
