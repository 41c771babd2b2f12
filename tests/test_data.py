import functools
import hashlib
import http.server
import os
import struct
import threading
import time
from pathlib import Path

import pytest
import torch

from blitz.config.data_settings import DataConfig
from blitz.data import sources
from blitz.data.dataset import ImageData, Split
from blitz.data.preprocess import normalize
from blitz.data.sources import PATH, cifar10, find_source, list_sources, load_data, register_source
from blitz.data.sources.shapes import CLASSES, make_shapes
from blitz.errors import BlitzError
from conftest import CLASSES as FRUIT
from conftest import cifar_archive, folder_files, write_folder, write_tar, write_zip


def test_every_source_is_registered_by_name():
    assert list_sources() == ["auto", "cifar10", "mnist", "multishapes", "shapes"]


@pytest.mark.parametrize(
    ("spec", "source", "arg"),
    [
        ("shapes", "shapes", ""),
        ("shapes:50", "shapes", "50"),
        ("cifar10", "cifar10", ""),
        ("cifar10:x", PATH, "cifar10:x"),  # cifar10 takes no argument: a path with a colon
        ("PATH", PATH, "PATH"),  # a folder may be called anything
        ("~/photos:2024", PATH, "~/photos:2024"),
    ],
)
def test_a_spec_is_a_name_a_name_with_an_argument_or_else_a_path(spec, source, arg):
    assert find_source(spec) == (sources._REGISTRY[source], arg)


def test_a_new_source_is_one_registered_function(monkeypatch):
    monkeypatch.setattr(sources, "_REGISTRY", dict(sources._REGISTRY))  # undone after the test

    @register_source("solid", takes_arg=True)
    def load_solid(arg, cfg, log):
        images = torch.full((int(arg), 3, cfg.image_size, cfg.image_size), 7, dtype=torch.uint8)
        split = Split(images, torch.arange(int(arg)) % 2)
        return ImageData("solid", ["dark", "light"], split, split)

    assert "solid" in list_sources()
    data = load_data("solid:6")
    assert (data.name, len(data.train), data.storage()) == ("solid", 6, "in memory, 36 KB")


def test_shapes_are_deterministic_balanced_and_varied():
    a_images, a_labels = make_shapes(200, seed=3)
    b_images, b_labels = make_shapes(200, seed=3)
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    assert a_images.shape == (200, 3, 32, 32) and a_images.dtype == torch.uint8
    assert torch.bincount(a_labels).tolist() == [20] * len(CLASSES)
    assert not torch.equal(make_shapes(200, seed=4)[0], a_images)
    assert a_images.float().std() > 30  # colour, position and noise vary


def test_shapes_spec_sets_the_train_size():
    data = load_data("shapes:100")
    assert (len(data.train), len(data.test), data.classes) == (100, 20, list(CLASSES))


@pytest.mark.parametrize("layout", ["dir", "tar.gz", "tgz", "tar", "zip", "nested-tar", "val-dir"])
def test_image_folder_in_every_layout(tmp_path, layout):
    files = folder_files(test_split="val" if layout == "val-dir" else "test")
    if layout.endswith("dir"):
        path = write_folder(tmp_path / "fruit", files)
    elif layout == "zip":
        path = write_zip(tmp_path / "fruit.zip", files)
    elif layout == "nested-tar":
        path = write_tar(tmp_path / "fruit.tar.gz", {f"fruit/{k}": v for k, v in files.items()})
    else:
        path = write_tar(tmp_path / f"fruit.{layout}", files)
    data = load_data(str(path))
    assert data.classes == FRUIT
    assert data.train.images.shape == (12, 3, 32, 32) and len(data.test) == 12
    assert data.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    red = data.train.images[0, :, 0, 0].tolist()
    assert red == [200, 30, 30]


