"""``loopwright view``'s HTTP server: the stdlib's threading server, GET only, read-only.

Each API request opens the store read-only and closes it before answering: holding the file
open would lock out a run started later (DuckDB lets no writer in while any reader holds
it). Opening a checkpointed file costs milliseconds; a file a run is writing is read through
that run's read service (readserve.py).

Everything the page shows is attacker-controlled text (model outputs, prompts, feedback):
the API returns JSON only, the page draws it with textContent, and every response carries a
Content-Security-Policy that allows scripts, styles and images from this origin alone.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

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
png bytes)}}; the CLI passes one built on loops/analysis/report.py (traces cannot import loops)."""


class ViewError(Exception):
    """The viewer cannot start: the database is missing or the port is taken."""


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    raise TypeError(f"not JSON: {type(v).__name__}")


def _static(name: str) -> bytes | None:
    if "/" in name or name.startswith("."):
        return None
    res = resources.files("loopwright.traces.view").joinpath("static", name)
    return res.read_bytes() if res.is_file() else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    viewer: Viewer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "loopwright-view"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a page load is a dozen requests; the terminal shows the URL, not a log

    def _send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, default=_json_default).encode()
        self._send(status, body, "application/json; charset=utf-8", extra)

    def do_GET(self) -> None:
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
        viewer = self.server.viewer
        t0 = time.perf_counter()
        try:
            if route == "sweep/plot":
                png = viewer.sweep_plot(args.get("name", ""), args.get("file", ""))
                self._send(HTTPStatus.OK, png, "image/png")
                return
            result = viewer.answer(route, args)
        except Q.BadRequest as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
            return
        except TraceStoreError as exc:  # e.g. locked by a writer that serves no reads
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        ms = (time.perf_counter() - t0) * 1000
        self._json(HTTPStatus.OK, result, {"Server-Timing": f"db;dur={ms:.1f}"})


def _int(args: dict[str, str], key: str, default: int) -> int:
    try:
        return int(args.get(key, default))
    except ValueError:
        raise Q.BadRequest(f"{key} must be a number") from None


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
            raise Q.BadRequest(f"no API route {route!r}")
        with TraceStore(self.db, read_only=True) as st:
            out = fn(st, a)
        if route == "sweep":  # the report reads the store itself, after ours is closed
            report = self._report(out["name"])
            out["report"] = {
                "tables": report.get("tables", []),
                "plots": [[k, v[0]] for k, v in report.get("plots", {}).items()],
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
            self._reports[name] = (time.monotonic(), report)
            return report

    def sweep_plot(self, name: str, file: str) -> bytes:
        plots = self._report(name).get("plots", {})
        if file not in plots:
            raise Q.BadRequest(f"sweep {name!r} has no plot {file!r}")
        return bytes(plots[file][1])
