"""blitz's malloc thresholds (glibc): a step's freed activations are reused, not paged in anew."""

import os
import subprocess
import sys

import pytest

from blitz.utils import allocator

GLIBC = sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

# Steps on 24 px batches, then on 32 px ones (fast-cpu's low-res schedule): the page faults of
# the 32 px steps, with or without blitz's thresholds
STEPS = """
import resource, sys, torch
if sys.argv[1] == "kept":
    from blitz.utils.allocator import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
x, conv = torch.randn(128, 3, 32, 32), torch.nn.Conv2d(3, 16, 3, padding=1)
for size, steps in ((24, 20), (32, 70)):
    for step in range(steps):
        if step == 10:  # the last 60 steps at 32 px: steady, past the first uses of a size
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = conv(torch.nn.functional.interpolate(x, size=size))
        y.relu().sum().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    """Page faults of 60 steps, ``kept`` with blitz's thresholds, else with glibc's own."""
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_kept_memory_spares_the_page_faults_of_each_step():
    kept, default = page_faults("kept"), page_faults("default")
    # measured: 1-2,049 against 40,000-64,000; the kept ones are a first touch, once per run
    assert kept * 4 < default, (kept, default)


def test_elsewhere_nothing_happens(monkeypatch):
    monkeypatch.setattr(allocator.os, "confstr", lambda name: "musl 1.2")
    assert allocator.keep_freed_memory() is False


def test_the_command_line_sets_them(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1))
    from blitz.cli import main

    assert main(["presets"]) == 0
    assert calls == [1]