@pytest.mark.parametrize("container", ["dir", "zip"])
@pytest.mark.parametrize("flat", [False, True])
def test_images_within_class_folders_count_and_hidden_files_do_not(tmp_path, container, flat):
    """cat/2019/1.jpg is a cat, as ImageFolder reads it; .ipynb_checkpoints, macOS's ._1.jpg
    (not images: they would fail to decode) and a Mac zip's __MACOSX are no part of the data."""
    files = {}
    for name, data in folder_files().items():
        split, cls, file = name.split("/")
        nested = f"{cls}/{2019 + int(file[2])}/{file}"  # apple/2019/0_0.png
        if not (flat and split == "test"):
            files[nested if flat else f"{split}/{nested}"] = data
    first = next(iter(files))
    hidden = [".ipynb_checkpoints/x-checkpoint.png", f"{first.rpartition('/')[0]}/._x.png",
              f"__MACOSX/{first}", ".git/objects/ab.png"]  # fmt: skip
    files.update(dict.fromkeys(hidden, b"\x00\x05\x16\x07 not an image"))
    if container == "dir":
        path = write_folder(tmp_path / "fruit", files)
    else:
        path = write_zip(tmp_path / "fruit.zip", files)
    data = load_data(str(path))
    assert data.classes == FRUIT
    assert len(data.train) + len(data.val or []) + len(data.test) == (12 if flat else 24)


def test_decoded_cache_is_reused_and_refreshed_when_the_source_changes(image_folder, cache):
    first = load_data(str(image_folder))
    cached = list((cache / "decoded").glob("*.pt"))
    assert len(cached) == 1
    logs = []
    second = load_data(str(image_folder), log=logs.append)
    assert torch.equal(first.train.images, second.train.images) and not logs  # no decoding
    (image_folder / "train" / "apple" / "extra.png").write_bytes(
        (image_folder / "train" / "apple" / "0_0.png").read_bytes()
    )
    third = load_data(str(image_folder))
    assert len(third.train) == 13
    assert [p.name for p in (cache / "decoded").glob("*.pt")] != [p.name for p in cached]
    assert len(list((cache / "decoded").glob("*.pt"))) == 1  # the older copy is dropped


def test_decoded_cache_keeps_each_image_s_file_name(image_folder, cache, tmp_path):
    """The names are stored as one string (fast to load); caches holding lists still read."""
    first = load_data(str(image_folder))
    [cached] = (cache / "decoded").glob("*.pt")
    assert isinstance(torch.load(cached, weights_only=True)["train"][2], str)
    second = load_data(str(image_folder))
    for role in ("train", "test"):
        assert getattr(second, role).files == getattr(first, role).files
    raw = torch.load(cached, weights_only=True)
    raw["train"] = (*raw["train"][:2], first.train.files)  # as blitz wrote it before
    torch.save(raw, cached)
    assert load_data(str(image_folder)).train.files == first.train.files
    assert decoded_names(None) is None and decoded_names([]) == []
    odd = ["a\0b", "c"]  # no file system allows it; a table could still name it
    assert decoded_names(odd) == odd


def decoded_names(files):
    """File names through the cache's writing and reading."""
    from blitz.data.cache import _joined_names, _read_split

    return _read_split(torch.zeros(0), torch.zeros(0), _joined_names(files)).files


def test_other_sources_and_options_keep_their_decoded_copies(tmp_path, cache):
    one = write_folder(tmp_path / "a" / "fruit", folder_files())
    two = write_folder(tmp_path / "b" / "fruit", folder_files())  # the same name elsewhere
    for path, size in ((one, 32), (two, 32), (one, 16)):
        load_data(DataConfig(source=str(path), image_size=size))
    assert len(list((cache / "decoded").glob("fruit-*.pt"))) == 3
    (one / "train" / "apple" / "0_0.png").unlink()  # one's 32-px copy is now stale
    load_data(DataConfig(source=str(one), image_size=32))
    assert len(list((cache / "decoded").glob("fruit-*.pt"))) == 3


def test_the_task_a_run_found_reads_the_copy_its_auto_task_decoded(tmp_path, cache):
    path = write_folder(tmp_path / "fruit", folder_files())
    load_data(DataConfig(source=str(path), task="auto"))  # what a run is given
    said = []
    load_data(DataConfig(source=str(path), task="single-label"), said.append)  # its config.json
    assert not [line for line in said if line.startswith("decoding")]
    assert len(list((cache / "decoded").glob("fruit-*.pt"))) == 1


