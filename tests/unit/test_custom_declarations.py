"""User-defined SQL collectors without a database: strict validation of the declarations
(every problem with its key path and fix, exit 2 from the CLI), the plan's decisions,
and the generic transform on rows shaped like the server's (columns, NULLs, the cap)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from psycopg import errors as pgerr
from structlog.testing import capture_logs

from hiw_monitor.collectors import BY_NAME, with_custom
from hiw_monitor.collectors.base import Context, Result, ServerInfo, Step
from hiw_monitor.collectors.custom import (
    DROP_REASONS,
    Column,
    Declaration,
    Drops,
    Plan,
    SQLVariant,
    build,
    builtin_metric_names,
    statement_count,
)
from hiw_monitor.config import Overrides, load
from hiw_monitor.errors import ConfigError, ReasonedError, classify
from hiw_monitor.exposition import Exposition
from hiw_monitor.snapshot import SnapshotStore

REPO = Path(__file__).resolve().parents[2]
DSN = "postgresql://mon@db1:5433/hiw"
GOOD = """
    custom_collectors:
      - name: jobs
        help: Pending jobs.
        sql: SELECT job_type, count(*) AS pending FROM public.job_queue GROUP BY 1
        columns:
          job_type: label
          pending: gauge
"""


def write(folder: Path, text: str, name: str = "hiw.yaml") -> str:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def load_text(tmp_path: Path, text: str):
    return load(Overrides(config=write(tmp_path, text), dsn=DSN), environ={})


def problems(tmp_path: Path, text: str) -> dict[str, str]:
    """{key path: 'problem (fix: ...)'} of every problem load() reports."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return {p.path: p.line.removeprefix(f"{p.path}: ") for p in [info.value, *info.value.also]}


def one_collector(body: str) -> str:
    """A config with one custom collector whose declaration is ``body``."""
    return "custom_collectors:\n  - " + textwrap.indent(textwrap.dedent(body).strip(),
                                                        "    ").lstrip() + "\n"


def base(**extra: str) -> str:
    lines = {"name": "jobs", "sql": "SELECT 1 AS n", "columns": "{n: gauge}", **extra}
    return "\n".join(f"{key}: {value}" for key, value in lines.items() if value != "-")


# --- loading ---------------------------------------------------------------------------------


def test_a_declaration_becomes_a_collector_with_its_settings(tmp_path):
    config = load_text(tmp_path, GOOD)
    collector = config.custom["jobs"]
    settings = config.collectors["jobs"]
    assert (collector.interval, collector.timeout) == (60.0, 5.0)
    assert (settings.interval, settings.timeout, settings.stale_after) == (60.0, 5.0, 180.0)
    assert settings.enabled
    assert [c.name for c in config.enabled_collectors][-1] == "jobs"  # after the built-ins
    assert collector.plan is not None
    assert with_custom(config.custom)["jobs"] is collector
    assert with_custom(config.custom)["connections"] is BY_NAME["connections"]


