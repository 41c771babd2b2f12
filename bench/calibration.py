"""Calibration benchmark (issue 29): test ECE, NLL, Brier and accuracy before and after
temperature scaling, for the CPU presets on CIFAR-10 and one fine-tuned run.

    python bench/calibration.py --data PATH [--presets fast-cpu cpu-30s] [--seeds 0]
                                [--no-finetune] [--quick] [--json FILE]

PATH is the CIFAR-10 JPEG archive (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg). Every run
is one `blitz train` process with `--val-fraction 0.1`: the temperature is fitted on those
5,000 validation images (split off the training images, which are then 45,000) and measured on
the 10,000 test images; the figures are read from each run's metrics.json ("calibration").
Accuracy: the run's test accuracy, which temperature scaling cannot change (the predicted class
of softmax(z / T) is that of z for any T > 0; tests/test_calibration.py checks it).

The fine-tuned run follows bench/transfer.py: without a network there are no ImageNet weights,
so timm's resnet10t is pretrained here on CIFAR-10's classes A (airplane ... deer, --pretrain
images per class) and fine-tuned from that body on B (dog ... truck, --few training images per
class, all their test images), with its own validation split.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from summary import describe_machine, machine_line, markdown_table, write_json
from transfer import COMMON, extract_splits, log, save_body, train

GOAL = 0.5  # temperature scaling should at least halve test ECE


def figures(metrics: dict) -> dict:
    """The test set's calibration before and after T, the temperature and the accuracy."""
    record = metrics["calibration"]
    test = record["test"]
    return {
        "temperature": record["temperature"],
        "val": metrics["sets"].get("val", 0),
        "test": metrics["sets"].get("test", 0),
        "accuracy": metrics["test_accuracy"],
        "before": test["before"],
        "after": test.get("after", test["before"]),
        "train_seconds": metrics["train_seconds"],
    }


def row(label: str, found: dict) -> list[str]:
    before, after = found["before"], found["after"]
    ratio = after["ece"] / before["ece"] if before["ece"] else float("nan")
    return [
        label,
        f"{found['val']:,} / {found['test']:,}",
        f"{found['temperature']:.3f}",
        f"{100 * found['accuracy']:.2f} %",
        f"{100 * before['ece']:.2f} % → **{100 * after['ece']:.2f} %** ({ratio:.2f}x)",
        f"{before['nll']:.4f} → {after['nll']:.4f}",
        f"{before['brier']:.4f} → {after['brier']:.4f}",
        "met" if ratio <= GOAL else "missed",
    ]


def presets(args: argparse.Namespace, tmp: Path) -> list[tuple[str, dict]]:
    done = []
    for preset in args.presets:
        for seed in args.seeds:
            options = f"--preset {preset} --val-fraction 0.1 --seed {seed} {args.extra}"
            started = time.perf_counter()
            metrics = train(args.data, tmp / f"{preset}-{seed}", options)
            log(f"{preset} seed {seed}: {time.perf_counter() - started:.0f} s")
            done.append((f"`{preset}`, seed {seed}", figures(metrics)))
    return done


def finetuned(args: argparse.Namespace, tmp: Path) -> tuple[str, dict]:
    """Pretrain resnet10t on A, fine-tune its body on a few images of B: one run's figures."""
    caps = {("A", "train"): args.pretrain_images, ("B", "train"): args.few}
    caps |= {("A", "test"): 100, ("B", "test"): 0}
    log(f"extracting A and B from {args.data}")
    extract_splits(args.data, tmp / "data", caps)
    model = f"--model timm:resnet10t --image-size 32 {COMMON}"
    train(tmp / "data" / "A", tmp / "A", f"{model} --epochs {args.pretrain_epochs} "
          "--batch-size 128 --set data.flip=random --seed 0")  # fmt: skip
    weights = save_body(tmp / "A", tmp / "pretrained.pt")
    options = (
        f"{model} --epochs {args.epochs} --batch-size 64 --set optim.freeze=0.1 "
        f"--set data.flip=random --val-fraction 0.2 --pretrained {weights} --seed 1"
    )
    metrics = train(tmp / "data" / "B", tmp / "B", options)
    label = (
        f"timm:resnet10t fine-tuned on B ({args.few} images per class, {args.epochs} epochs; "
        f"body pretrained here on A, {args.pretrain_images} per class)"
    )
    return label, figures(metrics)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add = parser.add_argument
    add("--data", type=Path, required=True, help="the CIFAR-10 JPEG archive")
    add("--presets", nargs="+", default=["fast-cpu", "cpu-30s"])
    add("--seeds", type=int, nargs="+", default=[0])
    add("--extra", default="", help="more blitz train options for the preset runs")
    add("--no-finetune", action="store_true", help="leave out the fine-tuned run")
    add("--pretrain-images", type=int, default=1000, help="A's per class")
    add("--pretrain-epochs", type=int, default=2)
    add("--few", type=int, default=100, help="B's training images per class")
    add("--epochs", type=int, default=15, help="fine-tuning epochs on B")
    add("--quick", action="store_true", help="everything tiny: a smoke test")
    add("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.extra = f"{args.extra} --max-steps 20 --set train.min_steps=0"
        args.presets, args.pretrain_images, args.pretrain_epochs = ["fast-cpu"], 50, 1
        args.few, args.epochs = 20, 1
    return args


def main() -> None:
    args = parse_args()
    described = machine_line(describe_machine())
    print(described)
    with tempfile.TemporaryDirectory(prefix="blitz-calibration-") as tmp:
        runs = presets(args, Path(tmp))
        if not args.no_finetune:
            runs.append(finetuned(args, Path(tmp)))
    header = ["run", "val / test images", "T", "test accuracy (same before and after)",
              "test ECE, before → after", "test NLL", "test Brier",
              f"ECE at most {GOAL:g}x?"]  # fmt: skip
    print(markdown_table(header, [row(label, found) for label, found in runs]))
    write_json(args.json, {"machine": described, "runs": dict(runs)})


if __name__ == "__main__":
    main()
