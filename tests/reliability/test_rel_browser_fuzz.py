"""Browser fuzz: hostile requests against a live `saekit browse` server on 127.0.0.1 (raw
sockets, so nothing is normalised on the way). Only 4xx answers, the server stays up, and
nothing outside the app's fixed static files is ever served."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import pytest
from eval_helpers import corpus, trained_sae

from saekit.evaluation.evaluate import model_source
from saekit.formats.native import load
from saekit.viewer import server as viewer_server
from saekit.viewer.build import BuildSettings, build
from saekit.viewer.server import make_server, serve_in_thread

SETTINGS = BuildSettings(split="all", n_contexts=16, ctx_len=16, n_top=4, shard_size=32)
CANARY = "saekit-canary-3f9a"  # written beside the data directory; must never be served


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    sae_dir = trained_sae()
    root = tmp_path_factory.mktemp("fuzz")
    (root / "secret.txt").write_text(CANARY)
    data = root / "data"
    build(load(sae_dir), model_source(load(sae_dir)), data, SETTINGS, sae_path=sae_dir,
          corpus=corpus())  # fmt: skip
    (data / "secret.txt").write_text(CANARY)
    s = make_server(data, port=0, sae_dir=sae_dir)
    serve_in_thread(s)
    yield s
    s.shutdown()
    s.server_close()


def raw(srv, data: bytes, timeout: float = 20.0) -> tuple[int, bytes]:
    """Send raw bytes; (status, body). Status 0: the connection closed without a response."""
    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    reply = b"".join(chunks)
    if not reply.startswith(b"HTTP/"):
        return 0, reply
    status = int(reply.split(b" ", 2)[1])
    return status, reply.partition(b"\r\n\r\n")[2]


def get(srv, target: str, headers: str = "", method: str = "GET") -> tuple[int, bytes]:
    port = srv.server_address[1]
    req = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
    return raw(srv, req.encode("latin-1"))


def post(srv, body: bytes, headers: str | None = None) -> tuple[int, bytes]:
    port = srv.server_address[1]
    h = headers if headers is not None else f"Content-Length: {len(body)}\r\n"
    req = f"POST /api/activate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{h}Connection: close\r\n\r\n"
    return raw(srv, req.encode("latin-1") + body)


TRAVERSAL = [
    "/static/../../etc/passwd", "/static/..%2f..%2fetc%2fpasswd", "/static/%2e%2e/%2e%2e/secret.txt",
    "/static/%2e%2e%2fsecret.txt", "/static/..%252f..%252fsecret.txt", "/static/....//secret.txt",
    "/static/..\\..\\secret.txt", "/static/%c0%ae%c0%ae/secret.txt", "/static//etc/passwd",
    "/static/index.html%00.js", "/static/./index.html/../../secret.txt", "/static/secret.txt",
    "/static/%2fetc%2fpasswd", "/../secret.txt", "/%2e%2e/secret.txt", "//etc/passwd",
    "/secret.txt", "/data/secret.txt", "/api/latent/../../secret.txt", "/api/../secret.txt",
    "/static/%uff0e%uff0e/secret.txt", "/static/\u2024\u2024/secret.txt".encode().decode("latin-1"),
    "http://127.0.0.1/../secret.txt", "/static/app.js/../../secret.txt", "/index.html/../secret.txt",
    "/static/" + "../" * 50 + "etc/passwd", "/static/~/.bashrc", "/static/%7e/secret.txt",
]  # fmt: skip
BAD_IDS = ["-1", "abc", "99999999999999999999", "1e3", "%00", "", "0x1", "1.5", " 1", "1/2",
           "128", "%2e", "+1"]  # fmt: skip
BAD_PARAMS = ["page=-1", "page=abc", "per_page=0", "per_page=100000000", "sort=__class__",
              "order=sideways", "q=" + "a" * 3000, "q=%zz", "&".join(f"f{i}=1" for i in range(30)),
              "page=99999999999999999999", "latent=-1", "sort=%00"]  # fmt: skip
METHODS = ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "CONNECT", "PROPFIND"]


@pytest.mark.parametrize("target", TRAVERSAL)
def test_traversal_in_every_encoding_is_refused(srv, target):
    status, body = get(srv, target)
    assert 400 <= status < 500, (target, status)
    assert CANARY.encode() not in body and b"root:" not in body


@pytest.mark.parametrize("latent", BAD_IDS)
def test_bad_latent_ids(srv, latent):
    status, _ = get(srv, f"/api/latent/{latent}")
    assert 400 <= status < 500, (latent, status)


@pytest.mark.parametrize("query", BAD_PARAMS)
def test_bad_parameters(srv, query):
    status, _ = get(srv, f"/api/latents?{query}")
    assert status < 500, (query, status)  # 200 with clamped values, or a 4xx
    status, _ = get(srv, f"/api/activate?text=hi&{query}")
    assert status < 500, (query, status)


@pytest.mark.parametrize(
    "body, headers",
    [
        (b'{"text": "a\\ud800b"}', None),  # a lone surrogate in JSON
        (b'{"text": "\\udfff"}', None),
        (b"\xff\xfe{", None),  # not UTF-8
        (b"[1, 2]", None),
        (b'{"text": 5}', None),
        (b'{"text": "hi", "latent": "abc"}', None),
        (b'{"text": "hi", "latent": -1}', None),
        (b'{"text": "hi", "latent": true}', None),
        (b'{"text": "hi", "latent": 1e400}', None),
        (b"{" * 10000, None),
        (b"", None),
        (b'{"text": "hi"}', ""),  # no Content-Length
        (b'{"text": "hi"}', "Content-Length: -5\r\n"),
        (b'{"text": "hi"}', "Content-Length: abc\r\n"),
        (b'{"text": "hi"}', "Content-Length: 99999999999\r\n"),
        (b"x" * 70000, None),
    ],
)
def test_bad_bodies(srv, body, headers):
    status, _ = post(srv, body, headers)
    assert 400 <= status < 500, (body[:40], status)


@pytest.mark.parametrize("method", METHODS)
def test_bad_methods(srv, method):
    status, _ = get(srv, "/", method=method)
    assert 400 <= status < 500, (method, status)


def test_long_urls_and_headers(srv, monkeypatch):
    monkeypatch.setattr(viewer_server.Handler, "timeout", 1.0)  # the TLS bytes never end a line
    assert 400 <= get(srv, "/api/latents?q=" + "a" * 20000)[0] < 500
    assert 400 <= get(srv, "/" + "a" * 70000)[0] < 500
    assert 400 <= get(srv, "/", headers=f"X-Long: {'a' * 70000}\r\n")[0] < 500
    many = "".join(f"X-H{i}: 1\r\n" for i in range(200))
    assert 400 <= get(srv, "/", headers=many)[0] < 500
    status, _ = raw(srv, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100)  # TLS
    assert status == 0 or 400 <= status < 500


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example",
                                  "localhost.evil.example", "[::2]", "attacker:1"])  # fmt: skip
def test_foreign_host_header_is_refused(srv, host):
    """DNS rebinding: a page from another site reaches 127.0.0.1 with its own Host name."""
    req = f"GET /api/meta HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    status, body = raw(srv, req)
    assert status == 403, (host, status)
    assert b"n_latents" not in body


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]"])
def test_local_host_names_are_served(srv, host):
    port = srv.server_address[1]
    for h in (host, f"{host}:{port}"):
        req = f"GET /api/meta HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n".encode()
        assert raw(srv, req)[0] == 200, h


def test_burst_of_concurrent_requests_is_served(srv):
    """50 connections at once: none is reset (the listen backlog is large enough)."""
    barrier = threading.Barrier(50)

    def one(i):
        barrier.wait()
        return get(srv, "/api/latents?page=0")[0]

    with concurrent.futures.ThreadPoolExecutor(50) as ex:
        statuses = list(ex.map(one, range(50)))
    assert statuses == [200] * 50


def test_stalled_connections_neither_block_nor_hold_threads(srv, monkeypatch):
    monkeypatch.setattr(viewer_server.Handler, "timeout", 1.0)
    before = threading.active_count()
    host, port = srv.server_address[:2]
    stalled = []
    for i in range(100):
        s = socket.create_connection((host, port), timeout=5)
        if i % 2:
            s.sendall(b"GET / HTTP/1.1\r\n")  # half a request, then silence
        stalled.append(s)
    try:
        time.sleep(0.3)
        # Threads are bounded while they stall...
        assert threading.active_count() - before <= viewer_server.MAX_THREADS + 2
        # ...and once they time out, a normal request is answered.
        time.sleep(1.5)
        start = time.perf_counter()
        assert get(srv, "/api/meta")[0] == 200
        assert time.perf_counter() - start < 5
    finally:
        for s in stalled:
            s.close()
    deadline = time.time() + 10
    while threading.active_count() > before + 2 and time.time() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= before + 2


def test_server_is_still_up_and_correct_after_the_fuzz(srv):
    status, body = get(srv, "/api/meta")
    assert status == 200 and json.loads(body)["sae"]["n_latents"] == 128
    status, body = get(srv, "/")
    assert status == 200 and b"<html" in body.lower()
