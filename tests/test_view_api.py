"""The viewer's HTTP answers and the ``loopwright view`` command, without a browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from loopwright.traces import TraceStore
from loopwright.traces.view import Viewer, ViewError
from view_testkit import build_store, viewer


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("view-api"), sweep=True)


def get(url: str, host: str | None = None) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body, status, headers = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        body, status, headers = exc.read(), exc.code, dict(exc.headers)
    is_json = headers.get("Content-Type", "").startswith("application/json")
    return status, headers, json.loads(body) if is_json else body


def test_every_answer_carries_the_security_headers(store: Path) -> None:
    with viewer(store) as v:
        for path in ("", "run/refine-a", "static/app.js", "api/runs", "api/nope"):
            _, h, _ = get(v.url + path)
            assert "default-src 'none'" in h["Content-Security-Policy"]
            assert "unsafe-inline" not in h["Content-Security-Policy"]
            assert h["X-Content-Type-Options"] == "nosniff"
        for js in ("app.js", "pages.js"):
            status, h, body = get(v.url + "static/" + js)
            assert status == 200 and h["Content-Type"].startswith("text/javascript")
            # untrusted text only ever becomes text nodes: no HTML sink is used at all
            sinks = rb"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|eval\("
            assert re.search(sinks, body) is None


def test_a_foreign_host_name_is_refused(store: Path) -> None:
    with viewer(store) as v:
        status, _, body = get(v.url + "api/runs", host=f"evil.example:{v.port}")
        assert status == 403 and "Host" in body["error"]


def test_runs_sort_filter_page_and_mark_the_oracle(store: Path, tmp_path: Path) -> None:
    db = tmp_path / "o.duckdb"
    shutil.copy(store, db)
    with TraceStore(db, serve_reads=False) as s:  # what an oracle run records, set by hand
        s.execute(
            "UPDATE runs SET config = json_merge_patch(config, "
            '\'{"verifier": "oracle", "verifiers": {"math": "oracle"}, "oracle": true}\') '
            "WHERE name = 'bon-a'"
        )
    with viewer(db) as v:
        _, _, page = get(v.url + "api/runs?sort=name&dir=asc&limit=2")
        assert page["total"] >= 4 and len(page["rows"]) == 2
        names = [r["name"] for r in page["rows"]]
        assert names == sorted(names)
        _, _, page = get(v.url + "api/runs?q=bon")
        [row] = page["rows"]
        assert row["oracle"] and row["verifier"] == "oracle"
        _, _, page = get(v.url + "api/runs?q=refine-a")
        assert page["rows"][0]["verifier"] == "self" and not page["rows"][0]["oracle"]
        status, _, body = get(v.url + "api/runs?sort=name;DROP%20TABLE%20runs")
        assert status == 400 and "cannot sort" in body["error"]


def test_run_tasks_filters(store: Path) -> None:
    with viewer(store) as v:
        _, _, all_ = get(v.url + "api/tasks?run=refine-a")
        _, _, failed = get(v.url + "api/tasks?run=refine-a&filter=failed")
        _, _, dis = get(v.url + "api/tasks?run=refine-a&filter=disagree")
        assert all_["total"] == 5
        assert all(r["graded"] is False or r["status"] == "failed" for r in failed["rows"])
        assert all(r["verdict"] != r["graded"] for r in dis["rows"])
        stop = all_["rows"][0]["stop_reason"]
        _, _, by_stop = get(v.url + f"api/tasks?run=refine-a&stop={stop}")
        assert by_stop["rows"] and all(r["stop_reason"] == stop for r in by_stop["rows"])
        status, _, body = get(v.url + "api/tasks?run=nope")
        assert status == 404 and "no run named" in body["error"]


def test_sweep_page_has_the_report_tables_and_plots(store: Path) -> None:
    from loopwright.loops.cli.view import sweep_report

    with viewer(store, sweep_report=sweep_report) as v:
        _, _, sweeps = get(v.url + "api/sweeps")
        assert [s["name"] for s in sweeps["rows"]] == ["grid"]
        _, _, sw = get(v.url + "api/sweep?name=grid")
        assert {p["strategy"] for p in sw["points"]} == {"best-of-n", "self-refine"}
        assert sw["report"]["tables"][0]["rows"]
        files = [f for f, _ in sw["report"]["plots"]]
        assert "accuracy_vs_tokens.png" in files
        status, h, png = get(v.url + "api/sweep/plot?name=grid&file=accuracy_vs_tokens.png")
        assert status == 200 and h["Content-Type"] == "image/png" and png[:4] == b"\x89PNG"


def test_compare_and_improve(store: Path, tmp_path: Path) -> None:
    with viewer(store) as v:
        _, _, c = get(v.url + "api/compare?a=refine-a&b=bon-a")
        assert c["summary"]["shared"] == 5 and len(c["rows"]) == 5
        _, _, imp = get(v.url + "api/improve")
        assert imp == {"models": [], "rounds": []}  # the lineage tables exist, still empty
    db = tmp_path / "i.duckdb"
    shutil.copy(store, db)
    with TraceStore(db, serve_reads=False) as s:
        s.execute(
            "INSERT INTO rounds (improve, round, model, train_run, eval_run, stage, metrics) "
            "VALUES ('rest', 1, 'm1', 'bon-a', 'refine-a', 'done', '{\"acc\": 0.4}')"
        )
    with viewer(db) as v:
        _, _, imp = get(v.url + "api/improve")
        assert imp["models"] == [] and imp["rounds"][0]["train_run"] == "bon-a"


def test_bad_input_gives_one_clear_line(tmp_path: Path, store: Path) -> None:
    with pytest.raises(ViewError, match="no trace database"):
        Viewer(tmp_path / "missing.duckdb")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ViewError, match=f"cannot listen on 127.0.0.1:{port}"):
            Viewer(store, port=port)
        out = subprocess.run(
            [sys.executable, "-m", "loopwright.loops.cli.main", "view", "--db", str(store),
             "--port", str(port)], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "cannot listen" in out.stderr


def _ctrl_c_on() -> None:
    """In the child: Ctrl-C as a terminal delivers it. A shell's background job (`cmd &`)
    starts with SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_the_command_prints_the_url_serves_and_stops_on_ctrl_c(store: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "loopwright.loops.cli.main", "view", "--db", str(store), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_on,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert "http://127.0.0.1:" in line
        url = line.split()[2]
        status, _, page = get(url + "api/runs")
        assert status == 200 and page["total"] >= 4
        os.kill(p.pid, signal.SIGINT)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_another_interface_needs_host_and_warns(store: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "loopwright.loops.cli.main", "view", "--db", str(store), "--port", "0",
         "--host", "0.0.0.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ctrl_c_on,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stderr is not None
        assert "http://0.0.0.0:" in p.stdout.readline()
        os.kill(p.pid, signal.SIGINT)
        p.wait(timeout=30)
        assert "warning" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()


# -- every failure is one JSON line with its status, never a dropped connection -------------


def _error(v: Viewer, path: str, status: int, needle: str) -> str:
    got, h, body = get(v.url + path)
    assert (got, type(body)) == (status, dict), (path, got, body)
    assert h["Content-Type"].startswith("application/json")
    assert needle in body["error"] and "\n" not in body["error"], (path, body)
    assert "Traceback" not in body["error"]
    return str(body["error"])


def test_paging_numbers_out_of_range_are_400(store: Path) -> None:
    big = str(2**63)
    with viewer(store) as v:
        for route in ("runs?", "tasks?run=refine-a&", "compare?a=refine-a&b=bon-a&"):
            _error(v, f"api/{route}offset={big}", 400, "offset must be a whole number from 0")
            _error(v, f"api/{route}offset=99999999999999999999999", 400, "offset must be")
            _error(v, f"api/{route}offset=-1", 400, "offset must be")
            _error(v, f"api/{route}offset=1e3", 400, "offset must be a whole number")
            _error(v, f"api/{route}offset=%EF%BC%91", 400, "offset must be a whole number")
            _error(v, f"api/{route}limit=-5", 400, "limit must be a whole number from 1")
            _error(v, f"api/{route}limit=0", 400, "limit must be")
            _error(v, f"api/{route}limit=ten", 400, "limit must be a whole number")
            # the largest offset DuckDB takes is an empty page, and a huge limit is cut
            status, _, page = get(v.url + f"api/{route}offset={2**63 - 1}&limit={10**30}")
            assert status == 200 and page["rows"] == [] and page["limit"] == 500


def test_unknown_things_are_404_and_bad_choices_400(store: Path) -> None:
    with viewer(store) as v:
        _error(v, "api/run?name=nope", 404, "no run named 'nope'")
        _error(v, "api/tasks?run=nope", 404, "no run named 'nope'")
        _error(v, "api/task?run=refine-a&task=nope", 404, "has no task 'nope'")
        _error(v, "api/task?run=nope&task=t1", 404, "no run named 'nope'")
        _error(v, "api/node?id=nope", 404, "no node 'nope'")
        _error(v, "api/call?id=nope", 404, "no call 'nope'")
        _error(v, "api/compare?a=refine-a&b=nope", 404, "no run named 'nope'")
        _error(v, "api/sweep?name=nope", 404, "no sweep named 'nope'")
        _error(v, "api/sweep/plot?name=nope&file=accuracy_vs_tokens.png", 404, "no sweep named")
        _error(v, "api/nope", 404, "no API route 'nope'")
        _error(v, "nope/page", 404, "no such page")
        _error(v, "api/tasks?run=refine-a&filter=nope", 400, "unknown filter 'nope'")
        _error(v, "api/compare?a=refine-a&b=bon-a&filter=x", 400, "unknown filter 'x'")


def test_a_sweep_with_no_finished_point_shows_its_points_and_says_why_no_report(
    store: Path, tmp_path: Path
) -> None:
    from loopwright.loops.cli.view import sweep_report

    db = tmp_path / "s.duckdb"
    shutil.copy(store, db)
    with TraceStore(db, serve_reads=False) as s:  # a sweep just started: nothing done yet
        s.execute("UPDATE sweep_points SET status = 'running'")
    with viewer(db, sweep_report=sweep_report) as v:
        status, _, sw = get(v.url + "api/sweep?name=grid")
        assert status == 200 and len(sw["points"]) == 5  # n=1,2,4; max_rounds=1,2
        assert {p["status"] for p in sw["points"]} == {"running"}
        assert sw["report"]["tables"] == [] and sw["report"]["plots"] == []
        assert "no finished runs yet" in sw["report"]["note"]
        _error(v, "api/sweep/plot?name=grid&file=accuracy_vs_tokens.png", 404, "has no plot")
        with TraceStore(db, serve_reads=False) as s:  # a point finishes: the report comes
            s.execute("UPDATE sweep_points SET status = 'done'")
        status, _, sw = get(v.url + "api/sweep?name=grid")
        assert status == 200 and sw["report"]["tables"] and sw["report"]["note"] is None


def test_store_failures_are_503_with_one_line(
    store: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import duckdb
    from loopwright.traces.readserve import RemoteReadError

    failures: list[Exception] = [
        RemoteReadError("the read service runs one SELECT statement only"),
        duckdb.IOException("IO Error: could not read from file\nmore detail"),
        ConnectionError("read service closed the connection"),
        TimeoutError("timed out"),
    ]
    with viewer(store) as v:
        for exc in failures:

            def fail(self: TraceStore, sql: str, params: Any = None, exc: Exception = exc) -> Any:
                raise exc

            monkeypatch.setattr(TraceStore, "query", fail)
            for path in ("api/runs", "api/run?name=refine-a", "api/tasks?run=refine-a"):
                _error(v, path, 503, str(v.db))
            monkeypatch.undo()
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err  # an outside failure, not a bug: the page says it


def test_a_writer_whose_read_service_refuses_is_503(store: Path, tmp_path: Path) -> None:
    """A run holds the file and serves reads; the sidecar names a token it does not know."""
    db = tmp_path / "w.duckdb"
    shutil.copy(store, db)
    code = (
        "import sys, time\nfrom loopwright.traces import TraceStore\n"
        "s = TraceStore(sys.argv[1])\nprint('open', flush=True)\ntime.sleep(120)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "open"
        from loopwright.traces.readserve import sidecar_path

        side = sidecar_path(db)
        info = json.loads(side.read_text())
        side.write_text(json.dumps({**info, "token": "forged"}))
        with viewer(db) as v:
            _error(v, "api/runs", 503, str(db))
    finally:
        p.kill()
        p.wait(timeout=30)


def test_a_bug_is_500_with_one_line_and_one_traceback_on_stderr(
    store: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from loopwright.traces.view import queries

    def broken(*a: Any, **kw: Any) -> Any:
        raise KeyError("pass_rate")

    monkeypatch.setattr(queries, "runs_page", broken)
    with viewer(store) as v:
        for _ in range(3):  # the page polls: the same bug is told once
            _error(v, "api/runs", 500, "internal error in the viewer: KeyError: 'pass_rate'")
        status, _, run = get(v.url + "api/run?name=refine-a")  # the rest still answers
        assert status == 200 and run["name"] == "refine-a"
    _, err = capfd.readouterr()
    assert err.count("Traceback") == 1 and "KeyError: 'pass_rate'" in err


def test_other_methods_and_malformed_requests_get_json(store: Path) -> None:
    with viewer(store) as v:
        req = urllib.request.Request(v.url + "api/runs", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=60)
        assert info.value.code == 405 and info.value.headers["Allow"] == "GET"
        assert "only reads" in json.loads(info.value.read())["error"]
        with socket.create_connection(("127.0.0.1", v.port), timeout=60) as s:
            s.sendall(b"GARBAGE\r\n\r\n")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 400") and b"application/json" in head
        assert "error" in json.loads(body)


def test_a_big_repetitive_revision_diffs_through_the_api(store: Path, tmp_path: Path) -> None:
    db = tmp_path / "d.duckdb"
    shutil.copy(store, db)
    draft = "Step: add the apples. " * 3000  # 66 KB
    revision = draft.replace("Step: add the apples. ", "Step: count the apples. ", 1)
    with TraceStore(db, serve_reads=False) as s:
        [node] = s.query(
            "SELECT c.node_id, c.parent_id FROM nodes c JOIN nodes p ON p.node_id = c.parent_id "
            "JOIN runs r ON r.run_id = c.run_id WHERE r.name = 'refine-a' "
            "AND c.role = 'refiner' AND p.role = 'generator' LIMIT 1"
        )
        s.execute("UPDATE nodes SET content = ? WHERE node_id = ?", [draft, node["parent_id"]])
        s.execute("UPDATE nodes SET content = ? WHERE node_id = ?", [revision, node["node_id"]])
    with viewer(db) as v:
        status, _, n = get(v.url + f"api/node?id={node['node_id']}")
    assert status == 200
    diff = n["diff"]
    assert "".join(t for k, t in diff["old"] if k != "add") == draft
    assert "".join(t for k, t in diff["new"] if k != "del") == revision
    assert [r for r in diff["old"] if r[0] == "del"] == [["del", "add"]]
    assert [r for r in diff["new"] if r[0] == "add"] == [["add", "count"]]
    assert "note" not in diff


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_a_port_out_of_range_is_one_line(store: Path, port: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "loopwright.loops.cli.main", "view", "--db", str(store),
         f"--port={port}"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and f"--port {port} is not a port" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_nan_score_reaches_the_page_as_null(store: Path, tmp_path: Path) -> None:
    db = tmp_path / "nan.duckdb"
    shutil.copy(store, db)
    with TraceStore(db, serve_reads=False) as s:
        [node] = s.query(
            "SELECT n.node_id FROM nodes n JOIN runs r USING (run_id) "
            "WHERE r.name = 'refine-a' AND n.task_id = 't1' AND n.is_final"
        )
        s.execute("UPDATE nodes SET score = 'NaN'::DOUBLE, value = 'inf'::DOUBLE "
                  "WHERE node_id = ?", [node["node_id"]])  # fmt: skip
    with viewer(db) as v, urllib.request.urlopen(v.url + "api/task?run=refine-a&task=t1") as r:
        raw = r.read()

    def refuse(word: str) -> None:
        raise AssertionError(f"{word} is not JSON: JSON.parse would reject the page")

    page = json.loads(raw, parse_constant=refuse)
    mine = [n for n in page["nodes"] if n["node_id"] == node["node_id"]]
    assert [(n["score"], n["value"]) for n in mine] == [(None, None)]
    assert page["selected"]["node_id"] == node["node_id"] and page["selected"]["score"] is None
