"""Experiments as files: ``run --config`` / ``sweep --config`` (YAML and TOML), ``-s``
overrides and explicit flags over the file, unknown keys, ``--dry-run``, a sweep grown by a
point, and ``export-config`` round trips. Everything on the scripted model, through the CLI
in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from loop_testkit import cli_main, math_task, write_jsonl
from loopwright.loops.errors import UserError
from loopwright.loops.execution.config_file import (
    _Point,
    grid_text,
    load,
    parse_set,
    toml_dumps,
)
from loopwright.loops.execution.grid import parse_grid
from loopwright.loops.execution.sweep import SweepConfig, plan, reconcile
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.traces.store import TraceStore

RIGHT = "2 + 3 = 5. The answer is 5."


def rows_of(db: str, sql: str) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as store:
        return store.query(sql)


def scripted(name: str) -> ScriptedModel:
    """A registered scripted model that answers every call rightly."""

    def reply(call: ModelCall) -> str:
        return RIGHT

    model = ScriptedModel(reply, name=name)
    model.register()
    return model


@pytest.fixture
def tasks(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "tasks.jsonl", [math_task("t1"), math_task("t2")])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_yaml(tmp_path: Path, tasks: str, model: str, **extra: str) -> Path:
    body = f"""\
run_name: {extra.get("run_name", "fromfile")}
loop:
  name: best-of-n
  options: {{n: 2, max_tokens: 32}}
model: {model}
tasks: {tasks}
verifier: oracle
seed: 1
budget: {{tokens: 4000}}
sandbox: process
db: {tmp_path / "t.duckdb"}
"""
    return write(tmp_path / "exp.yaml", body)


def cli(*args: str | Path) -> tuple[int, str, str]:
    return cli_main([str(a) for a in args])


def ok(*args: str | Path) -> str:
    code, out, err = cli(*args)
    assert code == 0, (out, err)
    return out


def refused(*args: str | Path) -> str:
    code, _, err = cli(*args)
    assert code == 2, err
    return " ".join(err.split())


# -- a file is the command line ------------------------------------------------------------------
def test_config_file_and_the_command_line_give_the_same_run_identity(
    tmp_path: Path, tasks: str
) -> None:
    model = scripted("cfg-same")
    exp = run_yaml(tmp_path, tasks, model.name)
    db = str(tmp_path / "t.duckdb")
    ok("run", "--config", exp)
    ok("run", "best-of-n", "--tasks", tasks, "--model", model.name, "-o", "n=2",
       "-o", "max_tokens=32", "--verifier", "oracle", "--seed", "1", "--budget-tokens", "4000",
       "--sandbox", "process", "--db", db, "--run-name", "fromflags")  # fmt: skip
    runs = rows_of(db, "SELECT name, config_hash, status FROM runs ORDER BY name")
    assert [(r["name"], r["status"]) for r in runs] == [("fromfile", "done"), ("fromflags", "done")]
    assert runs[0]["config_hash"] == runs[1]["config_hash"]
    # a different option is a different run
    other = load(exp, ["loop.options.n=3"]).run_config()
    assert other.config_hash() != load(exp).run_config().config_hash()


def test_yaml_and_toml_files_read_the_same(tmp_path: Path, tasks: str) -> None:
    exp = run_yaml(tmp_path, tasks, "scripted/cfg-any")
    toml = write(
        tmp_path / "exp.toml",
        f"""\
run_name = "fromfile"
model = "scripted/cfg-any"
tasks = "{tasks}"
verifier = "oracle"
seed = 1
sandbox = "process"
db = "{tmp_path / "t.duckdb"}"

[loop]
name = "best-of-n"
options = {{ n = 2, max_tokens = 32 }}

