"""blitz serve under load, on loopback: images/s and latency against concurrent clients.

    python bench/serve.py [--run RUN_DIR] [--clients 1 4 16 64] [--backends torch onnx]
                          [--seconds 4] [--requests 3000] [--json FILE]

Serves RUN_DIR (default: a short run of the default preset, fast-cpu, on generated shapes,
trained here first) with batching off (--max-batch 1) and on (--max-batch 32, --max-wait-ms 5),
on each backend, each time in a fresh server process on a free 127.0.0.1 port. For each
client count, that many clients each post one 32x32 PNG at a time (multipart, as curl does,
over a kept-alive connection) for --seconds or --requests requests in all, whichever comes
first, after an untimed warm-up; then the server is stopped with SIGTERM. Bounded: it stops by
itself. The clients are one asyncio loop in this process, on the same CPU as the server: on a
2-core machine they take part of it. Prints a markdown table and the goal's verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from summary import describe_machine, machine_line, markdown_table, write_json

BOUNDARY = "blitzbench"
MODES = {"off": ["--max-batch", "1", "--max-wait-ms", "0"],
         "on": ["--max-batch", "32", "--max-wait-ms", "5"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run", type=Path, help="a run directory (default: train one here)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell, at most")
    parser.add_argument("--requests", type=int, default=3000, help="per cell, at most")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train(Path(tmp))
        bodies = [multipart(png) for png in pictures(64)]
        rows = []
        for backend in args.backends:
            for mode, flags in MODES.items():
                with Server(run, backend, flags) as server:
                    for clients in args.clients:
                        used = server.cpu_seconds()
                        cell = asyncio.run(
                            load(server.where, bodies, clients, args.seconds, args.requests)
                        )
                        used = server.cpu_seconds() - used
                        cell["server_cpu_ms_per_image"] = round(1000 * used / cell["requests"], 2)
                        rows.append(
                            {"backend": backend, "batching": mode, "clients": clients, **cell}
                        )
                        print(format_row(rows[-1]), flush=True)
    machine = describe_machine()
    print()
    print(machine_line(machine))
    print(markdown_table(HEADER, [table_row(r) for r in rows]))
    print()
    for backend in args.backends:
        print(verdict(rows, backend))
    write_json(args.json, {"machine": machine, "rows": rows})


def train(root: Path) -> Path:
    """A run of the default preset on generated shapes (its accuracy does not matter here)."""
    out = root / "run"
    steps = ["--set", "train.max_steps=30", "--set", "train.min_steps=30"]
    command = [sys.executable, "-m", "blitz", "train", "--data", "shapes:2000", *steps]
    env = {**os.environ, "BLITZ_DATA": str(root / "cache")}
    subprocess.run([*command, "--out", str(out), "--quiet"], check=True, env=env)
    return out


def pictures(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def multipart(png: bytes) -> bytes:
    """A whole POST /predict request with one image, as bytes."""
    body = (
        (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=files; filename=a.png\r\n"
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()
    return head + body


class Server:
    """``blitz serve`` in a child process on a free loopback port, stopped with SIGTERM."""

    def __init__(self, run: Path, backend: str, flags: list[str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.command = [sys.executable, "-m", "blitz", "serve", str(run), "--port",
                        str(self.port), "--backend", backend, *flags]  # fmt: skip

    def cpu_seconds(self) -> float:
        """The server's CPU time so far, all its threads (Linux): what an image costs it,
        whatever else the machine runs."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server stopped: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=5)
                self.where = ("127.0.0.1", self.port)
                return self
            except OSError:
                time.sleep(0.2)
        self.proc.kill()
        raise SystemExit("the server did not become ready in 180 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load(where, bodies: list[bytes], clients: int, seconds: float, limit: int) -> dict:
    """``clients`` connections, each posting one image after another until the time or the
    request budget is spent; an untimed warm-up first."""
    await asyncio.gather(*(client(where, bodies, 0, time.monotonic() + 60, [4]) for _ in range(4)))
    latencies: list[float] = []
    budget = [limit]
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(client(where, bodies, i, deadline, budget, latencies)
                           for i in range(clients)))  # fmt: skip
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "images_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
    }


async def client(where, bodies, first: int, deadline: float, budget: list[int],
                 latencies: list[float] | None = None) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection(*where)
    i = first
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        sent = time.perf_counter()
        writer.write(bodies[i % len(bodies)])
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"the server answered {head.splitlines()[0]!r}")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))  # fmt: skip
        await reader.readexactly(length)
        if latencies is not None:
            latencies.append(time.perf_counter() - sent)
        i += 1
    writer.close()


HEADER = ["backend", "batching", "clients", "requests", "images/s", "p50 ms", "p99 ms",
          "server CPU ms/image"]  # fmt: skip


def table_row(r: dict) -> list:
    return [r["backend"], r["batching"], r["clients"], r["requests"], r["images_per_s"],
            r["p50_ms"], r["p99_ms"], r["server_cpu_ms_per_image"]]  # fmt: skip


def format_row(r: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in r.items())


def verdict(rows: list[dict], backend: str) -> str:
    """The goal: at 16 clients, batching on gives >= 2x the images/s of batching off, with p99
    latency under 4x the single-request latency (one client, batching off, p50)."""
    cell = {(r["batching"], r["clients"]): r for r in rows if r["backend"] == backend}
    if not {("off", 1), ("off", 16), ("on", 16)} <= set(cell):
        return f"{backend}: the goal needs 1 and 16 clients"
    gain = cell["on", 16]["images_per_s"] / cell["off", 16]["images_per_s"]
    ratio = cell["on", 16]["p99_ms"] / cell["off", 1]["p50_ms"]
    met = gain >= 2 and ratio < 4
    return (
        f"{backend}: batching on at 16 clients gives {gain:.2f}x the images/s of batch-1 "
        f"(goal >= 2x), p99 {ratio:.2f}x the single-request latency (goal < 4x): "
        + ("goal met" if met else "goal MISSED")
    )


if __name__ == "__main__":
    main()
