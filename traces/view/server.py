"""``loopwright view``'s HTTP server: the stdlib's threading server, GET only, read-only.

Each API request opens the store read-only and closes it before answering: holding the file
open would lock out a run started later (DuckDB lets no writer in while any reader holds
it). Opening a checkpointed file costs milliseconds; a file a run is writing is read through
that run's read service (readserve.py).

Everything the page shows is attacker-controlled text (model outputs, prompts, feedback):
the API returns JSON only, the page draws it with textContent, and every response carries a
Content-Security-Policy that allows scripts, styles and images from this origin alone. No
form submits natively (``form-action 'none'``): the page's script turns a filter form into a
URL and navigates to it, so an injected form could send nothing anywhere.

Every request gets an answer. An API failure is JSON ``{"error": one line}`` with its status:
400 a bad parameter, 404 an unknown run, task, node, call, sweep or route, 405 a method other
than GET, 503 the store could not be read (locked, gone, its writer's read service refused or
died mid-read), 500 a bug. Only a bug writes to the terminal: its traceback, once per place it
was raised (the page polls, and the line on the page says what happened).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import duckdb
from loopwright.traces.readserve import RemoteReadError
from loopwright.traces.store import TraceStore, TraceStoreError
from loopwright.traces.view import queries as Q
from loopwright.traces.view import sweeps as S

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
PAGES = ("", "run", "sweeps", "sweep", "compare", "improve")
"""First path segments the single-page app draws; each page has its own linkable URL."""
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]"}

SweepReport = Callable[[str, str], dict[str, Any]]
"""(db, sweep name) -> {"tables": [{"title", "columns", "rows"}], "plots": {file: (title,
png bytes)}}, or {"note": why there is no report yet} (e.g. no point has finished); the CLI
passes one built on loops/analysis/report.py (traces cannot import loops)."""


class ViewError(Exception):
    """The viewer cannot start: the database is missing, the port is taken or not a port."""


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    raise TypeError(f"not JSON: {type(v).__name__}")


def _finite(v: Any) -> Any:
    if isinstance(v, float | Decimal):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def _dumps(obj: Any) -> bytes:
    """JSON the browser can parse: a NaN or infinite score (which json.dumps would write as
    the bare word NaN, which JSON.parse rejects) becomes null."""
    try:
        return json.dumps(obj, default=_json_default, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(obj), default=_json_default, allow_nan=False).encode()


def _static(name: str) -> bytes | None:
    if "/" in name or name.startswith("."):
        return None
    res = resources.files("loopwright.traces.view").joinpath("static", name)
    return res.read_bytes() if res.is_file() else None


STORE_ERRORS = (TraceStoreError, RemoteReadError, duckdb.IOException, OSError)
"""The store could not be read (locked, gone, its writer failed or died mid-read): 503."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    viewer: Viewer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-request is not worth a traceback; anything else that
        # escaped the handler is a bug and keeps its traceback (socketserver prints it).
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "loopwright-view"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a page load is a dozen requests; the terminal shows the URL, not a log

    def _send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self._started = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        self._send(status, _dumps(obj), "application/json; charset=utf-8", extra)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's errors (a malformed request line, an unknown method) as JSON too."""
        short = self.responses.get(code, ("error", ""))[0]
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # set when the request line was unreadable
            self.request_version = "HTTP/1.0"
        self._json(code, {"error": f"{code} {message or short}"}, {"Connection": "close"})

    def _not_allowed(self) -> None:
        self._json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": f"{self.command} is not allowed: the viewer only reads (GET)"},
            {"Allow": "GET"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    def do_GET(self) -> None:
        self._started = False  # set once the status line of this answer is on its way
        try:
            self._get()
        except ConnectionError:
            pass  # the browser gave up on this request (a new page, a closed tab)
        except Exception as exc:
            self._internal(exc)

    def _internal(self, exc: Exception) -> None:
        """An unexpected exception is a bug: one JSON line to the page, its traceback once on
        the viewer's stderr (a page polled every 2 s would print the same one over and over)."""
        _log_once(exc)
        if self._started:  # the answer had begun: all we can do is end it
            self.close_connection = True
            return
        with contextlib.suppress(ConnectionError):
            self._json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": f"internal error in the viewer: {type(exc).__name__}: {_one_line(exc)}"},
            )

    def _get(self) -> None:
        viewer = self.server.viewer
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        # DNS rebinding: a page on another site that resolves its name to 127.0.0.1 must not
        # read the traces, so a loopback viewer answers only loopback host names (one bound
        # to another interface with --host was exposed on purpose).
        if viewer.loopback and host not in LOCAL_HOSTS:
            self._json(HTTPStatus.FORBIDDEN, {"error": f"unexpected Host {host!r}"})
            return
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["favicon.ico"]:
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        elif parts[0] == "static" and len(parts) == 2:
            body = _static(parts[1])
            if body is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "no such file"})
                return
            ctype = STATIC_TYPES.get(Path(parts[1]).suffix, "application/octet-stream")
            self._send(HTTPStatus.OK, body, f"{ctype}; charset=utf-8")
        elif parts[0] == "api" and len(parts) >= 2:
            args = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self._api("/".join(parts[1:]), args)
        elif parts[0] in PAGES:
            body = _static("index.html") or b""
            self._send(HTTPStatus.OK, body, "text/html; charset=utf-8")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such page"})

    def _api(self, route: str, args: dict[str, str]) -> None:
        """Answer one API request: JSON (or a PNG), or a JSON error with one line."""
        viewer = self.server.viewer
        t0 = time.perf_counter()
        try:
            if route == "sweep/plot":
                png = viewer.sweep_plot(args.get("name", ""), args.get("file", ""))
            else:
                result = viewer.answer(route, args)
        except Q.NotFound as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
            return
        except Q.BadRequest as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except STORE_ERRORS as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": _store_error(viewer.db, exc)})
            return
        if route == "sweep/plot":
            self._send(HTTPStatus.OK, png, "image/png")
            return
        ms = (time.perf_counter() - t0) * 1000
        self._json(HTTPStatus.OK, result, {"Server-Timing": f"db;dur={ms:.1f}"})


