"""Transfer benchmark (issue 14): does fine-tuning pretrained weights beat training from scratch
on a few images, and how fast are fine-tuning and predicting at 224 px.

    python bench/transfer.py --data PATH [--model timm:resnet10t] [--few 100] [--seeds 1 2 3]
                             [--finetune-args "--set optim.freeze=0.1"] [--quick] [--json FILE]

PATH is the CIFAR-10 JPEG archive (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg). Without a
network there are no ImageNet weights, so the benchmark makes its own. It extracts two
class-disjoint image folders into a temporary directory: A (airplane, automobile, bird, cat,
deer: all their images) and B (dog, frog, horse, ship, truck: the first --few training images
per class by file name, all their test images). --model trains on A; its weights, less the
classifier head (so that B's head starts afresh, as it would from ImageNet's 1000 classes), are
saved with torch.save(state_dict). Then for each seed it trains on B twice, with the same
settings and budget: from those weights (--pretrained) and from scratch. --finetune-args (a
quoted string of `blitz train` options) go to both, so that the recipe can change without code.

Speed: --speed-model fine-tunes at 224x224 on generated "photos" (noisy colour fields, JPEGs of
640x480 and 480x640; two classes), its images in memory and streamed from disk (--max-memory 0):
images/s of the last epoch, from metrics.json's history. Predicting is timed in this process
with the API's Run.predict on the same photos, after the weights are loaded and one warm-up
call: from the files (read, decoded, resized, classified) and from decoded 224x224 tensors.
Every `blitz train` is its own process; whole-process seconds include start-up and decoding.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from summary import (
    describe_machine,
    machine_line,
    markdown_table,
    mean_std,
    read_metrics,
    spread,
    write_json,
)

SPLITS = {
    "A": ("airplane", "automobile", "bird", "cat", "deer"),
    "B": ("dog", "frog", "horse", "ship", "truck"),
}
COMMON = "--optimizer adamw --lr 2e-3 --weight-decay 0.05 --set optim.schedule=cosine --warmup 0.1"
SPEED_BATCH = 32


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def extract_splits(archive: Path, root: Path, caps: dict[tuple[str, str], int]) -> None:
    """Folders ``root``/A and ``root``/B, capped at ``caps[folder, split]`` images per class
    (0: all); only regular files, at paths built here from checked names."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for member, parts in choose_members(members, caps):
            target = root.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())


def choose_members(members: list[tarfile.TarInfo], caps: dict[tuple[str, str], int]) -> list:
    """(member, (folder, split, class, file)) for A and B, in archive order (the gzip stream is
    then read forward once); files are taken in file-name order up to the caps."""
    folder_of = {cls: folder for folder, classes in SPLITS.items() for cls in classes}
    picked, taken = [], {}
    for member in sorted(members, key=lambda m: m.name):
        parts = member.name.split("/")
        if len(parts) != 3 or parts[0] not in ("train", "test") or parts[1] not in folder_of:
            continue
        split, cls, file = parts
        if not file.endswith(".jpg") or file.startswith("."):
            continue
        cap, count = caps[folder_of[cls], split], taken.get((split, cls), 0)
        if cap and count >= cap:
            continue
        taken[split, cls] = count + 1
        picked.append((member, (folder_of[cls], split, cls, file)))
    return sorted(picked, key=lambda pick: pick[0].offset)


def train(data: Path, out: Path, options: str) -> dict:
    """One `blitz train` process; its metrics. The decode cache goes in the temporary
    directory, not the user's ~/.cache/blitz."""
    log(f"blitz train --data {data.name} {options}")
    cmd = [sys.executable, "-m", "blitz", "train", "--data", str(data), *shlex.split(options)]
    cmd += ["--out", str(out), "--overwrite", "--quiet"]
    env = {**os.environ, "BLITZ_DATA": str(out.parent / "blitz-cache")}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return read_metrics([out])[0]


def save_body(run_dir: Path, path: Path) -> Path:
    """The run's final weights without the classifier head, as a plain state dict file."""
    import torch

    from blitz.training.checkpoint import load_checkpoint

    model = load_checkpoint(run_dir / "model.pt").build_model()
    heads = {name for name, module in model.named_modules() if module is model.get_classifier()}
    state = model.state_dict()
    torch.save({k: v for k, v in state.items() if k.rsplit(".", 1)[0] not in heads}, path)
    return path


