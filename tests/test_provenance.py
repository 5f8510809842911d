"""What a run records about what it ran on (``runs.provenance``), and what resume checks."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import struct
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import RIGHT, LoopRunner, cli_main, math_task, user_error, write_jsonl
from loopwright.loops.execution.provenance import PACKAGES, chat_template_sha256, code_version
from loopwright.loops.execution.sweep import SweepConfig, run_sweep
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.tasks import load_tasks
from loopwright.traces.store import TraceStore

self_refine = LoopRunner("self-refine", {"max_rounds": 1})


def right(_call: Any) -> str:
    return RIGHT


def task_file(folder: Path, n: int = 3, reference: str = "5") -> str:
    rows = [math_task(f"t{i}", f"Q{i}: 2 + 3?", reference) for i in range(n)]
    return write_jsonl(folder / "tasks.jsonl", rows)


def rows_sha256(spec: str) -> str:
    """The task rows hash: sha256 over each task's canonical JSON line, in order."""
    lines = (
        json.dumps(t.model_dump(mode="json"), sort_keys=True, separators=(",", ":")) + "\n"
        for t in load_tasks(spec)
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def rows_of(db: str, sql: str) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as s:
        return s.query(sql)


def provenance_of(db: str, name: str) -> dict[str, Any]:
    with TraceStore(db, read_only=True) as s:
        [row] = s.query("SELECT provenance FROM runs WHERE name = ?", [name])
    assert row["provenance"] is not None
    return dict(json.loads(row["provenance"]))


def git_head() -> str | None:
    """HEAD of the checkout loopwright runs from, when it is one and git is here."""
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None:
        return None
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return None
    top, head = done.stdout.split()
    return head if Path(top).resolve() == root else None


async def test_a_run_records_its_source_seeds_versions_commit_and_machine(tmp_path: Path) -> None:
    tasks = task_file(tmp_path)
    result, _ = await self_refine(tmp_path, ScriptedModel(right), tasks, seed=7, run_name="r1")
    p = provenance_of(str(tmp_path / "t.duckdb"), "r1")

    assert p["source"]["rows_sha256"] == rows_sha256(tasks)
    assert p["source"]["spec"] == tasks
    assert p["tasks"] == 3 and p["limit"] is None
    assert p["seeds"]["run"] == 7
    assert len(p["prompts_sha256"]) == 64
    assert (
        "loops/self_refine.toml" in p["prompt_files"] and "loops/ruff.toml" not in p["prompt_files"]
    )
    # a scripted model has no chat template anyone knows of
    assert p["chat_template_sha256"] is None
    assert list(p["chat_templates"].values()) == [None]
    assert set(p["packages"]) == set(PACKAGES)
    assert p["packages"]["pydantic"] == version("pydantic")
    assert p["packages"]["duckdb"] == version("duckdb")
    assert p["loopwright"]["version"] == version("loopwright")
    assert p["loopwright"]["commit"] == git_head()
    if git_head() is not None:
        assert isinstance(p["loopwright"]["dirty"], bool)
    assert p["machine"]["python"] == platform.python_version()
    assert p["machine"]["cpus"] >= 1 and p["machine"]["memory_bytes"] > 0
    assert p["resumes"] == [] and result.started


def test_git_absent_or_not_a_checkout_reads_as_null(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert code_version(tmp_path).commit is None  # a folder that is no checkout of loopwright
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    v = code_version()
    assert (v.commit, v.dirty) == (None, None) and v.version == version("loopwright")


def _gguf(path: Path, metadata: dict[str, str]) -> Path:
    """A GGUF (v3) file holding only string metadata: enough for its header to be read."""

    def string(s: str) -> bytes:
        raw = s.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = b"".join(string(k) + struct.pack("<I", 8) + string(v) for k, v in metadata.items())
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata)) + body)
    return path


