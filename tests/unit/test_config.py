"""config.py: load() precedence, strict validation, password handling, redact()."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from hiw_monitor.collectors import BY_NAME
from hiw_monitor.config import (
    DEFAULT_PORT,
    SAFE_PARAMS,
    ConnectionSettings,
    Overrides,
    TargetConfig,
    load,
    redact,
)
from hiw_monitor.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DSN = "postgresql://mon@db1:5433/hiw"


def write(tmp_path: Path, text: str, name: str = "hiw.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def load_file(path: str, environ=None, **flags):
    return load(Overrides(config=path, **flags), environ={} if environ is None else environ)


def all_problems(error: ConfigError) -> list[ConfigError]:
    return [error, *error.also]


def paths(error: ConfigError) -> list[str]:
    return [p.path for p in all_problems(error)]


def load_error(tmp_path, text, **flags) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_file(write(tmp_path, text), **flags)
    return info.value


TWO_TARGETS = """
    targets:
      - name: a
        host: h1
        dbname: d1
      - name: b
        dsn: postgresql://u@h2:5432/d2
"""


# --- defaults and precedence -------------------------------------------------------------


def test_defaults_with_only_a_dsn():
    config = load(Overrides(dsn=DSN), environ={})
    assert config.source == "defaults"
    assert config.listen == ("127.0.0.1", DEFAULT_PORT)
    assert config.connection == ConnectionSettings()
    assert (config.log_level, config.log_format) == ("info", "auto")
    assert set(config.collectors) == set(BY_NAME)
    for name, collector in BY_NAME.items():
        settings_ = config.collectors[name]
        assert settings_.enabled
        assert settings_.interval == collector.interval
        assert settings_.timeout == collector.timeout
        assert settings_.stale_after == 3 * collector.interval
        assert dict(settings_.options) == {k: o.default for k, o in collector.options.items()}
    assert config.enabled_collectors == tuple(config.collectors.values())
    (target,) = config.targets
    assert target.name == "db1:5433/hiw"
    assert conninfo_to_dict(target.conninfo) == {
        "host": "db1", "port": "5433", "dbname": "hiw", "user": "mon"}


def test_nothing_to_watch_is_an_error():
    with pytest.raises(ConfigError) as info:
        load(Overrides(), environ={})
    assert info.value.path == "targets"
    assert "--dsn" in info.value.fix
    assert load(Overrides(), environ={}, require_targets=False).targets == ()


def test_listen_precedence(tmp_path):
    path = write(tmp_path, "listen: 0.0.0.0:9001\n")
    env = {"HIW_MONITOR_LISTEN": "10.0.0.1:9002", "HIW_MONITOR_DSN": DSN}
    assert load(Overrides(config=path, listen=":9003"), environ=env).listen == ("0.0.0.0", 9003)
    assert load(Overrides(config=path), environ=env).listen == ("10.0.0.1", 9002)
    assert load(Overrides(config=path), environ={"HIW_MONITOR_DSN": DSN}).listen == (
        "0.0.0.0", 9001)
    assert load(Overrides(), environ={"HIW_MONITOR_DSN": DSN}).listen == (
        "127.0.0.1", DEFAULT_PORT)


def test_dsn_precedence_flag_env_file(tmp_path):
    path = write(tmp_path, TWO_TARGETS)
    env = {"HIW_MONITOR_DSN": "postgresql://u@envhost:5432/envdb"}
    from_flag = load(Overrides(config=path, dsn="postgresql://u@flaghost:5432/flagdb"),
                     environ=env)
    assert [t.name for t in from_flag.targets] == ["flaghost:5432/flagdb"]
    from_env = load(Overrides(config=path), environ=env)
    assert [t.name for t in from_env.targets] == ["envhost:5432/envdb"]
    from_file = load(Overrides(config=path), environ={})
    assert [t.name for t in from_file.targets] == ["a", "b"]
    assert from_file.source == path


def test_config_path_flag_beats_env(tmp_path):
    flag_file = write(tmp_path, "listen: :9101\n", "flag.yaml")
    env_file = write(tmp_path, "listen: :9102\n", "env.yaml")
    env = {"HIW_MONITOR_CONFIG": env_file, "HIW_MONITOR_DSN": DSN}
    assert load(Overrides(config=flag_file), environ=env).listen[1] == 9101
    from_env = load(Overrides(), environ=env)
    assert from_env.listen[1] == 9102
    assert from_env.source == env_file


def test_target_name_for_a_dsn(tmp_path):
    assert load(Overrides(dsn=DSN, target_name="primary"), environ={}).targets[0].name == (
        "primary")
    env = {"HIW_MONITOR_DSN": DSN, "HIW_MONITOR_TARGET_NAME": "from-env"}
    assert load(Overrides(), environ=env).targets[0].name == "from-env"
    assert load(Overrides(target_name="flag"), environ=env).targets[0].name == "flag"
    kv = load(Overrides(dsn="host=kvhost port=6000 dbname=app user=x"), environ={})
    assert kv.targets[0].name == "kvhost:6000/app"


def test_log_flags_beat_file(tmp_path):
    path = write(tmp_path, "log: {level: WARNING, format: json}\n")
    from_file = load_file(path, dsn=DSN)
    assert (from_file.log_level, from_file.log_format) == ("warning", "json")
    flagged = load_file(path, dsn=DSN, log_level="debug", log_format="console")
    assert (flagged.log_level, flagged.log_format) == ("debug", "console")


# --- passwords ---------------------------------------------------------------------------


def test_dsn_password_is_kept_out_of_conninfo_and_repr(tmp_path):
    secret = "s3cr3t-Pa55"
    config = load(Overrides(dsn=f"postgresql://mon:{secret}@db1:5433/hiw"), environ={})
    (target,) = config.targets
    assert target.password == secret
    assert target.resolve_password() == secret
    assert "password" not in conninfo_to_dict(target.conninfo)
    assert secret not in target.conninfo
    assert secret not in repr(target)
    assert secret not in repr(config)
    path = write(tmp_path, f"targets:\n  - dsn: host=h dbname=d password={secret}\n")
    file_target = load_file(path).targets[0]
    assert file_target.password == secret
    assert secret not in file_target.conninfo
    assert secret not in repr(file_target)


def test_unparsable_dsn_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        load(Overrides(dsn="host=h password='hunter2"), environ={})
    assert info.value.path == "--dsn"
    assert "hunter2" not in str(info.value)


def test_password_env_is_read_at_resolve_time(tmp_path, monkeypatch):
    path = write(tmp_path, """
        targets:
          - name: a
            dsn: postgresql://u:inline@h/d
            password_env: HIW_TEST_PW
    """)
    target = load_file(path).targets[0]
    assert target.password_env == "HIW_TEST_PW"
    monkeypatch.delenv("HIW_TEST_PW", raising=False)
    assert target.resolve_password() is None
    monkeypatch.setenv("HIW_TEST_PW", "from-env")
    assert target.resolve_password() == "from-env"


def test_password_file_is_reread_and_stripped(tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text("first\n", encoding="utf-8")
    target = TargetConfig(name="a", conninfo="host=h", password_file=str(secret_file))
    assert target.resolve_password() == "first"
    secret_file.write_text("  rotated  \n", encoding="utf-8")
    assert target.resolve_password() == "rotated"
    assert TargetConfig(name="b", conninfo="host=h").resolve_password() is None


def test_password_env_and_file_together_rejected(tmp_path):
    error = load_error(tmp_path, """
        targets:
          - name: a
            host: h
            dbname: d
            password_env: X
            password_file: /run/secrets/x
    """)
    assert "targets[0]" in paths(error)
    assert any("password_env and password_file" in p.problem for p in all_problems(error))


# --- strictness: unknown keys, types, durations ------------------------------------------


def test_unknown_keys_are_named_by_path(tmp_path):
    error = load_error(tmp_path, """
        tragets: []
        targets:
          - name: a
            host: h
            dbname: d
          - name: b
            host: h
            dbname: d
          - nme: c
            host: h
            dbname: d
        collectors:
          connections:
            bogus: 1
          nosuch: {}
        connection:
          connect_timout: 1s
    """)
    found = paths(error)
    for expected in ("tragets", "targets[2].nme", "collectors.connections.bogus",
                     "collectors.nosuch", "connection.connect_timout"):
        assert expected in found
    unknown = next(p for p in all_problems(error) if p.path == "collectors.connections.bogus")
    assert unknown.problem == "unknown key"
    assert "top_applications" in unknown.fix
    assert "interval" in unknown.fix


@pytest.mark.parametrize(("yaml_text", "path"), [
    ("listen: 9188\n", "listen"),
    ("targets: {a: b}\n", "targets"),
    ("targets:\n  - just-a-string\n", "targets[0]"),
    ("targets:\n  - {name: 5, host: h, dbname: d}\n", "targets[0].name"),
    ("targets:\n  - {name: '  ', host: h, dbname: d}\n", "targets[0].name"),
    ("targets:\n  - {name: a, host: [h], dbname: d}\n", "targets[0].host"),
    ("targets:\n  - {name: a, host: h, dbname: d, port: abc}\n", "targets[0].port"),
    ("targets:\n  - {name: a, host: h, dbname: d, port: 70000}\n", "targets[0].port"),
    ("targets:\n  - {name: a, host: h, dbname: d, port: true}\n", "targets[0].port"),
    ("targets:\n  - {name: a, dsn: 42}\n", "targets[0].dsn"),
    ("targets:\n  - {name: a, dsn: \"host='unterminated\"}\n", "targets[0].dsn"),
    ("targets:\n  - {name: a, user: u}\n", "targets[0]"),
    ("targets:\n  - {name: a, host: h, password_env: 7}\n", "targets[0].password_env"),
    ("collectors: [connections]\n", "collectors"),
    ("collectors: {connections: {enabled: 'yes'}}\n", "collectors.connections.enabled"),
    ("collectors: {connections: {top_applications: '5'}}\n",
     "collectors.connections.top_applications"),
    ("collectors: {connections: {top_applications: true}}\n",
     "collectors.connections.top_applications"),
    ("collectors: {connections: {top_applications: 0}}\n",
     "collectors.connections.top_applications"),
    ("connection: 5s\n", "connection"),
    ("log: {level: loud}\n", "log.level"),
    ("log: {format: xml}\n", "log.format"),
])
def test_wrong_values_are_named_by_path(tmp_path, yaml_text, path):
    if not yaml_text.startswith("targets"):
        yaml_text = "targets: [{name: ok, host: h, dbname: d}]\n" + yaml_text
    with pytest.raises(ConfigError) as info:
        load_file(write(tmp_path, yaml_text))
    assert path in paths(info.value)
    problem = next(p for p in all_problems(info.value) if p.path == path)
    assert problem.fix


@pytest.mark.parametrize(("yaml_text", "path"), [
    ("collectors: {database: {interval: soon}}\n", "collectors.database.interval"),
    ("collectors: {database: {interval: 0}}\n", "collectors.database.interval"),
    ("collectors: {database: {interval: -5s}}\n", "collectors.database.interval"),
    ("collectors: {database: {interval: true}}\n", "collectors.database.interval"),
    ("collectors: {database: {timeout: 1x}}\n", "collectors.database.timeout"),
    ("collectors: {database: {stale_after: 0}}\n", "collectors.database.stale_after"),
    ("connection: {connect_timeout: forever}\n", "connection.connect_timeout"),
    ("connection: {lock_timeout: 0}\n", "connection.lock_timeout"),
    ("connection: {backoff_initial: 10s, backoff_max: 5s}\n", "connection.backoff_max"),
])
def test_bad_durations(tmp_path, yaml_text, path):
    with pytest.raises(ConfigError) as info:
        load_file(write(tmp_path, yaml_text), dsn=DSN)
    assert path in paths(info.value)


@pytest.mark.parametrize(("yaml_text", "path"), [
    ("collectors: {database: {interval: }}\n", "collectors.database.interval"),
    ("collectors: {database: {interval: [1, 2]}}\n", "collectors.database.interval"),
    ("collectors: {database: {stale_after: {a: 1}}}\n", "collectors.database.stale_after"),
    ("connection: {connect_timeout: }\n", "connection.connect_timeout"),
    ("collectors: {database: {interval: .nan}}\n", "collectors.database.interval"),
    ("collectors: {database: {interval: .inf}}\n", "collectors.database.interval"),
])
def test_null_list_and_non_finite_durations_are_config_errors(tmp_path, yaml_text, path):
    # An empty value (YAML null), a list, NaN or infinity is a bad duration, not a crash
    # and not an accepted interval.
    with pytest.raises(ConfigError) as info:
        load_file(write(tmp_path, yaml_text), dsn=DSN)
    assert path in paths(info.value)


def test_empty_target_item_is_reported(tmp_path):
    # "- " with nothing after it is a YAML null list item: a typo, never silently dropped.
    error = load_error(tmp_path, """
        targets:
          -
          - name: a
            host: h
            dbname: d
    """)
    assert "targets[0]" in paths(error)


def test_duplicate_target_names(tmp_path):
    error = load_error(tmp_path, """
        targets:
          - {name: same, host: h1, dbname: d}
          - {name: other, host: h2, dbname: d}
          - {name: same, host: h3, dbname: d}
    """)
    assert error.path == "targets[2].name"
    assert "targets[0]" in error.problem
    assert "'same'" in error.problem


def test_duplicate_target_path_counts_the_file_items(tmp_path):
    # The path must point at the item in the file even when an earlier item is invalid.
    error = load_error(tmp_path, """
        targets:
          - {name: broken}
          - {name: same, host: h1, dbname: d}
          - {name: same, host: h2, dbname: d}
    """)
    duplicate = next(p for p in all_problems(error) if "duplicate" in p.problem)
    assert duplicate.path == "targets[2].name"
    assert "targets[1]" in duplicate.problem


def test_default_names_can_clash(tmp_path):
    error = load_error(tmp_path, """
        targets:
          - {host: h, port: 5432, dbname: d}
          - dsn: postgresql://other@h:5432/d
    """)
    assert error.path == "targets[1].name"
    assert "h:5432/d" in error.problem


def test_stale_after_shorter_than_interval(tmp_path):
    error = load_error(tmp_path, "collectors: {database: {interval: 1m, stale_after: 30s}}\n",
                       dsn=DSN)
    assert error.path == "collectors.database.stale_after"
    equal = load_file(write(tmp_path, "collectors: {database: {interval: 1m, stale_after: 1m}}\n"),
                      dsn=DSN)
    assert equal.collectors["database"].stale_after == 60


@settings(max_examples=25)
@given(st.integers(min_value=1, max_value=86_400))
def test_default_stale_after_is_three_intervals(seconds):
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), f"collectors: {{connections: {{interval: {seconds}s}}}}\n")
        config = load_file(path, dsn=DSN)
    assert config.collectors["connections"].interval == seconds
    assert config.collectors["connections"].stale_after == 3 * seconds
    database = BY_NAME["database"]
    assert config.collectors["database"].stale_after == 3 * database.interval


def test_collector_overrides(tmp_path):
    path = write(tmp_path, """
        collectors:
          connections:
            interval: 5s
            timeout: 250ms
            stale_after: 1m
            top_applications: 3
          database:
            enabled: false
    """)
    config = load_file(path, dsn=DSN)
    connections = config.collectors["connections"]
    assert (connections.interval, connections.timeout, connections.stale_after) == (5, 0.25, 60)
    assert connections.options["top_applications"] == 3
    assert not config.collectors["database"].enabled
    assert "database" not in [c.name for c in config.enabled_collectors]
    assert "connections" in [c.name for c in config.enabled_collectors]


def test_connection_settings(tmp_path):
    path = write(tmp_path, "connection: {connect_timeout: 2s, backoff_max: 5m}\n")
    connection = load_file(path, dsn=DSN).connection
    defaults = ConnectionSettings()
    assert connection.connect_timeout == 2
    assert connection.backoff_max == 300
    assert connection.statement_timeout == defaults.statement_timeout


def test_every_problem_is_reported_at_once(tmp_path):
    error = load_error(tmp_path, """
        listen: "h:http"
        targets:
          - {name: a, host: h, dbname: d, port: nope}
        connection:
          lock_timeout: soon
        collectors:
          database:
            interval: fast
          connections:
            colour: blue
        log:
          level: loud
        extra: 1
    """)
    assert set(paths(error)) >= {
        "listen", "targets[0].port", "connection.lock_timeout", "collectors.database.interval",
        "collectors.connections.colour", "log.level", "extra"}
    assert len(str(error).splitlines()) == len(all_problems(error))
    assert error.source.endswith("hiw.yaml")


# --- the file itself ---------------------------------------------------------------------


def check_names_file_with_fix(error: ConfigError, path: str) -> None:
    assert path in str(error)
    assert error.fix


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_file(path, dsn=DSN)
    check_names_file_with_fix(info.value, path)
    assert "not found" in info.value.problem


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_file(str(tmp_path), dsn=DSN)
    check_names_file_with_fix(info.value, str(tmp_path))
    assert "directory" in info.value.problem


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "listen: ok\ntargets: [\n  - a\n")
    with pytest.raises(ConfigError) as info:
        load_file(path, dsn=DSN)
    check_names_file_with_fix(info.value, path)
    assert "invalid YAML at line" in info.value.problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_file(path, dsn=DSN)
    check_names_file_with_fix(info.value, path)
    assert "mapping" in info.value.problem


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("listen: caf\u00e9:9188\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_file(str(path), dsn=DSN)
    check_names_file_with_fix(info.value, str(path))
    assert "UTF-8" in info.value.problem


def test_empty_file_is_all_defaults(tmp_path):
    config = load_file(write(tmp_path, "# nothing but a comment\n"), dsn=DSN)
    assert config.listen == ("127.0.0.1", DEFAULT_PORT)


def test_documented_example_validates():
    path = REPO / "config" / "hiw_monitor.yaml"
    config = load(Overrides(config=str(path)), environ={})
    assert [t.name for t in config.targets] == ["hiw-primary", "hiw-replica"]
    primary, replica = config.targets
    assert primary.password_env == "HIW_DB_PASSWORD"
    assert replica.password_file == "/run/secrets/hiw_db_password"
    params = conninfo_to_dict(primary.conninfo)
    assert params["sslmode"] == "verify-full"
    assert params["port"] == "5432"
    assert conninfo_to_dict(replica.conninfo)["sslmode"] == "require"
    assert config.collectors["connections"].options["top_applications"] == 10


def test_documented_example_loads_the_custom_collector_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # custom_collectors_dir is relative to the file, not the cwd
    config = load(Overrides(config=str(REPO / "config" / "hiw_monitor.yaml")), environ={})
    assert list(config.custom) == ["analytics_summary", "job_queue"]
    assert [c.name for c in config.enabled_collectors][-2:] == ["analytics_summary",
                                                                "job_queue"]
    assert config.collectors["analytics_summary"].interval == 300
    assert config.collectors["job_queue"].stale_after == 180


def test_custom_collectors_are_not_configured_under_collectors(tmp_path):
    error = load_error(tmp_path, """
        custom_collectors:
          - {name: jobs, sql: SELECT 1 AS n, columns: {n: gauge}}
        collectors:
          jobs: {interval: 5m}
    """, dsn=DSN)
    assert paths(error) == ["collectors.jobs"]


# --- redact ------------------------------------------------------------------------------

# Printable, no whitespace, quotes or backslashes (those need quoting in key=value form).
PASSWORD_CHARS = st.characters(min_codepoint=33, max_codepoint=126,
                               exclude_characters="'\"\\")
passwords = st.text(PASSWORD_CHARS, min_size=1, max_size=30).map(lambda s: "PW" + s)


@given(passwords)
def test_redact_uri_never_shows_the_password(password):
    dsn = f"postgresql://mon:{quote(password, safe='')}@db:5432/hiw"
    assert conninfo_to_dict(dsn)["password"] == password
    redacted = redact(dsn)
    assert "PW" not in redacted
    assert conninfo_to_dict(redacted) == {"host": "db", "port": "5432", "dbname": "hiw",
                                          "user": "mon"}


@given(passwords)
def test_redact_keyword_value_never_shows_the_password(password):
    dsn = f"host=db password={password} user=mon dbname=hiw"
    assert conninfo_to_dict(dsn)["password"] == password
    redacted = redact(dsn)
    assert "PW" not in redacted
    assert "password" not in conninfo_to_dict(redacted)
    assert conninfo_to_dict(redacted)["user"] == "mon"


def test_redact_query_parameter_password():
    redacted = redact("postgresql://db/hiw?user=mon&password=PWx&sslmode=require")
    assert "PWx" not in redacted
    assert conninfo_to_dict(redacted)["sslmode"] == "require"


def test_redact_unparsable():
    assert "hunter2" not in redact("host='x password=hunter2")


SECRET_CANARY = "Canary-9d4e"
LIBPQ_KEYWORDS = sorted(d.keyword.decode() for d in pq.Conninfo.get_defaults())


def test_redact_prints_only_safe_parameters():
    secret_params = [k for k in LIBPQ_KEYWORDS if k not in SAFE_PARAMS]
    assert {"password", "sslpassword", "options", "passfile"} <= set(secret_params)
    dsn = make_conninfo("", host="db", port="5432", dbname="hiw", user="mon",
                        sslmode="require",
                        **{key: f"{SECRET_CANARY}-{key}" for key in secret_params})
    assert {k for k, v in conninfo_to_dict(dsn).items() if SECRET_CANARY in str(v)} == \
        set(secret_params)
    redacted = redact(dsn)
    assert SECRET_CANARY not in redacted
    assert conninfo_to_dict(redacted) == {"host": "db", "port": "5432", "dbname": "hiw",
                                          "user": "mon", "sslmode": "require"}


@pytest.mark.parametrize("dsn", [
    f"postgresql://mon@db/hiw?sslpassword={SECRET_CANARY}&sslmode=verify-full",
    f"host=db sslpassword={SECRET_CANARY} user=mon",
    f"host=db options='-c app.key={SECRET_CANARY}'",
    f"host=db oauth_client_secret={SECRET_CANARY}",
])
def test_redact_sslpassword_and_friends(dsn):
    assert SECRET_CANARY in str(conninfo_to_dict(dsn))
    assert SECRET_CANARY not in redact(dsn)
    assert conninfo_to_dict(redact(dsn))["host"] == "db"


def test_target_repr_shows_no_connection_secret(tmp_path):
    config = load(Overrides(dsn=f"host=db dbname=hiw sslpassword={SECRET_CANARY}"),
                  environ={})
    assert SECRET_CANARY not in repr(config.targets[0])
    assert SECRET_CANARY not in repr(config)


# --- options that cannot fit a collector's time budget -------------------------------------


def test_bloat_exact_timeout_longer_than_the_collector_timeout(tmp_path):
    error = load_error(tmp_path, """
        collectors:
          bloat: {exact: true, timeout: 5s, exact_timeout: 10s}
    """, dsn=DSN)
    (problem,) = all_problems(error)
    assert problem.path == "collectors.bloat.exact_timeout"
    assert "longer than the collector's timeout (5s)" in problem.problem
    assert "at most 5s" in problem.fix


def test_bloat_exact_budget_that_cannot_fit_the_interval(tmp_path):
    error = load_error(tmp_path, """
        collectors:
          bloat: {exact: true, interval: 1m, timeout: 20s, exact_budget: 50s}
    """, dsn=DSN)
    (problem,) = all_problems(error)
    assert problem.path == "collectors.bloat.exact_budget"
    assert "interval (60s)" in problem.problem
    assert "at most 40s" in problem.fix


@pytest.mark.parametrize("text", [
    "collectors:\n  bloat: {exact: true}\n",  # defaults fit
    "collectors:\n  bloat: {timeout: 5s, interval: 30s}\n",  # exact off: its options unused
    "collectors:\n  bloat: {enabled: false, exact: true, timeout: 5s}\n",
    "collectors:\n  bloat: {exact: true, interval: 1m, timeout: 10s, exact_timeout: 10s,"
    " exact_budget: 50s}\n",  # exactly fits
])
def test_bloat_exact_options_that_fit(tmp_path, text):
    load_file(write(tmp_path, text), dsn=DSN)


def test_budget_errors_exit_2_from_the_cli(tmp_path):
    path = write(tmp_path, """
        collectors:
          bloat: {exact: true, interval: 1m, timeout: 30s, exact_timeout: 45s,
                  exact_budget: 45s}
    """)
    result = subprocess.run([sys.executable, "-m", "hiw_monitor", "validate-config", path],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    err = result.stderr
    assert "collectors.bloat.exact_timeout" in err
    assert "collectors.bloat.exact_budget" in err
    assert "fix:" in err
    assert "Traceback" not in err


# --- fleets: file_sd, shard, target labels ---------------------------------------------


def test_file_sd_alone_is_a_fleet_and_its_globs_are_the_config_files(tmp_path):
    config = load_file(write(tmp_path, """
        file_sd:
          files: [targets/*.yaml, /etc/hiw/more.json]
    """))
    assert config.targets == ()
    assert config.file_sd is not None
    assert config.file_sd.files == (str(tmp_path / "targets" / "*.yaml"), "/etc/hiw/more.json")
    assert config.file_sd.refresh_interval == 30.0
    one = load_file(write(tmp_path, "file_sd: {files: a.yaml, refresh_interval: 2m}\n"))
    assert one.file_sd is not None
    assert (one.file_sd.files, one.file_sd.refresh_interval) == ((str(tmp_path / "a.yaml"),),
                                                                  120.0)


def test_a_dsn_replaces_targets_and_file_sd(tmp_path):
    config = load_file(write(tmp_path, "file_sd: {files: [t/*.yaml]}\n"), dsn=DSN)
    assert config.file_sd is None
    assert [t.name for t in config.targets] == ["db1:5433/hiw"]


@pytest.mark.parametrize(("yaml_text", "path", "words"), [
    ("file_sd: {}\n", "file_sd.files", "expected a list of file paths"),
    ("file_sd:\n", "file_sd", "expected a mapping"),
    ("file_sd: [a.yaml]\n", "file_sd", "expected a mapping"),
    ("file_sd: {files: []}\n", "file_sd.files", "expected a list of file paths"),
    ("file_sd: {files: [a.yaml, 3]}\n", "file_sd.files", "expected a list of file paths"),
    ("file_sd: {files: [a.yaml], refresh_interval: soon}\n", "file_sd.refresh_interval",
     "not a valid duration"),
    ("file_sd: {files: [a.yaml], refresh: 5s}\n", "file_sd.refresh", "unknown key"),
    ("shard: 3/3\n", "shard", "not below the shard count 3"),
    ("shard: 2\n", "shard", "expected INDEX/COUNT, got an integer"),
    ("targets: [{name: a, host: h, labels: {target: x}}]\n", "targets[0].labels.target",
     "reserved"),
    ("targets: [{name: a, host: h, labels: {__x: y}}]\n", "targets[0].labels.__x",
     "not a label name"),
    ("targets: [{name: a, host: h, labels: [x]}]\n", "targets[0].labels", "expected a mapping"),
])
def test_fleet_settings_are_checked(tmp_path, yaml_text, path, words):
    error = load_error(tmp_path, yaml_text, dsn=DSN if "targets" not in yaml_text else None)
    problem = next(p for p in all_problems(error) if p.path == path)
    assert words in problem.problem
    assert problem.fix


def test_shard_precedence_flag_env_file(tmp_path):
    path = write(tmp_path, "shard: 0/2\n")
    assert str(load_file(path, dsn=DSN).shard) == "0/2"
    assert str(load_file(path, {"HIW_MONITOR_SHARD": "hiw-monitor-1/2"}, dsn=DSN).shard) == "1/2"
    assert str(load_file(path, {"HIW_MONITOR_SHARD": "1/2"}, dsn=DSN, shard="2/3").shard) == "2/3"
    assert load_file(write(tmp_path, "{}\n", "none.yaml"), dsn=DSN).shard is None


@pytest.mark.parametrize("shard", ["3/3", "a/b", "0/0", "-1/2", "hiw-monitor/3", "1/2/3"])
def test_a_bad_shard_names_where_it_came_from(tmp_path, shard):
    path = write(tmp_path, f"shard: '{shard}'\n")
    for environ, flags, where in (({}, {}, "shard"), ({"HIW_MONITOR_SHARD": shard}, {},
                                                      "HIW_MONITOR_SHARD"),
                                  ({}, {"shard": shard}, "--shard")):
        with pytest.raises(ConfigError) as info:
            load_file(path, environ, dsn=DSN, **flags)
        assert paths(info.value) == [where]
        assert "INDEX/COUNT" in info.value.fix
        assert "hiw-monitor-2/3" in info.value.fix  # the StatefulSet form


@pytest.mark.parametrize(("args", "env", "where"), [
    (["--shard=3/3"], {}, "--shard: shard index 3 is not below the shard count 3"),
    ([], {"HIW_MONITOR_SHARD": "-1/2"}, "HIW_MONITOR_SHARD: '-1/2' is not INDEX/COUNT"),
])
def test_a_bad_shard_is_a_usage_error_from_the_cli(args, env, where):
    result = subprocess.run([sys.executable, "-m", "hiw_monitor", "once", "--dsn", DSN, *args],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, **env})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"hiw-monitor: configuration error: {where} (fix: ")
    assert "Traceback" not in result.stderr


def test_target_labels_are_info_labels_not_connection_settings(tmp_path):
    config = load_file(write(tmp_path, """
        targets:
          - {name: a, dsn: "postgresql://mon@db/hiw", labels: {team: core, tier: 1}}
    """))
    target = config.targets[0]
    assert target.labels == (("team", "core"), ("tier", "1"))
    assert "team" not in target.conninfo
    assert target.connection() == TargetConfig("a", target.conninfo)
