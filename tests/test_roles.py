"""The three roles (train fits, validation chooses, test is held out), every folder layout, the
split and its record, class imbalance (weights, sampler) and early stopping."""

import json
import subprocess
import sys

import pytest
import torch

from blitz import cli
from blitz.config.data_settings import DataConfig
from blitz.data.counts import balanced_weights, imbalance_note
from blitz.data.roles import record
from blitz.data.sources import load_data
from blitz.errors import BlitzError
from blitz.models.configs import build_config
from blitz.training.checkpoint import load_checkpoint
from blitz.training.distributed import SINGLE, World, epoch_batches
from blitz.training.step import compute_loss
from conftest import CLASSES, folder_files, png_bytes, write_folder
from test_faults import assert_same_run, start_blitz, wait_all


def images(prefix: str, per_class: int = 10, classes=CLASSES) -> dict[str, bytes]:
    """``prefix<class>/<i>.png`` for each class: a solid colour per class, shaded per image."""
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    return {
        f"{prefix}{name}/{i}.png": png_bytes(tuple(max(0, v - 5 * i) for v in color))
        for name, color in zip(classes, colors)
        for i in range(per_class)
    }


def sets_within_classes(files: dict[str, bytes]) -> dict[str, bytes]:
    """``train/apple/0.png`` as ``apple/train/0.png``: the sets inside the class folders."""
    moved = {}
    for name, data in files.items():
        role, cls, file = name.split("/")
        moved[f"{cls}/{role}/{file}"] = data
    return moved


def load(path, **settings):
    logs = []
    return load_data(DataConfig(source=str(path), **settings), log=logs.append), logs


def sizes(data):
    return {role: len(split) for role, split in data.sets().items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("folders", "expected", "on_val"),
    [
        (("",), {"train": 21, "val": 3, "test": 6}, False),  # flat: 70/10/20 per class
        (("top/",), {"train": 21, "val": 3, "test": 6}, False),  # flat, in one folder
        (("train/", "val/", "test/"), {"train": 30, "val": 30, "test": 30}, False),
        (("Train/", "Valid/", "Test/"), {"train": 30, "val": 30, "test": 30}, False),
        (("train/", "validation/"), {"train": 30, "val": 30}, True),
        (("data/train/", "data/dev/"), {"train": 30, "val": 30}, True),
        (("train/", "test/"), {"train": 30, "test": 30}, False),  # as the seed: no validation
        (("train/",), {"train": 21, "val": 3, "test": 6}, False),  # train/ alone: as flat
    ],
)
def test_every_layout_gets_its_sets(tmp_path, folders, expected, on_val):
    files = {k: v for folder in folders for k, v in images(folder).items()}
    data, logs = load(write_folder(tmp_path / "photos", files))
    assert data.classes == CLASSES
    assert sizes(data) == expected
    assert data.test_is_val == on_val
    if on_val:  # the final figure is on validation, and it says so
        assert data.test is data.val and any("no test set" in line for line in logs)
    counts = {role: torch.bincount(s.labels).tolist() for role, s in data.sets().items()}
    assert all(len(set(c)) == 1 for c in counts.values())  # stratified: equal per class


def test_the_split_is_reproducible_stratified_and_keyed_by_its_seed(tmp_path):
    root = write_folder(tmp_path / "flat", images("", per_class=20))
    first, _ = load(root)
    again, _ = load(root)
    other, _ = load(root, split_seed=1)
    ids = {role: s.row_ids(role) for role, s in first.sets().items()}
    assert ids == {role: s.row_ids(role) for role, s in again.sets().items()}
    assert ids["test"] != other.test.row_ids("test")
    assert sizes(first) == {"train": 42, "val": 6, "test": 12}
    assert not set(ids["train"]) & set(ids["val"]) and not set(ids["val"]) & set(ids["test"])
    assert first.split == {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}


def test_fractions_split_off_what_the_data_lacks(tmp_path):
    root = write_folder(tmp_path / "tt", {**images("train/"), **images("test/")})
    data, _ = load(root, val_fraction=0.2)
    assert sizes(data) == {"train": 24, "val": 6, "test": 30}
    shapes = load_data(DataConfig(source="shapes:100", val_fraction=0.1), log=str)
    assert sizes(shapes) == {"train": 90, "val": 10, "test": 20}


def test_a_split_of_tiny_classes_says_the_shares_it_could_give(tmp_path):
    said = []
    root = write_folder(tmp_path / "tiny", images("", per_class=3))
    load_data(DataConfig(source=str(root), val_fraction=0.1, test_fraction=0.2), log=said.append)
    [line] = [line for line in said if line.startswith("split ")]
    assert line.endswith("at least one image: validation 33 %, test 33 % of the images")
    said.clear()
    load_data(DataConfig(source="shapes:100", val_fraction=0.1), log=said.append)
    assert not [line for line in said if "at least one image" in line]  # 10 %, 20 %: as asked


