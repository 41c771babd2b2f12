"""Files from strangers: archives that try to write outside the cache, special files in a data
folder, members too large to be images, two processes at once, and strings that try to become
HTML. Each must stay inside its place, or be refused with a clear message."""

import csv
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from blitz import cli
from blitz.config.data_settings import DataConfig
from blitz.data import folders
from blitz.data.exclude import read_excluded
from blitz.data.sources import load_data
from blitz.diagnosis.csvout import write_csv
from blitz.diagnosis.findings import Finding
from blitz.errors import BlitzError
from blitz.utils.cells import FORMULA_STARTS, cell_text, text_cell
from conftest import folder_files, run_blitz, write_folder, write_tar, write_zip


def tar_with_links(path: Path, outside: Path) -> Path:
    """A dataset under top/, where top is a symlink out of the archive, plus a hard link and a
    symlink to an absolute path posing as images: what CVE-2025-4517-style archives combine."""
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("top")
        link.type, link.linkname = tarfile.SYMTYPE, os.path.relpath(outside, path.parent)
        tar.addfile(link)
        for name, kind, target in [
            ("top/train/apple/hard.png", tarfile.LNKTYPE, "/etc/passwd"),
            ("top/train/apple/abs.png", tarfile.SYMTYPE, "/etc/passwd"),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
        for rel, data in folder_files().items():  # these would land in `outside` through top
            info = tarfile.TarInfo(f"top/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_streamed_archive_never_writes_through_links(tmp_path, cache):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tar_with_links(tmp_path / "evil.tar", outside)
    logs = []
    data = load_data(DataConfig(source=str(archive), max_memory="0"), log=logs.append)
    assert (len(data.train), len(data.test)) == (12, 12)  # the real images, nothing else
    assert list(outside.iterdir()) == []
    extracted = next(p for p in (cache / "extracted").glob("evil-*") if p.is_dir())
    everything = list(extracted.rglob("*"))
    assert not [p for p in everything if p.is_symlink()]
    assert sorted(p.relative_to(extracted).as_posix() for p in everything if p.is_file()) == [
        f"top/{rel}" for rel in sorted(folder_files())
    ]
    assert any("ignored 3 files" in line for line in logs)  # the link, the hard and soft links


def test_two_runs_extract_a_new_archive_once(tmp_path, cache):
    archive = write_zip(tmp_path / "fruit.zip", folder_files())
    results, errors = [], []

    def load():
        try:
            results.append(load_data(DataConfig(source=str(archive), max_memory="0"), log=str))
        except Exception as exc:  # noqa: BLE001 - the test reports whatever happened
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 2
    entries = sorted(p.name for p in (cache / "extracted").iterdir())
    assert len(entries) == 2 and entries[1].endswith(".lock")  # one copy, and its lock file


@pytest.mark.parametrize("max_memory", ["auto", "0"])
def test_a_member_too_large_to_be_an_image_is_refused(tmp_path, monkeypatch, max_memory):
    monkeypatch.setattr(folders, "MAX_FILE_BYTES", 10_000)
    files = {**folder_files(), "train/apple/huge.png": b"\0" * 50_000}
    archive = write_zip(tmp_path / "bomb.zip", files)
    with pytest.raises(BlitzError, match="huge.png.*larger than"):
        load_data(DataConfig(source=str(archive), max_memory=max_memory), log=str)


def bad_zip(path: Path) -> Path:
    """A zip with a member whose bytes fail their CRC check."""
    write_zip(path, {**folder_files(), "train/apple/crc.png": b"A" * 64})
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"A" * 64, b"B" * 64, 1))
    return path


def test_an_unreadable_zip_member_is_named_and_can_be_skipped(tmp_path):
    archive = bad_zip(tmp_path / "crc.zip")
    with pytest.raises(BlitzError, match="crc.png"):
        load_data(DataConfig(source=str(archive)), log=str)
    data = load_data(DataConfig(source=str(archive), skip_bad_images=True), log=str)
    assert len(data.train) == 12


