"""What a single-label run prints and draws of the seed's views: the data and the plan before
training, the training images' labels, then the test's samples, accuracy, per-class figures
and confusion, and the two image grids."""

from __future__ import annotations

import sys

from blitz.data.counts import class_counts, copies_note, find_copies, format_counts, imbalance_note
from blitz.data.dataset import ImageData, label_text
from blitz.training.context import Log, RunContext
from blitz.training.evaluate import Evaluation, chance_note
from blitz.training.loop import planned_steps, steps_per_epoch
from blitz.training.rundir import RunDir
from blitz.training.step import low_res_steps
from blitz.training.tables import (
    format_accuracy,
    format_confusion,
    format_per_class,
    format_samples,
    format_summary,
)
from blitz.workflows.multilabel import save_training_grid
from blitz.workflows.record import SAMPLES, sample_rows


def describe(ctx: RunContext, data: ImageData) -> None:
    """What a run says of its data and plan before training: sizes, classes per set, the
    imbalance and copies notes, and where steps are capped or downscaled."""
    cfg = ctx.cfg
    processes = f" x {ctx.world.size} processes" if ctx.world.size > 1 else ""
    sizes = ", ".join(f"{len(split)} {role}" for role, split in data.sets().items())
    ctx.log(
        f"data: {data.name} ({sizes} images, {len(data.classes)} classes, {data.storage()}); "
        f"model: {cfg.model.name}; device: {ctx.device}{processes}"
    )
    counts = class_counts(data)
    ctx.log(format_counts(data.classes, counts))
    if note := imbalance_note(data.classes, counts["train"], cfg):
        ctx.log(note)
    set_sizes = {role: len(split) for role, split in data.sets().items()}
    if note := copies_note(find_copies(data), set_sizes):  # said even under --quiet
        print(f"blitz: {note}", file=sys.stderr)
    per_epoch = steps_per_epoch(cfg, len(data.train))
    steps = planned_steps(cfg, len(data.train))
    if steps < cfg.train.epochs * per_epoch:  # say why "epoch 1/3" will end early
        ctx.log(
            f"training for {steps} steps of batch {cfg.train.batch_size} "
            f"({steps / per_epoch:.2f} of {cfg.train.epochs} epochs): train.max_steps caps it "
            "(--max-steps 0 lifts the cap)"
        )
    if cfg.data.low_res:
        low = low_res_steps(cfg.data, steps)
        side = cfg.data.low_res
        ctx.log(
            f"the first {low} of {steps} steps train on images downscaled to {side}x{side} "
            f"(data.low_res, cheaper steps), the rest at {cfg.data.image_size}x"
            f"{cfg.data.image_size} (the test's size)"
        )


def show_training_labels(data: ImageData, run_dir: RunDir, log: Log) -> None:
    """The seed's first look at the data: the labels of the training images whose grid
    ``save_grids`` draws once the result is out (drawing needs seconds of imports)."""
    rows = sample_rows(SAMPLES, len(data.train))
    names = label_text(data.train.labels[rows], data.classes)
    shown = " | ".join(names) if data.multi_label else " ".join(f"{n:>5s}" for n in names)
    log(f"training images ({run_dir.train_images.name}): {shown}")


def save_grids(data: ImageData, result: Evaluation, run_dir: RunDir) -> None:
    """The seed's pictures: the training images ``show_training_labels`` named, and the test
    images ``show_results`` named, captioned truth -> prediction."""
    from blitz.outputs.plots import save_image_grid  # matplotlib and torchvision: seconds

    save_training_grid(data, run_dir)
    test = data.test_set()
    rows = sample_rows(SAMPLES, len(test))
    pairs = zip(test.labels[rows].tolist(), result.predicted[rows].tolist())
    captions = [f"{data.classes[t]}\n→ {data.classes[p]}" for t, p in pairs]
    save_image_grid(test.images_at(rows), captions, run_dir.test_predictions)


def show_results(result: Evaluation, data: ImageData, log: Log) -> None:
    """Print the seed's views of a test: samples, accuracy, per class, confusion."""
    test = data.test_set()
    rows = sample_rows(SAMPLES, len(test))
    truth = test.labels[rows].tolist()
    guess = result.predicted[rows].tolist()
    log(format_samples(truth, guess, data.classes))
    log(format_accuracy(result.matrix, "validation" if data.test_is_val else "test"))
    log(format_per_class(result.matrix, data.classes))
    log(format_summary(result.matrix, result.top5_accuracy))
    log(format_confusion(result.matrix, data.classes))
    if note := chance_note(result.matrix):  # said even under --quiet: a user must not miss it
        print(f"blitz: {note}", file=sys.stderr)
