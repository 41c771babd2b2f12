"""The server of a run, in LitServe's four steps: ``setup`` (load the run, warm it up),
``decode_request`` (the request's images, decoded as ``blitz predict`` decodes files),
``predict`` (through the dynamic batcher) and ``encode_response`` (label, probability and
top-k per image). Routes: the page, /predict, /health, /ready, /info, /metrics, and the
OpenAPI schema with its docs page."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import os
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from blitz.data.images import BadImage
from blitz.outputs.predict import decode, printable, top_classes
from blitz.serving.backends import Served, load_run
from blitz.serving.batching import Batcher, QueueFull
from blitz.serving.guards import BodyLimit, Counting, Metrics, Token, error
from blitz.serving.options import Options, options_from_environment
from blitz.version import __version__

log = logging.getLogger("blitz.serve")
RETRY_AFTER = "1"
URL_SAFE = str.maketrans("-_", "+/")
CLIENT_GONE = 499  # nginx's status for a client that closed its request: no server error
# pixels of a request decoded on the event loop itself: thumbnails decode in well under a
# millisecond, less than handing them to a thread costs (profiled); larger images go to one of
# at most as many threads as cores (a decompression bomb just under PIL's bound holds
# hundreds of MB while it decodes: so many at once, not one per request)
INLINE_PIXELS = 256 * 256  # seconds: a full queue drains in about a batch's time
KINDS = 'multipart/form-data (image files) or application/json ({"images": [base64, ...]})'
PREDICT_BODY = {  # for the OpenAPI schema: the body is read by hand, so say what it takes
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "description": "an image file, base64"},
                        },
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                    "required": ["images"],
                }
            },
        },
    }
}


@dataclass
class State:
    """What the routes share: the loaded run (None until ready) and its batcher."""

    options: Options
    metrics: Metrics = field(default_factory=Metrics.create)
    served: Served | None = None
    batcher: Batcher | None = None
    failure: str | None = None  # why the run could not be loaded
    decoders: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(os.cpu_count() or 1)
    )  # large images being decoded at once


class Refused(HTTPException):
    """A request the server will not answer: a 4xx (or 503) with a message naming why."""


def setup(state: State, preloaded: Served | None) -> None:
    """Load the run (unless the parent process did) and run one batch through it."""
    # before the batcher's thread first runs torch: a thread takes the count it finds then
    torch.set_num_threads(state.options.model_threads)
    opts = state.options
    served = preloaded or load_run(Path(opts.run_dir), opts.backend, opts.model_threads)
    served.warm_up()
    state.served = served


def create_app(options: Options, preloaded: Served | None = None, wait: bool = False) -> FastAPI:
    """The server of ``options.run_dir``; ``preloaded``: the run, loaded already. The model
    loads while the server answers (/ready says when it is done), or with ``wait`` before the
    server takes any connection."""
    state = State(options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(_start(state, preloaded))
        if wait:
            await loading
        yield
        loading.cancel()
        if state.batcher is not None:
            await state.batcher.stop()

    app = FastAPI(
        title="blitz serve",
        version=__version__,
        description=f"A trained blitz run, {Path(options.run_dir).name}: POST images to /predict.",
        lifespan=lifespan,
    )
    app.state.blitz = state
    _add_routes(app, state)
    _add_error_handlers(app)
    paths = {route.path for route in app.routes if hasattr(route, "path")}
    app.add_middleware(BodyLimit, limit=options.max_bytes)
    if options.token:
        app.add_middleware(Token, token=options.token)
    app.add_middleware(Counting, metrics=state.metrics, paths=paths)
    if options.cors:  # outermost: a preflight carries no token, and a 401 needs CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


def app_from_environment() -> FastAPI:
    """The app of one of uvicorn's worker processes (``--workers``): each loads the run
    before it takes connections, since the workers share one socket and a request must not
    reach a worker still loading while /ready, answered by another, said ready."""
    return create_app(options_from_environment(), wait=True)


async def _start(state: State, preloaded: Served | None) -> None:
    try:
        await run_in_threadpool(setup, state, preloaded)
    except Exception as exc:  # a BlitzError, or worse: /ready says so, the logs say why
        state.failure = str(exc)
        log.error("blitz serve: cannot serve %s: %s", state.options.run_dir, exc)
        return
    assert state.served is not None
    opts = state.options
    state.batcher = Batcher(
        state.served.probabilities,
        opts.max_batch,
        opts.max_wait_ms / 1000,
        opts.max_queue,
        state.metrics.batch.observe,
    )
    state.batcher.start()


def _add_routes(app: FastAPI, state: State) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("blitz.serving").joinpath("page.html").read_text())

    @app.get("/health", summary="the server is alive")
    def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/ready", summary="the model is loaded and warmed up (the readiness probe)")
    def ready() -> JSONResponse:
        if state.batcher is None:
            body = {"ready": False, "error": state.failure or "loading the model"}
            return JSONResponse(body, 503)
        return JSONResponse({"ready": True, "run": _served(state).run_id})

    @app.get("/info", summary="the run: classes, preprocessing, test figures, versions")
    def info() -> dict[str, Any]:
        opts = state.options
        limits = {"max_images": opts.max_images, "max_mb": opts.max_mb, "top_k": opts.top_k}
        batching = {"max_batch": opts.max_batch, "max_wait_ms": opts.max_wait_ms,
                    "threads": opts.model_threads, "workers": opts.workers}  # fmt: skip
        return {**_served(state).info, "batching": batching, "limits": limits}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        if state.batcher is not None:
            state.metrics.queued.set(state.batcher.queued)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # the answer is built as plain JSON types: FastAPI's validation of it would cost more
    # than the model's forward pass of a small image (profiled)
    @app.post(
        "/predict",
        summary="classify images",
        openapi_extra=PREDICT_BODY,
        response_class=JSONResponse,
        response_model=None,
    )
    async def predict_route(request: Request, top_k: int | None = None) -> JSONResponse:
        served = _served(state)
        assert state.batcher is not None
        with state.batcher.arriving():
            images, asked = await decode_request(request, state.options)
            k = _top_k(asked if asked is not None else top_k, state.options.top_k)
            arrays = await _decode_request_images(state, served, images)
        probs = await predict(state, arrays)
        return JSONResponse(encode_response(served, [name for name, _ in images], probs, k))


def _served(state: State) -> Served:
    if state.served is None or state.batcher is None:
        why = state.failure or "the model is still loading"
        raise Refused(503, f"not ready: {why}", {"Retry-After": RETRY_AFTER})
    return state.served


def _top_k(value: Any, default: int) -> int:
    k = default if value is None else value
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise Refused(400, f"top_k must be an integer >= 1, not {value!r}")
    return k


async def decode_request(request: Request, options: Options) -> tuple[list[tuple[str, bytes]], Any]:
    """The request's images as (name, bytes), and the top_k its JSON asks for (if any)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        images, top_k = await _from_form(request, options.max_images), None
    elif kind == "application/json":
        images, top_k = _from_json(await request.body(), options.max_images)
    else:
        raise Refused(415, f"POST /predict takes {KINDS}, not {kind or 'a body without a type'}")
    if not images:
        raise Refused(400, "the request holds no images: send at least one")
    return images, top_k


