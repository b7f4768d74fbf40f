"""The feature browser's HTTP server: standard-library ThreadingHTTPServer, JSON API + the
static single-page app in saekit/viewer/static.

Routes (everything else is a 404; methods other than GET/POST/HEAD a 405):
  GET  /                      the app (index.html)
  GET  /static/<name>         one of STATIC_FILES, never a path built from the request
  GET  /api/meta              SAE, model, hookpoint, corpus, build settings
  GET  /api/latents?q=&sort=&order=&page=&per_page=   one page of the latent list
  GET  /api/latent/<id>       one latent's page data
  POST /api/activate          {"text": "..."} -> per-token latents (body ≤ 64 KiB)
"""

from __future__ import annotations

import ipaddress
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from saekit.viewer.store import BadRequest, BrowserData, LiveEncoder, NotFound, parse_int

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
MAX_BODY = 64 * 1024
MAX_URL = 4096
# A client that sends nothing for this long is dropped, so stalled connections cannot hold
# threads; at most MAX_THREADS requests are handled at once, the rest wait in the backlog.
REQUEST_TIMEOUT_S = 10.0
MAX_THREADS = 64
BACKLOG = 128


def _static(name: str) -> bytes:
    return resources.files("saekit.viewer").joinpath("static", name).read_bytes()


