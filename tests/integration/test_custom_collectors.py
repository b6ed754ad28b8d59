"""User-defined SQL collectors on real PostgreSQL 15 and 18: the two shipped examples end
to end (run_collection and a running agent's /metrics), every bad input only the server
can reveal (each fails alone, with its reason, while the others keep running), the
connection policy they cannot weaken, and the cardinality cap."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HIW_DB
from helpers import http_get, running_agent, value, wait_for
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from hiw_monitor.collect import plan_of, run_collection
from hiw_monitor.config import Config, Overrides, load
from hiw_monitor.exposition import self_metrics
from hiw_monitor.snapshot import Sample, SnapshotStore
from hiw_monitor.target import Target

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "config" / "custom"
# A monitoring role as the README describes it, plus the GRANT the examples document.
READER, READER_PASSWORD = "hiw_custom_reader", "custom-reader-pw"


def grant_reader(server) -> str:
    """Create the reader role on ``server`` (once) and return its DSN, password included."""
    with server.admin() as admin:
        admin.execute(f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER}') THEN
                CREATE ROLE {READER} LOGIN PASSWORD '{READER_PASSWORD}';
            END IF; END $$""")
        admin.execute(f"GRANT pg_monitor TO {READER}")
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {READER}")
        admin.execute(f"GRANT SELECT ON public.job_queue TO {READER}")
    return server.cluster.dsn(HIW_DB, user=READER, password=READER_PASSWORD)


def write_config(tmp_path: Path, declarations: str = "", *, examples: bool = True) -> str:
    text = f"custom_collectors_dir: {EXAMPLES}\n" if examples else ""
    if declarations:
        text += "custom_collectors:\n" + declarations
    path = tmp_path / "hiw.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def config_for(server, tmp_path: Path, declarations: str = "", *, examples: bool = True,
               dsn: str | None = None) -> Config:
    return load(Overrides(config=write_config(tmp_path, declarations, examples=examples),
                          dsn=dsn or grant_reader(server), target_name=server.version),
                environ={})


