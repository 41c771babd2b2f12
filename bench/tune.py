"""Tuning benchmark (issue 32): does `blitz tune` (TPE, median pruning) find better settings than
a preset's defaults, and than random search with the same budget, on a CIFAR-10 subset?

    python bench/tune.py --data PATH [--per-class 200] [--test-per-class 100] [--trials 20]
                         [--preset fast-cpu] [--budget "--max-steps 60"] [--json FILE]

PATH is the CIFAR-10 JPEG archive (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg). The benchmark
extracts the first --per-class training and --test-per-class test images of each class (by file
name) into a temporary image folder. Three arms, each with the settings in --budget fixed (a
short budget) and 10 % of the training images split off as the validation set:
- defaults: `blitz train` with the preset as it is;
- tpe: `blitz tune --trials N` (TPE sampler, median pruner, the preset's default space);
- random: the same with `--search random --pruner none`.
Each arm reports its best validation accuracy (the defaults: their one run's) and the test
accuracy of that winner, trained again from best.toml and tested once. Every command is its own
process; seconds are whole-process wall time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from summary import describe_machine, machine_line, markdown_table, write_json


def log(message: str) -> None:
    print(f"[bench/tune] {message}", file=sys.stderr, flush=True)


def extract_subset(archive: Path, root: Path, per_class: dict[str, int]) -> None:
    """root/train/<class>/ and root/test/<class>/, the first images by file name; only regular
    files, at paths built here from checked names."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        taken: dict[tuple[str, str], int] = {}
        chosen = set()
        for member in sorted(members, key=lambda m: m.name):
            parts = member.name.split("/")
            if len(parts) != 3 or parts[0] not in per_class or not parts[2].endswith(".jpg"):
                continue
            split, cls, _ = parts
            if cls.isalnum() and taken.get((split, cls), 0) < per_class[split]:
                taken[split, cls] = taken.get((split, cls), 0) + 1
                chosen.add(member.name)
        for member in members:  # in archive order: the gzip stream is read forward once
            if member.name in chosen:
                target = root.joinpath(*member.name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())


def blitz(*args: str) -> float:
    """Run `python -m blitz ARGS`; returns its wall time."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "blitz", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def defaults(data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    seconds = blitz("train", "--data", str(data), "--preset", args.preset, "--val-fraction",
                    "0.1", *shlex.split(args.budget), "--out", str(out), "--quiet")  # fmt: skip
    metrics = read_json(out / "metrics.json")
    return ["preset defaults (1 run)", _pct(metrics["validation"]["accuracy"]),
            _pct(metrics["test_accuracy"]), "-", f"{seconds:.0f}"]  # fmt: skip


def search(data: Path, out: Path, args: argparse.Namespace, sampler: str) -> list[str]:
    pruner = "median" if sampler == "tpe" else "none"
    seconds = blitz("tune", str(data), "--preset", args.preset, "--trials", str(args.trials),
                    "--search", sampler, "--pruner", pruner, *shlex.split(args.budget),
                    "--out", str(out), "--quiet")  # fmt: skip
    rows = (out / "tune.csv").read_text().splitlines()[1:]
    states = [row.split(",")[1] for row in rows]
    best = read_json(out / "best" / "metrics.json")
    name = f"{sampler} ({args.trials} trials, {pruner} pruner)"
    pruned = f"{states.count('pruned')} pruned, {states.count('fail')} failed"
    return [name, _pct(_best_validation(out)), _pct(best["test_accuracy"]), pruned,
            f"{seconds:.0f}"]  # fmt: skip


def _best_validation(out: Path) -> float:
    import csv

    rows = list(csv.DictReader((out / "tune.csv").open()))
    return max(float(r["val_accuracy"]) for r in rows if r["state"] == "complete")


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="cifar10-jpeg.tar.gz")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--preset", default="fast-cpu")
    parser.add_argument("--budget", default="--max-steps 60", help="blitz train options, fixed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = describe_machine()
    with tempfile.TemporaryDirectory(prefix="blitz-bench-tune-") as tmp:
        root = Path(tmp)
        data = root / "cifar-subset"
        log(f"extracting {args.per_class} + {args.test_per_class} images a class")
        extract_subset(args.data, data, {"train": args.per_class, "test": args.test_per_class})
        rows = [defaults(data, root / "defaults", args)]
        for sampler in ("tpe", "random"):
            log(f"{sampler}: {args.trials} trials")
            rows.append(search(data, root / sampler, args, sampler))
    header = ["arm", "best validation", "its test (once)", "trials pruned/failed", "seconds"]
    print(machine_line(machine))
    print(f"command: python bench/tune.py --data {args.data.name} --per-class {args.per_class} "
          f"--test-per-class {args.test_per_class} --trials {args.trials} --preset {args.preset} "
          f"--budget {shlex.quote(args.budget)}")  # fmt: skip
    print(markdown_table(header, rows))
    write_json(args.json, {"machine": machine, "args": vars(args) | {"data": str(args.data),
               "json": None}, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