[budget]
tokens = 4000
""",
    )
    a, b = load(exp).run_config(), load(toml).run_config()
    assert a.model_dump() == b.model_dump()
    assert a.config_hash() == b.config_hash()


def test_overrides_and_explicit_flags_win_over_the_file(tmp_path: Path, tasks: str) -> None:
    exp = run_yaml(tmp_path, tasks, scripted("cfg-over").name)
    cfg = load(exp, ["loop.options.n=16", "budget.tokens=99", "seed=2", "options.temperature=0.5"])
    run = cfg.run_config()
    assert run.options == {"n": 16, "max_tokens": 32, "temperature": 0.5}
    assert (run.budget.tokens, run.seed) == (99, 2)
    # flags given on the command line win over -s and the file, even at their default value
    out = ok("run", "--config", exp, "-s", "seed=2", "--seed", "0", "-o", "n=3", "--dry-run")
    hashes = {line.split()[1] for line in out.splitlines() if "config_hash" in line}
    expected = load(exp, ["seed=0", "loop.options.n=3"]).run_config()
    assert hashes == {expected.config_hash(_options(expected))}
    # -s values are YAML scalars
    assert parse_set("a.b=16") == ("a.b", 16)
    assert parse_set("a=[1, 4]") == ("a", [1, 4])
    assert parse_set("a=true") == ("a", True)
    assert parse_set("a=best-of-n") == ("a", "best-of-n")


def _options(cfg: Any) -> Any:
    from loopwright.loops.graphs import get_loop

    return get_loop(cfg.loop).options(**cfg.options)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("modle=x", "exp.yaml: unknown key 'modle'; did you mean 'model'?"),
        ("loop.options.nn=3", "exp.yaml: unknown key 'loop.options.nn'; did you mean 'loop.options.n'?"),
        ("budget.tokenz=3", "exp.yaml: unknown key 'budget.tokenz'; did you mean 'budget.tokens'?"),
        ("connection.concurency=3", "unknown key 'connection.concurency'; did you mean 'connection.concurrency'?"),
        ("role_models.critc=x", "unknown key 'role_models.critc'; did you mean 'role_models.critic'?"),
        ("budget.tokens=-3", "exp.yaml: budget.tokens: Input should be greater than 0 (got -3)"),
        ("seed=abc", "exp.yaml: seed: Input should be a valid integer"),
    ],
)  # fmt: skip
def test_unknown_keys_and_bad_values_are_one_line(
    tmp_path: Path, tasks: str, override: str, message: str
) -> None:
    exp = run_yaml(tmp_path, tasks, scripted("cfg-bad").name)
    err = refused("run", "--config", exp, "-s", override, "--dry-run")
    assert message in err
    assert "Traceback" not in err


def test_a_dataset_mapping_is_checked_key_by_key(tmp_path: Path) -> None:
    exp = write(
        tmp_path / "exp.yaml", "loop: best-of-n\ntasks: {source: d.parquet, fields: {promt: q}}\n"
    )
    with pytest.raises(
        UserError, match=r"unknown key 'tasks.fields.promt'; did you mean 'tasks.fields.prompt'"
    ):
        load(exp).run_config()
    exp = write(
        tmp_path / "exp.yaml", "loop: best-of-n\ntasks: {source: d.parquet, fields: {prompt: q}}\n"
    )
    cfg = load(exp).run_config()
    assert cfg.tasks_spec.startswith("d.parquet?") and "prompt=q" in cfg.tasks_spec


def test_dry_run_prints_the_points_and_writes_nothing(tmp_path: Path, tasks: str) -> None:
    model = scripted("cfg-dry")
    exp = run_yaml(tmp_path, tasks, model.name)
    out = ok("run", "--config", exp, "--dry-run")
    assert "config_hash" in out and "[new]" in out
    sweep = write(
        tmp_path / "sw.yaml",
        f"""\
tasks: {tasks}
model: {model.name}
db: {tmp_path / "t.duckdb"}
loop: best-of-n
sweep:
  loop.options.n: [1, 2]
""",
    )
    out = ok("sweep", "--config", sweep, "--dry-run")
    assert "2 new point(s)" in out
    assert not (tmp_path / "t.duckdb").exists()
    assert model.calls == []


# -- sweeps --------------------------------------------------------------------------------------
def sweep_yaml(tmp_path: Path, tasks: str, model: str, values: list[int]) -> Path:
    return write(
        tmp_path / "grow.yaml",
        f"""\
tasks: {tasks}
model: {model}
verifier: oracle
sandbox: process
connection: {{cache: false}}  # every sample reaches the model: calls count the work
db: {tmp_path / "s.duckdb"}
loop: self-refine
options: {{max_tokens: 32}}
sweep:
  loop.options.max_rounds: {values}