def test_images_in_no_class_folder_are_named_as_ignored(tmp_path):
    files = folder_files()
    flat = {name.removeprefix("train/"): data for name, data in files.items() if "train/" in name}
    stray = files["train/apple/0_0.png"]
    cases = {
        "flat": ({**flat, "stray.png": stray}, "1 image (stray.png) that is"),
        "split": ({**files, "train/x.png": stray, "y.png": stray}, "2 images (e.g. train/x.png)"),
    }
    for name, (layout, ignored) in cases.items():
        said = []
        data = load_data(str(write_folder(tmp_path / name, layout)), log=said.append)
        assert data.classes == ["apple", "banana", "cherry"]
        assert f"ignored {ignored}" in "\n".join(said) and "in no class folder" in "\n".join(said)


def test_many_classes_of_one_size_are_counted_in_one_phrase():
    from blitz.data.counts import format_counts

    classes = [f"c{i:03d}" for i in range(30)]
    assert format_counts(classes, {"train": [3] * 30}) == "train images per class: 3 each"
    assert format_counts(classes, {"test": [1] * 29 + [4]}) == (
        "test images per class: 1 (c000) to 4 (c029)"
    )


def test_images_of_other_sizes_and_modes_are_converted(tmp_path):
    files = folder_files(size=40)
    files["train/apple/gray.png"] = __import__("conftest").png_bytes(128, 20, mode="L")
    path = write_folder(tmp_path / "odd", files)
    logs = []
    data = load_data(str(path), log=logs.append)
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert any("resized 25 images" in line for line in logs)


@pytest.mark.parametrize("archive", [False, True])
def test_decoding_on_several_threads_gives_what_one_thread_gives(tmp_path, monkeypatch, archive):
    files = folder_files(per_class=9, size=40)  # every image distinct, every one resized
    files["train/apple/bad.png"] = b"not an image"
    files["train/banana/grey.png"] = __import__("conftest").png_bytes(128, 20, mode="L")
    files["test/cherry/broken.png"] = files["test/cherry/2_0.png"][:60]
    if archive:
        path = write_tar(tmp_path / "fruit.tar.gz", files)
    else:
        path = write_folder(tmp_path / "fruit", files)
    loaded = []
    for threads in (1, 3):  # each with a cache of its own: both decode
        monkeypatch.setenv("BLITZ_DATA", str(tmp_path / f"cache{threads}"))
        logs = []
        cfg = DataConfig(source=str(path), workers=threads, skip_bad_images=True)
        loaded.append((load_data(cfg, log=logs.append), logs))
    (one, one_logs), (three, three_logs) = loaded
    for role in ("train", "test"):
        a, b = getattr(one, role), getattr(three, role)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert len(one.train) == 28 and len(one.test) == 27  # the bad ones skipped
    assert one_logs == three_logs  # the same images named as skipped, the same count resized
    assert any("skipped 2 images" in line for line in one_logs)
    assert any("resized 55 images" in line for line in one_logs)


@pytest.mark.slow
def test_decoding_processes_also_start_where_there_is_no_fork(tmp_path, monkeypatch):
    import multiprocessing

    from blitz.data.sources import folder

    monkeypatch.setattr(folder, "_start_method", lambda: multiprocessing.get_context("spawn"))
    path = write_folder(tmp_path / "fruit", folder_files())
    spawned = load_data(DataConfig(source=str(path), workers=2))
    monkeypatch.setenv("BLITZ_DATA", str(tmp_path / "other-cache"))
    here = load_data(DataConfig(source=str(path), workers=0))
    assert torch.equal(spawned.train.images, here.train.images)


def _die(chunk, size):  # a decoding process that crashes (module level: sent by name)
    os._exit(1)


def test_a_decoding_process_that_dies_is_one_clear_error(tmp_path, monkeypatch):
    from blitz.data.sources import folder

    monkeypatch.setattr(folder, "_decode_chunk", _die)
    path = write_folder(tmp_path / "fruit", folder_files())
    with pytest.raises(BlitzError, match="decoding processes died. Run again with --workers 0"):
        load_data(DataConfig(source=str(path), workers=2))
    assert len(load_data(DataConfig(source=str(path), workers=0)).train) == 12  # in-process


