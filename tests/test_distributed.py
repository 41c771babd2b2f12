"""Several processes (torchrun, gloo on CPU) against one: the same training, the same metrics."""

import json
import os
import subprocess
import sys

import pytest
import torch

from blitz.distributed import SINGLE, World, shard


def test_shards_are_disjoint_and_cover_the_batch():
    rows = torch.arange(10)
    parts = [shard(rows, World(rank, 3, rank)) for rank in range(3)]
    assert torch.equal(torch.cat(parts), rows)
    assert torch.equal(shard(rows, SINGLE), rows)


def train(out, cache, *extra):
    cmd = [sys.executable, "-m", "blitz", "train", "--preset", "seed", "--data", "shapes:200"]
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
