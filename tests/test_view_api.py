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
        assert status == 404 and "cannot sort" in body["error"]


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
