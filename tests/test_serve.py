"""blitz serve: a real server process on a free loopback port, talked to over HTTP: every
endpoint, the same probabilities as blitz predict, batching with concurrent clients, every bad
input, the token, SIGTERM, the ONNX backend, several workers; the page in a real browser; and
in-process, the batcher and the options."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blitz.errors import BlitzError
from conftest import BROWSER, HEADLESS, needs_browser, png_bytes, run_blitz

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

START_SECONDS = 120  # a loaded 2-core machine takes a while to import torch
LIMITS = ["--max-mb", "1", "--max-images", "4", "--max-batch", "8", "--max-wait-ms", "50"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A short run on generated shapes, scored with mirrored test-time views."""
    root = tmp_path_factory.mktemp("serve")
    args = ["--preset", "seed", "--data", "shapes:200", "--batch-size", "16", "--epochs", "1"]
    run_blitz("train", *args, "--set", "train.tta=flip", "--out", root / "run", cache=root / "c")
    return root / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``blitz serve`` in a child process, on a free loopback port, ready to answer."""

    def __init__(self, run_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "blitz", "serve", str(run_dir), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.output = ""

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling for a condition, not timing anything
        self.stop()
        raise AssertionError(f"the server did not become ready:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.output += self.proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output += self.proc.communicate()[0]
        return self.proc.returncode

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str = "/predict", **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def server(run_dir):
    """The run served with small limits (1 MB, 4 images) and batching on."""
    s = Server(run_dir, *LIMITS).wait_ready()
    yield s
    s.stop()


def images(tmp_path: Path) -> list[Path]:
    """Files of every kind predict reads: sizes, modes, a sideways JPEG with its EXIF
    orientation, grey, 16-bit, a palette GIF, a photo-sized JPEG."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    made = []
    for i, (size, mode) in enumerate([((32, 32), "RGB"), ((70, 41), "RGB"), ((50, 90), "L")]):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"{i}.png"
        Image.fromarray(pixels).convert(mode).save(path)
        made.append(path)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn it to show
    sideways = Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8))
    sideways.save(folder / "sideways.jpg", quality=90, exif=exif)
    wide = (rng.integers(0, 65536, (33, 33)) // 1).astype(np.uint16)
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert("P").save(
        folder / "palette.gif"
    )
    # a photo's size: decoded in a thread, at a reduced scale (JPEG draft)
    photo = Image.fromarray(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8))
    photo.save(folder / "photo.jpg", quality=85)
    extra = ["sideways.jpg", "wide.png", "palette.gif", "photo.jpg"]
    return [*made, *(folder / name for name in extra)]


def predict_csv(run_dir: Path, files: list[Path], tmp_path: Path, k: int) -> dict[str, dict]:
    """``blitz predict --csv``'s probabilities: file name -> {class: probability}."""
    out = tmp_path / "predict.csv"
    run_blitz("predict", run_dir, *files, "--top-k", k, "--csv", out)
    rows = list(csv.DictReader(out.open()))
    return {
        Path(row["path"]).name: {
            row[f"class_{i}"]: float(row[f"prob_{i}"]) for i in range(1, k + 1)
        }
        for row in rows
    }


def answered(response: httpx.Response) -> dict[str, dict]:
    """/predict's probabilities: image name -> {class: probability}."""
    assert response.status_code == 200, response.text
    return {
        p["name"]: {t["label"]: t["probability"] for t in p["top"]}
        for p in response.json()["predictions"]
    }


def as_files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (p.name, p.read_bytes())) for p in paths]


