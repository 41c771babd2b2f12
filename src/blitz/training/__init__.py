"""The loop and what it writes as it runs: checkpoints, run directory, metrics."""