def _store_error(db: str, exc: BaseException) -> str:
    line = _one_line(exc)
    if isinstance(exc, TraceStoreError):
        return line  # already says which file and what to do
    if isinstance(exc, RemoteReadError):
        return f"the process writing {db} could not answer this read: {line}"
    if isinstance(exc, TimeoutError):
        return f"the process writing {db} did not answer in time; try again"
    if isinstance(exc, ConnectionError):
        return f"the process writing {db} went away mid-read ({line}); reload the page"
    return f"cannot read {db}: {line}"


_logged: set[tuple[str, str, int]] = set()
_logged_lock = threading.Lock()


def _log_once(exc: BaseException) -> None:
    frames = traceback.extract_tb(exc.__traceback__)
    where = (frames[-1].filename, frames[-1].lineno or 0) if frames else ("?", 0)
    key = (type(exc).__name__, *where)
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    print("loopwright view: internal error (a bug; the page shows one line):", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)


_NUMBER = re.compile(r"-?[0-9]+")  # ASCII digits: int() also takes "1_0" and other scripts' digits


def _int(args: dict[str, str], key: str, default: int) -> int:
    raw = args.get(key)
    if raw is None or raw == "":
        return default
    try:
        if _NUMBER.fullmatch(raw):
            return int(raw)
    except ValueError:  # past Python's limit on digits
        pass
    raise Q.BadRequest(f"{key} must be a whole number, not {raw[:40]!r}")


def _paging(a: dict[str, str]) -> dict[str, int]:
    return {"limit": _int(a, "limit", 50), "offset": _int(a, "offset", 0)}