""",
    )


def test_a_sweep_grown_by_one_point_runs_only_that_point(tmp_path: Path, tasks: str) -> None:
    model = scripted("cfg-grow")
    db = str(tmp_path / "s.duckdb")
    ok("sweep", "--config", sweep_yaml(tmp_path, tasks, model.name, [1, 2]))
    first = rows_of(db, "SELECT name, run_id, started_at FROM runs ORDER BY name")
    assert len(first) == 2
    calls = len(model.calls)
    sweep = sweep_yaml(tmp_path, tasks, model.name, [1, 2, 3])
    assert "1 new point(s)" in ok("sweep", "--config", sweep, "--dry-run")
    ok("sweep", "--config", sweep)
    runs = rows_of(db, "SELECT name, run_id, started_at FROM runs ORDER BY name")
    assert len(runs) == 3
    assert [r for r in runs if r["name"] in {f["name"] for f in first}] == first
    new = rows_of(db, "SELECT count(*) AS n FROM calls c JOIN runs r USING (run_id) "
                      "WHERE r.name LIKE '%max_rounds=3%'")[0]["n"]  # fmt: skip
    assert len(model.calls) - calls == new > 0
    [sw] = rows_of(db, "SELECT name, grid, status FROM sweeps")
    assert (sw["name"], sw["status"]) == ("grow", "done")
    assert sw["grid"] == "self-refine(max_tokens=32):max_rounds=1,2,3"
    points = rows_of(db, "SELECT value, status FROM sweep_points ORDER BY value")
    assert [(p["value"], p["status"]) for p in points] == [(1, "done"), (2, "done"), (3, "done")]
    # the same file again: nothing runs; the old file: nothing runs (a sweep only grows)
    ok("sweep", "--config", sweep)
    ok("sweep", "--config", sweep_yaml(tmp_path, tasks, model.name, [1]))
    assert len(model.calls) - calls == new
    assert len(rows_of(db, "SELECT * FROM runs")) == 3
    # other shared settings under the same name are refused
    err = refused("sweep", "--config", sweep, "-s", "verifier=none")
    assert "already exists" in err and "other tasks or settings" in err


def test_a_point_is_named_by_what_it_is_not_where_it_stands() -> None:
    a = [
        _Point("best-of-n", {"n": 4, "temperature": 1.0}),
        _Point("self-refine", {"max_rounds": 2}),
    ]
    b = [_Point("self-refine", {"max_rounds": 2}), _Point("best-of-n", {"temperature": 1.0, "n": 4}),
         _Point("best-of-n", {"n": 1, "temperature": 1.0})]  # fmt: skip

    def ids(points: list[_Point]) -> dict[str, str]:
        cfg = SweepConfig(name="s", tasks="x", grid=grid_text("f", points))
        return {p.point_id: p.run_name for p in plan(cfg, parse_grid(cfg.grid)) if not p.derived}

    first, second = ids(a), ids(b)
    assert grid_text("f", a) == "best-of-n(temperature=1.0):n=4; self-refine:max_rounds=2"
    # every point of a keeps its id and run in b (b adds n=1, read from the n=4 run)
    assert first.items() <= second.items()


def test_growing_a_shared_best_of_n_keeps_the_run_it_has() -> None:
    small = SweepConfig(name="s", tasks="x", grid="best-of-n:n=1,4")
    big = small.model_copy(update={"grid": "best-of-n:n=1,4,16"})
    stored = [
        {"point_id": p.point_id, "run_name": p.run_name, "derived": p.derived, "options": None}
        for p in plan(small, parse_grid(small.grid))
    ]
    points, new, moved = reconcile(plan(big, parse_grid(big.grid)), stored)
    by_value = {p.value: p for p in points}
    assert [p.value for p in new] == [16] and moved == []
    assert not by_value[4].derived and by_value[4].run_name.endswith("n=4.s0")
    assert by_value[1].derived and by_value[1].run_name == by_value[4].run_name
    assert not by_value[16].derived and by_value[16].run_name.endswith("n=16.s0")


def test_product_and_list_blocks(tmp_path: Path) -> None:
    prod = write(
        tmp_path / "p.yaml",
        """\
tasks: builtin:arithmetic?n=3
loop: best-of-n
options: {temperature: 1.0}
sweep:
  loop.options.n: [1, 4]
  model: [scripted/a, scripted/b]
  seed: [0, 1]
""",
    )
    cfg = load(prod).sweep_config()
    assert cfg.name == "p"
    assert cfg.grid == "best-of-n(temperature=1.0):n=1,4"
    assert (cfg.models, cfg.seed, cfg.seeds) == (("scripted/a", "scripted/b"), 0, 2)
    listed = write(
        tmp_path / "l.toml",
        """\
tasks = "builtin:arithmetic?n=3"
models = ["scripted/a"]