# --- over HTTP ---


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_endpoint_answers(server, run_dir):
    assert server.get("/health").json() == {"status": "alive"}
    ready = server.get("/ready").json()
    assert ready["ready"] is True and ready["run"].startswith("run@")
    info = server.get("/info").json()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert info["classes"] == metrics["classes"] and info["run"] == ready["run"]
    assert info["image_size"] == 32 and info["test_time_views"] == "flip"
    assert info["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert info["preprocessing"]["resize_filter"] == "bilinear"
    assert len(info["preprocessing"]["normalization"]["mean"]) == 3
    assert {"blitz", "torch"} <= set(info["versions"])
    assert info["limits"]["max_images"] == 4 and info["batching"]["max_batch"] == 8
    page = server.get("/")
    assert page.status_code == 200 and 'id="files"' in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # nothing from elsewhere
    schema = server.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "swagger" in server.get("/docs").text.lower()
    server.post(files=[("files", ("x.png", png_bytes((1, 2, 3))))])
    text = server.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    assert 'blitz_requests_total{path="/predict",status="200"}' in text.text
    assert "blitz_batch_images_bucket" in text.text and "blitz_request_seconds_bucket" in text.text


@pytest.mark.slow
@pytest.mark.subprocess
def test_probabilities_are_blitz_predicts(server, run_dir, tmp_path):
    files = images(tmp_path)
    expected = predict_csv(run_dir, files, tmp_path, k=10)
    for chunk in (files[:4], files[4:]):  # at most --max-images 4 a request
        got = answered(server.post(files=as_files(chunk), params={"top_k": 10}))
        for path in chunk:
            assert got[path.name].keys() == expected[path.name].keys()
            for label, p in expected[path.name].items():
                assert abs(got[path.name][label] - p) <= 1e-5, (path.name, label)
    # JSON with base64 gives the same answer as the file
    encoded = base64.b64encode(files[3].read_bytes()).decode()
    payload = {"images": [{"name": files[3].name, "data": encoded}], "top_k": 10}
    got = answered(server.post(json=payload))[files[3].name]
    assert max(abs(got[c] - p) for c, p in expected[files[3].name].items()) <= 1e-5
    top = server.post(json={"images": [encoded]}).json()["predictions"][0]
    assert top["name"] == "image 0" and len(top["top"]) == 5  # the server's --top-k default
    assert (
        top["label"] == top["top"][0]["label"]
        and top["probability"] >= top["top"][1]["probability"]
    )


def distinct_images(count: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


@pytest.mark.slow
@pytest.mark.subprocess
def test_concurrent_clients_each_get_their_own_answer(server):
    pictures = distinct_images(24)
    alone = [
        answered(server.post(files=[("files", (f"{i}.png", b))])) for i, b in enumerate(pictures)
    ]
    start = threading.Barrier(len(pictures))
    results: list[dict | None] = [None] * len(pictures)

    def client(i: int) -> None:
        start.wait()
        results[i] = answered(server.post(files=[("files", (f"{i}.png", pictures[i]))]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(pictures))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, result in enumerate(results):
        assert result is not None and result.keys() == {f"{i}.png"}
        for label, p in alone[i][f"{i}.png"].items():
            assert abs(result[f"{i}.png"][label] - p) <= 1e-5
    # the clients' images shared forward passes
    metrics = server.get("/metrics").text
    batches = float(re.search(r"^blitz_batch_images_count (\S+)", metrics, re.M).group(1))
    single = float(
        re.search(r'^blitz_batch_images_bucket\{le="1.0"\} (\S+)', metrics, re.M).group(1)
    )
    assert batches > single  # some batch held more than one image


def bomb_png(side: int = 30_000) -> bytes:
    """A PNG that says it is side x side pixels (900 million): refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


GOOD = png_bytes((200, 30, 30))
B64 = base64.b64encode(GOOD).decode()
JSON = {"content-type": "application/json"}


def upload(*named: tuple[str, bytes]) -> dict:
    return {"files": [("files", item) for item in named]}


BAD_REQUESTS = {  # name: (request keywords, status, words of the error)
    "not an image": (upload(("notes.txt", b"hello")), 422, "notes.txt"),
    "truncated": (upload(("cut.png", GOOD[: len(GOOD) // 2])), 422, "cut.png"),
    "bomb": (upload(("bomb.png", bomb_png())), 422, "decompression bomb"),
    "too many files": (upload(*[(f"{i}.png", GOOD) for i in range(5)]), 413, "at most 4"),
    "too many in JSON": ({"json": {"images": [B64] * 5}}, 413, "at most 4"),
    "wrong type": ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    "no type": ({"content": b"x"}, 415, "multipart/form-data"),
    "garbage JSON": ({"content": b"{not json", "headers": JSON}, 400, "not valid JSON"),
    "JSON not an object": ({"json": [1, 2]}, 400, '{"images"'),
    "bad base64": ({"json": {"images": ["@@@"]}}, 400, "image 0 is not valid base64"),
    "base64 not a string": ({"json": {"images": [3]}}, 400, "not a base64 string"),
    "no images": ({"json": {"images": []}}, 400, "no images"),
    "a field, not a file": ({"data": {"files": "text"}, **upload(("a.png", GOOD))}, 400,
                            "'files' is not a file"),
    "broken multipart": ({"content": b"--x\r\nnonsense",
                          "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400,
                         "no images"),
    "top_k 0": ({"json": {"images": [B64], "top_k": 0}}, 400, "top_k"),
    "top_k text": ({"params": {"top_k": "many"}, **upload(("a.png", GOOD))}, 422, "top_k"),
    "over the size limit": (upload(("big.png", b"\0" * 1_100_000)), 413, "1 MB"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_is_a_4xx_naming_the_problem_and_the_server_serves_on(server, case):
    kwargs, status, words = BAD_REQUESTS[case]
    response = server.post(**kwargs)
    assert response.status_code == status, response.text
    assert response.json()["status"] == status and words in response.json()["error"]
    assert answered(server.post(files=[("files", ("good.png", GOOD))]))  # still serving


@pytest.mark.slow
@pytest.mark.subprocess
def test_unknown_paths_and_methods_and_raw_size_limits_are_4xx(server):
    assert server.get("/nothing").status_code == 404 and "error" in server.get("/nothing").json()
    assert server.get("/predict").status_code == 405
    # a Content-Length over the limit is refused before the body is read
    head = raw(server.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
               b"\r\nContent-Length: 50000000\r\n\r\n")  # fmt: skip
    assert head.startswith(b"HTTP/1.1 413") and b"1 MB" in head
    # a chunked body is counted as it comes
    part = b"a" * 600_000
    chunk = f"{len(part):x}\r\n".encode() + part + b"\r\n"
    body = raw(server.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
               b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n")  # fmt: skip
    assert body.startswith(b"HTTP/1.1 413") and b"larger than 1 MB" in body
    assert server.get("/health").status_code == 200


def raw(port: int, request: bytes) -> bytes:
    """A hand-made HTTP request and whatever comes back until the server closes or pauses."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = s.recv(65536)
            if not data:
                break
            reply += data
    return reply


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_token_guards_everything_but_the_page_and_probes(run_dir):
    server = Server(run_dir, env={"BLITZ_TOKEN": "s3cret"}).wait_ready()
    try:
        good = {"Authorization": "Bearer s3cret"}
        for path in ("/", "/health", "/ready"):
            assert server.get(path).status_code == 200
        for path in ("/info", "/metrics", "/docs", "/openapi.json"):
            assert server.get(path).status_code == 401
            assert server.get(path, headers=good).status_code == 200
        files = [("files", ("a.png", GOOD))]
        wrong = ("Bearer wrong", "s3cret", "Basic s3cret", "Bearer s3cret2", "Bearer")
        for headers in ({}, *({"Authorization": value} for value in wrong)):
            refused = server.post(files=files, headers=headers)
            assert refused.status_code == 401 and "token" in refused.json()["error"]
            assert refused.headers["www-authenticate"] == "Bearer"
        assert answered(server.post(files=files, headers=good))
        assert answered(server.post(files=files, headers={"Authorization": "bearer s3cret"}))
        assert (
            "access-control-allow-origin"
            not in server.get("/health", headers={"Origin": "https://x.org"}).headers
        )
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.subprocess
def test_cors_only_for_the_origin_asked(run_dir):
    server = Server(run_dir, "--cors", "https://app.example").wait_ready()
    try:
        ok = server.get("/health", headers={"Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = server.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(run_dir):
    server = Server(run_dir).wait_ready()
    body = b'{"images": ["' + base64.b64encode(GOOD) + b'"]}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        s.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        wait_for(lambda: in_flight(server) >= 2, "the request to be in flight")  # it and /metrics
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(server.port), "new connections to be refused")
        s.sendall(body[10:])
        reply = b""
        while data := s.recv(65536):
            reply += data
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert b'"predictions"' in reply
    assert server.proc.wait(timeout=20) == 0  # within seconds: no grace period runs out
    assert server.stop() == 0 and "Finished server process" in server.output


def in_flight(server: Server) -> float:
    text = server.get("/metrics").text
    return float(re.search(r"^blitz_requests_in_flight (\S+)", text, re.M).group(1))


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except OSError:
        return True


def wait_for(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)  # polling for a condition, not timing anything


@pytest.mark.slow
@pytest.mark.subprocess
def test_onnx_backend_exports_checks_and_answers_as_torch(run_dir, server, tmp_path):
    pytest.importorskip("onnxruntime")
    copy = shutil.copytree(run_dir, tmp_path / "run")
    onnx = Server(copy, "--backend", "onnx").wait_ready()
    try:
        info = onnx.get("/info").json()
        assert info["backend"] == "onnx" and "onnxruntime" in info["versions"]
        described = json.loads((copy / "model.onnx.json").read_text())
        assert described["classes"] == info["classes"] and described["input"]["dtype"] == "uint8"
        assert described["preprocessing"] == info["preprocessing"]
        files = as_files(images(tmp_path)[:4])
        got, expected = answered(onnx.post(files=files)), answered(server.post(files=files))
        for name, top in expected.items():
            assert max(abs(got[name][c] - p) for c, p in top.items()) <= 1e-4
    finally:
        assert onnx.stop() == 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_stale_onnx_export_is_refused_at_start(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from blitz.outputs.export import export_model
    from blitz.training.checkpoint import load_checkpoint

    copy = shutil.copytree(run_dir, tmp_path / "run")
    facts = load_checkpoint(copy / "model.pt").model
    torch.manual_seed(5)
    export_model(facts, facts.build(), "onnx", copy / "model.onnx")  # other weights
    result = run_blitz("serve", copy, "--backend", "onnx", "--port", free_port(), check=False)
    assert result.returncode == 2 and "exported from other weights" in result.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_several_workers_answer_and_stop_on_sigterm(run_dir):
    server = Server(run_dir, "--workers", "2").wait_ready()
    try:
        # a worker takes connections only once its model is loaded: never a 503 once ready
        for _ in range(8):
            assert answered(server.post(files=[("files", ("a.png", GOOD))]))
        assert server.get("/info").json()["batching"]["workers"] == 2
    finally:
        assert server.stop() == 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_serving_what_is_not_a_run_is_an_error(tmp_path):
    result = run_blitz("serve", tmp_path, "--port", free_port(), check=False)
    assert (
        result.returncode == 2 and "model.pt" in result.stderr and "Traceback" not in result.stderr
    )
    bad = run_blitz("serve", tmp_path, "--max-batch", "0", check=False)
    assert bad.returncode == 2 and "--max-batch" in bad.stderr


@pytest.mark.slow
def test_a_runs_serve_method_takes_the_commands_options(run_dir):
    import blitz

    with pytest.raises(BlitzError, match="did you mean max_wait_ms"):
        blitz.load(run_dir).serve(max_wait=3)
    with pytest.raises(BlitzError, match="--max-images"):
        blitz.load(run_dir).serve(max_images=0)


# --- in this process ---


def test_options_are_checked_and_the_token_comes_from_the_environment(monkeypatch):
    from blitz.serving.options import build_options

    with pytest.raises(BlitzError, match="did you mean port"):
        build_options("run", prot=80)
    with pytest.raises(BlitzError, match="torch or onnx"):
        build_options("run", backend="tf")
    with pytest.raises(BlitzError, match="port"):
        build_options("run", port="80")
    monkeypatch.setenv("BLITZ_TOKEN", "from-env")
    assert build_options("run").token == "from-env"
    assert build_options("run", token="given").token == "given"
    assert build_options("run").loopback and build_options("run", host="::1").loopback
    assert not build_options("run", host="0.0.0.0").loopback


def test_a_public_address_without_a_token_is_warned_about(capsys, monkeypatch):
    from blitz.serving.options import build_options
    from blitz.serving.server import _warn_if_exposed

    monkeypatch.delenv("BLITZ_TOKEN", raising=False)
    _warn_if_exposed(build_options("run", host="0.0.0.0"))
    assert "without a token" in capsys.readouterr().err
    _warn_if_exposed(build_options("run", host="0.0.0.0", token="t"))
    _warn_if_exposed(build_options("run"))
    assert capsys.readouterr().err == ""


def test_blitz_serve_is_callable_and_refuses_unknown_options(tmp_path):
    import blitz
    import blitz.serving.app  # noqa: F401  # the package beside it changes nothing

    assert callable(blitz.serve)
    with pytest.raises(BlitzError, match="did you mean max_batch"):
        blitz.serve(tmp_path, max_batc=3)
    with pytest.raises(BlitzError, match="run_dir must be a string or a path"):
        blitz.serve(3)


def rows_of(arrays: list[np.ndarray]) -> torch.Tensor:
    """A forward that tells the images apart: each row is its image's first pixel."""
    return torch.tensor([[float(a[0, 0, 0])] for a in arrays])


def test_the_batcher_gathers_concurrent_requests_and_answers_each_its_own():
    from blitz.serving.batching import Batcher

    sizes: list[int] = []

    async def main() -> list[torch.Tensor]:
        batcher = Batcher(rows_of, max_batch=6, max_wait=0.5, max_queue=100, on_batch=sizes.append)
        batcher.start()
        requests = [[np.full((2, 2, 1), 10 * i + j, np.uint8) for j in range(n)]
                    for i, n in enumerate([1, 2, 3, 1])]  # fmt: skip
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return answers

    answers = asyncio.run(main())
    assert [a[:, 0].tolist() for a in answers] == [[0], [10, 11], [20, 21, 22], [30]]
    assert sizes == [6, 1]  # the first three together (6 = max_batch), the last alone


def test_a_full_queue_is_refused():
    from blitz.serving.batching import Batcher, QueueFull

    started, release = threading.Event(), threading.Event()

    def slow(arrays):
        started.set()
        release.wait(10)
        return rows_of(arrays)

    async def main() -> None:
        batcher = Batcher(slow, max_batch=1, max_wait=0, max_queue=2)
        batcher.start()
        one = np.zeros((2, 2, 1), np.uint8)
        first = asyncio.ensure_future(batcher.submit([one]))
        while not started.is_set():  # the first is taken into the (blocked) forward pass
            await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(batcher.submit([one])) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit([one])
        release.set()
        await asyncio.gather(first, *waiting)
        await batcher.stop()

    asyncio.run(main())


def test_a_full_queue_answers_503_with_retry_after(monkeypatch):
    from starlette.testclient import TestClient

    from blitz.serving import app as app_module
    from blitz.serving.batching import QueueFull

    async def full(self, arrays):
        raise QueueFull("9 images are waiting already (--max-queue)")

    monkeypatch.setattr(app_module.Batcher, "submit", full)
    served = fake_served()
    with TestClient(app_module.create_app(served_options(), served)) as client:
        wait_for(lambda: client.get("/ready").status_code == 200, "ready")
        response = client.post("/predict", files=[("files", ("a.png", GOOD))])
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "busy" in response.json()["error"]


def served_options():
    from blitz.serving.options import Options

    return Options("run")


def fake_served():
    from blitz.serving.backends import Served
    from blitz.training.checkpoint import ModelFacts

    facts = ModelFacts("lenet", {}, 3, ["a", "b"], 32, (0.5,) * 3, (0.5,) * 3)
    return Served("torch", facts, facts.build(), "run@0", {"run": "run@0"})


def test_base64_as_the_common_tools_write_it_is_read():
    from starlette.testclient import TestClient

    from blitz.serving import app as app_module

    # an image whose base64 has padding and '+' or '/', so that the variants differ from it
    plain = next(
        encoded
        for size in range(20, 200)
        if "=" in (encoded := base64.b64encode(image := png_bytes((30, 200, 30), size)).decode())
        and set("+/") & set(encoded)
    )
    url_safe = base64.urlsafe_b64encode(image).decode().rstrip("=")
    wrapped = "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76)) + "\n"
    with TestClient(app_module.create_app(served_options(), fake_served())) as client:
        wait_for(lambda: client.get("/ready").status_code == 200, "ready")
        answers = client.post("/predict", json={"images": [plain, url_safe, wrapped]})
        assert answers.status_code == 200, answers.text
        assert len({json.dumps(a["top"]) for a in answers.json()["predictions"]}) == 1
        assert client.post("/predict", json={"images": [plain[:-5] + "*"]}).status_code == 400


def test_a_client_that_leaves_mid_request_is_no_server_error(monkeypatch, caplog):
    from starlette.requests import ClientDisconnect, Request
    from starlette.testclient import TestClient

    from blitz.serving import app as app_module

    async def gone(self):
        raise ClientDisconnect()

    monkeypatch.setattr(Request, "body", gone)
    with TestClient(app_module.create_app(served_options(), fake_served())) as client:
        wait_for(lambda: client.get("/ready").status_code == 200, "ready")
        assert client.post("/predict", json={"images": [B64]}).status_code == 499
        counted = client.get("/metrics").text
    assert 'path="/predict",status="499"' in counted and 'status="500"' not in counted
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_port_in_use_or_a_host_of_no_machine_is_refused_before_the_run_loads(tmp_path):
    from blitz.serving.options import Options
    from blitz.serving.server import serve

    missing = str(tmp_path / "no-run")  # loading it would be another error: this one is first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BlitzError, match=f"cannot listen on 127.0.0.1:{port} .*--port"):
            serve(Options(missing, port=port))
    with pytest.raises(BlitzError, match="cannot listen on 999.1.1.1:8000"):
        serve(Options(missing, host="999.1.1.1"))
    with pytest.raises(BlitzError, match="no-run"):  # port 0: a free one, then the run
        serve(Options(missing, port=0))


def test_readiness_waits_for_the_model():
    from starlette.testclient import TestClient

    from blitz.serving import app as app_module

    release = threading.Event()
    served = fake_served()
    served.warm_up = lambda: release.wait(10)  # type: ignore[method-assign]
    with TestClient(app_module.create_app(served_options(), served)) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503
        loading = client.post("/predict", files=[("files", ("a.png", GOOD))])
        assert loading.status_code == 503 and "loading" in loading.json()["error"]
        release.set()
        wait_for(lambda: client.get("/ready").status_code == 200, "ready")
        assert client.post("/predict", files=[("files", ("a.png", GOOD))]).status_code == 200


# --- the page in a real browser ---


class DevTools:
    """Chromium driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``:
    JSON messages ending in NUL on file descriptors 3 and 4), no driver library needed."""

    def __init__(self, profile: Path) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def plumb() -> None:  # in the child: its fds 3 and 4 are the pipes' ends
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.log = profile.with_name("chromium.log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [BROWSER, *HEADLESS, "--remote-debugging-pipe", f"--user-data-dir={profile}"],
                preexec_fn=plumb,
                close_fds=False,  # fds 3 and 4 must reach chromium (Python's are not inherited)
                stdout=log,
                stderr=log,
            )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next = b"", 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:  # events come in between: skip them
            reply = self._receive()
            if reply.get("id") == self._next:
                assert "error" not in reply, reply
                return reply["result"]

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            data = os.read(self._read, 65536)
            # (a memory limit such as ulimit -v 8000000 stops chromium as it starts)
            assert data, f"chromium closed its DevTools pipe: {self.log.read_text()[-2000:]}"
            self._buffer += data
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        finally:
            self.proc.wait(timeout=30)
            os.close(self._read)
            os.close(self._write)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.subprocess
@needs_browser
def test_the_page_classifies_an_image_picked_in_a_real_browser(server, tmp_path):
    assert BROWSER, "BLITZ_REQUIRE_BROWSER is set but no chromium is on PATH"
    picture = tmp_path / "photo.png"
    picture.write_bytes(distinct_images(1)[0])
    expected = answered(server.post(files=as_files([picture])))["photo.png"]
    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", url=server.url + "/")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        ready = "document.readyState === 'complete' && document.getElementById('run').textContent"
        wait_for(lambda: "@" in (browser.evaluate(session, ready) or ""), "the page to load")
        root = browser.call("DOM.getDocument", session)["root"]["nodeId"]
        field = browser.call("DOM.querySelector", session, nodeId=root, selector="#files")
        browser.call("DOM.setFileInputFiles", session, files=[str(picture)], nodeId=field["nodeId"])
        shown = "[...document.querySelectorAll('#results .label, #results .error')]" \
                ".map(e => e.textContent).join('|')"  # fmt: skip
        wait_for(lambda: browser.evaluate(session, shown), "the page to show a prediction")
        label = browser.evaluate(session, shown)
        bars = browser.evaluate(session, "document.querySelectorAll('#results .bar').length")
        names = browser.evaluate(session, "document.querySelector('#results .name').textContent")
    finally:
        browser.close()
    best = max(expected, key=expected.get)
    assert label == best and bars == len(expected) and names == "photo.png"
