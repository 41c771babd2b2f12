"""The command line end to end, in subprocesses, asserting on what a user sees."""

import csv
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from blitz import cli
from conftest import folder_files, run_blitz, write_folder

blitz = run_blitz


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One short training run on generated data, shared by the tests that read it."""
    root = tmp_path_factory.mktemp("cli")
    out = root / "run"
    result = blitz(
        "train",
        "--preset",
        "seed",
        "--data",
        "shapes:500",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
        "--epochs",
        "2",
        "--out",
        out,
        cache=root / "cache",
    )
    return out, result


@pytest.mark.slow
def test_train_writes_a_complete_run_directory(run_dir):
    out, result = run_dir
    assert "Accuracy of the network on the 100 test images" in result.stdout
    assert "GroundTruth:" in result.stdout and "Predicted:" in result.stdout
    assert "confusion matrix" in result.stdout and "[1,  2000]" not in result.stdout
    for name in (
        "config.json",
        "metrics.json",
        "model.pt",
        "train_images.png",
        "test_predictions.png",
    ):
        assert (out / name).is_file(), name
    assert not (out / "last.pt").exists()  # the resume point goes once the run is finished
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {
        "test_accuracy",
        "per_class_accuracy",
        "classes",
        "confusion_matrix",
        "train_seconds",
        "total_seconds",
        "epochs",
        "steps",
        "seed",
        "device",
        "preset",
        "history",
    }
    assert keys <= set(metrics)
    assert metrics["steps"] == 2 * 32 and metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert sum(map(sum, metrics["confusion_matrix"])) == 100
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["batch_size"] == 16 and config["data"]["source"] == "shapes:500"


@pytest.mark.slow
@pytest.mark.subprocess
def test_eval_reproduces_the_training_accuracy(run_dir):
    out, _ = run_dir
    metrics = json.loads((out / "metrics.json").read_text())
    result = blitz("eval", out)
    assert f"{100 * metrics['test_accuracy']:.2f} %" in result.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_predict_prints_and_writes_csv(run_dir, tmp_path):
    out, _ = run_dir
    images = write_folder(
        tmp_path / "mine",
        {
            "a.png": folder_files(size=50)["train/apple/0_0.png"],
            "sub/b.png": folder_files()["test/banana/1_0.png"],
        },
    )
    result = blitz("predict", out, images, "--top-k", "3", "--csv", tmp_path / "p.csv")
    assert result.stdout.count(" %") == 6
    rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert len(rows) == 2 and set(rows[0]) == {
        "path",
        "class_1",
        "prob_1",
        "class_2",
        "prob_2",
        "class_3",
        "prob_3",
    }
    assert float(rows[0]["prob_1"]) >= float(rows[0]["prob_2"])


@pytest.mark.slow
@pytest.mark.subprocess
def test_show_writes_the_seed_grid(tmp_path):
    folder = write_folder(tmp_path / "fruit", folder_files())
    result = blitz(
        "show",
        "--data",
        folder,
        "--count",
        "4",
        "--out",
        tmp_path / "g.png",
        cache=tmp_path / "cache",
    )
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert len(result.stdout.splitlines()[-2].split()) == 4


@pytest.mark.slow
@pytest.mark.subprocess
def test_inspect_and_listings():
    assert "conv1.bias.grad after backward" in blitz("inspect").stdout
    assert "seed" in blitz("presets").stdout
    assert "lenet" in blitz("models").stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_on_an_image_folder_archive_and_refuse_to_clobber(tmp_path):
    from conftest import write_tar

    archive = write_tar(tmp_path / "fruit.tar.gz", folder_files())
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", "--data", archive, "--max-steps", "5", "--out", out]
    result = blitz(*args, "--quiet", cache=cache)
    assert "test accuracy" in result.stdout and "banana" not in result.stdout  # --quiet
    again = blitz(*args, check=False, cache=cache)
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--model", "nope", "--data", "shapes:50"], "--model"),
        (["train", "--data", "/no/such/dir"], "/no/such/dir' does not exist"),
        (["train", "--lr", "-1"], "invalid value -1.0 for --lr"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--set", "optim.lrr=1"], "unknown setting optim.lrr"),
        (["train", "--max-memory", "lots"], "invalid value 'lots' for --max-memory"),
        (["train", "--workers", "-2"], "invalid value -2 for --workers"),
        (
            ["train", "--preset", "seed", "--data", "shapes:50", "--image-size", "64"],
            "it takes 32 to 35 pixels; choose --image-size among them",
        ),
        (
            ["train", "--preset", "seed", "--data", "shapes:50", "--set", "data.low_res=16"],
            "model 'lenet' cannot take 16x16 images",
        ),
        (["train", "--devices", "3", "--batch-size", "64"], "multiple of 3"),
        (["eval", "/no/such/run"], "is not a folder: pass a run directory"),
        (["predict", "/no/such/run", "x.png"], "is not a folder: pass a run directory"),
    ],
)
def test_user_errors_are_one_clear_line(tmp_path, args, message):
    result = blitz(*args, check=False, cache=tmp_path / "cache")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_folder_of_one_class_is_a_clear_error(tmp_path):
    folder = write_folder(tmp_path / "flat", {"cat/1.png": folder_files()["train/apple/0_0.png"]})
    result = blitz("train", "--data", folder, check=False, cache=tmp_path / "cache")
    assert result.returncode == 2 and "single class (cat)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_typo_in_an_option_is_rejected_with_the_closest_option():
    result = blitz("train", "--epocs", "3", check=False)
    assert result.returncode == 2 and "unrecognized arguments: --epocs" in result.stderr
    assert "did you mean --epochs?" in result.stderr


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["trian"], "did you mean train?"),
        (["train", "--data", "cifar-10"], "did you mean cifar10?"),
        (["train", "--set", "train.epoch=2"], "did you mean train.epochs?"),
        (["train", "--preset", "fast-cpus"], "did you mean fast-cpu?"),
        (["train", "--model", "lenett"], "did you mean lenet?"),
        (["train", "--set", "train.tta=flip-translat"], "did you mean flip-translate?"),
    ],
)
def test_a_mistyped_name_gets_the_closest_one(tmp_path, args, hint):
    result = blitz(*args, check=False, cache=tmp_path / "cache")
    assert result.returncode == 2 and hint in result.stderr, result.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("args", [["--epoch", "2"], ["--batch", "8"]])
def test_abbreviated_options_are_refused_not_guessed(args):
    result = blitz("train", *args, check=False)  # argparse would take --epoch for --epochs
    assert result.returncode == 2 and f"unrecognized arguments: {args[0]}" in result.stderr


def test_a_path_too_long_for_the_file_system_is_one_clear_error(capsys):
    assert cli.main(["eval", "r" * 5000]) == 2  # ENAMETOOLONG, not an OSError traceback
    assert "(5000 characters)' is longer than the file system takes" in capsys.readouterr().err


def test_an_empty_out_is_refused_not_taken_for_the_current_folder(capsys):
    with pytest.raises(SystemExit) as exit:  # Path("") is "."
        cli.main(["train", "--out", "", "--data", "shapes:50"])
    assert exit.value.code == 2
    assert "argument --out: an empty path" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("devices", ["0", "-2"])
def test_devices_below_one_are_refused(devices, tmp_path):
    result = blitz("train", "--devices", devices, "--out", tmp_path / "r", check=False)
    assert result.returncode == 2 and "invalid --devices" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_small_dataset_trains_the_presets_steps_and_says_so(tmp_path):
    folder = write_folder(tmp_path / "fruit", folder_files())  # 12 images: 1 step an epoch
    out = tmp_path / "run"
    result = blitz("train", "--data", folder, "--out", out, "--quiet", cache=tmp_path / "c")
    assert result.returncode == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["epochs"] == 150 and saved["data"]["source"] == str(folder)
    assert json.loads((out / "metrics.json").read_text())["steps"] == 150
    mine = blitz("train", "--data", folder, "--epochs", "2", "--out", tmp_path / "two",
                 cache=tmp_path / "c")  # fmt: skip
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["steps"] == 2
    accuracy = float(re.search(r"on the 12 test images: ([\d.]+) %", mine.stdout).group(1))
    assert ("learned nothing useful" in mine.stderr) == (accuracy <= 100 / 3 + 1)  # at chance


@pytest.mark.slow
@pytest.mark.subprocess
def test_auto_data_is_recorded_as_what_it_turned_out_to_be(tmp_path):
    out = tmp_path / "run"
    blitz("train", "--max-steps", "1", "--data", "auto", "--out", out, cache=tmp_path / "c")
    assert json.loads((out / "config.json").read_text())["data"]["source"] == "shapes"


@pytest.mark.slow
@pytest.mark.subprocess
def test_parser_errors_are_one_paragraph():
    result = blitz("train", "--epochs", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "blitz train: error: argument --epochs" in result.stderr and "--help" in result.stderr
    # a value of the wrong kind is checked as the settings check it, wherever it comes from
    result = blitz("train", "--epochs", "x", check=False)
    assert (
        result.stderr == "blitz: error: invalid value 'x' for --epochs (train.epochs): "
        "expected an integer\n"
    )


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("thread", [False, True])
def test_the_command_leaves_after_its_exit_handlers_and_threads(thread):
    """``blitz`` skips Python's slow teardown, not what an exit must still do: exit handlers,
    buffered output, a thread still at work, the exit status."""
    script = f"""