def test_an_archives_headers_are_parsed_once_and_again_when_it_changes(tmp_path, monkeypatch):
    import tarfile

    parsed = []
    real = tarfile.TarInfo.fromtarfile.__func__
    monkeypatch.setattr(
        tarfile.TarInfo,
        "fromtarfile",
        classmethod(lambda cls, tar: parsed.append(1) or real(cls, tar)),
    )
    files = folder_files()  # 24 images
    path = write_tar(tmp_path / "fruit.tar.gz", files)
    assert len(load_data(DataConfig(source=str(path), workers=0)).train) == 12
    assert len(parsed) < 1.5 * len(files)  # listed and read in one parse, not two
    files["train/apple/extra.png"] = files["train/apple/0_0.png"]
    write_tar(path, files)  # the same file, changed
    parsed.clear()
    assert len(load_data(DataConfig(source=str(path), workers=0)).train) == 13
    assert len(files) <= len(parsed) < 1.5 * len(files)


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_a_name_twice_in_an_archive_is_its_last_copy(tmp_path, suffix):
    """tar's append and update add a newer copy of a file: extracting leaves the last one."""
    import io
    import tarfile
    import warnings
    import zipfile

    files = folder_files()
    newer = ("train/apple/0_0.png", __import__("conftest").png_bytes((0, 0, 255)))
    path = tmp_path / f"fruit{suffix}"
    if suffix == ".tar":
        with tarfile.open(path, "w") as tar:
            for rel, data in [*files.items(), newer]:
                info = tarfile.TarInfo(rel)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Duplicate name": what this test is about
            for rel, data in [*files.items(), newer]:
                zf.writestr(rel, data)
    for max_memory in ("auto", "0"):  # decoded in memory, and extracted to stream
        data = load_data(DataConfig(source=str(path), max_memory=max_memory, workers=0))
        assert len(data.train) == 12
        first = data.train.row_ids("train").index("train/apple/0_0.png")
        image = data.train.images_at(torch.tensor([first]))[0]
        assert image[:, 0, 0].tolist() == [0, 0, 255]


SLOW_DECODE = """
import os, sys, time
from blitz.config.data_settings import DataConfig
from blitz.data.sources import folder, load_data
real = folder._decode_chunk
def slow(chunk, size):
    print("decoding in", os.getpid(), flush=True)
    time.sleep(0.5)
    return real(chunk, size)
folder._decode_chunk, folder.CHUNK_FILES = slow, 2
load_data(DataConfig(source=sys.argv[1], workers=2))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigterm_during_the_first_decode_ends_the_decoding_processes_too(tmp_path):
    import signal
    import subprocess
    import sys

    path = write_folder(tmp_path / "fruit", folder_files())
    env = {**os.environ, "BLITZ_DATA": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_DECODE, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    workers = set()
    while len(workers) < 2:  # both decoding processes at work
        line = proc.stdout.readline()
        if line.startswith("decoding in "):
            workers.add(int(line.split()[-1]))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while workers and time.monotonic() < deadline:
        for pid in list(workers):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                workers.discard(pid)
        time.sleep(0.1)
    assert not workers, f"decoding processes {workers} outlived blitz"


def test_official_cifar10_archive_as_a_path(tmp_path):
    data = load_data(str(cifar_archive(tmp_path / "cifar-10-python.tar.gz")))
    assert data.classes[0] == "airplane" and len(data.classes) == 10
    assert data.train.images.shape == (100, 3, 32, 32) and len(data.test) == 20


@pytest.fixture
def http_root(tmp_path):
    """A web server on the loopback interface, serving a folder (no outside network needed)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_cifar10_download_uses_the_official_archive(http_root, monkeypatch, cache):
    root, url = http_root
    archive = cifar_archive(root / "cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar10, "CIFAR10_URL", f"{url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    data = load_data("cifar10")
    assert len(data.train) == 100
    assert (cache / "cifar10" / "cifar-10-python.tar.gz").exists()
    assert len(load_data("auto").train) == 100  # auto now finds it in the cache


@pytest.mark.slow
def test_download_without_network_fails_fast_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(cifar10, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    started = time.perf_counter()
    with pytest.raises(BlitzError, match="downloading"):
        load_data("cifar10")
    assert time.perf_counter() - started < 15
    logs = []
    data = load_data("auto", log=logs.append)
    assert data.name == "shapes"
    assert "Using the generated 'shapes' dataset" in logs[0]


def _idx(path, magic, array):
    path.write_bytes(
        struct.pack(">I", magic)
        + b"".join(struct.pack(">I", d) for d in array.shape)
        + array.numpy().tobytes()
    )


def test_mnist_is_one_channel_resized_to_32(cache):
    raw = cache / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _idx(
            raw / f"{prefix}-images-idx3-ubyte",
            2051,
            torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8),
        )
        _idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, torch.arange(n, dtype=torch.uint8) % 10)
    data = load_data("mnist")
    assert data.train.images.shape == (30, 1, 32, 32) and data.channels == 1
    assert data.classes == [str(d) for d in range(10)]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: write_folder(p / "flat", {"a/b.png": b"x"}), "single class"),
        (lambda p: write_folder(p / "loose", {"b.png": b"x"}), "no images in class folders"),
        (
            lambda p: write_folder(
                p / "notrain", {k: v for k, v in folder_files().items() if k.startswith("test")}
            ),
            "has test/ but no train/",
        ),
        (
            lambda p: write_folder(
                p / "mismatch",
                {**folder_files(), "test/durian/x.png": folder_files()["test/apple/0_0.png"]},
            ),
            "different classes.*durian",
        ),
        (
            lambda p: write_folder(p / "corrupt", {**folder_files(), "train/apple/bad.png": b"no"}),
            "cannot decode image train/apple/bad.png",
        ),
        (
            lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt",
            "not a folder or an archive",
        ),
        (
            lambda p: write_tar(p / "evil.tar", {"../escape/train/a/x.png": b"x"}),
            "outside the archive",
        ),
        # a pipe (any name) or a device: never opened, tarfile/zipfile would wait on a pipe
        (lambda p: os.mkfifo(p / "pipe.tar") or p / "pipe.tar", "pipe.tar is not a folder or a"),
        (lambda p: os.mkfifo(p / "pipe.zip") or p / "pipe.zip", "pipe.zip is not a folder or a"),
        (lambda p: os.mkfifo(p / "pipe.png") or p / "pipe.png", "a pipe, a socket or a device"),
        (lambda p: Path("/dev/zero"), "/dev/zero is not a folder or a regular file"),
    ],
)
def test_bad_sources_name_the_problem(tmp_path, make, message):
    with pytest.raises(BlitzError, match=message):
        load_data(str(make(tmp_path)))