async def _from_form(request: Request, limit: int) -> list[tuple[str, bytes]]:
    try:  # one more than the limit: more parts than that are "too many", whatever their kind
        form = await request.form(max_files=limit + 1, max_fields=limit + 1, max_part_size=2**62)
    except HTTPException as exc:  # Starlette's, for a malformed body or too many parts
        if "Too many" in str(exc.detail):
            raise _too_many(limit) from None
        raise Refused(400, f"the multipart body cannot be read: {exc.detail}") from None
    images = []
    try:
        for key, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise Refused(400, f"form field {key!r} is not a file: send images as files")
            images.append((printable(value.filename or key), await value.read()))
    finally:
        await form.close()
    if len(images) > limit:
        raise _too_many(limit)
    return images


def _from_json(body: bytes, limit: int) -> tuple[list[tuple[str, bytes]], Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Refused(400, f"the body is not valid JSON: {exc}") from None
    items = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise Refused(400, 'the JSON body must be an object {"images": [base64, ...]}')
    if len(items) > limit:
        raise _too_many(limit)
    return [_base64_image(index, item) for index, item in enumerate(items)], payload.get("top_k")


def _base64_image(index: int, item: Any) -> tuple[str, bytes]:
    """``"base64"``, ``"data:image/png;base64,..."`` or ``{"name": ..., "data": "base64"}``."""
    name, data = f"image {index}", item
    if isinstance(item, dict):
        name, data = str(item.get("name", name)), item.get("data")
    if not isinstance(data, str):
        raise Refused(400, f"{name} is not a base64 string")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return name, base64.b64decode(_standard_base64(data), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, f"{name} is not valid base64") from None


def _standard_base64(data: str) -> str:
    """Base64 as the common tools write it, in the standard form: line breaks taken out (the
    ``base64`` command wraps at 76 columns), the URL-safe alphabet's ``-`` and ``_`` made ``+``
    and ``/``, and the padding a URL-safe encoder leaves off put back."""
    data = "".join(data.split()).translate(URL_SAFE)
    return data + "=" * (-len(data) % 4)


def _too_many(limit: int) -> Refused:
    return Refused(413, f"too many images in one request: at most {limit} (--max-images)")


async def _decode_request_images(
    state: State, served: Served, images: list[tuple[str, bytes]]
) -> list[np.ndarray]:
    if sum(_pixels(data) for _, data in images) <= INLINE_PIXELS:
        return _decode_all(served, images)
    async with state.decoders:
        return await run_in_threadpool(_decode_all, served, images)


def _pixels(data: bytes) -> int:
    """The pixels an image file says it has, from its header (0 if it is not an image:
    decoding it will say so, at once)."""
    try:
        with warnings.catch_warnings():  # a bomb's warning: decoding refuses it, naming it
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.width * image.height
    except Exception:  # PIL raises many kinds for files that are not images
        return 0


def _decode_all(served: Served, images: list[tuple[str, bytes]]) -> list[np.ndarray]:
    try:
        return [decode(served.facts, data, name) for name, data in images]
    except BadImage as exc:  # a non-image, a truncated one, a decompression bomb
        raise Refused(422, str(exc)) from None


async def predict(state: State, arrays: list[np.ndarray]) -> torch.Tensor:
    """The images' probabilities, from a batch shared with other requests."""
    assert state.batcher is not None
    try:
        return await state.batcher.submit(arrays)
    except QueueFull as exc:
        raise Refused(503, f"the server is busy: {exc}", {"Retry-After": RETRY_AFTER}) from None


def encode_response(
    served: Served, names: list[str], probs: torch.Tensor, top_k: int
) -> dict[str, Any]:
    """Per image: its name, label, probability and top-k (a multi-label run's: its labels, every
    one over its class's threshold, and every class's probability); the run's id once."""
    answers = []
    for name, top in zip(names, top_classes(served.facts, probs, top_k)):
        ranked = [{"label": label, "probability": p} for label, p in top]
        labels = served.facts.labels_over(top)
        found = {} if labels is None else {"labels": labels}
        answers.append({"name": name, **ranked[0], **found, "top": ranked})
    return {"run": served.run_id, "backend": served.backend, "predictions": answers}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> Response:  # no one to answer
        log.info(
            "blitz serve: %s %s: the client left before sending its request",
            request.method,
            request.url.path,
        )
        return Response(status_code=CLIENT_GONE)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:  # a bug: logged, named
        log.exception("blitz serve: %s %s failed", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}): see the server's log")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error(422, f"invalid request: {problems}")