@pytest.mark.parametrize(
    ("files", "settings", "message"),
    [
        (images("train/") | images("val/"), {"val_fraction": 0.1}, "has its own validation set"),
        (images("", per_class=2), {}, "'apple' has 2 images, too few to split into 3 sets"),
        (images("train/") | images("val/", classes=CLASSES[:2]), {}, "val lacks cherry"),
        (images("train/") | images("val/") | images("dev/"), {}, "both dev/ and val/"),
        (images("", classes=CLASSES[:1]), {}, "single class"),
        (images(""), {"val_fraction": 0, "test_fraction": 0}, "no test or validation images"),
        (sets_within_classes(images("train/") | images("test/")), {},
         "apple/test/ is a set folder inside class folder apple/, and blitz reads the sets at"),
    ],
)  # fmt: skip
def test_bad_layouts_and_splits_are_named(tmp_path, files, settings, message):
    with pytest.raises(BlitzError, match=message):
        load(write_folder(tmp_path / "bad", files), **settings)


@pytest.mark.parametrize("source", ["shapes:100", "flat"])  # images by row, images by file
def test_recorded_sets_give_back_exactly_the_same_images(tmp_path, source):
    if source == "flat":
        source = str(write_folder(tmp_path / "flat", images("", per_class=10)))
    cfg = DataConfig(source=source, val_fraction=0.2, split_seed=3)
    first = load_data(cfg, log=str)
    again = load_data(DataConfig(source=source), log=str, recorded=record(first))
    assert record(again) == record(first)
    for role, split in first.sets().items():
        assert torch.equal(split.images, again.sets()[role].images), role


