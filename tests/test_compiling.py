"""The compile cache: in $BLITZ_DATA/compile, and rebuilt when a killed compile damaged it."""

from __future__ import annotations

import os

import pytest
import torch
from torch._inductor.runtime.runtime_utils import default_cache_dir

from blitz.data.sources import load_data
from blitz.errors import BlitzError
from blitz.models import create_model
from blitz.models.configs import build_config
from blitz.training.compiling import CACHE_VARIABLE, use_compile_cache
from blitz.training.context import RunContext
from blitz.training.engine import build_loop, warm_up
from blitz.training.loop import TrainHooks
from blitz.training.progress import Progress
from conftest import run_blitz

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_dynamo(monkeypatch):
    """No compiled frames from other tests, and the cache variable restored afterwards."""
    monkeypatch.delenv(CACHE_VARIABLE, raising=False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_the_cache_goes_to_blitz_data_even_after_torch_wrote_its_default(cache):
    os.environ[CACHE_VARIABLE] = default_cache_dir()  # what importing torchvision leaves
    assert use_compile_cache() == cache / "compile"
    assert os.environ[CACHE_VARIABLE] == str(cache / "compile") and (cache / "compile").is_dir()


def test_a_cache_folder_the_user_chose_is_kept(tmp_path):
    os.environ[CACHE_VARIABLE] = str(tmp_path / "mine")
    assert use_compile_cache() == tmp_path / "mine"


def compiled_loop(failures: list[Exception], lines: list[str]):
    """A tiny convnet's training loop whose compiled net raises ``failures`` on its first
    compiles (as inductor does on a damaged cache), then runs eagerly; and its calls."""
    cfg = build_config(
        "seed", {"model.name": "convnet", "train.max_steps": 1, "train.compile": True}
    )
    data = load_data("shapes:100")
    model = create_model("convnet", 10, 3, widths=[4, 8])
    ctx = RunContext(cfg, CPU, log=lines.append, quiet=True)
    loop = build_loop(ctx, data, model, Progress(cfg, lines.append, True), TrainHooks())
    calls = []

    def backend(graph, inputs):
        calls.append(len(calls))
        if failures:
            raise failures.pop(0)
        return graph.forward

    loop.net = torch.compile(model, backend=backend)
    return loop, data, calls


def damaged(folder) -> ImportError:
    return ImportError(f"{folder}/tl/ctlshgw.main.so: file too short")


@pytest.mark.slow
def test_a_damaged_cache_is_deleted_and_the_warm_up_tried_again(cache):
    folder = use_compile_cache()
    (folder / "stale").write_text("x")
    lines = []
    loop, data, calls = compiled_loop([damaged(folder)], lines)
    warm_up(loop, data, CPU)
    assert lines == [
        f"the compile cache in {folder} was damaged (cut short or overwritten): rebuilding it"
    ]
    assert folder.is_dir() and not (folder / "stale").exists()
    assert len(calls) >= 2 and loop.state.step == 0  # compiled again; the warm-up left no trace


@pytest.mark.slow
@pytest.mark.parametrize("again", [True, False])
def test_a_compile_that_still_fails_is_one_error_naming_the_cache(cache, again):
    folder = use_compile_cache()
    failures = [damaged(folder), damaged(folder)] if again else [RuntimeError("no compiler")]
    loop, data, _ = compiled_loop(failures, [])
    with pytest.raises(BlitzError) as error:
        warm_up(loop, data, CPU)
    message = str(error.value)
    assert str(folder) in message and "--set train.compile=false" in message
    assert ("file too short" if again else "RuntimeError: no compiler") in message


def test_only_blitz_own_cache_is_ever_deleted(tmp_path):
    os.environ[CACHE_VARIABLE] = str(tmp_path / "mine")
    folder = use_compile_cache()
    folder.mkdir()
    (folder / "kept").write_text("x")
    lines = []
    loop, data, calls = compiled_loop([damaged(folder)], lines)
    with pytest.raises(BlitzError, match="delete that folder"):
        warm_up(loop, data, CPU)
    assert (folder / "kept").exists() and not lines and len(calls) == 1


@pytest.mark.subprocess
@pytest.mark.skipif(
    not os.environ.get("BLITZ_TEST_COMPILE"),
    reason="two real compiles, about 2 minutes on 2 cores: set BLITZ_TEST_COMPILE=1",
)
def test_a_real_run_recovers_from_kernels_cut_to_zero_bytes(cache, tmp_path):
    args = ["train", "--data", "shapes:100", "--model", "lenet", "--max-steps", "1"]
    args += ["--set", "train.compile=true", "--set", "train.batch_size=8"]
    run_blitz(*args, "--out", tmp_path / "first", cache=cache)
    kernels = list((cache / "compile").rglob("*.so"))
    assert kernels
    for kernel in kernels:  # what a compile killed while writing them leaves
        kernel.write_bytes(b"")
    second = run_blitz(*args, "--out", tmp_path / "second", cache=cache)
    assert f"the compile cache in {cache / 'compile'} was damaged" in second.stdout
    assert "test accuracy" in second.stdout