class Handler(BaseHTTPRequestHandler):
    """One request. `server.data` and `server.live` are shared by every thread."""

    server: BrowserServer
    server_version = "saekit-browse"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(fmt, *args)

    # ---- responses ------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        # The app loads nothing from elsewhere; say so, so a stray injection could not either.
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message, "status": status}, status)

    # ---- routing --------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _method_not_allowed(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} not allowed")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _method_not_allowed  # noqa: N815

    def __getattr__(self, name: str) -> Any:
        # Any other method (FOO, PROPFIND...) is a 405 too, not http.server's 501.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _dispatch(self) -> None:
        try:
            host = self.headers.get("Host")
            if host is not None and not self.server.host_allowed(host):
                # DNS rebinding: a page on another site whose name now resolves to 127.0.0.1
                # still sends its own name as Host.
                raise _Forbidden(f"Host {host!r} is not served here")
            if len(self.path) > MAX_URL:
                raise BadRequest("URL too long")
            url = urlsplit(self.path)
            route = url.path
            if self.command == "POST":
                if route != "/api/activate":
                    raise _MethodNotAllowed
                text, focus = self._body()
                return self._json(self._with_tokens(self.server.live.activate(text, focus=focus)))
            if route in ("/", "/index.html"):
                return self._send(200, _static("index.html"), STATIC_FILES["index.html"])
            if route.startswith("/static/"):
                name = route[len("/static/") :]
                if name not in STATIC_FILES:  # a fixed whitelist: no path is ever joined
                    raise NotFound(f"no static file {name!r}")
                return self._send(200, _static(name), STATIC_FILES[name])
            params = _params(url.query)
            if route == "/api/meta":
                return self._json(self.server.data.meta)
            if route == "/api/latents":
                return self._json(self.server.data.list_latents(params))
            if route.startswith("/api/latent/"):
                n = self.server.data.n_latents
                i = parse_int(route[len("/api/latent/") :], "latent id", 0, 10**12)
                if i >= n:
                    raise NotFound(f"latent {i} does not exist (this SAE has {n})")
                return self._json(self.server.data.latent(i))
            if route == "/api/activate":
                focus = params.get("latent")
                focus_id = (
                    None
                    if focus is None
                    else parse_int(focus, "latent", 0, self.server.data.n_latents - 1)
                )
                result = self.server.live.activate(params.get("text", ""), focus=focus_id)
                return self._json(self._with_tokens(result))
            raise NotFound(f"no route {route!r}")
        except BadRequest as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except NotFound as e:
            self._error(HTTPStatus.NOT_FOUND, str(e))
        except _MethodNotAllowed:
            self._method_not_allowed()
        except _TooLarge as e:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(e))
        except _Forbidden as e:
            self._error(HTTPStatus.FORBIDDEN, str(e))
        except Exception as e:  # a bug must not kill the thread silently
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    def _with_tokens(self, result: dict[str, Any]) -> dict[str, Any]:
        """Add each mentioned latent's top tokens, so the page can say what it is."""
        ids = {j for t in result["tokens"] for j, _ in t["latents"]} | {
            j for j, _ in result["summary"]
        }
        top = self.server.data.index["top_tokens"]
        result["latent_tokens"] = {str(j): top[j] for j in sorted(ids) if 0 <= j < len(top)}
        return result

    def _body(self) -> tuple[str, int | None]:
        """(text, focus latent or None) from a JSON body {"text": ..., "latent": ...}."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest("POST needs a Content-Length")
        size = parse_int(length.strip(), "Content-Length", 0, 10**12)
        if size > MAX_BODY:
            raise _TooLarge(f"body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(size)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadRequest('body must be JSON: {"text": "..."}') from None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise BadRequest('body must be JSON: {"text": "..."}')
        try:  # JSON may carry lone surrogates ("\ud800"), which no tokenizer can take
            body["text"].encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("text is not valid Unicode (lone surrogate)") from None
        focus = body.get("latent")
        if focus is not None:
            n = self.server.data.n_latents
            if not isinstance(focus, int) or isinstance(focus, bool) or not 0 <= focus < n:
                raise BadRequest(f"latent must be an integer in [0, {n})")
        return body["text"], focus


class _MethodNotAllowed(Exception):
    pass


class _TooLarge(Exception):
    pass


class _Forbidden(Exception):
    pass


def _params(query: str) -> dict[str, str]:
    """Query parameters, one value each (the last); malformed encodings are a 400."""
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    return {k: v[-1] for k, v in parsed.items()}


class BrowserServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG  # a burst of connections waits instead of being reset

    def __init__(
        self, address: tuple[str, int], data: BrowserData, live: LiveEncoder, verbose: bool = False
    ):
        super().__init__(address, Handler)
        self.data, self.live, self.verbose = data, live, verbose
        self._slots = threading.BoundedSemaphore(MAX_THREADS)
        self._hosts = _allowed_hosts(str(self.server_address[0]))

    def host_allowed(self, host: str) -> bool:
        if self._hosts is None:  # bound to every interface: the user chose to be reachable
            return True
        name = host.strip().lower()
        if name.startswith("["):
            name = name[: name.find("]") + 1] if "]" in name else name
        else:
            name = name.rpartition(":")[0] if name.count(":") == 1 else name
        return name in self._hosts

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=REQUEST_TIMEOUT_S):
            self.shutdown_request(request)  # saturated: drop rather than grow threads
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-response is not an error worth a traceback."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def _allowed_hosts(bound: str) -> set[str] | None:
    """Host header values accepted for a server bound to `bound` (None: any)."""
    loopback = {"localhost", "127.0.0.1", "[::1]"}
    try:
        ip = ipaddress.ip_address(bound)
    except ValueError:
        return {bound.lower()} | (loopback if bound.lower() == "localhost" else set())
    if ip.is_unspecified:
        return None
    names = {str(ip), f"[{ip}]"}
    if ip.is_loopback:
        names |= loopback
    return names


def make_server(
    data_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    sae_dir: str | Path | None = None,
    verbose: bool = False,
) -> BrowserServer:
    """A server over `data_dir` (port 0 = any free port); call serve_forever() to run it."""
    data = BrowserData(data_dir)
    return BrowserServer((host, port), data, LiveEncoder(data.meta, sae_dir), verbose)


def serve_in_thread(server: BrowserServer) -> threading.Thread:
    """Run `server` in a daemon thread (tests, notebooks); stop with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


__all__ = ["BrowserServer", "make_server", "serve_in_thread"]
