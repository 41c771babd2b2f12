"""A table of image files and labels (.csv, .tsv) as a data source: its sets, its paths kept
inside its folder, the decode cache's key, and every refusal naming the table and the line."""

import json
import os

import pytest
import torch

from blitz.config.data_settings import DataConfig
from blitz.data.dataset import Split
from blitz.data.sources import load_data, load_source
from blitz.data.stream import StreamSplit
from blitz.errors import BlitzError
from conftest import CLASSES, folder_files, png_bytes, run_blitz, write_folder

COLORS = dict(zip(CLASSES, [(200, 30, 30), (30, 200, 30), (30, 30, 200)]))


def images(root, per_class=5, folder="img"):
    """Images that live in no class folder: ``img/apple_0.png``, ...; their rows, path,label."""
    files = {
        f"{folder}/{name}_{i}.png": png_bytes(tuple(max(0, v - 10 * i) for v in color))
        for name, color in COLORS.items()
        for i in range(per_class)
    }
    write_folder(root, files)
    return [f"{file},{file.split('/')[-1].split('_')[0]}" for file in files]


def table(root, lines, name="labels.csv"):
    path = root / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(source, **settings):
    logs = []
    return load_data(DataConfig(source=str(source), **settings), log=logs.append), logs


def files_of(data):
    return {role: sorted(split.files) for role, split in data.sets().items()}


def test_a_table_without_split_trains_and_splits_the_other_sets_off(tmp_path):
    rows = images(tmp_path)
    data, logs = load(table(tmp_path, ["path,label", *rows]))
    assert data.name == "labels" and data.classes == CLASSES
    assert {role: len(split) for role, split in data.sets().items()} == {
        "train": 9,
        "val": 3,
        "test": 3,
    }
    listed = sorted(row.split(",")[0] for row in rows)
    assert sorted(sum(files_of(data).values(), [])) == listed
    assert any("split 15 training images" in line for line in logs)
    for split in data.sets().values():  # each row's label is the class its name says
        for file, label in zip(split.files, split.labels.tolist()):
            assert file.split("/")[1].startswith(CLASSES[label])


def test_a_split_column_gives_exactly_those_sets(tmp_path):
    tree = folder_files(per_class=2, test_split="val")  # train/apple/0_0.png, val/apple/...
    write_folder(tmp_path, tree)
    rows = [f"{f},{f.split('/')[1]},{f.split('/')[0].upper()}" for f in tree]  # TRAIN, VAL
    rows += [f"{row},Test" for row in images(tmp_path, per_class=1, folder="held")]
    data, _ = load(table(tmp_path, ["path,label,split", *rows]))
    assert files_of(data) == {
        "train": sorted(f for f in tree if f.startswith("train/")),
        "val": sorted(f for f in tree if f.startswith("val/")),
        "test": [f"held/{name}_0.png" for name in CLASSES],
    }
    assert not data.test_is_val and data.split is None  # nothing split off
    assert data.test.labels.tolist() == [0, 1, 2]


def test_a_tsv_with_a_bom_extra_columns_quotes_and_blank_lines(tmp_path):
    pairs = [row.split(",") for row in images(tmp_path)]
    lines = ["id\tFile\tnote\tClass"]
    lines += [f'{i}\t{file}\t"a\tb"\t{label}' for i, (file, label) in enumerate(pairs)]
    path = tmp_path / "labels.tsv"
    path.write_text("\ufeff" + "\n\n".join(lines) + "\n\n", encoding="utf-8")
    data, _ = load(path)
    assert data.classes == CLASSES and sum(map(len, data.sets().values())) == 15


def test_paths_in_subfolders_are_normalised(tmp_path):
    files = {
        "deep/a/b/one.png": png_bytes((200, 0, 0)),
        "deep/two.png": png_bytes((190, 0, 0)),
        "w/three.png": png_bytes((0, 200, 0)),
        "four.png": png_bytes((0, 190, 0)),
    }
    write_folder(tmp_path, files)
    lines = [
        "path,label,split",
        "./deep/a/b/one.png,red,train",
        "deep/a/../two.png,red,train",
        "w\\three.png,green,train",
        "four.png , green ,train",
        "deep//a/b/one.png,red,test",
    ]
    with pytest.raises(BlitzError, match="line 6 lists 'deep/a/b/one.png' again"):
        load_source(DataConfig(source=str(table(tmp_path, lines))), print)
    data = load_source(DataConfig(source=str(table(tmp_path, lines[:-1]))), print)
    assert data.classes == ["green", "red"]
    assert sorted(data.train.files) == ["deep/a/b/one.png", "deep/two.png", "four.png",
                                        "w/three.png"]  # fmt: skip


