"""The `airbench` package's train94 on the same images blitz trains on, for bench/gpu.sh.

    python bench/vs_airbench.py ARCHIVE WORK_DIR [--seeds N] [--json FILE]

Decodes ARCHIVE with blitz's own loader into airbench's format (WORK_DIR/cifar10/train.pt and
test.pt: uint8 images (N, 32, 32, 3), int64 labels, class names), then in this one process runs
airbench's warm-up and train94 once per seed, as its README does. Each run's accuracy and its
train + TTA-evaluation seconds are read from airbench's own final table row ('eval'); the wall
time of each call is kept too. Needs CUDA (airbench moves everything to the GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from pathlib import Path

import torch
from summary import markdown_table, mean_std, spread, write_json

from blitz.config.data_settings import DataConfig
from blitz.data.sources import load_source


def convert(archive: str, folder: Path) -> None:
    """train.pt and test.pt in airbench's layout, from blitz's decoding of *archive*."""
    folder.mkdir(parents=True, exist_ok=True)
    data = load_source(DataConfig(source=archive), print)
    for role, split in (("train", data.train), ("test", data.test)):
        images = split.images_at(torch.arange(len(split))).permute(0, 2, 3, 1).contiguous()
        payload = {"images": images, "labels": split.labels, "classes": data.classes}
        torch.save(payload, folder / f"{role}.pt")
        print(f"{role}: {tuple(images.shape)} -> {folder / f'{role}.pt'}")


def final_row(printed: str) -> tuple[float, float]:
    """(TTA accuracy, train + eval seconds) from airbench's last table row."""
    row = next(line for line in reversed(printed.splitlines()) if "eval" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    return float(cells[-2]), float(cells[-1])


def run(seeds: int) -> list[dict]:
    import airbench

    started = time.perf_counter()
    airbench.warmup94()
    warmup = time.perf_counter() - started
    runs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        printed = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            airbench.train94(run=seed)
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
        accuracy, seconds = final_row(printed.getvalue())
        runs.append({"seed": seed, "accuracy": accuracy, "seconds": seconds, "wall": wall})
        print(f"seed {seed}: {100 * accuracy:.2f} %, {seconds:.3f} s (call {wall:.1f} s)")
    runs[0]["warmup_seconds"] = warmup
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("archive")
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    convert(args.archive, args.work_dir / "cifar10")
    os.chdir(args.work_dir)  # airbench reads ./cifar10/{train,test}.pt
    runs = run(args.seeds)
    whole = time.perf_counter() - started
    rows = [
        ["runs (seeds)", f"{len(runs)} (0-{len(runs) - 1})"],
        ["test accuracy (mean +- std)", mean_std([r["accuracy"] for r in runs])],
        ["train + eval seconds (its own CUDA-event timing)", spread([r["seconds"] for r in runs])],
        ["warm-up seconds (first process)", f"{runs[0]['warmup_seconds']:.1f}"],
        ["whole process seconds (conversion included)", f"{whole:.1f}"],
    ]
    print(markdown_table(["airbench train94 (PyPI 0.1.8)", "value"], rows))
    median = statistics.median(r["seconds"] for r in runs)
    write_json(args.json, {"runs": runs, "median_seconds": median, "whole_seconds": whole})


if __name__ == "__main__":
    main()