def test_every_form_of_declaration(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    write(folder, """
        - name: from_list
          sql: SELECT 1 AS n
          columns: {n: gauge}
    """, "a.yaml")
    write(folder, """
        by_key:
          sql: SELECT 1 AS n
          columns: {n: counter}
    """, "b.yml")
    write(folder, """
        name: alone
        sql: SELECT 1 AS n
        columns: {n: gauge}
        enabled: false
        interval: 15m
        timeout: 30s
        stale_after: 1h
        primary_only: true
        extension: [pg_stat_statements, uuid-ossp]
        table: ['public.job_queue', '"Odd Schema"."Odd Table"', job_queue]
        metric_prefix: hiw_alone_
        max_series: 5
    """, "c.yaml")
    (folder / "notes.txt").write_text("not a collector")
    config = load_text(tmp_path, """
        custom_collectors:
          inline:
            sql: SELECT 1 AS n
            columns: {n: gauge}
        custom_collectors_dir: custom
    """)
    assert list(config.custom) == ["inline", "from_list", "by_key", "alone"]
    alone = config.collectors["alone"]
    assert not alone.enabled
    assert (alone.interval, alone.timeout, alone.stale_after) == (900.0, 30.0, 3600.0)
    assert "alone" not in [c.name for c in config.enabled_collectors]


def test_metric_names_follow_prometheus_conventions():
    decl = Declaration("jobs", (SQLVariant("SELECT"),), (
        Column("kind", "label"),
        Column("done_total", "counter"),      # counters are exposed with one _total
        Column("runtime", "counter", unit="seconds"),
        Column("age_seconds", "gauge", unit="seconds"),  # unit already in the name
        Column("size", "gauge", unit="bytes"),
        Column("raw", "ignore")))
    assert decl.metric_names() == {
        "done_total": ("hiw_custom_jobs_done", "hiw_custom_jobs_done_total"),
        "runtime": ("hiw_custom_jobs_runtime_seconds", "hiw_custom_jobs_runtime_seconds_total"),
        "age_seconds": ("hiw_custom_jobs_age_seconds", "hiw_custom_jobs_age_seconds"),
        "size": ("hiw_custom_jobs_size_bytes", "hiw_custom_jobs_size_bytes"),
    }


def test_builtin_metric_names_cover_the_catalog():
    catalog = set(re.findall(r"^\| `(hiw_[a-z0-9_]+)` \|",
                             (REPO / "docs" / "metrics.md").read_text(), re.MULTILINE))
    assert catalog
    assert catalog <= builtin_metric_names()
    assert "hiw_custom_series_dropped_total" in builtin_metric_names()


def test_the_catalog_documents_what_every_custom_collector_adds():
    catalog = (REPO / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| every user-defined collector \| `(hiw_[a-z0-9_]+)` \|",
                                catalog, re.MULTILINE))
    families = build(declaration()).transform({"rows": [{"n": 1}]}, ctx())
    added = {f.name + "_total" if f.type == "counter" else f.name for f in families
             if not f.name.startswith("hiw_custom_jobs_")}
    assert documented == added == {"hiw_custom_series_dropped_total"}


# --- every bad input, with its key path and fix -----------------------------------------------

P = "custom_collectors[0]"


@pytest.mark.parametrize(("body", "path", "needle"), [
    (base(colour="red"), f"{P}.colour", "unknown key"),
    (base(name="-"), P, "has no name"),
    (base(name="'2fast'"), f"{P}.name", "not a valid collector name"),
    (base(name="'job-queue'"), f"{P}.name", "not a valid collector name"),
    (base(name="connections"), f"{P}.name", "is the name of a built-in collector"),
    (base(sql="-"), P, "has no sql"),
    (base(sql="''"), f"{P}.sql", "holds no SQL statement"),
    (base(sql="'SELECT 1 AS n; SELECT 2 AS n'"), f"{P}.sql", "holds 2 statements"),
    (base(sql="42"), f"{P}.sql", "expected the query or a list of versions"),
    (base(columns="-"), P, "has no columns"),
    (base(columns="{}"), f"{P}.columns", "no columns declared"),
    (base(columns="[n]"), f"{P}.columns", "expected a mapping of columns"),
    (base(columns="{n: gauge, k: labels}"), f"{P}.columns.k", "unknown usage 'labels'"),
    (base(columns="{n: {help: x}}"), f"{P}.columns.n.usage", "has no usage"),
    (base(columns="{n: {usage: gauge, colour: red}}"), f"{P}.columns.n.colour",
     "unknown key"),
    (base(columns="{n: label}"), f"{P}.columns", "no value column"),
    (base(columns="{n: gauge, bad-name: label}"), f"{P}.columns['bad-name']",
     "not a valid label name"),
    (base(columns="{n: gauge, __k: label}"), f"{P}.columns.__k", "not a valid label name"),
    (base(columns="{n: gauge, target: label}"), f"{P}.columns.target", "reserved"),
    (base(columns="{n: gauge, k: {usage: label, unit: seconds}}"), f"{P}.columns.k.unit",
     "a label column has no unit"),
    (base(columns="{n: {usage: gauge, unit: 'mi-les'}}"), f"{P}.columns.n.unit",
     "not a valid unit"),
    (base(columns="{'n/s': gauge}"), f"{P}.columns['n/s']", "cannot be part of a metric name"),
    (base(interval="often"), f"{P}.interval", "not a valid duration"),
    (base(timeout="0s"), f"{P}.timeout", "too short"),
    (base(interval="1m", stale_after="30s"), f"{P}.stale_after", "shorter than the interval"),
    (base(enabled="yes please"), f"{P}.enabled", "expected true or false"),
    (base(primary_only="true", standby_only="true"), f"{P}.standby_only", "both true"),
    (base(table="'a.b.c'"), f"{P}.table", "is not a table name"),
    (base(table="{x: y}"), f"{P}.table", "expected a table name"),
    (base(extension="'pg stat'"), f"{P}.extension", "is not an extension name"),
    (base(metric_prefix="'1x_'"), f"{P}.metric_prefix", "cannot start a metric name"),
    (base(max_series="0"), f"{P}.max_series", "below the minimum"),
    (base(max_series="many"), f"{P}.max_series", "expected an integer"),
    # metric names: never a built-in one, in either form
    (base(metric_prefix="hiw_", columns="{up: gauge}"), f"{P}.columns.up",
     "collides with the built-in metric hiw_up"),
    (base(metric_prefix="hiw_collector_", columns="{errors: gauge}"),
     f"{P}.columns.errors", "collides with the built-in metric hiw_collector_errors"),
    (base(metric_prefix="hiw_custom_series_", columns="{dropped: counter}"),
     f"{P}.columns.dropped", "collides with the built-in metric hiw_custom_series_dropped"),
    (base(columns="{done: counter, done_total: gauge}"), f"{P}.columns.done_total",
     f"collides with {P}.columns.done"),
])
def test_bad_declarations_name_the_key_path(tmp_path, body, path, needle):
    found = problems(tmp_path, one_collector(body))
    assert path in found, found
    assert needle in found[path], found[path]
    assert "(fix: " in found[path]


