"""What ``blitz serve`` is told: one frozen record, checked once, shared by the command line,
the Python API and every worker process (which reads it from the environment)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any

from blitz.config.checks import check_range, check_types, check_value
from blitz.errors import BlitzError, did_you_mean

BACKENDS = ("torch", "onnx")
ENVIRONMENT = "BLITZ_SERVE_OPTIONS"  # how uvicorn's worker processes get the options
TOKEN_VARIABLE = "BLITZ_TOKEN"
MB = 2**20


@dataclass(frozen=True)
class Options:
    """A server of one run. Limits bound what one request may cost; batching gathers
    concurrent requests into one forward pass."""

    run_dir: str
    host: str = "127.0.0.1"  # loopback: reachable from this machine only
    port: int = 8000
    backend: str = "torch"
    max_batch: int = 16  # images per forward pass; 1 turns batching off
    max_wait_ms: float = 5.0  # how long a lone request waits for others to join its batch
    max_queue: int = 256  # images waiting for the model; past it, 503 with Retry-After
    max_images: int = 64  # per request
    max_mb: float = 20.0  # request body size
    top_k: int = 5  # classes per image in a response (a request may ask for fewer or more)
    token: str | None = None  # a bearer token every request but /, /health and /ready needs
    cors: tuple[str, ...] = ()  # origins whose pages may call the API
    workers: int = 1  # processes, each with its own model
    threads: int | None = None  # torch's threads per worker; None: auto (model_threads)

    def __post_init__(self) -> None:
        check_types(self)  # the Python API's keywords come unchecked
        check_value(self.backend in BACKENDS, "--backend", self.backend, " or ".join(BACKENDS))
        check_range("--port", self.port, 0, 65535)
        check_range("--max-batch", self.max_batch, 1, 4096)
        check_range("--max-wait-ms", self.max_wait_ms, 0, 10_000)
        check_range("--max-queue", self.max_queue, 1)
        check_range("--max-images", self.max_images, 1, 10_000)
        check_range("--max-mb", self.max_mb, 0.001, 4096)
        check_range("--top-k", self.top_k, 1)
        check_range("--workers", self.workers, 1, 64)
        if self.threads is not None:
            check_range("--threads", self.threads, 1, 1024)
        check_value(self.token != "", "--token", "", "a non-empty token")

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * MB)

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the server."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    @property
    def model_threads(self) -> int:
        """torch's threads in each worker: as given, else the worker's share of the cores less
        one, which the HTTP side (parsing, decoding) needs meanwhile: a model given every core
        fights the server for them (measured: bench/RESULTS.md)."""
        if self.threads is not None:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.workers - 1)

    def to_environment(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def build_options(run_dir: str | os.PathLike, **given: Any) -> Options:
    """Options from keywords (the Python API's and the command line's), the token from
    BLITZ_TOKEN when none is given; an unknown keyword is named with the closest one."""
    names = [f.name for f in dataclasses.fields(Options) if f.name != "run_dir"]
    for name in given:
        if name not in names:
            raise BlitzError(f"unknown option {name!r} for blitz serve{did_you_mean(name, names)}")
    if given.get("token") is None:
        given["token"] = os.environ.get(TOKEN_VARIABLE) or None
    return Options(os.fspath(run_dir), **{k: v for k, v in given.items() if v is not None})


def options_from_environment() -> Options:
    """What the parent process put in the environment for a worker (``to_environment``)."""
    raw = os.environ.get(ENVIRONMENT)
    if not raw:
        raise BlitzError(f"{ENVIRONMENT} is not set: start the server with blitz serve RUN_DIR")
    values = json.loads(raw)
    return Options(**{**values, "cors": tuple(values.get("cors", ()))})
