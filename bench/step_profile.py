"""Where a training step's time goes: torch.profiler over a window of steps of one `blitz train`.

    python bench/step_profile.py [--skip 30] [--steps 20] [--rows 25] -- BLITZ_TRAIN_ARGS...

e.g. `python bench/step_profile.py -- --preset fast-gpu --data cifar10-jpeg.tar.gz --out /tmp/p`.
The run trains as usual; after --skip steps (the compiled warm-up is not among them), --steps steps
are profiled (CPU, and CUDA where the run is on a GPU). Printed: the ops by their own time on the
device (or the CPU), by CPU time with their children, and per step the wall time against the time
the GPU was busy, which says whether the loop is bound by the GPU or by launching its work.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from blitz import cli
from blitz.training import step as training_step


def profiled_train_step(skip: int, steps: int, report: Callable) -> Callable:
    """step.train_step, stepping a profiler that records steps skip+1 .. skip+steps."""
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    prof = profile(activities=activities, schedule=schedule(wait=skip, warmup=2, active=steps))
    real, clock = training_step.train_step, {"count": 0}
    window = skip + 2

    def step(*args, **kwargs):
        if clock["count"] == 0:
            prof.start()
        if clock["count"] == window:
            clock["started"] = time.perf_counter()
        out = real(*args, **kwargs)
        clock["count"] += 1
        if clock["count"] == window + steps:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - clock["started"]
            prof.step()
            prof.stop()
            report(prof, wall, steps)
        elif clock["count"] < window + steps:
            prof.step()
        return out

    return step


def report_table(rows: int) -> Callable:
    def report(prof: profile, wall: float, steps: int) -> None:
        averages = prof.key_averages()
        gpu = torch.cuda.is_available()
        own = "self_device_time_total" if gpu else "self_cpu_time_total"
        print(averages.table(sort_by=own, row_limit=rows, max_name_column_width=60))
        print(averages.table(sort_by="cpu_time_total", row_limit=rows, max_name_column_width=60))
        line = f"{steps} steps: {1000 * wall / steps:.2f} ms per step (wall, profiler on)"
        if gpu:
            busy = sum(e.self_device_time_total for e in averages) / 1000 / steps
            line += f"; GPU busy {busy:.2f} ms per step ({100 * busy * steps / 1000 / wall:.0f} %)"
        print(line, flush=True)

    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip", type=int, default=30, help="steps before the window")
    parser.add_argument("--steps", type=int, default=20, help="steps profiled")
    parser.add_argument("--rows", type=int, default=25, help="rows per table")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    training_step.train_step = profiled_train_step(args.skip, args.steps, report_table(args.rows))
    raise SystemExit(cli.main(["train", *train_args]))


if __name__ == "__main__":
    main()
