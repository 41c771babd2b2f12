"""Several processes (torchrun, gloo on CPU) against one: the same training, the same metrics."""

import json
import os
import subprocess
import sys

import pytest
import torch

from blitz.errors import BlitzError
from blitz.training.checkpoint import load_checkpoint
from blitz.training.distributed import SINGLE, World, check_batch_size, epoch_batches, shard
from conftest import shapes_folder

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_shards_are_disjoint_and_cover_the_batch():
    rows = torch.arange(10)
    parts = [shard(rows, World(rank, 3, rank)) for rank in range(3)]
    assert torch.equal(torch.cat(parts), rows)
    assert torch.equal(shard(rows, SINGLE), rows)


def test_epoch_order_is_a_shuffle_of_seed_and_epoch_alone():
    first = torch.cat(epoch_batches(100, 32, 0, 0, SINGLE))
    assert sorted(first.tolist()) == list(range(100)) and first.tolist() != list(range(100))
    assert torch.equal(first, torch.cat(epoch_batches(100, 32, 0, 0, SINGLE)))
    assert not torch.equal(first, torch.cat(epoch_batches(100, 32, 0, 1, SINGLE)))
    assert not torch.equal(first, torch.cat(epoch_batches(100, 32, 1, 0, SINGLE)))
    assert [len(b) for b in epoch_batches(100, 32, 0, 0, SINGLE)] == [32, 32, 32, 4]


def test_ranks_batches_make_the_global_batches():
    one = epoch_batches(100, 20, 5, 3, SINGLE)
    ranks = [epoch_batches(100, 20, 5, 3, World(r, 4, r)) for r in range(4)]
    for step, rows in enumerate(one):
        parts = [batches[step] for batches in ranks]
        assert all(len(p) == 5 for p in parts)
        assert sorted(torch.cat(parts).tolist()) == sorted(rows.tolist())


def test_global_batch_must_split_evenly():
    check_batch_size(64, World(0, 4, 0))
    with pytest.raises(BlitzError, match="multiple of 3"):
        check_batch_size(64, World(0, 3, 0))


def train(out, cache, *extra, data="shapes:200", launcher=(sys.executable, "-m", "blitz")):
    cmd = [*launcher, "train", "--preset", "seed", "--data", str(data), "--batch-size", "20"]
    # SGD: Adam would amplify the last-bit differences of summing gradients in another order
    cmd += ["--epochs", "2", "--lr", "0.01", "--out", str(out), "--quiet"]
    cmd += extra
    env = {**os.environ, "BLITZ_DATA": str(cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "metrics.json").read_text()), load_checkpoint(
        out / "model.pt"
    ).state_dict


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_train_like_one(tmp_path):
    # with a validation set, early stopping, class weights and the balanced sampler: every
    # process draws the same epochs, weighs alike and sees the same validation accuracy
    extra = ["--val-fraction", "0.1", "--patience", "1", "--class-weights", "balanced"]
    extra += ["--sampler", "balanced", "--lr", "0.05"]
    one, weights_one = train(tmp_path / "one", tmp_path / "cache", *extra)
    two, weights_two = train(tmp_path / "two", tmp_path / "cache", *extra, "--devices", "2")
    assert [h["val_accuracy"] for h in one["history"]] == [
        h["val_accuracy"] for h in two["history"]
    ]
    assert two["processes"] == 2 and one["processes"] == 1
    for name, tensor in weights_one.items():
        assert torch.allclose(tensor, weights_two[name], atol=1e-5), name
    assert one["confusion_matrix"] == two["confusion_matrix"]
    assert one["test_accuracy"] == two["test_accuracy"]
    grid = "test_predictions.png"  # each image's gathered prediction, in its caption
    assert (tmp_path / "one" / grid).read_bytes() == (tmp_path / "two" / grid).read_bytes()
    assert [h["train_loss"] for h in one["history"]] == pytest.approx(
        [h["train_loss"] for h in two["history"]], abs=1e-5
    )
    losses = [h["train_loss"] for h in one["history"]]
    assert losses[1] < losses[0]  # it learned something, so the comparison means something


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_streaming_processes_train_like_one_in_memory(tmp_path):
    """DistributedSampler's shards, read by each process's DataLoader workers, make the same
    global batches as one process slicing tensors."""
    folder = shapes_folder(tmp_path / "shapes", 120)
    one, weights_one = train(tmp_path / "one", tmp_path / "cache", data=folder)
    stream = ("--devices", "2", "--max-memory", "0", "--workers", "1")
    two, weights_two = train(tmp_path / "two", tmp_path / "cache", *stream, data=folder)
    assert two["data_storage"] == "streamed from disk" and two["processes"] == 2
    for name, tensor in weights_one.items():
        assert torch.allclose(tensor, weights_two[name], atol=1e-5), name
    assert one["confusion_matrix"] == two["confusion_matrix"]


# A worker for torchrun that notes each step of rank 1 in $STEPS_LOG ("attempt step") and kills
# itself at the start of step 13 of the first attempt, as a crashed machine would; torchrun
# --max-restarts then restarts the whole group.
DYING_WORKER = """
import os, signal, sys
from blitz import cli
from blitz.training import engine
step = engine.scheduled_step
def dying_step(loop, *args):
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    if loop.world.rank == 1:
        with open(os.environ["STEPS_LOG"], "a") as log:
            log.write(f"{attempt} {loop.state.step}\\n")
        if attempt == "0" and loop.state.step == 12:
            os.kill(os.getpid(), signal.SIGKILL)
    return step(loop, *args)
engine.scheduled_step = dying_step
raise SystemExit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_torchrun_restarts_a_killed_worker_from_the_last_checkpoint(tmp_path, monkeypatch):
    worker, steps_log = tmp_path / "worker.py", tmp_path / "steps.log"
    worker.write_text(DYING_WORKER)
    monkeypatch.setenv("STEPS_LOG", str(steps_log))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc-per-node", "2", "--max-restarts", "1", str(worker)]
    elastic, weights_elastic = train(
        tmp_path / "elastic", tmp_path / "cache", "--checkpoint-every", "5", launcher=torchrun
    )
    steps = [tuple(map(int, line.split())) for line in steps_log.read_text().splitlines()]
    assert steps[12] == (0, 12)  # killed there
    assert steps[13:] == [(1, s) for s in range(10, 20)]  # restarted from the step-10 checkpoint
    alone, weights_alone = train(tmp_path / "alone", tmp_path / "cache", "--devices", "2")
    assert elastic["steps"] == alone["steps"] == 20 and elastic["processes"] == 2
    for name, tensor in weights_alone.items():
        assert torch.allclose(tensor, weights_elastic[name], atol=1e-6), name
    assert elastic["confusion_matrix"] == alone["confusion_matrix"]
