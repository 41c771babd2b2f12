"""The three roles of a dataset's images, never mixed: *train* fits, *val* (validation) chooses
the best epoch and when to stop, *test* is held out and scored once at the end.

A set the data lacks is split off its training images, stratified per class and reproducibly
(``data.val_fraction``, ``data.test_fraction``, ``data.split_seed``). A run records which image
went to which set (``RunDir.sets``), so that eval, report and --resume use exactly that split."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from blitz.config.checks import option_name
from blitz.config.data_settings import DataConfig
from blitz.data.dataset import AnySplit, ImageData, Log, is_multi_hot, label_names
from blitz.data.stratify import lacking_labels, stratified_rows
from blitz.errors import BlitzError

AUTO_TEST = 0.2  # a folder without test/ holds out a fifth of its images (fastai's valid_pct)
AUTO_VAL = 0.1  # and, without val/ either, a tenth for validation
ROLES = ("train", "val", "test")
SET_NAMES = {"train": "training", "val": "validation", "test": "test"}  # in a user's words
# role -> (image id, class name), as recorded (multi-label: its labels' names, a JSON list)
Assignment = dict[str, list[tuple[str, str]]]


@dataclass
class Fractions:
    """What to split off the training images: fractions of them, per class."""

    val: float
    test: float

    def __bool__(self) -> bool:
        return bool(self.val or self.test)


def fractions(data: ImageData, cfg: DataConfig) -> Fractions:
    """The fractions to split off: ``auto`` means none for a set the data has; a flat folder
    (train images only) gives AUTO_TEST to test and AUTO_VAL to validation; a dataset with a
    validation set but no test set is scored on validation. A fraction for a set the data has
    is refused (the data's own set is used)."""
    has = {"val": data.val is not None, "test": data.test is not None}
    only_train = not any(has.values())
    auto = {"val": AUTO_VAL if only_train else 0.0, "test": AUTO_TEST if only_train else 0.0}
    chosen = {}
    for role in ("val", "test"):
        key = f"data.{role}_fraction"
        value = getattr(cfg, f"{role}_fraction")
        if value != "auto" and value and has[role]:
            raise BlitzError(
                f"{option_name(key)} {value}: {data.name} has its own {SET_NAMES[role]} set, which "
                f"is used as it is (a fraction splits off only a set the data lacks): drop "
                f"{option_name(key).split()[0]}"
            )
        chosen[role] = auto[role] if value == "auto" else value
    return Fractions(**chosen)


def assign_roles(
    data: ImageData, cfg: DataConfig, log: Log, recorded: Assignment | None = None
) -> ImageData:
    """``data`` with its validation and test sets: the sets it has, plus those split off its
    training images (``recorded``: exactly the sets a run wrote down)."""
    split = fractions(data, cfg)
    if recorded is not None:
        data = _apply(data, recorded)
    elif split:
        data = _split_off(data, split, cfg.split_seed, log)
    if split:  # what was split off, for the run's record
        data.split = {"val_fraction": split.val, "test_fraction": split.test}
        data.split["seed"] = cfg.split_seed
    if data.test is None and data.val is None:
        raise BlitzError(
            f"{data.name} has no test or validation images: hold some out with "
            f"--test-fraction {AUTO_TEST} (or add a test/ folder)"
        )
    data.test_is_val = data.test is None
    if data.test_is_val:
        log(
            f"{data.name} has no test set: the final accuracy is on the validation set, which "
            "is not held out (it scores every epoch, and with --patience chooses one): hold "
            f"out a test set with --test-fraction {AUTO_TEST}"
        )
        data.test = data.val
    return data


def hold_out_test(data: ImageData) -> ImageData:
    """``data`` with its test set out of reach: a run of it is scored on validation (as a run
    of data without a test set is), and the test images are never looked at (blitz tune's
    trials: a search that peeks at the test set gives a number that lies)."""
    if data.val is None or data.test_is_val:
        raise BlitzError(
            f"{data.name} needs a validation set and a test set apart to hold the test set out: "
            "add val/ and test/ folders, or split them off with --val-fraction 0.1 "
            f"--test-fraction {AUTO_TEST}"
        )
    return ImageData(data.name, data.classes, data.train, data.val, data.val, True, data.split)


def as_test_set(data: ImageData, classes: list[str], log: Log) -> ImageData:
    """Data handed to a trained run to score: its own test set (validation set) where it has
    one, else all its images (a flat folder), its labels renumbered to the run's ``classes``
    by name; it may hold only some of them, but none the run does not know."""
    role = next(r for r in ("test", "val", "train") if getattr(data, r) is not None)
    test = getattr(data, role)
    if role == "train":
        log(f"{data.name} has no test/ folder: all its {len(test)} images are the test set")
    unknown = [name for name in data.classes if name not in classes]
    if unknown:
        raise BlitzError(
            f"{data.name} has {len(unknown)} class{'es' * (len(unknown) > 1)} the run was not "
            f"trained on ({', '.join(map(repr, unknown[:5]))}): score it on images of the "
            "run's own classes only"
        )
    # a folder's classes are sorted by name, a built-in set's are not: match them by name
    renumber = torch.tensor([classes.index(name) for name in data.classes], dtype=torch.long)
    if is_multi_hot(test.labels):  # the columns move to the run's order
        hot = torch.zeros(len(test), len(classes))
        hot[:, renumber] = test.labels.cpu()
        test = replace(test, labels=hot)
    else:
        test = replace(test, labels=renumber[test.labels.cpu()])
    # only the test set is used; it stands in for the training set an ImageData must have
    return ImageData(data.name, classes, test, test, test_is_val=role == "val")


def _split_off(data: ImageData, split: Fractions, seed: int, log: Log) -> ImageData:
    if data.multi_label:
        picked = stratified_rows(data.train.labels, {"val": split.val, "test": split.test}, seed)
        _say_lacking(data, picked, log)
    else:
        picked = _per_class(data, split, seed)
    sets = {role: data.train.subset(r, "train") for role, r in picked.items() if len(r)}
    how = "stratified by label" if data.multi_label else "per class"
    log(
        f"split {len(data.train)} training images, {how}, with split seed {seed}: "
        + ", ".join(f"{len(s)} {SET_NAMES[role]}" for role, s in sets.items())
        + f" (--val-fraction {split.val:g}, --test-fraction {split.test:g})"
        + _rounded_note(picked, len(data.train), split)
    )
    return ImageData(data.name, data.classes, sets["train"], *_kept(data, sets))


def _rounded_note(picked: dict[str, torch.Tensor], total: int, split: Fractions) -> str:
    """Where classes so small that each gave one image to a set made the sets' shares far from
    the fractions asked (100 classes of 3 images: a third each), the shares they are."""
    asked = {"val": split.val, "test": split.test}
    shares = {role: len(picked.get(role, ())) / total for role in asked}
    if all(abs(shares[role] - asked[role]) < 0.05 for role in asked):
        return ""
    shown = ", ".join(f"{SET_NAMES[role]} {100 * share:.0f} %" for role, share in shares.items())
    return f"; classes this small give each set at least one image: {shown} of the images"


def _say_lacking(data: ImageData, picked: dict[str, torch.Tensor], log: Log) -> None:
    """Name the labels a multi-label split could not put in every set (too few images)."""
    for role, rows in picked.items():
        if lacking := lacking_labels(data.train.labels, rows):
            names = ", ".join(repr(data.classes[i]) for i in lacking[:10])
            log(
                f"note: the {SET_NAMES[role]} set has no image labelled {names}"
                f"{' (and more)' if len(lacking) > 10 else ''}: too few images carry "
                f"{'it' if len(lacking) == 1 else 'them'} to be in every set"
                + (
                    ""
                    if role == "train"
                    else f"; {'it is' if len(lacking) == 1 else 'they are'}"
                    f" not scored on the {SET_NAMES[role]} set"
                )
            )


def _per_class(data: ImageData, split: Fractions, seed: int) -> dict[str, torch.Tensor]:
    labels = data.train.labels.cpu()
    rows: dict[str, list[torch.Tensor]] = {role: [] for role in ROLES}
    for label, name in enumerate(data.classes):
        members = torch.nonzero(labels == label)[:, 0]
        # each class its own stream from the seed: one class's count never moves another's split
        order = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(seed))]
        test, val = _counts(len(members), split, name)
        rows["test"].append(order[:test])
        rows["val"].append(order[test : test + val])
        rows["train"].append(order[test + val :])
    return {role: torch.sort(torch.cat(parts)).values for role, parts in rows.items()}