@pytest.mark.parametrize(("sql", "path", "needle"), [
    ("[{min_version: '13', max_version: '13'}]", f"{P}.sql[0]", "has no sql"),
    ("[{min_version: '15', max_version: '13', sql: SELECT 1 AS n}]", f"{P}.sql[0]",
     "max_version is not above min_version"),
    ("[{min_version: 15.2, sql: SELECT 1 AS n}]", f"{P}.sql[0].min_version",
     "15.2 is a YAML number; quote the version"),
    ("[{min_version: 'fifteen', sql: SELECT 1 AS n}]", f"{P}.sql[0].min_version",
     "is not a version"),
    ("[{min_version: '9.6', sql: SELECT 1 AS n}]", f"{P}.sql[0].min_version",
     "not a PostgreSQL version"),
    ("[{max_version: '16', sql: SELECT 1 AS n}, {min_version: '15', sql: SELECT 2 AS n}]",
     f"{P}.sql", "version ranges 'before 16' and '15 and later' overlap"),
    ("[{min_version: '13', sql: SELECT 1 AS n}, {min_version: 150002, sql: SELECT 2 AS n}]",
     f"{P}.sql", "version ranges '13 and later' and '15.2 and later' overlap"),
    ("[{sql: SELECT 1 AS n, until: '16'}]", f"{P}.sql[0].until", "unknown key"),
    ("[]", f"{P}.sql", "expected the query or a list of versions"),
])
def test_bad_version_ranges(tmp_path, sql, path, needle):
    found = problems(tmp_path, one_collector(base(sql=sql)))
    assert path in found, found
    assert needle in found[path], found[path]


def test_version_ranges_are_half_open_and_sorted(tmp_path):
    config = load_text(tmp_path, one_collector(base(sql="""
        - {min_version: "15.2", sql: SELECT 2 AS n}
        - {min_version: 130000, max_version: "15.2", sql: SELECT 1 AS n}""".replace(
        "\n", "\n  "))))
    plan = config.custom["jobs"].plan
    assert plan is not None
    decide = plan.decide
    facts = {"facts": [{"me": "m", "db": "d", "in_recovery": False, "extensions": [],
                        "missing": [], "unreadable": []}]}
    picked = {v: decide(facts, step(v)).variant.sql for v in (130000, 150001, 150002, 180000)}
    assert picked == {130000: "SELECT 1 AS n", 150001: "SELECT 1 AS n",
                      150002: "SELECT 2 AS n", 180000: "SELECT 2 AS n"}