def test_chat_template_hash_of_a_local_gguf_and_none_for_hosted(tmp_path: Path) -> None:
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    path = _gguf(tmp_path / "m.gguf", {"general.architecture": "llama",
                                       "tokenizer.chat_template": template})  # fmt: skip
    assert chat_template_sha256(f"local/{path}") == hashlib.sha256(template.encode()).hexdigest()
    bare = _gguf(tmp_path / "bare.gguf", {"general.architecture": "llama"})
    assert chat_template_sha256(f"local/{bare}") is None
    assert chat_template_sha256("openai/gpt-4o-mini") is None
    assert chat_template_sha256(f"local/{tmp_path / 'missing.gguf'}") is None


async def test_the_same_command_resumes_and_records_the_session(tmp_path: Path) -> None:
    tasks = task_file(tmp_path)
    model = ScriptedModel(right)
    same = {"run_name": "again", "resume": True}
    first, _ = await self_refine(tmp_path, model, tasks, **same)
    calls = len(model.calls)
    second, _ = await self_refine(tmp_path, model, tasks, **same)
    assert first.started and not second.started
    assert second.run_id == first.run_id and second.progress.skipped == 3
    assert len(model.calls) == calls
    p = provenance_of(str(tmp_path / "t.duckdb"), "again")
    assert len(p["resumes"]) == 1 and p["resumes"][0]["packages"] == p["packages"]


async def test_a_changed_task_file_refuses_to_resume_in_one_line(tmp_path: Path) -> None:
    tasks = task_file(tmp_path)
    model = ScriptedModel(right)
    db = str(tmp_path / "t.duckdb")
    await self_refine(tmp_path, model, tasks, run_name="src", resume=True)
    before = rows_of(db, "SELECT * FROM runs"), rows_of(db, "SELECT * FROM tasks ORDER BY idx")
    was = provenance_of(db, "src")["source"]["rows_sha256"]

    task_file(tmp_path, reference="6")  # same path, other rows
    now = rows_sha256(tasks)
    msg = await user_error(
        self_refine(tmp_path, model, tasks, run_name="src", resume=True),
        match="the task source changed",
    )
    assert "\n" not in msg
    assert was[:12] in msg and now[:12] in msg and "--run-name" in msg
    after = rows_of(db, "SELECT * FROM runs"), rows_of(db, "SELECT * FROM tasks ORDER BY idx")
    assert after == before


async def test_a_resume_may_change_the_limit_of_an_unchanged_source(tmp_path: Path) -> None:
    tasks = task_file(tmp_path, n=4)
    model = ScriptedModel(right)
    db = str(tmp_path / "t.duckdb")
    same = {"run_name": "grow", "resume": True}
    await self_refine(tmp_path, model, tasks, limit=2, **same)
    grown, _ = await self_refine(tmp_path, model, tasks, limit=4, **same)
    assert (grown.progress.skipped, grown.summary["done"]) == (2, 4)
    assert provenance_of(db, "grow")["limit"] == 2  # what it was made on

    write_jsonl(Path(tasks), [math_task("t0", "Q0 changed", "5")] + [
        math_task(f"t{i}", f"Q{i}: 2 + 3?") for i in range(1, 4)])  # fmt: skip
    await user_error(
        self_refine(tmp_path, model, tasks, limit=3, **same), match="the task source changed"
    )


def _make_v6(db: str) -> None:
    """Turn a v7 file into what loopwright wrote before runs kept their provenance."""
    with TraceStore(db) as s:
        s.execute("ALTER TABLE runs DROP COLUMN provenance")
        s.execute("DELETE FROM schema_version")
        s.execute("INSERT INTO schema_version (version) VALUES (6)")
        # the run was interrupted: one task never finished
        s.execute("UPDATE tasks SET status = 'running' WHERE task_id = 't2'")
        s.execute("UPDATE runs SET status = 'interrupted'")


