"""What stands before the routes, as plain ASGI middleware: a bearer token (compared in
constant time), a bound on the request body (checked against Content-Length before anything is
read, and counted as it streams in), and the Prometheus counts of every answer, refusals
included."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = ("/", "/health", "/ready")  # the page and the probes need no token
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Every error the server gives: ``{"error": message, "status": status}``."""
    return JSONResponse({"error": message, "status": status}, status, headers=headers)


class TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        mb = f"{limit / 2**20:g} MB"
        super().__init__(413, f"the request body is larger than {mb} (--max-mb)")


class BodyLimit:
    """Refuse a body over ``limit`` bytes with 413, reading no more of it than that."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            problem = TooLarge(self.limit) if length.isdigit() else None
            response = (
                error(413, problem.detail)
                if problem
                else error(400, "the Content-Length header is not a number")
            )
            return await response(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # a chunked body, or one longer than it said
                raise TooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class Token:
    """Every path but ``OPEN_PATHS`` needs ``Authorization: Bearer TOKEN``; 401 otherwise."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.expected = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        # the scheme's name in any case (RFC 9110: "bearer" is "Bearer"); the token exactly
        if scheme.lower() == b"bearer" and hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        response = error(
            401,
            "this server needs a token: send the header Authorization: Bearer TOKEN",
            {"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


@dataclass
class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    registry: CollectorRegistry
    requests: Counter
    errors: Counter
    in_flight: Gauge
    latency: Histogram
    batch: Histogram
    queued: Gauge

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry,
            Counter(
                "blitz_requests", "HTTP requests answered", ["path", "status"], registry=registry
            ),
            Counter(
                "blitz_request_errors",
                "requests answered with an error (4xx, 5xx)",
                ["path", "status"],
                registry=registry,
            ),
            Gauge("blitz_requests_in_flight", "requests being answered", registry=registry),
            Histogram(
                "blitz_request_seconds",
                "time to answer a request",
                ["path"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            Histogram(
                "blitz_batch_images",
                "images per forward pass",
                buckets=BATCH_BUCKETS,
                registry=registry,
            ),
            Gauge("blitz_queued_images", "images waiting for the model", registry=registry),
        )


class Counting:
    """Counts every answer by path and status, and times it; paths the server does not
    have count as "other" (a scanner's guesses must not grow the metrics without bound)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: set[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"] if scope["path"] in self.paths else "other"
        status = 500  # if the app fails before it answers

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, noted)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(path, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