def test_duplicate_and_colliding_names_across_files(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    write(folder, """
        - name: jobs
          sql: SELECT 1 AS n
          columns: {n: gauge}
        - name: other
          metric_prefix: hiw_custom_jobs_
          sql: SELECT 1 AS pending
          columns: {pending: gauge}
    """, "more.yaml")
    found = problems(tmp_path, GOOD + "    custom_collectors_dir: custom\n")
    file = str(folder / "more.yaml")
    assert "duplicate collector name 'jobs' (also custom_collectors[0])" \
        in found[f"{file}[0].name"]
    assert "metric hiw_custom_jobs_pending collides with custom_collectors[0].columns.pending" \
        in found[f"{file}[1].columns.pending"]


def test_key_and_name_must_agree(tmp_path):
    found = problems(tmp_path, """
        custom_collectors:
          jobs:
            name: tasks
            sql: SELECT 1 AS n
            columns: {n: gauge}
    """)
    assert "'tasks' differs from the key 'jobs'" in found["custom_collectors.jobs.name"]


@pytest.mark.parametrize(("text", "path", "needle"), [
    ("custom_collectors: 42\n", "custom_collectors", "expected a list of collectors"),
    ("custom_collectors: [42]\n", "custom_collectors[0]", "expected a mapping"),
    ("custom_collectors_dir: 42\n", "custom_collectors_dir", "expected a directory path"),
    ("custom_collectors_dir: nowhere\n", "custom_collectors_dir", "is not a directory"),
])
def test_bad_sections(tmp_path, text, path, needle):
    found = problems(tmp_path, text)
    assert needle in found[path], found


def test_a_broken_file_in_the_directory_is_named(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    broken = write(folder, "- name: [unclosed\n", "broken.yaml")
    write(folder, "- name: fine\n  sql: SELECT 1 AS n\n  columns: {n: gauge}\n"
                  "  colour: red\n", "fine.yaml")
    found = problems(tmp_path, "custom_collectors_dir: custom\n")
    assert "invalid YAML at line" in found[broken]
    assert "unknown key" in found[f"{folder / 'fine.yaml'}[0].colour"]


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(tmp_path, """
        custom_collectors:
          - name: a
            sql: SELECT 1 AS n; SELECT 2
            columns: {n: gauge}
          - name: b
            sql: SELECT 1 AS n
            columns: {n: counters}
          - name: connections
            sql: SELECT 1 AS n
            columns: {n: gauge}
        collectors:
          connections: {interval: soon}
    """)
    assert set(found) == {"custom_collectors[0].sql", "custom_collectors[1].columns.n",
                          "custom_collectors[2].name", "collectors.connections.interval"}


def test_bad_declarations_exit_2_from_the_cli(tmp_path):
    path = write(tmp_path, one_collector(base(columns="{n: gauge, k: labels}")))
    result = subprocess.run([sys.executable, "-m", "hiw_monitor", "validate-config", path],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("hiw-monitor: configuration error")
    assert "custom_collectors[0].columns.k: unknown usage 'labels'" in result.stderr
    assert "fix: use one of: label, gauge, counter, ignore" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_commented_inline_example_validates(tmp_path):
    text = (REPO / "config" / "hiw_monitor.yaml").read_text()
    block = text[text.index("custom_collectors: []"):text.index("\nlog:")]
    uncommented = "\n".join(line.replace("#", " ", 1) if line.startswith("#") else line
                            for line in block.splitlines()[1:])
    config = load_text(tmp_path, "custom_collectors:\n" + uncommented)
    assert list(config.custom) == ["long_transactions"]


# --- the plan ----------------------------------------------------------------------------------


def server(version_num: int = 150004, *, standby: bool = False) -> ServerInfo:
    return ServerInfo(version_num, f"{version_num // 10000}.{version_num % 10000}", standby)


def step(version_num: int = 150004, *, standby: bool = False) -> Step:
    return Step(options={}, server=server(version_num, standby=standby))


def declaration(**fields) -> Declaration:
    values = {"name": "jobs", "sql": (SQLVariant("SELECT 1 AS n"),),
              "columns": (Column("n", "gauge"),), **fields}
    return Declaration(**values)


def decide(decl: Declaration, *, standby: bool = False, version_num: int = 150004,
           **facts) -> Plan:
    plan = build(decl).plan
    assert plan is not None
    row = {"me": "hiw_monitor", "db": "heroes_in_waiting", "in_recovery": standby,
           "extensions": [], "missing": [], "unreadable": [], **facts}
    return plan.decide({"facts": [row]}, step(version_num, standby=standby))


@pytest.mark.parametrize(("fields", "facts", "code", "needle"), [
    ({"primary_only": True}, {"standby": True}, "not_primary", "this server is a standby"),
    ({"standby_only": True}, {}, "not_standby", "this server is a primary"),
    ({"extensions": ("pg_trgm",)}, {}, "extension_missing", "CREATE EXTENSION pg_trgm;"),
    ({"tables": ("public.gone",)}, {"missing": ["public.gone"]}, "undefined_table",
     "table public.gone does not exist in database 'heroes_in_waiting'"),
    ({"tables": ("public.job_queue",)}, {"unreadable": ["public.job_queue"]},
     "permission_denied", "GRANT SELECT ON public.job_queue TO hiw_monitor;"),
    ({"sql": (SQLVariant("SELECT 1 AS n", 160000),)}, {}, "unsupported_version",
     "no sql for PostgreSQL 15.4: the declaration covers 16 and later"),
])
def test_the_plan_says_why_a_collector_cannot_run(fields, facts, code, needle):
    with pytest.raises(ReasonedError) as info:
        decide(declaration(**fields), **facts)
    assert info.value.reason.code == code
    assert needle in info.value.reason.text


def test_an_installed_plan_summarizes_what_held():
    plan = decide(declaration(primary_only=True, extensions=("pg_trgm",),
                              tables=("public.job_queue",)), extensions=["pg_trgm"])
    assert plan.summary() == ("sql for every version; primary; extension pg_trgm; "
                              "table public.job_queue readable")


# --- the transform -------------------------------------------------------------------------------

JOBS = declaration(columns=(Column("kind", "label"), Column("n", "gauge"),
                            Column("done", "counter"), Column("note", "ignore")),
                   max_series=3)


def ctx(state=None) -> Context:
    return Context(target="db", server=server(), options={}, now=0.0, state=state)


def run(decl: Declaration, rows, state=None) -> dict:
    """{(sample name, labels without target): value} of one transform."""
    collector = build(decl)
    out = {}
    for family in collector.transform({"rows": rows, "reset": Result()}, ctx(state)):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "target"}
            out[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return out


def row(kind, n=1, done=2, note="x") -> dict:
    return {"kind": kind, "n": n, "done": done, "note": note}


def dropped(values: dict, reason: str) -> float:
    return values[("hiw_custom_series_dropped_total",
                   (("collector", "jobs"), ("reason", reason)))]


def test_values_labels_and_types():
    rows = Result([row("a", 1, 10), row(7, Decimal("2.5"), True), row("c", None, 0)],
                  ["kind", "n", "done", "note"])
    values = run(JOBS, rows)
    assert values[("hiw_custom_jobs_n", (("kind", "a"),))] == 1.0
    assert values[("hiw_custom_jobs_n", (("kind", "7"),))] == 2.5  # labels become text
    assert values[("hiw_custom_jobs_done_total", (("kind", "7"),))] == 1.0  # true is 1
    assert ("hiw_custom_jobs_n", (("kind", "c"),)) not in values  # NULL: no sample
    assert values[("hiw_custom_jobs_done_total", (("kind", "c"),))] == 0.0
    assert not any("note" in name for name, _ in values)  # ignored columns stay out
    assert all(dropped(values, reason) == 0 for reason in DROP_REASONS)


@pytest.mark.parametrize(("columns", "needle"), [
    (["kind", "n", "done"], "missing note (the query returned: kind, n, done)"),
    (["kind", "n", "done", "note", "secret"], "not declared secret"),
    (["kind", "n", "n", "done", "note"], "returned twice n"),
    ([], "returned no result set"),
])
def test_columns_must_match_the_declaration_even_without_rows(columns, needle):
    with pytest.raises(ReasonedError) as info:
        run(JOBS, Result([], columns))
    assert info.value.reason.code == "columns_mismatch"
    assert needle in info.value.reason.text


@pytest.mark.parametrize(("value", "kind"), [
    ("12", "text"), ({"a": 1}, "json"), (b"\x00", "bytea")])
def test_a_value_that_is_not_a_number_fails_without_showing_it(value, kind):
    with pytest.raises(ReasonedError) as info:
        run(JOBS, [row("a", value)])
    assert info.value.reason.code == "not_numeric"
    assert f"column n returned {kind}, not a number" in info.value.reason.text
    assert repr(value) not in info.value.reason.text


def test_null_labels_duplicates_and_the_cap_drop_rows_counted_and_logged_once():
    state = Drops()
    rows = [row("a"), row(None), row("a"), row("b"), row("c"), row("d"), row("e")]
    with capture_logs() as logs:
        first = run(JOBS, rows, state)
        second = run(JOBS, rows, state)  # the same drops: logged once
        third = run(JOBS, rows[:2], state)  # a change: logged again
    kept = {labels for name, labels in first if name == "hiw_custom_jobs_n"}
    assert kept == {(("kind", "a"),), (("kind", "b"),), (("kind", "c"),)}  # query order
    assert (dropped(first, "null_label"), dropped(first, "duplicate"),
            dropped(first, "max_series")) == (1, 1, 2)
    assert (dropped(second, "null_label"), dropped(second, "max_series")) == (2, 4)
    assert (dropped(third, "null_label"), dropped(third, "max_series")) == (3, 4)
    events = [e for e in logs if e["event"] == "custom_series_dropped"]
    assert [(e["dropped_max_series"], e["kept"]) for e in events] == [(2, 3), (0, 1)]
    assert events[0]["log_level"] == "warning"
    assert "a" not in {str(v) for e in events for v in e.values()}  # no row values


def test_custom_families_pass_the_strict_openmetrics_parser():
    store = SnapshotStore()
    store.register("db", "host=x", "jobs", 60, 180)
    families = list(build(JOBS).transform({"rows": [row('quo"te\\'), row("b")]}, ctx()))
    store.record_success("db", "jobs", families, 1.0, 0.1)
    body = Exposition(store, clock=lambda: 2.0, prerender=False).get(openmetrics_format=True)
    parsed = {f.name: f for f in text_string_to_metric_families(body.body.decode())}
    assert parsed["hiw_custom_jobs_done"].type == "counter"
    assert parsed["hiw_custom_series_dropped"].type == "counter"
    assert {s.labels["kind"] for s in parsed["hiw_custom_jobs_n"].samples} == {'quo"te\\', "b"}


def test_statement_count():
    assert statement_count("SELECT 1;") == 1
    assert statement_count("SELECT 'a;b', \"c;d\", $$;$$, $q$ $$; $q$ -- ;\n") == 1
    assert statement_count("SELECT 1 /* a /* nested */ ; */ ; SELECT 2") == 2
    assert statement_count("SELECT a$b$c FROM t; SELECT $b$") == 2
    assert statement_count(";;") == 0


# --- how the server's refusals are reported ---------------------------------------------------


@pytest.mark.parametrize(("error", "code", "shown"), [
    (pgerr.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
     "read_only", "cannot execute INSERT in a read-only transaction; the statement writes"),
    (pgerr.SyntaxError('syntax error at or near "SELEC"'), "syntax_error",
     'syntax error at or near "SELEC"; fix the collector'),
    (pgerr.InvalidTextRepresentation('invalid input syntax for type integer: "s3cret"'),
     "sqlstate_22p02", "InvalidTextRepresentation in the query"),
    (pgerr.NumericValueOutOfRange('value "12345678901" is out of range for type integer'),
     "sqlstate_22003", "NumericValueOutOfRange in the query"),
    (pgerr.DivisionByZero("division by zero"), "sqlstate_22012", "division by zero"),
])
def test_bad_sql_is_classified_without_row_values(error, code, shown):
    reason = classify(error)
    assert reason.code == code
    assert reason.text.startswith(shown)
    assert "s3cret" not in reason.text
    assert "12345678901" not in reason.text