async def test_an_old_v6_database_migrates_and_its_runs_still_resume(tmp_path: Path) -> None:
    tasks = task_file(tmp_path)
    db = str(tmp_path / "t.duckdb")
    model = ScriptedModel(right)
    await self_refine(tmp_path, model, tasks, run_name="old")
    _make_v6(db)

    # read-only, the old file is not migrated, and still lists
    code, out, err = cli_main(["runs", "--db", db])
    assert code == 0 and "old" in out, err
    # a changed task file cannot be detected for a run stored without provenance: it resumes
    result, _ = await self_refine(tmp_path, model, tasks, run_name="old", resume=True)
    assert (result.progress.skipped, result.summary["done"]) == (2, 3)
    versions = [r["version"] for r in rows_of(db, "SELECT version FROM schema_version")]
    assert versions[0] == 6 and versions[-1] >= 7
    assert rows_of(db, "SELECT provenance FROM runs") == [{"provenance": None}]
    code, out, _ = cli_main(["runs", "--db", db, "--show", "old"])
    assert code == 0 and "stored before" in " ".join(out.split())

    # a new run in the migrated file records its provenance
    await self_refine(tmp_path, model, tasks, run_name="new")
    assert provenance_of(db, "new")["source"]["rows_sha256"] == rows_sha256(tasks)


async def test_runs_shows_the_source_hash_and_show_prints_the_provenance(
    tmp_path: Path,
) -> None:
    tasks = task_file(tmp_path)
    db = str(tmp_path / "t.duckdb")
    await self_refine(tmp_path, ScriptedModel(right), tasks, run_name="shown", seed=3)
    p = provenance_of(db, "shown")
    code, out, err = cli_main(["runs", "--db", db])
    assert code == 0, err
    assert "source" in out and p["source"]["rows_sha256"][:8] in out

    code, out, err = cli_main(["runs", "--db", db, "--show", "shown"])
    assert code == 0, err
    text = " ".join(out.split())
    for key, value in (
        ("source.rows_sha256", p["source"]["rows_sha256"]),
        ("source.spec", tasks),
        ("seeds.run", "3"),
        ("prompts_sha256", p["prompts_sha256"]),
        ("packages.pydantic", version("pydantic")),
        ("loopwright.version", version("loopwright")),
        ("machine.python", platform.python_version()),
    ):
        assert key in text and value in out.replace("\n", "").replace(" ", "") + text, key
    assert "loopwright.commit" in text and "machine.gpu" in text

    code, _, err = cli_main(["runs", "--db", db, "--show", "shwon"])
    assert code == 2 and "did you mean 'shown'" in err and len(err.strip().splitlines()) == 1


def test_every_run_of_a_sweep_records_its_provenance(tmp_path: Path) -> None:
    model = ScriptedModel(right, name="prov-sweep")
    tasks = task_file(tmp_path, n=2)
    cfg = SweepConfig(verifier="oracle", name="s", tasks=tasks, models=(model.register(),),
                      grid="self-refine:rounds=1,2", db=str(tmp_path / "t.duckdb"),
                      sandbox="process", grade=False)  # fmt: skip
    run_sweep(cfg)
    rows = rows_of(cfg.db, "SELECT name, provenance FROM runs ORDER BY name")
    assert len(rows) == 2
    expected = rows_sha256(tasks)
    for r in rows:
        assert json.loads(r["provenance"])["source"]["rows_sha256"] == expected
    # re-running the sweep resumes its (finished) runs: the source check passes
    run_sweep(cfg)
    assert len(rows_of(cfg.db, "SELECT name FROM runs")) == 2


async def test_the_view_gives_a_run_page_its_provenance(tmp_path: Path) -> None:
    from loopwright.traces.view.queries import run_detail

    tasks = task_file(tmp_path)
    db = str(tmp_path / "t.duckdb")
    await self_refine(tmp_path, ScriptedModel(right), tasks, run_name="viewed")
    with TraceStore(db, read_only=True) as s:
        run = run_detail(s, "viewed")
    assert run["provenance"]["source"]["rows_sha256"] == rows_sha256(tasks)