def test_normalize_maps_bytes_to_minus_one_one_like_the_seed():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    out = normalize(images, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).flatten().tolist()
    assert out == pytest.approx([-1.0, 1.0, 51 / 255 * 2 - 1])


def test_normalize_is_the_seeds_formula_in_two_passes():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    plain = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(normalize(images, mean, std), plain, rtol=1e-6, atol=1e-6)
    floats = images.float()
    normalize(floats, mean, std)  # a float batch is copied, never changed in place
    assert torch.equal(floats, images.float())


@pytest.mark.slow
def test_an_archive_of_many_members_shows_progress_listing_decoding_and_extracting(
    tmp_path, monkeypatch, capsys
):
    from tqdm import tqdm

    from blitz.data import dataset as data_module
    from blitz.training.context import silent
    from conftest import png_bytes

    shown = []

    def on_a_terminal(*args, disable=None, **kwargs):  # capsys is no terminal: draw it anyway
        shown.append((args[1], disable))
        return tqdm(*args, disable=disable or False, mininterval=0, **kwargs)

    monkeypatch.setattr(data_module, "tqdm", on_a_terminal)
    tiny = [png_bytes((200, 30, 30), size=4), png_bytes((30, 30, 200), size=4)]
    files = {f"train/c{i % 2}/{i:04d}.png": tiny[i % 2] for i in range(2000)}
    files |= {f"test/c{i % 2}/{i:04d}.png": tiny[i % 2] for i in range(10)}
    archive = write_tar(tmp_path / "many.tar.gz", files)
    load_data(DataConfig(source=str(archive), image_size=8), log=lambda m: None)
    err = capsys.readouterr().err
    assert "listing many.tar.gz: " in err and "2010 files" in err
    assert "decoding many.tar.gz: 100%" in err and "2010/2010" in err
    load_data(DataConfig(source=str(archive), image_size=8, max_memory="0"), log=lambda m: None)
    assert "extracting many.tar.gz: 100%" in capsys.readouterr().err
    shown.clear()
    (tmp_path / "cache").rename(tmp_path / "old")  # decode it all again, quietly
    load_data(DataConfig(source=str(archive), image_size=8), log=silent)
    assert shown and all(disable is True for _, disable in shown)  # --quiet: no bar
    assert capsys.readouterr().err == ""