import atexit, sys, threading, time
from blitz import cli
atexit.register(print, "exit handler ran")  # no flush: stdout is a pipe
if {thread}:
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread finished"))).start()
sys.argv = ["blitz", "train", "--data", "no-such-folder"]
cli.run()
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 2 and "no-such-folder' does not exist" in result.stderr
    assert "exit handler ran" in result.stdout
    assert ("thread finished" in result.stdout) == thread


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    "shell, status, message",
    [
        ("blitz presets >&-", 0, ""),  # stdout closed from the start
        ("set -o pipefail; blitz presets | head -c 10", 0, ""),  # the reader leaves
        ("blitz presets > out.txt", 0, ""),
        ("ulimit -f 1; blitz presets > out.txt", 120, "could not write all the output"),  # 1 KB
    ],
)
def test_the_last_flush_is_said_when_it_fails_and_quiet_when_the_reader_left(
    tmp_path, shell, status, message
):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered
    command = shell.replace("blitz", f"{shlex.quote(sys.executable)} -m blitz")
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == status and message in result.stderr
    assert "Traceback" not in result.stderr
    if status == 0 and "out.txt" in shell:
        assert "fast-cpu" in (tmp_path / "out.txt").read_text()


@pytest.mark.slow
@pytest.mark.subprocess
def test_outputs_are_checked_before_the_work(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("mine")
    shown = blitz("show", "--data", "shapes:20", "--out", text, check=False)
    assert shown.returncode == 2 and "must end in .png" in shown.stderr
    assert text.read_text() == "mine"
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    run = blitz("train", "--data", "shapes:20", "--out", folder, check=False)
    assert run.returncode == 2 and "not a blitz run (notes.txt" in run.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_model_that_cannot_take_the_images_fails_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    result = blitz("train", "--data", "shapes:20", "--model", "lenet", "--image-size", "64",
                   "--out", out, cache=tmp_path / "c", check=False)  # fmt: skip
    assert result.returncode == 2 and "cannot take 64x64 images" in result.stderr
    assert not out.exists()