def special_files(root: Path) -> None:
    apple = root / "train" / "apple"
    os.mkfifo(apple / "fifo.png")  # reading it would wait for a writer forever
    (apple / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    (apple / "dangling.png").symlink_to(root / "missing.png")
    (root / "train" / "loop").symlink_to(root / "train")  # a folder that contains itself
    (apple / os.fsdecode(b"caf\xe9.png")).write_bytes((apple / "0_0.png").read_bytes())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("max_memory", ["auto", "0"])
def test_special_files_in_a_data_folder_are_left_alone(tmp_path, max_memory):
    root = write_folder(tmp_path / "fruit", folder_files())
    special_files(root)
    logs = []
    data = load_data(DataConfig(source=str(root), max_memory=max_memory), log=logs.append)
    assert len(data.train) == 13  # 12 + the non-UTF-8 name; no FIFO, device or dangling link
    assert any(line.startswith("ignored 4 files") for line in logs)  # and the loop


@pytest.mark.slow
@pytest.mark.subprocess
def test_hostile_names_are_escaped_in_the_report(tmp_path):
    evil = "<img src=x onerror=alert(1)>"
    files = {k.replace("apple", evil): v for k, v in folder_files().items()}
    root = write_folder(tmp_path / evil, files)
    out = tmp_path / "run"
    run_blitz("train", "--preset", "seed", "--data", root, "--max-steps", "2", "--out", out,
              cache=tmp_path / "cache")  # fmt: skip
    page = (out / "report.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "Content-Security-Policy" in page and "script-src 'sha256-" in page


FORMULAS = ["=HYPERLINK(1)", "+1", "-2", "@x", "'=3", "''"]


def test_a_text_cell_never_begins_like_a_formula_and_reads_back_as_it_was():
    for text in [*FORMULAS, "\tx", "\rx", "plain", "a=b", ""]:
        cell = text_cell(text)
        assert not cell.startswith(FORMULA_STARTS) and cell_text(cell) == text


def test_names_that_begin_like_formulas_are_text_in_every_csv_and_found_again(tmp_path, capsys):
    """A class "=HYPERLINK(1)" and files "-2.png" ...: sets.csv, the predictions' CSV and
    doctor.csv hold them as text (an apostrophe in front), and blitz reads them back."""
    files = {k.removeprefix("train/"): v for k, v in folder_files().items() if "train/" in k}
    files = {k.replace("apple", FORMULAS[0]): v for k, v in files.items()}
    for name in FORMULAS[1:]:
        files[f"{FORMULAS[0]}/{name}.png"] = files[f"{FORMULAS[0]}/0_0.png"]
    data = write_folder(tmp_path / "fruit", files)
    out, predicted = tmp_path / "run", tmp_path / "predicted.csv"
    args = ["train", "--preset", "seed", "--data", data, "--max-steps", "1", "--out", out]
    assert cli.main([*map(str, args), "--quiet"]) == 0, capsys.readouterr().err
    assert cli.main(["eval", str(out)]) == 0, capsys.readouterr().err  # the same sets found
    images = data / FORMULAS[0]
    assert (
        cli.main(["predict", str(out), str(images), "--top-k", "2", "--csv", str(predicted)]) == 0
    )
    finding = Finding("label", image=f"{FORMULAS[0]}/-2.png", label=FORMULAS[0], detail="@x")
    doctor = write_csv([finding], tmp_path / "doctor.csv")
    for table in (out / "sets.csv", predicted, doctor):
        cells = [c for row in csv.reader(table.open(newline="")) for c in row]
        assert f"'{FORMULAS[0]}" in "".join(cells)
        assert not [c for c in cells if c.startswith(FORMULA_STARTS)], table
    assert read_excluded(doctor) == {f"{FORMULAS[0]}/-2.png"}


@pytest.mark.slow
@pytest.mark.parametrize("container", ["folder", "tar"])
def test_a_file_name_that_is_not_utf8_trains_and_is_found_again(tmp_path, capsys, container):
    """Its bytes are kept in sets.csv, so eval (and --resume) find the same file."""
    name = os.fsdecode(b"\xff.png")  # how os.listdir and tarfile give it: surrogate-escaped
    files = {k.removeprefix("train/"): v for k, v in folder_files().items() if "train/" in k}
    files[f"apple/{name}"] = files["apple/0_0.png"]  # flat: the sets are split off and recorded
    if container == "folder":
        data = write_folder(tmp_path / "fruit", files)
    else:
        data = write_tar(tmp_path / "fruit.tar", files)
    out = tmp_path / "run"
    args = ["train", "--preset", "seed", "--data", data, "--max-steps", "1", "--out", out]
    assert cli.main([*map(str, args), "--quiet"]) == 0, capsys.readouterr().err
    assert b"apple/\xff.png\n" in (out / "sets.csv").read_bytes()
    assert cli.main(["eval", str(out)]) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_a_class_folder_whose_name_is_not_utf8_is_drawn_and_reported_as_its_bytes(tmp_path, capsys):
    """matplotlib's font and the page's UTF-8 cannot take its surrogates: shown as \\xNN."""
    name = os.fsdecode(b"\xff\xfe")
    files = {k.replace("apple", name): v for k, v in folder_files().items()}
    data = write_folder(tmp_path / "fruit", files)
    out = tmp_path / "run"
    args = ["train", "--preset", "seed", "--data", data, "--max-steps", "1", "--out", out]
    assert cli.main([*map(str, args), "--quiet"]) == 0, capsys.readouterr().err
    assert (out / "train_images.png").is_file()
    assert "\\xff\\xfe" in (out / "report.html").read_text()
    assert cli.main(["report", str(out), str(out), "--out", str(tmp_path / "c.html")]) == 0
    assert "\\xff\\xfe" in (tmp_path / "c.html").read_text()


def test_linked_split_and_class_folders_are_followed(tmp_path):
    elsewhere = write_folder(tmp_path / "elsewhere", folder_files())
    root = tmp_path / "fruit"
    (root / "train").mkdir(parents=True)
    (root / "test").symlink_to(elsewhere / "test")  # a linked split folder
    for name in ("apple", "banana", "cherry"):  # linked class folders
        (root / "train" / name).symlink_to(elsewhere / "train" / name)
    data = load_data(DataConfig(source=str(root)), log=str)
    assert (len(data.train), len(data.test)) == (12, 12)


def test_an_unreadable_member_of_a_streamed_archive_can_be_skipped(tmp_path):
    archive = bad_zip(tmp_path / "crc.zip")
    with pytest.raises(BlitzError, match="crc.png"):
        load_data(DataConfig(source=str(archive), max_memory="0"), log=str)
    data = load_data(DataConfig(source=str(archive), max_memory="0", skip_bad_images=True), str)
    assert len(data.train) == 12