ROWS = [f"img/{name}_{i}.png,{name}" for name in CLASSES for i in range(2)]
SPLIT = [f"{row},train" for row in ROWS]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "labels.csv has no header row"),
        (ROWS, "labels.csv has no header row: its first line must name the columns"),
        (
            ["path;label", *(row.replace(",", ";") for row in ROWS)],
            "its first line is one column, 'path;label', whose names are separated by ';'",
        ),  # Excel's CSV where ',' is the decimal comma
        (
            [ROWS[0], "path,label", *ROWS[1:]],
            r"labels.csv, line 2 looks like the header row, "
            "but the header must be the first line",
        ),  # fmt: skip
        (["path,label", *ROWS[:3], "Path,Label", *ROWS[3:]], "line 5 looks like a header row"),
        (["path,category", *ROWS], "line 1: the header has no label column"),
        (["name,label", *ROWS], "line 1: the header has no path column"),
        (["path,file,label", *ROWS], "line 1: the header names 2 path columns"),
        (["label,path", *ROWS[:2], "img/apple_0.png"], "line 4 has 1 field, but the header"),
        (["path,label", *ROWS, " ,apple"], "line 8 has an empty path"),
        (["path,label", *ROWS, "img/x.png, "], "line 8 has an empty label"),
        (
            ["path,label,split", *SPLIT, "img/x.png,apple,training"],
            "line 8: unknown split 'training': use one of train, val, valid, validation, dev, test",
        ),  # fmt: skip
        (
            ["path,label,split", *SPLIT[2:], f"{ROWS[0]},test"],
            r"line 6: unknown label 'apple' in a test row: no training row has it",
        ),  # fmt: skip
        (
            ["path,label,split", *SPLIT[:5], f"{ROWS[5]},val"],
            "the val rows have no images of class 'apple', 'banana'",
        ),  # fmt: skip
        (["path,label,split", *(f"{row},test" for row in ROWS)], "has no training rows"),
        (
            ["path,label", *ROWS, f"./{ROWS[4]}"],
            "line 8 lists 'img/cherry_0.png' again "
            r"\(as line 6 does\)",
        ),  # fmt: skip
        (["path,label", *ROWS[:2]], "single class"),
        (["path,label", *ROWS, "/etc/passwd,apple"], "line 8: '/etc/passwd' is an absolute"),
        (["path,label", *ROWS, "C:\\img\\a.png,apple"], "line 8: .* is an absolute path"),
        (["path,label", *ROWS, "../x.png,apple"], "line 8: '../x.png' leads out of the table"),
        (["path,label", *ROWS, "img/../../x.png,apple"], "line 8: .* leads out of the table"),
        (["path,label", *ROWS, "img,apple"], r"lists 1 file that .*'img' \(line 8, not a regular"),
        (["path,label", 'img/x.png,"apple', *ROWS], "line 2: cannot be read"),
        (
            ["path,label", *ROWS, 'img/x.png,"apple, banana"'],
            r"line 8: the label 'apple, banana' lists several classes \('apple', 'banana'\).*"
            "but the task is single-label: pass --task multi-label --label-delimiter ','",
        ),  # fmt: skip
        (["path,label", *ROWS[:3], "img/x.png,cherry|apple", *ROWS[3:]], "line 5: the label"),
        (["path,label", *(f"{row};{row[-1]}" for row in ROWS)], "line 2: the label 'apple;e'"),
        (["path,label", 'img/x.png,"apple"s', *ROWS], "line 2: cannot be read"),
    ],
)
def test_a_bad_table_is_refused_naming_the_table_and_line(tmp_path, lines, message):
    images(tmp_path, per_class=2)
    with pytest.raises(BlitzError, match=message):
        load(table(tmp_path, lines))


def test_a_class_name_with_a_comma_is_still_one_class(tmp_path):
    images(tmp_path, per_class=2)
    lines = [row.replace(",cherry", ',"cherry, ripe"') for row in ROWS]
    data = load_source(DataConfig(source=str(table(tmp_path, ["path,label", *lines]))), print)
    assert data.classes == ["apple", "banana", "cherry, ripe"]


def test_a_listed_image_that_cannot_be_decoded_is_named_or_skipped(tmp_path):
    rows = images(tmp_path)
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    path = table(tmp_path, ["path,label", *rows, "img/bad.png,apple"])
    with pytest.raises(BlitzError, match="cannot decode image img/bad.png"):
        load(path)
    data, logs = load(path, skip_bad_images=True)
    assert any("skipped 1 image that" in line and "img/bad.png" in line for line in logs)
    assert sum(map(len, data.sets().values())) == 15