def transfer(args: argparse.Namespace, tmp: Path) -> tuple[list[list[str]], dict]:
    """Pretrain on A, then fine-tune and train from scratch on B per seed: table rows, results."""
    log(f"extracting A and B from {args.data}")
    caps = {("A", "train"): args.pretrain_images, ("B", "train"): args.few}
    caps |= {(folder, "test"): args.test_images for folder in SPLITS}
    extract_splits(args.data, tmp / "data", caps)
    model = f"--model {args.model} --image-size {args.image_size} {COMMON}"
    pre = f"{model} --epochs {args.pretrain_epochs} --batch-size {args.batch_size} --seed 0"
    pretrained = train(tmp / "data" / "A", tmp / "A", f"{pre} --set data.flip=random")
    weights = save_body(tmp / "A", tmp / "pretrained.pt")
    few = f"{model} --epochs {args.epochs} --batch-size {args.few_batch_size} {args.finetune_args}"
    results = {"pretrained": pretrained, "fine-tuned": [], "from scratch": []}
    for seed in args.seeds:  # interleaved, so that the machine's drift hits both alike
        for name, extra in (
            ("fine-tuned", f"--pretrained {shlex.quote(str(weights))}"),
            ("from scratch", ""),
        ):
            run = tmp / f"B-{name.replace(' ', '-')}-{seed}"
            results[name].append(train(tmp / "data" / "B", run, f"{few} {extra} --seed {seed}"))
    rows = [transfer_row("A: pretraining (seed 0)", [pretrained])]
    rows += [transfer_row(f"B: {name}", results[name]) for name in ("fine-tuned", "from scratch")]
    return rows, results


def transfer_row(label: str, runs: list[dict]) -> list[str]:
    first = runs[0]
    return [
        label,
        f"{first['train_images']} / {first['test_images']}",
        f"{first['epochs']} x {first['steps_per_epoch']}",
        mean_std([m["test_accuracy"] for m in runs]),
        spread([m["train_seconds"] for m in runs]),
        spread([m["total_seconds"] for m in runs]),
    ]


