"""Several processes (torchrun, gloo on CPU) against one: the same training, the same metrics."""

import json
import os
import subprocess
import sys

import pytest
import torch

from blitz.distributed import SINGLE, World, check_batch_size, epoch_batches, shard
from blitz.errors import BlitzError
from conftest import shapes_folder


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


def train(out, cache, *extra, data="shapes:200"):
    cmd = [sys.executable, "-m", "blitz", "train", "--preset", "seed", "--data", str(data)]
    cmd += ["--batch-size", "20"]
    # SGD: Adam would amplify the last-bit differences of summing gradients in another order
    cmd += ["--epochs", "2", "--lr", "0.01", "--out", str(out), "--quiet"]
    cmd += extra
    env = {**os.environ, "BLITZ_DATA": str(cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "metrics.json").read_text()), torch.load(
        out / "model.pt", weights_only=True
    )["state_dict"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_train_like_one(tmp_path):
    one, weights_one = train(tmp_path / "one", tmp_path / "cache")
    two, weights_two = train(tmp_path / "two", tmp_path / "cache", "--devices", "2")
    assert two["processes"] == 2 and one["processes"] == 1
    for name, tensor in weights_one.items():
        assert torch.allclose(tensor, weights_two[name], atol=1e-5), name
    assert one["confusion_matrix"] == two["confusion_matrix"]
    assert one["test_accuracy"] == two["test_accuracy"]
    assert [h["train_loss"] for h in one["history"]] == pytest.approx(
        [h["train_loss"] for h in two["history"]], abs=1e-5
    )
    losses = [h["train_loss"] for h in one["history"]]
    assert losses[1] < losses[0]  # it learned something, so the comparison means something


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