Route = Callable[[TraceStore, dict[str, str]], Any]
ROUTES: dict[str, Route] = {
    "runs": lambda st, a: Q.runs_page(
        st, q=a.get("q", ""), status=a.get("status", ""), sort=a.get("sort", ""),
        desc=a.get("dir", "desc") == "desc", **_paging(a),
    ),
    "run": lambda st, a: Q.run_detail(st, a.get("name", "")),
    "tasks": lambda st, a: Q.tasks_page(
        st, a.get("run", ""), filter=a.get("filter", ""), stop=a.get("stop", ""),
        q=a.get("q", ""), sort=a.get("sort", ""), desc=a.get("dir", "") == "desc", **_paging(a),
    ),
    "task": lambda st, a: Q.task_tree(st, a.get("run", ""), a.get("task", ""), a.get("node", "")),
    "node": lambda st, a: Q.node_detail(st, a.get("id", "")),
    "call": lambda st, a: Q.call_detail(st, a.get("id", "")),
    "sweeps": lambda st, a: {"rows": S.sweeps_list(st)},
    "sweep": lambda st, a: S.sweep_points(st, a.get("name", "")),
    "compare": lambda st, a: S.compare_page(
        st, a.get("a", ""), a.get("b", ""), filter=a.get("filter", ""), **_paging(a)
    ),
    "improve": lambda st, a: S.improve_page(st),
}  # fmt: skip
"""API routes under /api/: each reads one page's rows from a store opened for the request."""


class Viewer:
    """The viewer over one trace database; ``start()`` serves from a thread, ``stop()`` ends."""

    def __init__(
        self,
        db: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sweep_report: SweepReport | None = None,
    ) -> None:
        self.db = str(db)
        if not 0 <= port <= 65535:
            raise ViewError(f"--port {port} is not a port: pass 1-65535, or 0 for any free one")
        if not Path(self.db).exists():
            raise ViewError(f"no trace database at {self.db}: run `loopwright run` first")
        self.host = host
        self.loopback = host in LOCAL_HOSTS or host == "::1"
        self.sweep_report = sweep_report
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}
        self._reports_lock = threading.Lock()
        try:
            self._httpd = _Server((host, port), _Handler)
        except OSError as exc:
            raise ViewError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(another viewer? pass --port N, or --port 0 for any free one)"
            ) from None
        self._httpd.viewer = self
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> Viewer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="loopwright-view", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (KeyboardInterrupt propagates after the socket is closed)."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Viewer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answers ---------------------------------------------------------------------------
    def answer(self, route: str, a: dict[str, str]) -> Any:
        fn = ROUTES.get(route)
        if fn is None:
            raise Q.NotFound(f"no API route {route!r}")
        with TraceStore(self.db, read_only=True) as st:
            out = fn(st, a)
        if route == "sweep":  # the report reads the store itself, after ours is closed
            report = self._report(out["name"])
            out["report"] = {
                "tables": report.get("tables", []),
                "plots": [[k, v[0]] for k, v in report.get("plots", {}).items()],
                "note": report.get("note"),
            }
        return out

    def _report(self, name: str) -> dict[str, Any]:
        if self.sweep_report is None:
            return {}
        with self._reports_lock:  # plots are seconds of matplotlib: one at a time, cached
            hit = self._reports.get(name)
            if hit is not None and time.monotonic() - hit[0] < 30:
                return hit[1]
            report = self.sweep_report(self.db, name)
            if not report.get("note"):  # nothing to report yet: ask again next time
                self._reports[name] = (time.monotonic(), report)
            return report

    def sweep_plot(self, name: str, file: str) -> bytes:
        with TraceStore(self.db, read_only=True) as st:
            S.sweep_row(st, name)  # NotFound for an unknown sweep
        plots = self._report(name).get("plots", {})
        if file not in plots:
            raise Q.NotFound(f"sweep {name!r} has no plot {file!r}")
        return bytes(plots[file][1])