def make_photos(root: Path, per_class: int) -> Path:
    """Generated JPEG "photos" of two classes, landscape and portrait: blocky colour fields
    with noise, so that decoding costs about what a photo's does. Two test images per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 2)):
        for c, cls in enumerate(("warm", "cool")):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (480, 640) if i % 2 else (640, 480)
                base = rng.uniform(0, 195, (h // 16, w // 16, 3))
                base[..., 2 * c] += 60  # warm: more red; cool: more blue
                field = np.kron(base, np.ones((16, 16, 1)))
                pixels = np.clip(field + rng.normal(0, 20, field.shape), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i:04d}.jpg")
    return root


def predict_rates(run_dir: Path, files: list[Path], repeats: int) -> dict[str, list[float]]:
    """Images/s of Run.predict from files and from decoded tensors, after one warm-up call."""
    import torch
    from PIL import Image

    import blitz

    run = blitz.load(run_dir)
    size = run.config.data.image_size
    tensors = torch.stack([square(Image.open(f), size) for f in files])
    run.predict(files[:2])  # loads the weights, warms the kernels
    rates = {"files": [], "tensors": []}
    for _ in range(repeats):
        for kind, images in (("files", files), ("tensors", tensors)):
            started = time.perf_counter()
            run.predict(images)
            rates[kind].append(round(len(files) / (time.perf_counter() - started), 3))
    return rates


def square(image, size: int):
    """The middle square of ``image`` at ``size`` x ``size``, as a (3, H, W) uint8 tensor."""
    import numpy as np
    import torch
    from PIL import ImageOps

    fitted = ImageOps.fit(image.convert("RGB"), (size, size))
    return torch.from_numpy(np.array(fitted)).permute(2, 0, 1)


def speed(args: argparse.Namespace, tmp: Path) -> tuple[list[list[str]], dict]:
    """Fine-tuning images/s in memory and streamed, and predicting images/s, at 224 px."""
    photos = make_photos(tmp / "photos", args.speed_images // 2)
    base = f"--model {args.speed_model} --image-size 224 {COMMON} --batch-size {SPEED_BATCH}"
    base += f" --epochs {args.speed_epochs} {args.finetune_args}"
    rows, results = [], {}
    for name, extra in (("in memory", ""), ("streamed", "--max-memory 0")):
        metrics = train(photos, tmp / f"speed-{name.replace(' ', '-')}", f"{base} {extra}")
        last = metrics["history"][-1]
        images = min(metrics["steps_per_epoch"] * SPEED_BATCH, metrics["train_images"])
        rate = f"{images / last['seconds']:.2f} images/s"
        how = f"epoch {last['epoch']} (metrics.json history): {images} images, {last['seconds']} s"
        rows.append([f"fine-tune ({metrics['data_storage']})", rate, how])
        results[f"train {name}"] = metrics
    files = sorted((photos / "train").rglob("*.jpg"))
    rates = predict_rates(tmp / "speed-in-memory", files, args.repeats)
    for kind, source in (("files", "JPEG files"), ("tensors", "224x224 uint8 tensors")):
        how = f"Run.predict of {len(files)} images: median (min-max) of {args.repeats} calls"
        rows.append([f"predict from {source}", spread(rates[kind], "images/s"), how])
    results["predict images/s"] = rates
    return rows, results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add = parser.add_argument
    add("--data", type=Path, required=True, help="the CIFAR-10 JPEG archive")
    add("--model", default="timm:resnet10t")
    add("--image-size", type=int, default=32)
    add("--pretrain-images", type=int, default=0, help="A's per class; 0: all 5000")
    add("--pretrain-epochs", type=int, default=3)
    add("--batch-size", type=int, default=128, help="pretraining's")
    add("--few", type=int, default=100, help="B's training images per class")
    add("--test-images", type=int, default=0, help="A's and B's per class; 0: all 1000")
    add("--seeds", type=int, nargs="+", default=[1, 2, 3], help="of the runs on B")
    add("--epochs", type=int, default=15, help="on B, both runs")
    add("--few-batch-size", type=int, default=64, help="on B, both runs")
    add("--finetune-args", default="--set optim.freeze=0.1 --set data.flip=random",
        help="blitz train options for both runs on B and the speed runs")  # fmt: skip
    add("--speed-model", default="timm:resnet18")
    add("--speed-images", type=int, default=64, help="generated photos, half per class")
    add("--speed-epochs", type=int, default=2)
    add("--repeats", type=int, default=3, help="calls of Run.predict timed per source")
    add("--quick", action="store_true", help="everything tiny: a smoke test")
    add("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.pretrain_images, args.pretrain_epochs, args.few, args.epochs = 100, 1, 10, 2
        args.test_images = 100
        args.seeds, args.speed_images, args.speed_epochs, args.repeats = args.seeds[:1], 8, 1, 1
    return args


def main() -> None:
    args = parse_args()
    described = machine_line(describe_machine())
    print(described)
    with tempfile.TemporaryDirectory(prefix="blitz-transfer-") as tmp:
        rows, results = transfer(args, Path(tmp))
        results["machine"] = described
        speed_rows, results["speed"] = speed(args, Path(tmp))
    print(f"\ntransfer: {args.model} at {args.image_size} px, {COMMON}")
    print(f"A: --epochs {args.pretrain_epochs} --batch-size {args.batch_size} "
          "--set data.flip=random; its body (no head) is B's --pretrained")  # fmt: skip
    print(f"B, both: --epochs {args.epochs} --batch-size {args.few_batch_size} "
          f"{args.finetune_args}; seeds {' '.join(map(str, args.seeds))}")  # fmt: skip
    header = ["run", "train / test images", "epochs x steps", "test accuracy, mean +- std",
              "train seconds, median (min-max)", "whole process seconds"]  # fmt: skip
    print(markdown_table(header, rows))
    print(f"\nspeed: {args.speed_model} at 224x224, batch {SPEED_BATCH}, {args.speed_images} "
          f"generated photos; fine-tune runs add {args.finetune_args}")  # fmt: skip
    print(markdown_table(["what", "speed", "how measured"], speed_rows))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