def test_fractions_that_leave_nothing_to_train_on_are_refused():
    message = "--val-fraction .* 0.5 and --test-fraction .* 0.5 add up to 1, which leaves no"
    with pytest.raises(BlitzError, match=message):
        DataConfig(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(BlitzError, match="--val-fraction"):
        DataConfig(val_fraction=1.5)


def blitz(capsys, *args):
    status = cli.main([str(a) for a in args])
    return status, capsys.readouterr()


TINY = ["train", "--preset", "seed", "--batch-size", "8", "--quiet"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_records_its_sets_and_eval_uses_them(tmp_path, capsys):
    root = write_folder(tmp_path / "flat", images("", per_class=10))
    out = tmp_path / "run"
    status, _ = blitz(capsys, *TINY, "--data", root, "--epochs", "1", "--out", out)
    assert status == 0
    lines = (out / "sets.csv").read_text().splitlines()
    assert lines[0] == "set,class,image" and len(lines) == 31
    test = sorted(line.split(",")[2] for line in lines if line.startswith("test,"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sets"] == {"train": 21, "val": 3, "test": 6} and metrics["test_set"] == "test"
    assert metrics["class_counts"]["test"] == [2, 2, 2]
    assert metrics["split"] == {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}
    assert metrics["validation"]["accuracy"] >= 0 and "macro_f1" in metrics["validation"]
    # more images since: a new split would differ, the run's own does not
    write_folder(root, images("", per_class=14))
    status, shown = blitz(capsys, "eval", out)
    assert status == 0 and "on the 6 test images" in shown.out
    status, shown = blitz(capsys, "eval", out, "--data", root)  # all of it: 24 seen in training
    assert status == 0 and "warning: 24 of these 42 images are ones the run trained" in shown.err
    (root / test[0]).unlink()  # one of its test images gone: not the data it was trained on
    status, shown = blitz(capsys, "eval", out)
    assert status == 2 and f"1 of its test images is gone ({test[0]})" in shown.err


@pytest.mark.subprocess
def test_patience_needs_a_validation_set(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--data", "shapes:100", "--patience", "2", "--out", out]
    status, shown = blitz(capsys, *TINY, *args)
    assert status == 2 and "no validation set" in shown.err and "--val-fraction" in shown.err
    assert not out.exists()  # refused before anything was written


STOPPING = [
    *TINY,
    "--epochs",
    "5",
    "--lr",
    "1e-9",  # the weights barely move: the validation accuracy cannot improve after epoch 1
    "--patience",
    "1",
    "--set",
    "train.eval_every_epoch=true",
    "--class-weights",
    "balanced",
    "--sampler",
    "balanced",
    "--checkpoint-every",
    "3",
]


@pytest.mark.slow
@pytest.mark.subprocess
def test_early_stopping_keeps_the_best_epoch_and_survives_a_kill(tmp_path):
    """A flat folder (its sets split off and recorded), patience, class weights and the
    balanced sampler: killed and resumed, the run ends exactly where the one left alone does."""
    root = write_folder(tmp_path / "flat", images("", per_class=12))  # 27 train: 4 steps/epoch
    alone, killed, cache = tmp_path / "alone", tmp_path / "killed", tmp_path / "cache"
    args = [*STOPPING, "--data", root]
    runs = [start_blitz([*args, "--out", alone], cache)]
    runs.append(start_blitz([*args, "--out", killed], cache, harness=["step", 6, 9, 1]))
    (ok, err), (code, _) = wait_all(runs)
    assert ok == 0, err
    assert code == -9
    [(resumed, err)] = wait_all([start_blitz(["train", "--resume", killed, "--quiet"], cache)])
    assert resumed == 0, err
    assert_same_run(alone, killed)
    metrics = json.loads((alone / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]  # stopped after 2 of 5 epochs
    assert metrics["epochs"] == 2 and metrics["kept_epoch"] == 1
    assert (
        "weights of epoch 1 (the best validation accuracy) kept"
        in (alone / "report.html").read_text()
    )


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["best", "last"])
def test_a_run_with_a_validation_set_keeps_its_best_epoch_unless_told_and_says_which(
    tmp_path, capsys, keep
):
    out = tmp_path / "run"
    status = cli.main([
        "train", "--preset", "seed", "--data", "shapes:200", "--val-fraction", "0.2",
        "--epochs", "4", "--batch-size", "16", "--lr", "0.1", "--quiet", "--out", str(out),
        "--set", f"train.keep={keep}",
    ])  # fmt: skip
    summary = capsys.readouterr().out.splitlines()[-1]
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    figures = [(h["val_accuracy"], -h["val_loss"]) for h in metrics["history"]]
    best = figures.index(max(figures)) + 1  # the most accurate; of those, the lowest loss
    assert best < 4  # this run's best validation epoch is not its last (no --patience here)
    kept, named = (best, "best validation") if keep == "best" else (4, "last")
    assert (metrics["kept"], metrics["kept_epoch"]) == (keep, kept)
    assert f"| weights of epoch {kept} of 4 ({named}) |" in summary
    final = load_checkpoint(out / "model.pt").state_dict
    at_best = load_checkpoint(out / "best.pt").state_dict
    same = all(torch.equal(final[k], at_best[k]) for k in final)
    assert same == (keep == "best")  # model.pt, and so the test score and predict


def test_balanced_sampler_draws_every_class_alike_and_deals_like_one_process():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = balanced_weights(labels, 2)[labels]
    rows = torch.cat(epoch_batches(100, 20, 0, 0, SINGLE, weights))
    assert len(rows) == 100 and 30 < int((labels[rows] == 1).sum()) < 70  # 10 % without it
    assert torch.equal(rows, torch.cat(epoch_batches(100, 20, 0, 0, SINGLE, weights)))
    ranks = [epoch_batches(100, 20, 0, 0, World(r, 4, r), weights) for r in range(4)]
    for step, batch in enumerate(epoch_batches(100, 20, 0, 0, SINGLE, weights)):
        parts = torch.cat([r[step] for r in ranks])
        assert sorted(parts.tolist()) == sorted(batch.tolist())


def test_balanced_class_weights_make_each_class_weigh_the_same():
    labels = torch.tensor([0] * 6 + [1] * 2)
    weights = balanced_weights(labels, 2)
    assert weights.tolist() == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])
    assert float((weights[labels]).sum()) == pytest.approx(8)  # as many as unweighted
    logits = torch.randn(8, 2)
    cfg = build_config("seed").optim
    by_hand = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (by_hand * weights[labels]).sum() / weights[labels].sum()
    assert compute_loss(logits, labels, cfg, weights) == pytest.approx(float(expected))
    with pytest.raises(BlitzError, match="cross-entropy with optim.class_weights"):
        build_config("seed", {"optim.loss": "mse", "optim.class_weights": "balanced"})


@pytest.mark.slow
@pytest.mark.subprocess
def test_imbalance_is_noted_and_counts_are_shown(tmp_path, capsys):
    assert imbalance_note(["a", "b"], [20, 10], None) is None
    assert "consider --class-weights" in imbalance_note(["a", "b"], [30, 10], None)
    weighed = build_config("seed", {"optim.class_weights": "balanced"})
    assert "this run uses --class-weights balanced" in imbalance_note(["a", "b"], [30, 10], weighed)
    files = {**images("", per_class=20, classes=CLASSES[:2]), **images("", 5, CLASSES[2:])}
    out = tmp_path / "run"
    root = write_folder(tmp_path / "uneven", files)
    status, shown = blitz(capsys, "train", "--preset", "seed", "--data", root, "--out", out)
    assert status == 0
    assert "images per class" in shown.out and "cherry" in shown.out
    assert "imbalanced: 3 (cherry) to 14 (apple)" in shown.out
    page = (out / "report.html").read_text()
    assert "images per class" in page and "imbalanced" in page


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_whose_output_pipe_closes_leaves_no_traceback_and_no_folder(tmp_path):
    out = tmp_path / "run"
    command = f"{sys.executable} -m blitz train --data shapes:200 --out {out} | head -1"
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in done.stderr and not out.exists(), done.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_preset_floor_of_steps_never_passes_an_explicit_cap(capsys, tmp_path):
    root = write_folder(tmp_path / "flat", images("", per_class=10))  # 21 train: 1 step/epoch
    status, shown = blitz(
        capsys, "train", "--data", root, "--max-steps", "4", "--out", tmp_path / "r"
    )
    assert status == 0 and "training 4 epochs to reach 4 steps" in shown.out
    assert "epoch 4/4" in shown.out and "train.max_steps caps it" not in shown.out


def test_a_resumed_epoch_that_takes_no_step_keeps_its_step_in_the_rows():
    from blitz.training.progress import Progress

    cfg = build_config("seed", {"train.log_every": 0})
    progress = Progress(cfg, print, quiet=True, resumed_step=5)
    progress.start_epoch(4, 1, done=1)  # its one step was taken before the restart
    assert progress.last_step == 5


@pytest.mark.slow
@pytest.mark.subprocess
def test_show_draws_a_runs_own_sets(tmp_path, capsys):
    root = write_folder(tmp_path / "flat", images("", per_class=10))
    run = tmp_path / "run"
    status, _ = blitz(capsys, *TINY, "--data", root, "--val-fraction", "0.3", "--out", run)
    assert status == 0
    grid = tmp_path / "val.png"
    args = ["show", "--run", run, "--split", "val", "--count", 30, "--out", grid]
    status, shown = blitz(capsys, *args)
    labels = shown.out.splitlines()[-2].split()  # the line above "wrote ..."
    assert status == 0 and grid.exists()
    assert sorted(labels) == ["apple"] * 3 + ["banana"] * 3 + ["cherry"] * 3  # the run's 30 %
    own = ["show", "--data", root, "--split", "val", "--count", 30, "--out", tmp_path / "o.png"]
    status, shown = blitz(capsys, *own)
    assert status == 0 and len(shown.out.splitlines()[-2].split()) == 3  # blitz's own 10 %


def _shapes_of(root, counts: dict[str, int]):
    """A flat folder holding ``counts[name]`` generated shapes of each named class."""
    from PIL import Image

    from blitz.data.sources.shapes import CLASSES as SHAPES
    from blitz.data.sources.shapes import make_shapes

    images, labels = make_shapes(200, seed=1)
    for name, count in counts.items():
        rows = torch.nonzero(labels == SHAPES.index(name))[:count, 0]
        for row in rows.tolist():
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[row].permute(1, 2, 0).numpy()).save(root / name / f"{row}.png")
    return root


@pytest.mark.slow
@pytest.mark.subprocess
def test_eval_on_a_folder_scores_all_of_it_matching_classes_by_name(tmp_path, capsys):
    from blitz.api import Run

    out = tmp_path / "run"
    assert blitz(capsys, *TINY, "--data", "shapes:100", "--max-steps", "2", "--out", out)[0] == 0
    # some of the run's classes, in another order (a folder's are sorted by name), flat
    counts = {"triangle": 4, "circle": 3, "square": 2, "cross": 5}
    folder = _shapes_of(tmp_path / "some", counts)
    status, shown = blitz(capsys, "eval", out, "--data", folder)
    assert status == 0, shown.err
    assert "all its 14 images are the test set" in shown.out
    assert "on the 14 test images" in shown.out
    per_class = Run(out).evaluate(data=folder, quiet=True).per_class
    assert {name: per_class[name]["support"] for name in counts} == counts
    assert per_class["ring"]["support"] == 0
    write_folder(folder, {"star/0.png": png_bytes((9, 9, 9))})
    status, shown = blitz(capsys, "eval", out, "--data", folder)
    assert status == 2 and "1 class the run was not trained on ('star')" in shown.err


@pytest.mark.slow
@pytest.mark.subprocess
def test_copies_of_training_images_in_the_test_set_are_warned_about_and_recorded(tmp_path, capsys):
    files = folder_files()  # its test/ is a copy of its train/
    files["test/apple/new.png"] = png_bytes((1, 2, 3))
    out = tmp_path / "run"
    args = ["--data", write_folder(tmp_path / "copied", files), "--max-steps", "1", "--out", out]
    status, shown = blitz(capsys, *TINY, *args)
    assert status == 0
    warning = "warning: 12 of the 13 test images are copies of training images"
    assert warning in shown.err and "test/apple/0_0.png is train/apple/0_0.png" in shown.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["copies"] == {"test": 12}
    assert metrics["copy_example"] == ["test/apple/0_0.png", "train/apple/0_0.png"]