[[sweep]]
loop = "best-of-n"
options = { n = 4 }

[[sweep]]
loop = "self-refine"
options = { rounds = 2 }
verifier = "oracle"
""",
    )
    assert load(listed).sweep_config().grid == (
        "best-of-n:n=4; self-refine(verifier=oracle):max_rounds=2"
    )
    bad = write(tmp_path / "b.yaml", "tasks: x\nloop: best-of-n\nsweep: {loop.options.nn: [1]}\n")
    with pytest.raises(UserError, match=r"unknown key 'sweep.loop.options.nn'; did you mean"):
        load(bad).sweep_config()
    bad = write(tmp_path / "b.yaml", "tasks: x\nsweep: [{loop: best-of-n, model: a}]\n")
    with pytest.raises(UserError, match=r"sweep\[0\].model: a point of a list cannot"):
        load(bad).sweep_config()


# -- export-config -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_export_config_of_a_run_fed_back_resumes_it(tmp_path: Path, tasks: str, fmt: str) -> None:
    model = scripted(f"cfg-export-{fmt}")
    db = str(tmp_path / "e.duckdb")
    ok("run", "best-of-n", "--tasks", tasks, "--model", model.name, "-o", "n=2",
       "--verifier", "oracle", "--seed", "3", "--sandbox", "process", "--db", db,
       "--run-name", "orig", "--concurrency", "2")  # fmt: skip
    calls = len(model.calls)
    out = tmp_path / f"orig.{fmt}"
    ok("export-config", "orig", "--db", db, "--out", out)
    data = load(out).data
    assert (data["run_name"], data["resume"], data["seed"], data["options"]) == (
        "orig", True, 3, {"n": 2},
    )  # fmt: skip
    assert data["connection"] == {"concurrency": 2}  # HOW settings: only those not default
    text = ok("run", "--config", out)
    assert "resumed" in text
    assert len(model.calls) == calls
    [run] = rows_of(db, "SELECT name, status FROM runs")
    assert (run["name"], run["status"]) == ("orig", "done")
    # printed without --out, the same file
    assert ok("export-config", "orig", "--db", db, "--format", fmt) == out.read_text()


def test_export_config_of_a_sweep_fed_back_resumes_it(tmp_path: Path, tasks: str) -> None:
    model = scripted("cfg-export-sweep")
    db = str(tmp_path / "s.duckdb")
    ok("sweep", "--config", sweep_yaml(tmp_path, tasks, model.name, [1, 2]))
    calls = len(model.calls)
    out = tmp_path / "again.toml"
    ok("export-config", "grow", "--db", db, "--out", out)
    assert load(out).data["grid"] == "self-refine(max_tokens=32):max_rounds=1,2"
    ok("sweep", "--config", out)
    assert len(model.calls) == calls
    assert len(rows_of(db, "SELECT * FROM runs")) == 2
    assert "no run or sweep named 'nope'" in refused("export-config", "nope", "--db", db)


def test_toml_writer_reads_back() -> None:
    import tomllib

    data = {"a": 1, "b": "x \"q\"\n", "c": [1, 2.5, True], "d": {"e": {"f": None, "g": [{"h": 1}]}},
            "weird key": 0.1}  # fmt: skip
    back = tomllib.loads(toml_dumps(data))
    assert back == {"a": 1, "b": "x \"q\"\n", "c": [1, 2.5, True], "d": {"e": {"g": [{"h": 1}]}},
                    "weird key": 0.1}  # fmt: skip


def test_a_sweep_stored_before_points_could_be_added_still_resumes(
    tmp_path: Path, tasks: str
) -> None:
    model = scripted("cfg-legacy")
    db = str(tmp_path / "s.duckdb")
    sweep = sweep_yaml(tmp_path, tasks, model.name, [1])
    ok("sweep", "--config", sweep)
    legacy = load(sweep).sweep_config().legacy_hash()  # what such a sweep stored
    with TraceStore(db) as store:
        store.execute("UPDATE sweeps SET config_hash = ?", [legacy])
    calls = len(model.calls)
    ok("sweep", "--config", sweep)
    assert len(model.calls) == calls
    ok("sweep", "--config", sweep_yaml(tmp_path, tasks, model.name, [1, 2]))
    assert len(rows_of(db, "SELECT * FROM runs")) == 2
    [sw] = rows_of(db, "SELECT config_hash FROM sweeps")
    assert sw["config_hash"] == load(sweep).sweep_config().config_hash()
