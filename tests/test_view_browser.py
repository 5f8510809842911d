"""The viewer in a real browser (Debian's chromium, driven by Playwright), over stores built
by running loops on the scripted model."""

from __future__ import annotations

import faulthandler
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from loopwright.traces import TraceStore
from loopwright.traces.readserve import sidecar_path
from view_testkit import PAYLOAD_ID, browser_only, browser_page, build_store, viewer, wait_for

pytestmark = [browser_only, pytest.mark.slow]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("view"))


def _digest(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


def _open_first_call(page: Any) -> Any:
    """Click the panel's first "open" button; the call's box (detail or error) once shown.

    In two full-suite CI runs (never alone) a click left the box empty, or the detail never
    reached the page; the cause is not found. A user would click again, so this does, up to
    three times, and says so on stdout with how often the node panel was re-rendered.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.evaluate(
        "() => { window.__panelRenders = 0; new MutationObserver(() => window.__panelRenders++)"
        ".observe(document.querySelector('#node-panel'), { childList: true }); }"
    )
    for attempt in range(1, 4):
        page.click("#calls button.open-call")
        try:
            # the page gives up on an unanswered call after 30 s and says so in #call-error
            return page.wait_for_selector("#call-detail, #call-error", timeout=40_000)
        except PlaywrightTimeout:
            renders = page.evaluate("window.__panelRenders")
            print(f"click {attempt} on 'open' showed nothing; node panel re-rendered {renders}x")
    raise AssertionError("three clicks on 'open' never showed the call")


def test_click_from_runs_to_a_task_tree_fold_a_subtree_and_open_a_call(
    store: Path, tmp_path: Path
) -> None:
    before = _digest(store)
    with viewer(store) as v, browser_page(tmp_path) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(v.url)
        page.click("#runs a.run-link:text-is('mcts-a')")
        page.wait_for_url(re.compile(r"/run/mcts-a$"))
        page.click("#tasks a.task-link:text-is('t1')")
        page.wait_for_url(re.compile(r"/run/mcts-a/task/t1$"))
        page.wait_for_selector("#tree li.node")
        # a draft under the root that has children (value, reflector, expanders): fold it
        sub = page.locator("#tree > li > ul > li.node:has(> ul > li.node)").first
        child = sub.locator(":scope > ul > li.node").first
        assert child.is_visible()
        sub.locator(":scope > button.fold").click()
        assert not child.is_visible()
        assert "hidden" in sub.locator(":scope > .folded-note").inner_text()
        sub.locator(":scope > button.fold").click()
        assert child.is_visible()
        # open a node, then one of its calls: messages, params, tokens, latency, cache
        head = page.locator("#tree a.node-head", has_text="expander").first
        node_id = head.locator("xpath=..").get_attribute("data-node")
        assert node_id
        head.click()
        page.wait_for_url(re.compile(r"[?&]node="))  # the selected node is linkable
        # the panel of *this* node, not the one shown before the click
        page.wait_for_function(
            "(id) => (document.querySelector('#node-panel')?.innerText || '')"
            ".includes('id ' + id + ' ') && document.querySelector('#calls button.open-call')",
            arg=node_id,
        )
        shown = _open_first_call(page)
        if shown.get_attribute("id") != "call-detail":
            faulthandler.dump_traceback(all_threads=True)  # where the viewer's threads are
            raise AssertionError(f"{shown.inner_text()} (page errors: {errors})")
        detail = shown
        text = detail.inner_text()
        for needle in ("messages", "temperature=", "latency", "attempts", "not cached", "user"):
            assert needle in text
        assert "Tom has 2 apples" in text  # the prompt the call sent
        assert f"node={node_id}" in unquote(page.url)
        page.screenshot(path=str(tmp_path / "task-tree.png"), full_page=True)
        assert errors == []
    assert (tmp_path / "task-tree.png").stat().st_size > 10_000
    assert _digest(store) == before  # the viewer never writes the store


def test_untrusted_text_is_shown_as_text_and_never_runs(store: Path, tmp_path: Path) -> None:
    with viewer(store) as v, browser_page(tmp_path) as page:
        resp = page.goto(v.url + "run/refine-a")
        assert resp is not None
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        assert resp.headers["x-content-type-options"] == "nosniff"
        link = page.locator("#tasks a.task-link", has_text=PAYLOAD_ID)
        # the id "javascript:..." is a path under /run/, not a scheme
        assert link.get_attribute("href").startswith("/run/refine-a/task/javascript%3A")
        assert "<script>window.__pwned=1</script>" in page.inner_text("#tasks")
        link.click()
        page.wait_for_selector("#node-text")
        shown = page.inner_text("#node-text")
        assert '<img src=x onerror="window.__pwned=2">' in shown
        assert "<script>window.__pwned=4</script>" in shown
        page.click("details.prompt summary")
        assert "<script>window.__pwned=1</script>" in page.inner_text("#prompt")
        # no element came from the payloads, and none of them ran
        assert page.locator("main img, main script").count() == 0
        assert page.locator("main a[href^='javascript']").count() == 0
        page.click("#calls button.open-call")
        page.wait_for_selector("#call-detail")
        assert "onerror" in page.inner_text("#call-detail .output")
        time.sleep(0.3)  # an onerror handler would have fired by now
        assert page.evaluate("window.__pwned") is None


def test_the_viewer_follows_a_run_writing_in_another_process(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    writer = Path(__file__).with_name("view_live_writer.py")
    n = 12
    proc = subprocess.Popen(
        [sys.executable, str(writer), str(db), str(n), "0.12"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def run_visible() -> bool:
            if not sidecar_path(db).exists():
                return False
            try:
                with TraceStore(db, read_only=True) as s:
                    return bool(s.query("SELECT 1 FROM runs WHERE name = 'live'"))
            except Exception:
                return False

        wait_for(run_visible, timeout=60)
        seen: list[int] = []
        with viewer(db) as v, browser_page(tmp_path) as page:
            page.goto(v.url + "run/live")
            page.wait_for_selector("#run-progress")
            assert "refreshing" in page.inner_text("#live")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                m = re.search(r"(\d+)/(\d+)", page.inner_text("#run-progress"))
                if m and (not seen or int(m[1]) != seen[-1]):
                    seen.append(int(m[1]))
                if page.inner_text("#run-status") == "done":
                    # a redraw may land between the two reads: take the progress it shows now
                    m = re.search(r"(\d+)/(\d+)", page.inner_text("#run-progress"))
                    if m and (not seen or int(m[1]) != seen[-1]):
                        seen.append(int(m[1]))
                    break
                time.sleep(0.2)
            page.screenshot(path=str(tmp_path / "live.png"))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    made = json.loads(out.strip().splitlines()[-1])
    assert seen[-1] == n and len(seen) >= 3, seen  # it advanced while we watched
    assert seen == sorted(seen)
    with TraceStore(db, read_only=True) as s:
        assert not s.remote
        # the model answered every call that was not served from the call cache
        calls = s.query("SELECT count(*) AS n FROM calls WHERE NOT cache_hit")[0]["n"]
        done = s.query("SELECT count(*) AS n FROM tasks WHERE status = 'done'")[0]["n"]
    assert (calls, done) == (made["calls"], n)  # every row the run wrote is there


def test_a_thousand_node_tree_draws_and_folds(tmp_path: Path) -> None:
    from view_testkit import thousand_node_store

    db = thousand_node_store(tmp_path / "big.duckdb", 1000)
    with viewer(db) as v, browser_page(tmp_path) as page:
        page.goto(v.url + "run/big/task/big-task")
        page.wait_for_selector("#node-panel #calls")
        assert page.locator("#tree li.node").count() == 1000
        page.click("#fold-all")
        assert page.locator("#tree li.node:visible").count() == 1
        page.click("#unfold-all")
        assert page.locator("#tree li.node:visible").count() == 1000
    # how long it takes is benchmarks/view_pages.py's to measure, not a test's


def _watch_csp(page: Any) -> None:
    """Record every CSP violation the page reports (a blocked form submission is one)."""
    page.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation', "
        "(e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )


def _rows(page: Any, table: str, col: int) -> list[str]:
    cells = page.locator(f"#{table} tbody tr td:nth-child({col})").all_inner_texts()
    return [c.strip() for c in cells]


def _api(v: Any, path: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(v.url + path, timeout=60) as r:
        return json.loads(r.read())


def test_every_filter_form_submits_under_the_csp(store: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with viewer(store) as v, browser_page(tmp_path) as page:
        _watch_csp(page)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # runs: text filter (Enter), then the status menu; the sort order is kept
        page.goto(v.url + "?sort=name&dir=asc")
        page.fill("form.filters input[name=q]", "-a")
        page.press("form.filters input[name=q]", "Enter")
        page.wait_for_url(re.compile(r"/\?sort=name&dir=asc&q=-a$"))
        expect(page.locator("#runs tbody tr")).to_have_count(4)
        assert _rows(page, "runs", 1) == ["bon-a", "mcts-a", "refine-a", "reflexion-a"]
        page.fill("form.filters input[name=q]", "bon")
        page.click("form.filters button[type=submit]")
        page.wait_for_url(re.compile(r"[?&]q=bon$"))
        expect(page.locator("#runs tbody tr")).to_have_count(1)
        page.select_option("form.filters select[name=status]", "running")
        page.wait_for_url(re.compile(r"[?&]status=running"))
        assert "q=bon" in page.url
        expect(page.locator("#runs tbody tr")).to_have_count(0)
        page.select_option("form.filters select[name=status]", "done")
        expect(page.locator("#runs tbody tr")).to_have_count(1)
        assert _rows(page, "runs", 1) == ["bon-a"]

        # a run's tasks: the show menu, the stop-reason menu, the search box
        failed = _api(v, "api/tasks?run=refine-a&filter=failed")["rows"]
        page.goto(v.url + "run/refine-a")
        page.wait_for_selector("#tasks")
        page.select_option("form.filters select[name=filter]", "failed")
        page.wait_for_url(re.compile(r"/run/refine-a\?filter=failed$"))
        expect(page.locator("#tasks tbody tr")).to_have_count(len(failed))
        assert _rows(page, "tasks", 2) == [r["task_id"] for r in failed]
        stop = page.locator("form.filters select[name=stop] option").nth(1).get_attribute("value")
        assert stop
        by_stop = _api(v, f"api/tasks?run=refine-a&filter=failed&stop={stop}")["rows"]
        page.select_option("form.filters select[name=stop]", stop)
        page.wait_for_url(re.compile(r"filter=failed&stop="))
        expect(page.locator("#tasks tbody tr")).to_have_count(len(by_stop))
        page.goto(v.url + "run/refine-a")
        page.fill("form.filters input[name=q]", "t2")
        page.click("form.filters button[type=submit]")
        page.wait_for_url(re.compile(r"/run/refine-a\?q=t2$"))
        expect(page.locator("#tasks tbody tr")).to_have_count(1)
        assert _rows(page, "tasks", 2) == ["t2"]

        # compare: pick A, then B, then a filter, then change A
        page.goto(v.url + "compare")
        page.select_option("form.filters select[name=a]", "refine-a")
        page.wait_for_url(re.compile(r"/compare\?a=refine-a$"))
        page.select_option("form.filters select[name=b]", "bon-a")
        page.wait_for_url(re.compile(r"/compare\?a=refine-a&b=bon-a$"))
        expect(page.locator("#compare tbody tr")).to_have_count(5)
        differ = _api(v, "api/compare?a=refine-a&b=bon-a&filter=differ")["rows"]
        page.select_option("form.filters select[name=filter]", "differ")
        page.wait_for_url(re.compile(r"a=refine-a&b=bon-a&filter=differ$"))
        expect(page.locator("#compare tbody tr")).to_have_count(len(differ))
        page.select_option("form.filters select[name=a]", "mcts-a")
        page.wait_for_url(re.compile(r"/compare\?a=mcts-a&b=bon-a&filter=differ$"))
        expect(page.locator("#compare tbody tr")).to_have_count(
            len(_api(v, "api/compare?a=mcts-a&b=bon-a&filter=differ")["rows"])
        )
        assert page.evaluate("window.__csp") == []
        assert errors == []


def test_an_api_failure_shows_its_line_on_the_page(store: Path, tmp_path: Path) -> None:
    with viewer(store) as v, browser_page(tmp_path) as page:
        for path, line in [
            (f"?offset={2**63}", "offset must be a whole number from 0"),
            ("run/nope", "no run named 'nope'"),
            ("run/refine-a/task/nope", "has no task 'nope'"),
            ("sweep/nope", "no sweep named 'nope'"),
        ]:
            page.goto(v.url + path)
            shown = page.wait_for_selector("#error").inner_text()
            assert line in shown and "Failed to fetch" not in shown, (path, shown)
