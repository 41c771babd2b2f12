"""Settings of one's own: a TOML file in the presets' format, a past run's config.json replayed
exactly, and command-line options over either; every preset printed in full reads back."""

import json
from pathlib import Path

import pytest

import blitz as blitz_api
from blitz import cli
from blitz.config.loading import list_presets, read_settings_file
from blitz.errors import BlitzError
from blitz.models.configs import build_config
from blitz.outputs.tracking import read_record
from blitz.training.rundir import RunDir
from conftest import folder_files, write_folder


def blitz(capsys, *args):
    status = cli.main([str(a) for a in args])
    return status, capsys.readouterr()


@pytest.mark.subprocess
@pytest.mark.parametrize("preset", list(list_presets()))
def test_every_preset_printed_in_full_reads_back_as_the_same_settings(preset, tmp_path, capsys):
    status, shown = blitz(capsys, "presets", "--show", preset)
    assert status == 0
    path = tmp_path / "mine.toml"
    path.write_text(shown.out)
    again = build_config("seed", base=read_settings_file(path))
    expected = build_config(preset)
    assert again.preset == "mine"  # the file's name: an edited copy is not the preset
    assert again.to_dict() | {"preset": preset} == expected.to_dict()


def test_a_settings_file_and_options_combine_options_winning(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text("[optim]\nlr = 0.05\nweight_decay = 0.001\n[train]\nepochs = 4\n")
    args = cli.build_parser().parse_args(
        ["train", "--config", str(path), "--lr", "0.2", "--label-smoothing", "0.1"]
    )
    cfg = cli.train.train_plan(args)[0]
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.epochs) == (0.2, 0.001, 4)
    assert cfg.optim.label_smoothing == 0.1 and cfg.preset == "small"
    assert cfg.model.name == "lenet"  # what the file does not set: the defaults, not a preset's


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_replayed_from_its_config_json_ends_with_the_same_metrics(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    train = ["train", "--preset", "seed", "--data", "shapes:200", "--batch-size", "16"]
    status, _ = blitz(capsys, *train, "--lr", "0.02", "--ema", "0.9", "--quiet", "--out", first)
    assert status == 0
    status, _ = blitz(capsys, "train", "--config", first, "--quiet", "--out", second)
    assert status == 0
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (first, second))
    timings = ("train_seconds", "eval_seconds", "compile_seconds", "total_seconds")
    for metrics in (a, b):
        for key in timings:
            del metrics[key]
        for record in metrics["history"]:
            del record["seconds"]
    assert a == b and a["preset"] == "seed"
    config = json.loads((second / "config.json").read_text())
    assert config == json.loads((first / "config.json").read_text())


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_records_its_data_path_absolute_so_it_replays_from_elsewhere(
    tmp_path, monkeypatch, capsys
):
    write_folder(tmp_path / "fruit", folder_files())
    monkeypatch.chdir(tmp_path)
    status, _ = blitz(capsys, "train", "--data", "fruit", "--max-steps", 1, "--quiet", "--out", "a")
    assert status == 0
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["data"]["source"]
    assert saved == str(tmp_path.resolve() / "fruit")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    status, _ = blitz(capsys, "train", "--config", "../a/config.json", "--quiet", "--out", "b")
    assert status == 0 and (tmp_path / "elsewhere" / "b" / "metrics.json").exists()
    status, _ = blitz(capsys, "train", "--data", "shapes:100", "--max-steps", 1, "--quiet",
                      "--out", "c")  # fmt: skip
    assert status == 0  # a source's name is kept as it is, not taken for a path
    assert json.loads(Path("c/config.json").read_text())["data"]["source"] == "shapes:100"


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("lr = ", "bad.toml", "not valid TOML"),
        ('{"optim": 3}', "config.json", "optim.*a table of optim settings"),
        ("[]", "config.json", "holds no table of settings"),
        ("[optim]\nlrr = 1\n", "typo.toml", "unknown setting optim.lrr"),
        ("x", "notes.txt", "expected a .toml settings file"),
    ],
)
def test_bad_settings_files_are_named(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(BlitzError, match=message):
        build_config("seed", base=read_settings_file(path))


@pytest.mark.subprocess
def test_preset_and_config_together_are_refused(tmp_path, capsys):
    path = tmp_path / "a.toml"
    path.write_text("")
    status, shown = blitz(capsys, "train", "--preset", "seed", "--config", path)
    assert status == 2 and "give one" in shown.err


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.subprocess
@pytest.mark.parametrize("depth", [500, 100_000])  # past the recursion limit: in a copy, in parsing
@pytest.mark.parametrize(
    ("file", "content", "command"),
    [
        ("mine.toml", "[data]\nsource = {}\n", ["train", "--config", "{file}"]),
        ("mine.json", '{{"data": {{"source": {}}}}}', ["train", "--config", "{file}"]),
        ("run/config.json", '{{"data": {{"source": {}}}}}', ["train", "--config", "{run}"]),
        ("run/metrics.json", '{{"classes": {}}}', ["report", "{run}"]),
        (None, "data.source={}", ["train", "--set", "{content}"]),
    ],
)
def test_files_nested_too_deeply_are_one_clear_error(
    tmp_path, capsys, depth, file, content, command
):
    """What blitz parses from outside (--config, a run's records, a --set value)."""
    content = content.format(nested(depth))
    if file:
        (tmp_path / file).parent.mkdir(exist_ok=True)
        (tmp_path / file).write_text(content)
    where = {"file": tmp_path / str(file), "run": tmp_path / "run", "content": content}
    status, shown = blitz(capsys, *(word.format(**where) for word in command))
    named = where["file"] if file else "--set data.source"
    assert status == 2 and f"{named} is nested too deeply" in shown.err


@pytest.mark.parametrize(
    ("file", "read"),
    [
        ("metrics.json", blitz_api.load),
        ("config.json", lambda run: RunDir(run).read_config()),  # Run.config, eval, --resume
        ("mlflow.json", lambda run: read_record(RunDir(run))),  # read by a resumed run
    ],
)
def test_run_records_nested_too_deeply_are_one_clear_error_from_python_too(tmp_path, file, read):
    (tmp_path / file).write_text(nested(1000))  # mlflow.json: under its 4 KB limit
    with pytest.raises(BlitzError, match=f"{file} is nested too deeply"):
        read(tmp_path)