def test_missing_files_are_named_up_to_ten_and_counted(tmp_path):
    missing = [f"gone/{i}.png,apple" for i in range(12)]
    path = table(tmp_path, ["path,label", *images(tmp_path), *missing])
    with pytest.raises(BlitzError, match="lists 12 files that cannot be read") as error:
        load(path)
    text = str(error.value)
    assert "'gone/0.png' (line 17)" in text and "'gone/9.png' (line 26)" in text
    assert "gone/10.png" not in text and "and 2 more" in text and str(tmp_path) in text


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    outside = write_folder(tmp_path / "outside", {"secret.png": png_bytes((1, 2, 3))})
    root = tmp_path / "data"
    rows = images(root)
    (root / "img" / "inner.png").symlink_to(root / "img" / "apple_0.png")  # inside: fine
    (root / "img" / "leak.png").symlink_to(outside / "secret.png")
    (root / "ext").symlink_to(outside)
    load(table(root, ["path,label", *rows, "img/inner.png,apple"]))
    for leak in ("img/leak.png", "ext/secret.png"):
        with pytest.raises(BlitzError, match=f"'{leak}' is a link that leads out of the table"):
            load(table(root, ["path,label", *rows, f"{leak},apple"]))


def test_a_table_over_256_mb_is_refused_unread(tmp_path):
    path = tmp_path / "huge.csv"
    with open(path, "wb") as f:
        f.truncate(257 * 2**20)  # sparse: no disk used, and never read
    with pytest.raises(BlitzError, match="huge.csv is larger than 256 MB"):
        load(path)


def test_a_table_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"path,label\nimg/\xe9.png,apple\n")
    with pytest.raises(BlitzError, match="labels.csv, line 2: not UTF-8 text"):
        load(path)


def test_the_decode_cache_follows_the_table_and_its_images(tmp_path, cache):
    rows = images(tmp_path)
    path = table(tmp_path, ["path,label", *rows])
    assert any(line.startswith("decoding") for line in load(path)[1])
    assert not any(line.startswith("decoding") for line in load(path)[1])  # from the cache
    swapped = [row.replace(",apple", ",durian") for row in rows]
    data, logs = load(table(tmp_path, ["path,label", *swapped]))  # the same files, relabelled
    assert any(line.startswith("decoding") for line in logs) and "durian" in data.classes
    image = tmp_path / "img" / "banana_0.png"
    image.write_bytes(png_bytes((0, 0, 0)))
    os.utime(image, ns=(0, 0))
    assert any(line.startswith("decoding") for line in load(path)[1])
    assert len(list((cache / "decoded").glob("*.pt"))) == 1  # each older copy dropped


def test_a_streamed_table_reads_the_same_images(tmp_path):
    path = table(tmp_path, ["path,label", *images(tmp_path)])
    held, _ = load(path)
    streamed, logs = load(path, max_memory="0", workers=0)
    assert isinstance(held.train, Split) and isinstance(streamed.train, StreamSplit)
    assert streamed.train.root == tmp_path
    for role, split in held.sets().items():
        other = streamed.sets()[role]
        rows = torch.arange(len(split))
        assert split.files == other.names
        assert torch.equal(split.images_at(rows), other.images_at(rows))


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_on_a_table_through_the_command_line(tmp_path):
    path = table(tmp_path, ["path,label", *images(tmp_path)])
    out = tmp_path / "run"
    result = run_blitz("train", "--data", path, "--epochs", "1", "--max-steps", "2", "--out", out,
                       cache=tmp_path / "c")  # fmt: skip
    assert result.returncode == 0
    assert json.loads((out / "config.json").read_text())["data"]["source"] == str(path)
    assert json.loads((out / "metrics.json").read_text())["classes"] == CLASSES
    lines = ["path,label,split", "img/apple_0.png,apple,train", "img/banana_0.png,banana,train"]
    bad = table(tmp_path, [*lines, "img/x.png,kiwi,test"], name="bad.csv")
    refused = run_blitz("train", "--data", bad, "--out", tmp_path / "no", check=False,
                        cache=tmp_path / "c")  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "bad.csv, line 4: unknown label 'kiwi'" in refused.stderr
    assert not (tmp_path / "no").exists()


def test_a_data_path_names_tables_among_what_it_may_be(tmp_path):
    with pytest.raises(BlitzError, match=r"a table of image files and labels \(.csv, .tsv\)"):
        load(tmp_path / "missing.csv")
    (tmp_path / "labels.txt").write_text("path,label\n")
    with pytest.raises(BlitzError, match="not a folder or an archive or a table"):
        load(tmp_path / "labels.txt")


def test_a_table_of_more_classes_than_blitz_takes_is_refused_before_any_file_is_read(tmp_path):
    # the files need not exist: the classes are counted before any file is looked at
    lines = ["path,label", *(f"img/{i}.png,c{i}" for i in range(10_001))]
    with pytest.raises(BlitzError, match=r"has 10,001 classes, more than blitz takes \(10,000"):
        load(table(tmp_path, lines))
