"""Where a training step's time goes: torch.profiler over a window of steps of one `blitz train`.

    python bench/step_profile.py [--skip 30] [--steps 20] [--rows 25] [--markdown FILE] \
        -- BLITZ_TRAIN_ARGS...

e.g. `python bench/step_profile.py -- --preset fast-gpu --data cifar10-jpeg.tar.gz --out /tmp/p`.
The run trains as usual; after --skip steps (the compiled warm-up is not among them), --steps steps
are profiled (CPU, and CUDA where the run is on a GPU). Printed: the ops by their own time on the
device (or the CPU), by CPU time with their children, and per step the wall time against the time
the GPU was busy, which says whether the loop is bound by the GPU or by launching its work.
--markdown writes the same per step as tables for bench/RESULTS.md: the device's time by kind of
kernel (convolutions, matrix products, Triton's fused kernels...), the idle time (wall minus
busy), the wall time per step with the profiler off (the --steps steps before the window), and
the kernels that take the most time.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from summary import markdown_table
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from blitz import cli
from blitz.training import step as training_step

# kinds of GPU kernel, by name, first match wins (cuDNN's convolutions are implicit GEMMs)
KINDS = [
    ("convolutions (cuDNN)", r"conv|cudnn|fprop|dgrad|wgrad|implicit"),
    ("matrix products (Muon's Newton-Schulz, the head)", r"gemm|nvjet|cutlass|cublas|matmul|mm"),
    ("max-pooling", r"pool"),
    ("Triton's fused kernels (norms, activations, optimizers)", r"^triton"),
    ("copies and fills", r"memcpy|memset|copy|fill"),
    ("other kernels", r""),
]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profiled_train_step(skip: int, steps: int, report: Callable) -> Callable:
    """step.train_step, stepping a profiler that records steps skip+3 .. skip+steps+2; the
    ``steps`` steps before the profiler starts are timed without it."""
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    prof = profile(activities=activities, schedule=schedule(wait=skip, warmup=2, active=steps))
    real, clock = training_step.train_step, {"count": 0}
    window, unprofiled = skip + 2, max(0, skip - steps)

    def step(*args, **kwargs):
        if clock["count"] == 0:
            prof.start()
        if clock["count"] in (unprofiled, window):
            _sync()
            clock[clock["count"]] = time.perf_counter()
        out = real(*args, **kwargs)
        clock["count"] += 1
        if clock["count"] == skip:
            _sync()
            clock["off"] = (time.perf_counter() - clock[unprofiled]) / (skip - unprofiled)
        if clock["count"] == window + steps:
            _sync()
            wall = time.perf_counter() - clock[window]
            prof.step()
            prof.stop()
            report(prof, wall, steps, clock.get("off"))
        elif clock["count"] < window + steps:
            prof.step()
        return out

    return step


def kernel_times(prof: profile) -> dict[str, tuple[float, int]]:
    """Each kernel's (or, on a CPU, each op's own) time in ms and its calls, in all."""
    averages = prof.key_averages()
    kernels = [e for e in averages if e.device_type == DeviceType.CUDA]
    if kernels:
        return {e.key: (e.self_device_time_total / 1000, e.count) for e in kernels}
    if torch.cuda.is_available():  # no kernel rows: the ops' own device time, as before
        own = [e for e in averages if e.self_device_time_total > 0]
        return {e.key: (e.self_device_time_total / 1000, e.count) for e in own}
    return {
        e.key: (e.self_cpu_time_total / 1000, e.count)
        for e in averages
        if not e.key.startswith("ProfilerStep")
    }


def markdown(prof: profile, wall: float, steps: int, off: float | None) -> str:
    """Per step: time by kind of kernel, busy against idle, and the top kernels."""
    times = kernel_times(prof)
    where = "GPU" if torch.cuda.is_available() else "CPU (no GPU: ops' own CPU time)"
    by_kind: dict[str, float] = defaultdict(float)
    for name, (ms, _) in times.items():
        kind = next(k for k, pattern in KINDS if re.search(pattern, name, re.IGNORECASE))
        by_kind[kind] += ms / steps
    busy, per_step = sum(by_kind.values()), 1000 * wall / steps
    rows = [[k, f"{by_kind[k]:.3f}", f"{100 * by_kind[k] / per_step:.1f} %"] for k, _ in KINDS]
    rows.append([f"**{where} busy**", f"**{busy:.3f}**", f"{100 * busy / per_step:.1f} %"])
    if torch.cuda.is_available():  # a CPU is never idle by this count: its ops nest
        idle = per_step - busy
        rows.append(
            ["**GPU idle** (wall - busy)", f"**{idle:.3f}**", f"{100 * idle / per_step:.1f} %"]
        )
    rows.append(["wall per step, profiler on", f"{per_step:.3f}", "100 %"])
    if off:
        rows.append(["wall per step, profiler off (the steps before)", f"{1000 * off:.3f}", ""])
    top = sorted(times.items(), key=lambda item: -item[1][0])[:15]
    kernels = [
        [f"`{n[:90].replace('|', '/')}`", f"{ms / steps:.3f}", f"{calls / steps:g}"]
        for n, (ms, calls) in top
    ]
    return "\n\n".join(
        [
            f"{steps} steps profiled; ms per step:",
            markdown_table(["where the time goes", "ms per step", "of the wall time"], rows),
            markdown_table(["kernel (top 15)", "ms per step", "calls per step"], kernels),
        ]
    )


def report_table(rows: int, markdown_file: Path | None) -> Callable:
    def report(prof: profile, wall: float, steps: int, off: float | None) -> None:
        averages = prof.key_averages()
        gpu = torch.cuda.is_available()
        own = "self_device_time_total" if gpu else "self_cpu_time_total"
        print(averages.table(sort_by=own, row_limit=rows, max_name_column_width=60))
        print(averages.table(sort_by="cpu_time_total", row_limit=rows, max_name_column_width=60))
        line = f"{steps} steps: {1000 * wall / steps:.2f} ms per step (wall, profiler on)"
        if gpu:
            busy = sum(ms for ms, _ in kernel_times(prof).values()) / steps
            line += f"; GPU busy {busy:.2f} ms per step ({100 * busy * steps / 1000 / wall:.0f} %)"
        print(line, flush=True)
        if markdown_file:
            markdown_file.write_text(markdown(prof, wall, steps, off) + "\n")
            print(f"markdown: {markdown_file}", flush=True)

    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip", type=int, default=30, help="steps before the window")
    parser.add_argument("--steps", type=int, default=20, help="steps profiled")
    parser.add_argument("--rows", type=int, default=25, help="rows per table")
    parser.add_argument("--markdown", type=Path, help="also write per-step tables here")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    report = report_table(args.rows, args.markdown)
    training_step.train_step = profiled_train_step(args.skip, args.steps, report)
    raise SystemExit(cli.main(["train", *train_args]))


if __name__ == "__main__":
    main()
