"""``databases:`` and ``max_connections``: parsing, the errors people get, the top-level
default reaching discovered targets; merging the results of several databases (families
by name, the review's findings worst-first)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hiw_monitor.collectors.base import gauge, merge_databases, with_datname
from hiw_monitor.collectors.review import FindingsFamily, merge, status_family
from hiw_monitor.config import ConfigError, DatabaseSelection, Overrides, load
from hiw_monitor.review.checks import BY_ID
from hiw_monitor.review.model import finding
from hiw_monitor.scheduler import Agent


def config(tmp_path: Path, text: str):
    path = tmp_path / "hiw.yaml"
    path.write_text(textwrap.dedent(text))
    return load(Overrides(config=str(path)), environ={})


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, text)
    return str(caught.value)


def test_databases_mapping_list_and_default(tmp_path):
    c = config(tmp_path, """\
        databases: {exclude: [postgres]}
        connection: {max_connections: 3}
        targets:
          - {name: a, dsn: "postgresql://m@h/app", databases: {include: ["tenant_*"],
             exclude: [tenant_test]}, max_connections: 1}
          - {name: b, dsn: "postgresql://m@h/app", databases: [app, "x*"]}
          - {name: c, dsn: "postgresql://m@h/app"}
        """)
    a, b, t = c.targets
    assert a.databases == DatabaseSelection(("tenant_*",), ("tenant_test",))
    assert a.max_connections == 1
    assert b.databases == DatabaseSelection(("app", "x*"), ())
    assert t.databases is None
    assert t.max_connections is None
    assert c.databases == DatabaseSelection(("*",), ("postgres",))
    assert c.connection.max_connections == 3
    agent = Agent(c)
    try:  # the top-level default reaches the targets without their own
        by_name = {x.name: x for x in agent.targets}
        assert by_name["c"].config.databases == c.databases
        assert by_name["a"].config.databases == a.databases
    finally:
        agent.stop()


def test_selection_matching():
    s = DatabaseSelection(("*",), ("postgres", "*_test"))
    assert [s.matches(n) for n in ("hiw", "postgres", "a_test", "test_a")] == [
        True, False, False, True]
    assert DatabaseSelection(("tenant_?",)).matches("tenant_1")
    assert not DatabaseSelection(("Hiw",)).matches("hiw")  # case-sensitive like PostgreSQL


@pytest.mark.parametrize(("text", "expected"), [
    ("databases: 3", "targets[0].databases: expected a mapping, got an integer"),
    ("databases: {include: []}", "targets[0].databases.include: is empty"),
    ("databases: {include: [1]}", "expected a list of database name patterns"),
    ("databases: {exclude: oops, colour: x}", "targets[0].databases.colour"),
    ("max_connections: 0", "targets[0].max_connections: expected a whole number of at "
                           "least 1, got 0"),
    ("max_connections: true", "expected a whole number of at least 1, got True"),
    ("max_connections: '2'", "expected a whole number of at least 1, got '2'"),
])
def test_bad_target_settings_name_the_key_and_the_fix(tmp_path, text, expected):
    message = problems(tmp_path, f"""\
        targets:
          - name: a
            dsn: "postgresql://m@h/app"
            {text}
        """)
    assert expected in message


def test_pgbouncer_has_no_databases_and_custom_datname_is_taken(tmp_path):
    message = problems(tmp_path, """\
        targets:
          - {name: pool, type: pgbouncer, host: h, port: 6432, databases: ["*"]}
        custom_collectors:
          - name: mine
            per_database: true
            sql: "SELECT 1 AS v, 'x' AS datname"
            columns: {v: gauge, datname: label}
        """)
    assert "targets[0].databases: a pgbouncer target has no databases to walk" in message
    assert "custom_collectors[0].columns.datname: a per_database collector labels its series " \
           "with datname itself" in message
    assert "connection.max_connections" in problems(tmp_path, """\
        connection: {max_connections: -1}
        targets: [{name: a, dsn: "postgresql://m@h/app"}]
        """)


def test_for_database_keeps_everything_but_the_dbname(tmp_path):
    c = config(tmp_path, """\
        targets:
          - {name: a, dsn: "postgresql://m@h:5433/app?sslmode=require", password_env: PW,
             databases: ["*"]}
        """)
    other = c.targets[0].for_database("tenant_1")
    assert "dbname=tenant_1" in other.conninfo
    assert "sslmode=require" in other.conninfo
    assert "port=5433" in other.conninfo
    assert other.password_env == "PW"
    assert other.name == "a"
    assert other.databases is None


def test_merge_databases_one_family_per_name():
    def fam(value: float):
        f = gauge("hiw_x", "x.", ["table"])
        f.add_metric(["t", "a"], value)
        return f
    merged = merge_databases([("db1", with_datname([fam(1)], "db1")),
                              ("db2", with_datname([fam(2)], "db2"))])
    assert [f.name for f in merged] == ["hiw_x"]
    assert [(s.labels["datname"], s.value) for s in merged[0].samples] == [("db1", 1.0),
                                                                          ("db2", 2.0)]


def test_review_merge_keeps_the_worst_finding_of_each_check():
    rls, ssl = BY_ID["rls_enabled"], BY_ID["ssl_enabled"]
    app = [finding(rls, "fail", "2 tables without RLS"), finding(ssl, "pass", "all TLS")]
    other = [finding(rls, "unknown", "no app tables"), finding(ssl, "warn", "1 plain")]
    results = [("hiw", with_datname([status_family("t", app)], "hiw")),
               ("tenant", with_datname([status_family("t", other)], "tenant"))]
    (family,) = merge(results)
    assert isinstance(family, FindingsFamily)
    got = {f.check.id: (f.status, f.reason) for f in family.findings}
    assert got == {"rls_enabled": ("fail", "in database hiw: 2 tables without RLS"),
                   "ssl_enabled": ("warn", "in database tenant: 1 plain")}
    assert {s.labels["datname"] for s in family.samples} == {"hiw", "tenant"}
    # one database: its findings as they are, no prefix
    (single,) = merge(results[:1])
    assert {f.reason for f in single.findings} == {"2 tables without RLS", "all TLS"}