class Runner:
    """One target and one store; runs the config's collectors by name, each with its state."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.target = Target(config.targets[0], config.connection)
        self.store = SnapshotStore()
        self.states = {name: c.new_state() for name, c in config.custom.items()
                       if c.new_state is not None}
        for name, settings in config.collectors.items():
            self.store.register(self.target.name, self.target.redacted, name,
                                settings.interval, settings.stale_after)

    def run(self, name: str) -> Sample:
        collector = self.config.custom[name]
        return run_collection(self.target, collector, self.config.collectors[name],
                              self.store, self.states.get(name))

    def up(self) -> dict[str, tuple[float, str | None]]:
        """collector -> (hiw_collector_up, reason) from the self-metrics."""
        _, targets, samples = self.store.view()
        families = {f.name: f for f in self_metrics(targets, samples, 0.0)}
        reasons = {s.labels["collector"]: s.labels["reason"]
                   for s in families["hiw_collector_last_error_info"].samples}
        return {s.labels["collector"]: (s.value, reasons.get(s.labels["collector"]))
                for s in families["hiw_collector_up"].samples}

    def close(self) -> None:
        self.target.close()


@pytest.fixture
def runner_for(pg, tmp_path):
    made: list[Runner] = []

    def make(declarations: str = "", **kwargs) -> Runner:
        runner = Runner(config_for(pg, tmp_path, declarations, **kwargs))
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


def series(sample: Sample, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted((k, v) for k, v in s.labels.items() if k != "target")): s.value
            for f in sample.families for s in f.samples if s.name == name}


# --- the two examples ------------------------------------------------------------------------

BACKLOG = """
    SELECT j.job_type, count(*) AS pending,
           count(*) FILTER (WHERE j.scheduled_at <= now()) AS due,
           coalesce(extract(epoch FROM now() - min(j.scheduled_at)
                    FILTER (WHERE j.scheduled_at <= now()))::float8, 0) AS age
    FROM public.job_queue j WHERE j.status = 'pending' GROUP BY j.job_type"""


def oracle(pg) -> tuple[dict[str, dict], dict]:
    """The backlog per job type and the refresh facts, computed independently."""
    with pg.admin() as admin:
        backlog = {r[0]: {"pending": r[1], "due": r[2], "age": r[3]}
                   for r in admin.execute(BACKLOG).fetchall()}
        done = admin.execute(
            "SELECT extract(epoch FROM now() - max(finished_at))::float8 FROM public.job_queue"
            " WHERE job_type = 'refresh_analytics_summary' AND status = 'done'").fetchone()
        failed = admin.execute(
            "SELECT count(*) FROM public.job_queue WHERE job_type = 'refresh_analytics_summary'"
            " AND status = 'failed' AND finished_at > now() - interval '1 day'").fetchone()
    return backlog, {"age": done[0], "failed": failed[0]}


def test_the_examples_end_to_end(pg, runner_for):
    runner = runner_for()
    assert set(runner.config.custom) == {"analytics_summary", "job_queue"}
    backlog_before, refresh_before = oracle(pg)
    queue = runner.run("job_queue")
    freshness = runner.run("analytics_summary")
    backlog_after, refresh_after = oracle(pg)
    assert queue.error is None, queue.error
    assert freshness.error is None, freshness.error

    # the backlog: exactly the pending jobs per type; ages between the two oracle readings
    assert backlog_before.keys() == backlog_after.keys()
    pending = series(queue, "hiw_custom_job_queue_pending")
    due = series(queue, "hiw_custom_job_queue_due")
    ages = series(queue, "hiw_custom_job_queue_oldest_pending_age_seconds")
    assert set(pending) == {(("job_type", t),) for t in backlog_after}
    for job_type, before in backlog_before.items():
        key = (("job_type", job_type),)
        assert pending[key] == before["pending"] == backlog_after[job_type]["pending"]
        assert before["due"] <= due[key] <= backlog_after[job_type]["due"]
        if before["due"]:  # the oldest due job stays the oldest while time passes
            assert before["age"] <= ages[key] <= backlog_after[job_type]["age"]
    assert sum(pending.values()) == 100  # the demo seed's pending jobs

    # freshness: the last completed refresh job, the review's 15 minutes, the view's state
    assert refresh_before["age"] <= value(
        freshness, "hiw_custom_analytics_summary_last_refresh_age_seconds") \
        <= refresh_after["age"]
    assert value(freshness, "hiw_custom_analytics_summary_refresh_target_seconds") == 900
    assert value(freshness, "hiw_custom_analytics_summary_populated") == 1
    assert refresh_after["failed"] <= value(
        freshness, "hiw_custom_analytics_summary_failed_refreshes_last_day") \
        <= refresh_before["failed"]

    for sample in (queue, freshness):
        dropped = series(sample, "hiw_custom_series_dropped_total")
        assert set(dropped.values()) == {0.0}
        assert {dict(k)["reason"] for k in dropped} == {"max_series", "null_label",
                                                        "duplicate"}
    planned = plan_of(runner.target, runner.config.custom["job_queue"])
    assert planned is not None
    assert planned.plan.summary() == "sql for every version; table public.job_queue readable"


def test_the_examples_through_the_running_agent_beside_a_broken_one(pg, tmp_path):
    broken = """
      - name: broken
        sql: SELEC 1 AS n
        columns: {n: gauge}
"""
    config = config_for(pg, tmp_path, broken)
    with running_agent(config) as run:
        for name in ("job_queue", "analytics_summary", "broken", "connections"):
            wait_for(lambda n=name: run.value("hiw_collector_runs_total", collector=n),
                     what=f"a run of {name}")
        body = http_get(run.url + "/metrics",
                        {"Accept": "application/openmetrics-text; version=1.0.0"}).text
    families = {f.name: f for f in text_string_to_metric_families(body)}  # strict parser
    up = {s.labels["collector"]: s.value for s in families["hiw_collector_up"].samples}
    assert up["job_queue"] == up["analytics_summary"] == up["connections"] == 1
    assert up["broken"] == 0
    reasons = {(s.labels["collector"], s.labels["reason"])
               for s in families["hiw_collector_last_error_info"].samples}
    assert ("broken", "syntax_error") in reasons
    pending = families["hiw_custom_job_queue_pending"]
    assert pending.type == "gauge"
    assert sum(s.value for s in pending.samples) == 100
    assert {s.labels["target"] for s in pending.samples} == {pg.version}
    age = families["hiw_custom_job_queue_oldest_pending_age_seconds"]
    assert age.unit == "seconds"
    freshness = families["hiw_custom_analytics_summary_last_refresh_age_seconds"]
    assert freshness.samples[0].value > 0
    dropped = families["hiw_custom_series_dropped"]
    assert dropped.type == "counter"
    assert {s.labels["collector"] for s in dropped.samples} == {"job_queue",
                                                                 "analytics_summary"}


# --- what only the server knows: each fails alone, with its reason -----------------------------

BAD = """
  - {name: syntax, sql: "SELEC 1 AS n", columns: {n: gauge}}
  - {name: writes, sql: "INSERT INTO public.job_queue (job_type) VALUES ('x') RETURNING id AS n",
     columns: {n: gauge}}
  - {name: locks, sql: "SELECT 1 AS n FROM public.job_queue FOR UPDATE", columns: {n: gauge}}
  - {name: extra_column, sql: "SELECT 1 AS n, 2 AS extra", columns: {n: gauge}}
  - {name: no_rows_wrong_column, sql: "SELECT 1 AS wrong WHERE false", columns: {n: gauge}}
  - {name: same_name_twice, sql: "SELECT 1 AS n, 2 AS n", columns: {n: gauge}}
  - {name: text_value, sql: "SELECT 'secret-value'::text AS n", columns: {n: gauge}}
  - {name: bad_cast, sql: "SELECT 'secret-value'::int AS n", columns: {n: gauge}}
  - {name: slow, sql: "SELECT 1 AS n FROM pg_sleep(60)", timeout: 1s, columns: {n: gauge}}
  - {name: missing_table, table: public.nowhere, sql: "SELECT 1 AS n", columns: {n: gauge}}
  - {name: missing_extension, extension: pg_trgm, sql: "SELECT 1 AS n", columns: {n: gauge}}
  - {name: standby, standby_only: true, sql: "SELECT 1 AS n", columns: {n: gauge}}
  - name: old_servers_only
    sql: [{max_version: "13", sql: "SELECT 1 AS n"}]
    columns: {n: gauge}
  - {name: fine, sql: "SELECT 1 AS n", columns: {n: gauge}}
