"""One contender of bench/compare.py, as a long-lived worker: warm up once (untimed), then train
one seed per request, so that the contenders take turns on one GPU, seed by seed.

    python bench/contender.py KIND ARCHIVE WORK_DIR [-- BLITZ_TRAIN_ARGS...]

KIND: ``blitz`` (``blitz train --preset fast-gpu`` in this process, BLITZ_TRAIN_ARGS added),
``train94`` (the `airbench` package's, bench/external/airbench) or ``muon`` (Keller Jordan's
record script bench/external/airbench94_muon.py: bench/get_airbench.sh fetches both). The
airbench ones read WORK_DIR/cifar10/{train,test}.pt (bench/vs_airbench.py's conversion).

Protocol (JSON lines; everything else this process prints goes to stderr): it answers
``{"ready": ...}`` after its warm-up, then reads ``{"seed": N}`` lines and answers each with
the run's accuracy and its train + eval ``seconds`` (each system's own timing: blitz's
``train_seconds + eval_seconds``, airbench's CUDA-event time of whitening, training and TTA
evaluation), until ``{"stop": true}`` or the end of its input.

BENCH_CPU_DRY=1 runs the airbench contenders on the CPU, uncompiled (their code asks for CUDA):
only to try this plumbing on a machine without a GPU; their figures mean nothing then.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

EXTERNAL = Path(__file__).resolve().parent / "external"
WARMUP_SEED = 1000  # blitz's warm-up run: a seed none of the timed runs uses


def protocol_stream() -> io.TextIOWrapper:
    """The real stdout, for answers only; print() and the libraries' output go to stderr."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return answers


def final_row(printed: str) -> tuple[float, float]:
    """(TTA accuracy, seconds) from the last row of airbench's printed table: its epoch
    column says 'eval' there."""
    row = next(line for line in reversed(printed.splitlines()) if "eval" in line)
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    return float(cells[-2]), float(cells[-1])


def blitz_runner(archive: str, work: Path, extra: list[str]) -> Callable[[int], dict]:
    import torch

    from blitz import cli

    # each run compiles a new model and Muon step in this process: leave dynamo room for all
    # of them rather than let it fall back to eager after its default 8 recompiles
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 1024)

    def run(seed: int) -> dict:
        out = work / f"seed{seed}"
        argv = ["train", "--preset", "fast-gpu", "--data", archive, "--seed", str(seed)]
        argv += ["--out", str(out), "--overwrite", "--quiet", *extra]
        if cli.main(argv) != 0:
            raise RuntimeError(f"blitz train {' '.join(argv)} failed")
        metrics = json.loads((out / "metrics.json").read_text())
        kept = ("train_seconds", "eval_seconds", "compile_seconds", "total_seconds", "device_name")
        return {
            "accuracy": metrics["test_accuracy"],
            "seconds": metrics["train_seconds"] + metrics["eval_seconds"],
            **{key: metrics.get(key) for key in kept},
        }

    return run


def airbench_runner(kind: str, work: Path) -> Callable[[int], dict]:
    import torch

    sys.path.insert(0, str(EXTERNAL))
    os.chdir(work)  # both read ./cifar10/{train,test}.pt
    if kind == "train94":
        import airbench

        def train(seed: int | None) -> None:
            airbench.train94(run=-1 if seed is None else seed)  # run -1: its warm-up

    else:
        import airbench94_muon as record

        model = record.CifarNet().cuda().to(memory_format=torch.channels_last)
        model.compile(mode="max-autotune")  # as its __main__ does

        def train(seed: int | None) -> None:
            record.main("warmup" if seed is None else seed, model)

    def run(seed: int | None) -> dict:
        if seed is not None:
            torch.manual_seed(seed)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            train(seed)
        print(printed.getvalue(), file=sys.stderr)
        if seed is None:  # a warm-up: train94's stops after one step, without a final row
            return {}
        accuracy, seconds = final_row(printed.getvalue())
        return {"accuracy": accuracy, "seconds": seconds}

    return run


def cpu_stand_ins() -> None:
    """BENCH_CPU_DRY: airbench's CUDA calls made harmless on a CPU; no compiling, and fp32 for
    its fp16 (minutes a step on a CPU)."""
    import torch

    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.compile = lambda self, *a, **k: None  # type: ignore[method-assign]
    torch.nn.Module.half = lambda self: self.float()  # type: ignore[method-assign]
    torch.Tensor.half = lambda self, *a, **k: self.float()  # type: ignore[method-assign]
    torch.compile = lambda fn=None, **k: fn if fn is not None else (lambda f: f)
    load = torch.load
    torch.load = lambda *a, **k: load(*a, **{**k, "map_location": "cpu"})

    class Event:  # wall-clock stand-in for torch.cuda.Event
        def __init__(self, **_):
            self.at = 0.0

        def record(self) -> None:
            self.at = time.perf_counter()

        def elapsed_time(self, end: Event) -> float:
            return 1000 * (end.at - self.at)

    torch.cuda.Event = Event  # type: ignore[misc,assignment]
    torch.cuda.synchronize = lambda *a, **k: None


def main() -> None:
    sys.argv[0] = os.path.abspath(sys.argv[0])  # airbench94_muon reads it (its own code, it thinks)
    kind, archive, work = sys.argv[1], sys.argv[2], Path(sys.argv[3]).resolve()
    extra = [a for a in sys.argv[4:] if a != "--"]
    answers = protocol_stream()
    work.mkdir(parents=True, exist_ok=True)
    if kind != "blitz" and os.environ.get("BENCH_CPU_DRY"):
        cpu_stand_ins()
    started = time.perf_counter()
    if kind == "blitz":
        run = blitz_runner(archive, work / "runs", extra)
        warmup = run(WARMUP_SEED)  # the first compile: cold or warm as the cache is
    else:
        run = airbench_runner(kind, work)
        warmup = run(None)
    warmup["wall"] = time.perf_counter() - started
    answers.write(json.dumps({"ready": True, "warmup": warmup}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("stop"):
            break
        started = time.perf_counter()
        result = {"seed": request["seed"], **run(request["seed"])}
        result["wall"] = time.perf_counter() - started
        answers.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