def _kept(data: ImageData, sets: dict[str, AnySplit]) -> tuple[AnySplit | None, AnySplit | None]:
    """The test and validation sets (ImageData's order): split off, or the data's own."""
    return sets.get("test", data.test), sets.get("val", data.val)


def _counts(size: int, split: Fractions, name: str) -> tuple[int, int]:
    """Images of a class of ``size`` for test and validation: the fractions rounded, at least
    one each where the fraction is not 0, and at least one left to train on."""
    test = max(round(size * split.test), 1) if split.test else 0
    val = max(round(size * split.val), 1) if split.val else 0
    if size - test - val < 1:
        needed = 1 + bool(test) + bool(val)
        raise BlitzError(
            f"class {name!r} has {size} image{'s' * (size != 1)}, too few to split into "
            f"{needed} sets (--val-fraction {split.val:g}, --test-fraction {split.test:g}): "
            "add images of it, lower the fractions (0 splits off no such set), or add val/ "
            "and test/ folders yourself"
        )
    return test, val


def record(data: ImageData) -> Assignment:
    """Which image (by id) is in which set, and its class: what a run writes down."""
    out = {}
    for role, split in data.sets().items():
        out[role] = list(zip(split.row_ids(role), label_names(split.labels, data.classes)))
    return out


def _apply(data: ImageData, recorded: Assignment) -> ImageData:
    """The sets a run recorded, taken from the data's sets by image id (and class checked)."""
    where = {}
    for role, split in data.sets().items():
        for row, image in enumerate(split.row_ids(role)):
            where[image] = (role, row)
    sets = {}
    for role, images in recorded.items():
        missing = [image for image, _ in images if image not in where]
        if missing:
            count, more = len(missing), ", ..." * (len(missing) > 1)
            gone = f"{count} of its {SET_NAMES[role]} images {'is' if count == 1 else 'are'} gone"
            raise _changed(data, f"{gone} ({missing[0]}{more})")
        found = [where[image] for image, _ in images]
        sources = {source for source, _ in found}
        if len(sources) != 1:
            raise _changed(data, f"its {SET_NAMES[role]} set was drawn from several sets")
        source_role = sources.pop()
        source = getattr(data, source_role)
        rows = torch.tensor([row for _, row in found], dtype=torch.long)
        whole = _all_rows(rows, len(source))
        sets[role] = source if whole else source.subset(rows, source_role)
        _check_classes(data, sets[role], images, role)
    if "train" not in sets:
        raise _changed(data, "the record names no training set")
    return ImageData(data.name, data.classes, sets["train"], sets.get("test"), sets.get("val"))


def _all_rows(rows: torch.Tensor, size: int) -> bool:
    return len(rows) == size and bool((rows == torch.arange(size)).all())


def _check_classes(data: ImageData, split: AnySplit, images: list, role: str) -> None:
    now = label_names(split.labels, data.classes)
    for (image, then), label in zip(images, now):
        if then != label:
            raise _changed(
                data, f"{image} was of class {then!r}, now {label!r} ({SET_NAMES[role]} set)"
            )


def _changed(data: ImageData, what: str) -> BlitzError:
    return BlitzError(
        f"{data.name} is not the data this run was trained on: {what}. Pass the data it was "
        "trained on, or --data with other data to test on"
    )
