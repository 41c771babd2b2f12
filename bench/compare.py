"""blitz fast-gpu against airbench's train94 and its record airbench94_muon, interleaved per
seed on one GPU, on the same images; one table with the ratios (issue 33).

    python bench/compare.py ARCHIVE OUT_DIR [--seeds 10] [--budget SECONDS] [--ab-seeds 3]
        [--contenders blitz batched share train94 muon] [--blitz-args "..."]
    python bench/compare.py --table OUT_DIR/compare.json      # the table again, from its JSON

First a fresh `blitz train --preset fast-gpu` process, timed from its launch to its printed
accuracy (the compile cache should be warm: bench/gpu.sh runs the step profile before). Then one
long-lived worker per contender (bench/contender.py), each warmed up once, untimed and one after
the other (no two compile or autotune at once); then seed by seed each trains once, in an order
that rotates, so that drift of the machine touches all alike. Then, budget left, the candidates
of issue 33 (``batched``: ``optim.muon_batched``; ``share``: ``train.tta_share=0.25``) on the
first --ab-seeds seeds, interleaved with plain fast-gpu again: an A/B each. After every round
the table and OUT_DIR/compare.json are written again, and no round starts that would end past
--budget seconds (from this script's start): a budget cut short still leaves a table.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from summary import markdown_table, mean_std, write_json

HERE = Path(__file__).resolve().parent
LABELS = {
    "blitz": "blitz fast-gpu",
    "batched": "blitz fast-gpu + optim.muon_batched",
    "share": "blitz fast-gpu + train.tta_share=0.25",
    "train94": "airbench train94 (PyPI 0.1.8)",
    "muon": "airbench94_muon",
}
WARMUP_ORDER = ["muon", "train94", "blitz", "batched", "share"]
KINDS = {
    "blitz": "blitz",
    "batched": "blitz",
    "share": "blitz",
    "train94": "train94",
    "muon": "muon",
}
# issue 33's candidates, each against plain fast-gpu on the first --ab-seeds seeds
VARIANTS = {
    "batched": ["--set", "optim.muon_batched=true"],
    "share": ["--set", "train.tta_share=0.25"],
}
GOAL_ACCURACY, GOAL_SEEDS, GOAL_RATIO, MOONSHOT, GOAL_PROCESS = 0.9075, 10, 1.0, 0.8, 15.0
ACCURACY_LINES = ("Accuracy of the network", "test accuracy")  # the seed's; --quiet's
SEED_TIMEOUT = 180  # seconds for one seed's run (a few on a GPU): beyond it, a worker is stuck


class Worker:
    """A bench/contender.py process: JSON lines in, JSON lines out, stderr to a log file."""

    def __init__(self, name: str, archive: str, out: Path, blitz_args: list[str]):
        self.name, self.log = name, out / f"{name}.log"
        extra = blitz_args + VARIANTS.get(name, [])
        work = out / (name if KINDS[name] == "blitz" else "airbench")  # its cifar10/*.pt
        command = [sys.executable, str(HERE / "contender.py"), KINDS[name], archive]
        command += [str(work), "--", *extra]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
        )

    def answer(self, timeout: float) -> dict:
        """The worker's next answer; RuntimeError (with its log's tail) if it dies or is late."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], max(timeout, 1))
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stop()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            why = "no answer in time" if not ready else "it exited"
            raise RuntimeError(f"{self.name}: {why}: " + " / ".join(tail))
        return json.loads(line)

    def ask(self, seed: int, timeout: float) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"seed": seed}) + "\n")
        self.process.stdin.flush()
        return self.answer(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"stop": True}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


