"""CPU benchmark: the seed's recipe as the seed wrote it against blitz's presets, in one run.

    python bench/cpu.py --data PATH [--seeds 3] [--presets fast-cpu cpu-30s cpu-5min]
                        [--seed-steps 2000] [--json FILE]

A preset may carry options of `blitz train`, quoted: `--presets fast-cpu "fast-cpu --max-memory 0"`
compares the in-memory and the streamed path, `"fast-cpu --devices 2"` one process and two.

The seed's recipe (torchvision DataLoader with per-image ToTensor + Normalize, batch 4, 2 workers,
LeNet, SGD lr 0.001 momentum 0.9) runs only its first --seed-steps mini-batches: its time for the
full 2 x 12,500 steps is extrapolated from them, and the table says so. Each preset then trains in
its own `blitz train` process per seed, after an untimed one-step run that warms the caches
(decoded tensors, an extracted archive for streaming).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from summary import markdown_table, mean_std, read_metrics, spread, write_json


def seed_recipe_seconds(data_spec: str, steps: int) -> tuple[float, int]:
    """Seconds per step of the seed's own loop over ``steps`` batches, and its full step count."""
    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Dataset

    from blitz.models import create_model
    from blitz.sources import load_data

    class SeedDataset(Dataset):  # what torchvision.datasets.CIFAR10 hands the seed: PIL images
        def __init__(self, split):
            self.images, self.labels = split.images.permute(0, 2, 3, 1).numpy(), split.labels
            self.transform = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            from PIL import Image

            return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])

    train = load_data(data_spec).train
    loader = DataLoader(SeedDataset(train), batch_size=4, shuffle=True, num_workers=2)
    net = create_model("lenet", 10, 3)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    started = time.perf_counter()
    for i, (inputs, labels) in enumerate(loader):
        optimizer.zero_grad()
        criterion(net(inputs), labels).backward()
        optimizer.step()
        if i + 1 == steps:
            break
    return (time.perf_counter() - started) / steps, 2 * len(loader)


def run_preset(recipe: str, seed: int, data_spec: str, out: Path) -> Path:
    """One `blitz train` process for ``recipe`` ("PRESET [OPTIONS]"); its run directory."""
    preset, *options = shlex.split(recipe)
    run_dir = out / (re.sub(r"[^\w.-]+", "_", recipe) + f"-seed{seed}")
    cmd = [sys.executable, "-m", "blitz", "train", "--preset", preset, "--data", data_spec]
    cmd += [*options, "--seed", str(seed), "--out", str(run_dir), "--overwrite", "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", required=True, help="dataset spec, e.g. the CIFAR-10 archive")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--presets", nargs="+", default=["fast-cpu", "cpu-30s", "cpu-5min"])
    parser.add_argument("--seed-steps", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    per_step, full_steps = seed_recipe_seconds(args.data, args.seed_steps)
    seed_seconds = per_step * full_steps
    rows = [
        [
            f"seed's recipe (DataLoader, batch 4; {args.seed_steps} of {full_steps} steps timed, "
            "time extrapolated)",
            f"{seed_seconds:.1f} s (extrapolated)",
            "54.66 % (SEED.md, full run here)",
            "1.0x",
            "",
        ]
    ]
    results = {"seed_recipe": {"seconds_per_step": per_step, "extrapolated_seconds": seed_seconds}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            run_preset(f"{preset} --max-steps 1", 0, args.data, Path(tmp))  # warm every cache
            runs = read_metrics(
                [run_preset(preset, s, args.data, Path(tmp)) for s in range(args.seeds)]
            )
            train = [m["train_seconds"] for m in runs]
            median = sorted(train)[len(train) // 2]
            rows.append(
                [
                    preset,
                    spread(train),
                    mean_std([m["test_accuracy"] for m in runs]),
                    f"{seed_seconds / median:.1f}x",
                    spread([m["total_seconds"] for m in runs]),
                ]
            )
            results[preset] = runs
    header = [
        "recipe",
        "train seconds, median (min-max)",
        f"test accuracy ({args.seeds} seeds)",
        "speed-up vs seed",
        "whole process seconds",
    ]
    print(f"machine: {os.cpu_count()} CPU cores; data: {args.data}")
    print(markdown_table(header, rows))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
