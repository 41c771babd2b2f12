"""blitz doctor on CIFAR-10 with planted faults: what each check finds, and what it costs.

    python bench/doctor.py --data cifar10-jpeg.tar.gz [--train-per-class 5000]
        [--test-per-class 1000] [--leak 0.02] [--near 0.02] [--flip 0.05] [--folds 4]
        [--work DIR] [--json FILE]

From the CIFAR-10 JPEG copy (an image-folder tree in a .tar.gz) it writes a folder of a subset
(the first N images of each class, by name; all of them by default) and plants known faults:
--leak of the test images copied byte for byte into train/ (same class), --near of them resized
(to 24 or 48 pixels, PNG) or re-encoded (JPEG quality 40) into train/, and --flip of the
training images moved to another class's folder. Then, timed: one `fast-cpu` training on it
(the reference), `blitz doctor` with its defaults, and a `fast-cpu` training with
`--exclude` of doctor.csv's training images. It prints per kind of fault the precision and
recall of what doctor found, label errors also at 50 % recall in doctor's ranking, the near-copy
methods compared on the same images (the DCT hash alone, the difference hash alone, the DCT hash
confirmed by thumbnails: doctor's), and the times and test accuracies.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image
from summary import describe_machine, machine_line, markdown_table

import blitz
from blitz.data.dataset import silent
from blitz.data.sources import load_data
from blitz.diagnosis.duplicates import NEAR_PIXELS, near_findings
from blitz.diagnosis.findings import NEAR_BITS
from blitz.diagnosis.scan import scan


def main() -> None:
    args = _parse()
    work = Path(args.work or tempfile.mkdtemp(prefix="blitz-doctor-bench-"))
    root = work / "cifar"
    planted = build(Path(args.data), root, args)
    print(f"data: {root} ({_image_count(root)} images); planted: "
          + ", ".join(f"{len(v)} {k}" for k, v in planted.items()))  # fmt: skip
    reference = _train(root, work / "reference")
    started = time.perf_counter()
    found = blitz.doctor(root, out=work / "doctor", folds=args.folds)
    doctor_seconds = time.perf_counter() - started
    excluded = work / "exclude.txt"
    dropped = [f.image for f in found.findings if f.image and f.role == "train"]
    excluded.write_text("\n".join(dropped) + "\n")
    cleaned = _train(root, work / "excluded", "--exclude", str(excluded))
    rows = score(found.findings, planted)
    near = compare_near(root, planted["near copies"])
    report(args, found, planted, rows, near, reference, cleaned, doctor_seconds, len(dropped))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "near": near}, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="cifar10-jpeg.tar.gz")
    p.add_argument("--train-per-class", type=int, default=5000)
    p.add_argument("--test-per-class", type=int, default=1000)
    p.add_argument("--leak", type=float, default=0.02, help="of the test images, copied")
    p.add_argument("--near", type=float, default=0.02, help="of the test images, near copies")
    p.add_argument("--flip", type=float, default=0.05, help="of the training images, relabelled")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="keep the data and runs here (default: a temporary folder)")
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args()


def build(archive: Path, root: Path, args: argparse.Namespace) -> dict[str, set[str]]:
    """The subset as a folder, with the faults planted; kind -> the ids doctor should name."""
    limits = {"train": args.train_per_class, "test": args.test_per_class}
    with tarfile.open(archive) as tar:
        members = [m for m in tar if m.isfile()]
        taken: dict[tuple[str, str], int] = {}
        chosen = set()
        for member in sorted(members, key=lambda m: m.name):
            role, cls, _ = member.name.split("/")[-3:]
            if taken.get((role, cls), 0) < limits[role]:
                taken[role, cls] = taken.get((role, cls), 0) + 1
                chosen.add(member.name)
        for member in members:  # in the archive's order: a .tar.gz is read front to back
            if member.name in chosen:
                path = root / Path(*member.name.split("/")[-3:])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return plant(root, args)


def plant(root: Path, args: argparse.Namespace) -> dict[str, set[str]]:
    rng = random.Random(args.seed)
    classes = sorted(p.name for p in (root / "train").iterdir())
    test = sorted(root.glob("test/*/*.jpg"))
    chosen = rng.sample(test, round((args.leak + args.near) * len(test)))
    leaks, nears = chosen[: round(args.leak * len(test))], chosen[round(args.leak * len(test)) :]
    planted: dict[str, set[str]] = {"exact copies": set(), "near copies": set(), "flips": set()}
    for source in leaks:
        name = f"train/{source.parent.name}/leak_{source.name}"
        shutil.copy(source, root / name)
        planted["exact copies"].add(name)
    for i, source in enumerate(nears):
        planted["near copies"].add(_near_copy(root, source, i))
    train = sorted(root.glob("train/*/[0-9]*.jpg"))
    for source in rng.sample(train, round(args.flip * len(train))):
        other = rng.choice([c for c in classes if c != source.parent.name])
        name = f"train/{other}/flip_{source.parent.name}_{source.name}"
        shutil.move(source, root / name)
        planted["flips"].add(name)
    return planted


def _near_copy(root: Path, source: Path, i: int) -> str:
    """A resized copy (24 or 48 pixels, PNG) or a re-encoded one (JPEG quality 40)."""
    image = Image.open(source).convert("RGB")
    kind = ("down24", "up48", "jpeg40")[i % 3]
    if kind == "jpeg40":
        name, fmt, out = f"near_{kind}_{source.name}", "JPEG", image
    else:
        side = 24 if kind == "down24" else 48
        out = image.resize((side, side), Image.Resampling.BICUBIC)
        name, fmt = f"near_{kind}_{source.stem}.png", "PNG"
    buffer = io.BytesIO()
    out.save(buffer, fmt, quality=40) if fmt == "JPEG" else out.save(buffer, fmt)
    path = f"train/{source.parent.name}/{name}"
    (root / path).write_bytes(buffer.getvalue())
    return path


def _train(root: Path, out: Path, *options: str) -> dict:
    """One fast-cpu training (a fresh process, as a user runs it); its metrics and seconds."""
    import subprocess
    import sys

    started = time.perf_counter()
    command = [sys.executable, "-m", "blitz", "train", "--data", str(root), "--preset",
               "fast-cpu", "--out", str(out), "--quiet", *options]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["process_seconds"] = time.perf_counter() - started
    return metrics


def score(findings: list, planted: dict[str, set[str]]) -> list[dict]:
    """Per planted kind, the finding kinds that should name them, precision and recall."""
    wanted = {"exact copies": {"leak"}, "near copies": {"near-leak"}, "flips": {"label"}}
    rows = []
    for kind, kinds in wanted.items():
        named = [f.image for f in findings if f.kind in kinds]
        rows.append(_figures(kind, named, planted[kind]))
    labels = [f.image for f in findings if f.kind == "label"]  # worst first
    half = _at_recall(labels, planted["flips"], 0.5)
    rows.append({"fault": "flips, ranked, at 50 % recall", **half})
    return rows


def _figures(kind: str, named: list[str], truth: set[str]) -> dict:
    return {"fault": kind, **_counts(len(truth), len(named), len(set(named) & truth))}


def _counts(planted: int, named: int, right: int) -> dict:
    precision, recall = right / max(named, 1), right / max(planted, 1)
    return {"planted": planted, "named": named, "right": right, "precision": precision,
            "recall": recall}  # fmt: skip


def _at_recall(ranked: list[str], truth: set[str], recall: float) -> dict:
    """Precision of the top of a ranking that first reaches ``recall`` (or all of it)."""
    hits = 0
    for n, image in enumerate(ranked, 1):
        hits += image in truth
        if hits >= recall * len(truth):
            return _counts(len(truth), n, hits)
    return _counts(len(truth), len(ranked), hits)


def compare_near(root: Path, truth: set[str]) -> list[dict]:
    """The near-copy methods on the same scan: which planted near copies each finds, and how
    many other pairs it names."""
    data = load_data(str(root), silent)
    facts = scan(data, str(root), silent)
    classes = data.classes
    methods = {
        f"DCT hash <= {NEAR_BITS} bits": dict(bits=NEAR_BITS, pixels=None),
        "DCT hash <= 4 bits": dict(bits=4, pixels=None),
        "difference hash <= 6 bits": dict(bits=6, field="dhash", pixels=None),
        f"DCT hash <= {NEAR_BITS} bits and thumbnails <= {NEAR_PIXELS:g} (doctor)": dict(
            bits=NEAR_BITS
        ),
    }
    rows = []
    for name, options in methods.items():
        started = time.perf_counter()
        found = near_findings(facts, classes, **options)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        named = [f.image for f in found if f.kind == "near-leak"]
        row = _figures(name, named, truth)
        row["other pairs"] = len(found) - row["right"]
        row["seconds"] = seconds
        rows.append(row)
    return rows


def _image_count(root: Path) -> int:
    return sum(1 for _ in root.glob("*/*/*"))


def report(args, found, planted, rows, near, reference, cleaned, seconds, dropped) -> None:
    machine = describe_machine()
    print(f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine_line(machine)}")
    table = [[r["fault"], str(r["planted"]), str(r["named"]), str(r["right"]),
              f"{r['precision']:.3f}", f"{r['recall']:.3f}"] for r in rows]  # fmt: skip
    print(markdown_table(["fault", "planted", "named", "right", "precision", "recall"], table))
    print()
    table = [[r["fault"], str(r["right"]), f"{r['recall']:.3f}", str(r["other pairs"]),
              f"{r['seconds']:.2f}"] for r in near]  # fmt: skip
    head = ["near-copy method", "planted found", "recall", "other pairs named", "seconds"]
    print(markdown_table(head, table))
    print()
    ref = reference["process_seconds"]
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in found.seconds.items())
    print(
        f"doctor: {seconds:.1f} s in all ({timing}), {seconds / ref:.2f}x one fast-cpu "
        f"training process ({ref:.1f} s; training alone {reference['train_seconds']:.1f} s)"
    )
    print(
        f"test accuracy, fast-cpu: {100 * reference['test_accuracy']:.2f} % as planted; "
        f"{100 * cleaned['test_accuracy']:.2f} % with --exclude of doctor's {dropped} "
        f"training images ({len(cleaned['excluded'])} left out)"
    )
    counts = {}
    for f in found.findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    print(f"all findings: {counts}")


if __name__ == "__main__":
    main()