"""
EXPECTED = {
    "syntax": ("syntax_error", 'syntax error at or near "SELEC"'),
    "writes": ("read_only", "cannot execute INSERT in a read-only transaction"),
    "locks": ("read_only", "SELECT FOR UPDATE in a read-only transaction"),
    "extra_column": ("columns_mismatch", "not declared extra (the query returned: n, extra)"),
    "no_rows_wrong_column": ("columns_mismatch", "missing n; not declared wrong"),
    "same_name_twice": ("columns_mismatch", "returned twice n (the query returned: n, n)"),
    "text_value": ("not_numeric", "column n returned text, not a number"),
    "bad_cast": ("sqlstate_22p02", "InvalidTextRepresentation in the query"),
    "slow": ("timeout", "statement timeout"),
    "missing_table": ("undefined_table", "table public.nowhere does not exist"),
    "missing_extension": ("extension_missing", "CREATE EXTENSION pg_trgm;"),
    "standby": ("not_standby", "this server is a primary"),
    "old_servers_only": ("unsupported_version", "the declaration covers before 13"),
}


def test_bad_input_fails_alone_with_a_clear_reason(pg, runner_for):
    runner = runner_for(BAD, examples=False)
    with pg.admin() as admin:
        jobs_before = admin.execute("SELECT count(*) FROM public.job_queue").fetchone()[0]
    with capture_logs() as logs:
        outcomes = {name: runner.run(name) for name in runner.config.custom}
        again = runner.run("missing_table")
    for name, (code, needle) in EXPECTED.items():
        error = outcomes[name].error
        assert error is not None, name
        assert (name, error.code) == (name, code), error.text
        assert needle in error.text, (name, error.text)
        assert "secret-value" not in error.text  # row values never reach logs or pages
    assert outcomes["fine"].error is None
    assert value(outcomes["fine"], "hiw_custom_fine_n") == 1
    assert again.error is not None
    assert again.error.code == "undefined_table"
    up = runner.up()
    assert up["fine"] == (1.0, None)
    assert {name: up[name] for name in EXPECTED} == {
        name: (0.0, code) for name, (code, _) in EXPECTED.items()}
    skipped = [e for e in logs if e["event"] == "collector_planned"
               and e["collector"] == "missing_table"]
    assert [e["outcome"] for e in skipped] == ["skipped"]  # once, not at every run
    assert "secret-value" not in repr(logs)
    with pg.admin() as admin:  # the write was refused
        assert admin.execute("SELECT count(*) FROM public.job_queue").fetchone()[0] \
            == jobs_before


def test_a_table_the_role_may_not_read_names_the_grant(pg, runner_for):
    """hiw_monitor, as the demo schema creates it, may not read the facilitators."""
    runner = runner_for("""
  - name: facilitators
    table: public.facilitators
    sql: SELECT count(*) AS n FROM public.facilitators
    columns: {n: gauge}
