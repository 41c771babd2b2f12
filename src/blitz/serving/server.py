"""Start the server: check the run in this process (a user's mistake is a BlitzError before
anything listens), then hand it to uvicorn, whose SIGTERM and Ctrl-C finish the requests in
flight, refuse new ones and stop."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from blitz.errors import BlitzError
from blitz.serving.app import create_app
from blitz.serving.backends import load_run
from blitz.serving.options import ENVIRONMENT, Options

GRACE_SECONDS = 10  # SIGTERM: what the requests in flight get to finish


def serve(options: Options) -> None:
    """Serve ``options.run_dir`` until stopped (SIGTERM, Ctrl-C)."""
    options = dataclasses.replace(options, port=_free_port(options.host, options.port))
    # refuses a bad run now; exports it for the ONNX backend once, before any worker looks
    served = load_run(Path(options.run_dir), options.backend, options.model_threads)
    _warn_if_exposed(options)
    where = f"http://{_url_host(options.host)}:{options.port}"
    print(
        f"blitz serve: {served.run_id} ({served.backend}) on {where}: the page at /, "
        f"POST images to /predict, the API's docs at /docs",
        flush=True,
    )
    settings: dict[str, Any] = dict(
        host=options.host,
        port=options.port,
        timeout_graceful_shutdown=GRACE_SECONDS,
        access_log=False,  # one line per request would drown the rest
        log_level="info",
    )
    if options.workers > 1:  # uvicorn's supervisor: it restarts a worker that dies
        del served  # each worker loads its own
        os.environ[ENVIRONMENT] = options.to_environment()
        factory = "blitz.serving.app:app_from_environment"
        uvicorn.run(factory, factory=True, workers=options.workers, **settings)
        return
    server = _Server(uvicorn.Config(create_app(options, served), **settings))
    server.run()
    if not server.started:  # uvicorn logged why (the port is taken, say)
        raise BlitzError(
            f"could not listen on {options.host}:{options.port} (see the message above): "
            "choose another --port or --host"
        )


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM it has finished gracefully ends blitz with
    status 0: uvicorn raises the signal again once done (for a host process to see), which
    would end this one by the signal (143), though stopping is just what was asked for."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def _free_port(host: str, port: int) -> int:
    """``port``, checked free on ``host`` before the run is loaded (a port in use or an
    address not of this machine is a BlitzError now, not uvicorn's after the loading); port 0
    becomes a free one chosen now, so that the address announced is the one served."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
            return probe.getsockname()[1]
    except OSError as exc:  # socket.gaierror too: a host name that resolves to nothing
        raise BlitzError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port "
            "or --host"
        ) from None


def _warn_if_exposed(options: Options) -> None:
    if not options.loopback and not options.token:
        print(
            f"blitz serve: warning: listening on {options.host} without a token: anyone who "
            "can reach this machine can use the model; pass --token (or set BLITZ_TOKEN)",
            file=sys.stderr,
            flush=True,
        )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