def fresh_process(archive: str, out: Path, blitz_args: list[str]) -> dict:
    """One `blitz train --preset fast-gpu` process: seconds from its launch to the printed
    accuracy, and its own metrics (``total_seconds`` starts inside it, after Python's start)."""
    run_dir = out / "fresh_process"
    command = [sys.executable, "-m", "blitz", "train", "--preset", "fast-gpu", "--data", archive]
    command += ["--out", str(run_dir), "--overwrite", "--quiet", *blitz_args]
    started, printed = time.perf_counter(), None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", file=sys.stderr)
            if printed is None and line.startswith(ACCURACY_LINES):
                printed = time.perf_counter() - started
        ended = time.perf_counter() - started
    if process.returncode:
        return {"error": f"exit status {process.returncode}"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    kept = ("total_seconds", "compile_seconds", "train_seconds", "eval_seconds", "test_accuracy")
    return {"to_accuracy": printed, "to_exit": ended, **{k: metrics.get(k) for k in kept}}


def record_commit() -> str:
    path = HERE / "external" / "COMMIT"
    return path.read_text().split()[0][:10] if path.exists() else "commit unknown"


class Contest:
    """The workers of one comparison, its budget and its record (``payload``)."""

    def __init__(self, args: argparse.Namespace, payload: dict, started: float):
        self.args, self.payload, self.started = args, payload, started
        self.workers: dict[str, Worker] = {}

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def warm_up(self, names: list[str], need: float = 0) -> None:
        """Start and warm up each worker, one after the other (no two compile at once), while
        more than ``need`` seconds of the budget are left."""
        for name in names:
            entry = self.payload["contenders"][name]
            if self.left() <= need:
                entry["error"] = "not started: budget spent"
                continue
            worker = Worker(
                name, os.path.abspath(self.args.archive), self.args.out_dir, self.args.blitz_args
            )
            try:
                entry["warmup"] = worker.answer(self.left())["warmup"]
                self.workers[name] = worker
            except RuntimeError as exc:
                entry["error"] = str(exc)
            print(f"{name}: {entry.get('warmup') or entry['error']}", flush=True)
            save(self.args, self.payload)

    def rounds(self, block: str, names: list[str], seeds: list[int], sinks: dict) -> None:
        """Each seed once by each worker named, in an order that rotates; no round starts
        that the budget would cut short (judged by the longest round so far)."""
        took: list[float] = []
        for index, seed in enumerate(seeds):
            if took and self.left() < 1.2 * max(took):
                stopped = f"{block}: {index} of {len(seeds)} seeds ran before the budget's end"
                self.payload.setdefault("stopped", []).append(stopped)
                return
            started = time.perf_counter()
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                if name not in self.workers:
                    continue
                try:
                    result = self.workers[name].ask(seed, SEED_TIMEOUT)
                except RuntimeError as exc:
                    self.payload["contenders"][name]["error"] = str(exc)
                    del self.workers[name]
                    continue
                sinks[name].append(result)
                print(f"seed {seed} {name}: {result}", flush=True)
            took.append(time.perf_counter() - started)
            save(self.args, self.payload)

    def stop(self, names: list[str]) -> None:
        for name in names:
            if name in self.workers:
                self.workers.pop(name).stop()


def compare(args: argparse.Namespace, payload: dict, started: float) -> None:
    """The three-way comparison first, over every seed the budget allows; then the candidates'
    A/B on the first --ab-seeds seeds, each round with plain fast-gpu again (pairs close in
    time), so that the A/B never costs the main table a seed."""
    for name in args.contenders:
        entry = payload["contenders"].setdefault(name, {"label": LABELS[name], "runs": []})
        if name == "muon":
            entry["label"] += f" ({record_commit()})"
    contest = Contest(args, payload, started)
    # the record's warm-up first: the longest (its max-autotune compile), and the one the
    # comparison cannot do without; the table keeps LABELS' order
    main = [n for n in WARMUP_ORDER if n in args.contenders and n not in VARIANTS]
    contest.warm_up(main)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    sinks = {n: payload["contenders"][n]["runs"] for n in args.contenders}
    contest.rounds("the comparison", [n for n in LABELS if n in main], seeds, sinks)
    contest.stop([n for n in main if n != "blitz"])
    variants = [n for n in VARIANTS if n in args.contenders]
    if variants and "blitz" in contest.workers and args.ab_seeds and "stopped" not in payload:
        contest.warm_up(variants, need=60)  # a warm-up, then at least a round or two
        sinks["blitz"] = payload.setdefault("ab_plain", [])
        contest.rounds("the A/B", ["blitz", *variants], seeds[: args.ab_seeds], sinks)
    contest.stop(list(contest.workers))


def save(args: argparse.Namespace, payload: dict) -> None:
    write_json(args.out_dir / "compare.json", payload)
    (args.out_dir / "compare.md").write_text(render(payload) + "\n")


def _mean(runs: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in runs)


def _seconds(runs: list[dict]) -> str:
    values = [r["seconds"] for r in runs]
    return (
        f"{statistics.mean(values):.3f} (median {statistics.median(values):.3f}; "
        f"{min(values):.3f}-{max(values):.3f})"
    )


def _warmup(entry: dict) -> str:
    wall = entry.get("warmup", {}).get("wall")
    return "" if wall is None else f"{wall:.1f}"


def _compiling(runs: list[dict]) -> str:
    """blitz's compile_seconds (each run compiles its new model): airbench's reuse theirs."""
    values = [r["compile_seconds"] for r in runs if r.get("compile_seconds") is not None]
    return f"{statistics.median(values):.1f}" if values else ""


def render(payload: dict) -> str:
    """The one table: a column per contender, then the goals and the A/B in words."""
    entries = {n: e for n, e in payload["contenders"].items() if e.get("runs") or e.get("error")}
    runs = {n: e.get("runs", []) for n, e in entries.items()}
    header = [""] + [e["label"] for e in entries.values()]

    def row(title: str, cell) -> list[str]:
        return [title] + [cell(n, r) if r else "" for n, r in runs.items()]

    rows = [
        row("seeds", lambda n, r: f"{len(r)} ({r[0]['seed']}-{r[-1]['seed']})"),
        row("test accuracy, mean +- std", lambda n, r: mean_std([x["accuracy"] for x in r])),
        row("train + eval seconds, mean (median; min-max)", lambda n, r: _seconds(r)),
        row("warm-up, untimed (s)", lambda n, r: _warmup(entries[n])),
        row("compiling per run in its worker, untimed (s, median)", lambda n, r: _compiling(r)),
    ]
    for other in ("muon", "train94"):
        if runs.get(other):
            title = f"time / {entries[other]['label']}'s (means)"
            base = _mean(runs[other], "seconds")
            rows.append(row(title, lambda n, r, base=base: f"{_mean(r, 'seconds') / base:.2f}x"))
    failed = [f"- {e['label']}: {e['error']}" for e in entries.values() if e.get("error")]
    lines = [markdown_table(header, rows), *failed, *goals(payload, runs)]
    return "\n".join(lines)


def goals(payload: dict, runs: dict[str, list[dict]]) -> list[str]:
    """Issue 33's goals, each met or missed, and the A/B of each candidate."""
    lines = [""]
    if payload.get("stopped"):
        lines.append(f"Stopped early: {'; '.join(payload['stopped'])}.")
    fresh = payload.get("fresh_process") or {}
    if fresh.get("to_accuracy"):
        verdict = "met" if fresh["to_accuracy"] <= GOAL_PROCESS else "missed"
        lines.append(
            f"A fresh blitz process (compile cache warm): {fresh['to_accuracy']:.1f} s from its "
            f"launch to the printed accuracy (goal <= {GOAL_PROCESS:.0f} s: {verdict}); its "
            f"total_seconds {fresh['total_seconds']:.1f}, of which compiling "
            f"{fresh['compile_seconds']:.1f}."
        )
    elif fresh:
        why = fresh.get("error") or "no accuracy line seen in its output"
        lines.append(f"The fresh blitz process gave no time: {why}.")
    ours, record = runs.get("blitz"), runs.get("muon")
    if ours:
        accuracy = _mean(ours, "accuracy")
        met = accuracy >= GOAL_ACCURACY and len(ours) >= GOAL_SEEDS
        lines.append(
            f"Accuracy goal (>= {100 * GOAL_ACCURACY:.2f} % over >= {GOAL_SEEDS} seeds): "
            f"{'met' if met else 'missed'} ({100 * accuracy:.2f} % over {len(ours)})."
        )
    if ours and record:
        ratio = _mean(ours, "seconds") / _mean(record, "seconds")
        verdict = (
            "moonshot met" if ratio <= MOONSHOT else "met" if ratio <= GOAL_RATIO else "missed"
        )
        lines.append(
            f"Time goal (<= {GOAL_RATIO}x airbench94_muon's, moonshot {MOONSHOT}x): "
            f"{verdict} ({ratio:.2f}x, means over the seeds each ran)."
        )
    for name in VARIANTS:
        if ours and runs.get(name):
            lines.append(ab_line(LABELS[name], payload.get("ab_plain") or ours, runs[name]))
    return lines


def ab_line(label: str, plain: list[dict], variant: list[dict]) -> str:
    """A candidate against plain fast-gpu, on the seeds both ran."""
    by_seed = {r["seed"]: r for r in plain}
    pairs = [(by_seed[r["seed"]], r) for r in variant if r["seed"] in by_seed]
    if not pairs:
        return f"A/B {label}: no seed ran on both sides."
    ratio = statistics.mean(b["seconds"] / a["seconds"] for a, b in pairs)
    points = statistics.mean(100 * (b["accuracy"] - a["accuracy"]) for a, b in pairs)
    return (
        f"A/B {label} on the same {len(pairs)} seeds: train + eval time {ratio:.3f}x plain "
        f"fast-gpu's (mean of per-seed ratios), accuracy {points:+.2f} points: keep it only "
        "if faster at equal accuracy over more seeds."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("archive", nargs="?")
    parser.add_argument("out_dir", nargs="?", type=Path)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--ab-seeds", type=int, default=3, help="seeds of each candidate's A/B")
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds in all")
    parser.add_argument("--contenders", nargs="+", default=list(LABELS), choices=list(LABELS))
    parser.add_argument("--blitz-args", type=shlex.split, default=[], help="added to each run")
    parser.add_argument("--table", type=Path, help="only print the table of this compare.json")
    args = parser.parse_args()
    if args.table:
        print(render(json.loads(args.table.read_text())))
        return
    if not args.archive or not args.out_dir:
        parser.error("ARCHIVE and OUT_DIR are needed (or --table)")
    started = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    payload: dict = {"contenders": {}, "seeds": args.seeds, "budget": args.budget}
    if {"train94", "muon"} & set(args.contenders):
        from vs_airbench import convert  # airbench's train.pt/test.pt, from blitz's decoding

        convert(args.archive, args.out_dir / "airbench" / "cifar10")
    payload["fresh_process"] = fresh_process(args.archive, args.out_dir, args.blitz_args)
    save(args, payload)
    compare(args, payload, started)
    save(args, payload)
    print(render(payload))


if __name__ == "__main__":
    main()