""", examples=False, dsn=pg.monitor_dsn() + " password=monitor-test-pw")
    sample = runner.run("facilitators")
    assert sample.error is not None
    assert sample.error.code == "permission_denied"
    assert "GRANT SELECT ON public.facilitators TO hiw_monitor;" in sample.error.text


def test_the_examples_need_only_the_job_queue_scheduling_columns(pg, runner_for):
    """The demo role holds SELECT on four columns of job_queue (never payload or
    last_error), as README's grants say: enough for both examples."""
    runner = runner_for(examples=True, dsn=pg.monitor_dsn() + " password=monitor-test-pw")
    for name in ("job_queue", "analytics_summary"):
        sample = runner.run(name)
        assert sample.error is None, (name, sample.error)
    with pg.admin() as admin:
        pending = admin.execute(
            "SELECT count(*) FROM public.job_queue WHERE status = 'pending'").fetchone()[0]
    exported = runner.run("job_queue")
    total = sum(s.value for f in exported.families for s in f.samples
                if s.name == "hiw_custom_job_queue_pending")
    assert total == pending


def test_sql_is_chosen_by_server_version(pg, runner_for):
    runner = runner_for("""
  - name: versioned
    sql:
      - {max_version: "16", sql: "SELECT 15 AS major"}
      - {min_version: "16", sql: "SELECT 16 AS major"}
    columns: {major: gauge}
""", examples=False)
    sample = runner.run("versioned")
    assert sample.error is None, sample.error
    assert value(sample, "hiw_custom_versioned_major") == (15 if pg.major < 16 else 16)


def test_session_settings_do_not_outlive_a_collection(pg, runner_for):
    """A statement that changes the session (SET, set_config(..., false), SET ROLE) cannot
    leave the connection read-write, or with other timeouts, for the next collection."""
    runner = runner_for("""
  - {name: set_off, sql: "SET default_transaction_read_only = off", columns: {n: gauge}}
  - name: set_config_off
    sql: >-
      SELECT length(pg_catalog.set_config('default_transaction_read_only', 'off', false))
             + length(pg_catalog.set_config('lock_timeout', '0', false)) AS n
    columns: {n: gauge}
  - name: set_role
    sql: "SELECT length(pg_catalog.set_config('role', 'pg_monitor', false)) AS n"
    columns: {n: gauge}
  - name: policy
    sql: >-
      SELECT (current_setting('default_transaction_read_only') = 'on')::int AS read_only,
             (current_setting('lock_timeout') <> '0')::int AS lock_timeout,
             (current_user = session_user)::int AS own_role
    columns: {read_only: gauge, lock_timeout: gauge, own_role: gauge}
  - {name: writes, sql: "INSERT INTO public.job_queue (job_type) VALUES ('x') RETURNING id AS n",
     columns: {n: gauge}}
""", examples=False)
    first = runner.run("set_off")
    assert first.error is not None
    assert first.error.code == "columns_mismatch"
    assert "returned no result set" in first.error.text
    assert runner.run("set_config_off").error is None
    assert runner.run("set_role").error is None
    policy = runner.run("policy")
    assert policy.error is None, policy.error
    assert {f.name: f.samples[0].value for f in policy.families if f.samples
            and f.name.startswith("hiw_custom_policy")} == {
        "hiw_custom_policy_read_only": 1, "hiw_custom_policy_lock_timeout": 1,
        "hiw_custom_policy_own_role": 1}
    writes = runner.run("writes")
    assert writes.error is not None
    assert writes.error.code == "read_only"


def test_the_cap_and_null_labels_bound_the_series_counted_and_logged_once(pg, runner_for):
    runner = runner_for("""
  - name: many
    max_series: 10
    sql: >-
      SELECT CASE WHEN g % 5 = 0 THEN NULL ELSE g::text END AS k, g AS n
      FROM generate_series(1, 30) AS g ORDER BY g
    columns: {k: label, n: gauge}
""", examples=False)
    with capture_logs() as logs:
        first = runner.run("many")
        second = runner.run("many")
    assert first.error is None, first.error
    kept = series(second, "hiw_custom_many_n")
    assert sorted(int(dict(k)["k"]) for k in kept) == [1, 2, 3, 4, 6, 7, 8, 9, 11, 12]
    dropped = {dict(k)["reason"]: v for k, v in
               series(second, "hiw_custom_series_dropped_total").items()}
    # per run: 6 NULL labels (5, 10, ... 30), then 14 beyond the first 10 label sets
    assert dropped == {"null_label": 12, "max_series": 28, "duplicate": 0}
    events = [e for e in logs if e["event"] == "custom_series_dropped"]
    assert len(events) == 1
    assert (events[0]["dropped_null_label"], events[0]["dropped_max_series"]) == (6, 14)
    assert runner.up()["many"] == (1.0, None)
