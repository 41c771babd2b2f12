"""The run context: what every stage of a run needs, made once in the set-up step and handed
down (settings, this process's place in the world, the device, the run directory, output)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blitz.config.settings import Config
from blitz.data.dataset import Log, silent  # noqa: F401  (silent: re-exported, as before)
from blitz.training.distributed import SINGLE, World
from blitz.training.rundir import RunDir


@dataclass(frozen=True)
class RunContext:
    """A run's fixed facts. ``log`` prints only on the first process."""

    cfg: Config
    device: torch.device
    world: World = SINGLE
    dir: RunDir | None = None  # None: a run that writes nothing (lr-find, tests)
    log: Log = print
    quiet: bool = False
    started: float = 0.0  # time.perf_counter() when the command started

    @property
    def is_main(self) -> bool:
        """The first process: the one that prints, writes the run directory and checkpoints."""
        return self.world.is_main

    @property
    def writes(self) -> RunDir | None:
        """The run directory, on the process that writes it."""
        return self.dir if self.is_main else None
