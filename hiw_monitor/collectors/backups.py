"""Backup health from the app's own backup tables (the DBA review's backup_health_status).

The default mapping is the review's schema: ``backup_configurations(id, backup_name, ...)``
and ``backup_execution_log(backup_config_id, status, start_time, end_time,
backup_size_bytes, ...)`` with ``status = 'completed'`` meaning success. Every table and
column name, the success and running values, and the optional columns (type, error
message, restore verification and its duration, an enabled flag) are options, so another
schema maps without code. Optional columns that do not exist are simply not used.

Where the tables are, whether this role may read them and which of the configured columns
exist is looked up once per connection (the plan: one catalog query for both tables);
when a table is missing, unreadable or lacks a required column, the collector is skipped
with the reason and its fix (the option to set, the GRANTs to run) and looks again after
``collect.REPLAN_SKIPPED_AFTER``, at a reconnect, or after a run that failed for such a
reason. The per-backup query is composed from that plan.

Ages are computed on the database clock (``now() - end_time``), so clock skew between the
agent and the database does not matter. ``timestamp without time zone`` columns are read
in the server's TimeZone, or in the ``timezone`` option when set. The last success is the
review's ``MAX(end_time)`` of the successful runs: a "completed" row without an end time
does not count. A last success that ends in the future (a clock or time-zone error in
the writer) has status ``future`` and its negative age is exported as it is.

A configuration whose name is NULL is labelled ``(unnamed, id <id>)``.

When a poll fails (busy, timeout, lock timeout, database down), the last good series
are served until they are stale, as for every collector. When the tables stay unreadable
(dropped, permission revoked) past that, the backups seen before keep being reported
with ``status="unknown"``: alerting on backups must never go quiet just because the data
disappeared.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric
from psycopg import sql

from hiw_monitor.analysis.backups import STATUSES, Thresholds, backup_status
from hiw_monitor.collectors.base import (
    Collector,
    Context,
    Option,
    PlanStep,
    Query,
    Rows,
    Step,
    VersionedSQL,
    gauge,
    number,
)
from hiw_monitor.errors import Reason, ReasonedError
from hiw_monitor.units import parse_duration

LABELS = ("backup_name", "type")
UNNAMED = "(unnamed, id {id})"  # backup_name of a configuration whose name is NULL
RUN_STATES = ("success", "failure", "running")

# option -> (table, required)
_COLUMN_OPTIONS: dict[str, tuple[str, bool]] = {
    "id_column": ("configurations", True),
    "name_column": ("configurations", True),
    "type_column": ("configurations", False),
    "enabled_column": ("configurations", False),
    "log_config_column": ("log", True),
    "status_column": ("log", True),
    "start_column": ("log", True),
    "end_column": ("log", True),
    "size_column": ("log", False),
    "error_column": ("log", False),
    "verified_column": ("log", False),
    "restore_duration_column": ("log", False),
}


def _parse_thresholds(raw: Mapping[str, Any]) -> dict[str, Thresholds]:
    """``{backup_name: {warning_after: 8d, critical_after: 9d}}`` -> Thresholds per name."""
    result = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not set(entry) <= {"warning_after", "critical_after"}:
            raise ValueError(f"{name!r}: expected warning_after and/or critical_after")
        try:
            warning = parse_duration(entry.get("warning_after", 24 * 3600))
            critical = parse_duration(entry.get("critical_after", 48 * 3600))
        except ValueError as exc:
            raise ValueError(f"{name!r}: {exc}") from None
        if critical < warning:
            raise ValueError(f"{name!r}: critical_after is shorter than warning_after")
        result[str(name)] = Thresholds(warning, critical)
    return result


def _identifier(value: str) -> str | None:
    return None if value == "" or value.replace("_", "").isalnum() else \
        "expected a plain SQL identifier (letters, digits, underscores) or empty"


OPTIONS: dict[str, Option] = {
    "schema": Option("str", "public", "schema of the backup tables", check=_identifier),
    "configurations_table": Option("str", "backup_configurations",
                                   "table listing the configured backups", check=_identifier),
    "log_table": Option("str", "backup_execution_log", "table with one row per backup run",
                        check=_identifier),
    "id_column": Option("str", "id", "configurations: primary key", check=_identifier),
    "name_column": Option("str", "backup_name", "configurations: backup name",
                          check=_identifier),
    "type_column": Option("str", "backup_type", "configurations: type (full, incremental, "
                          "...), optional", check=_identifier),
    "enabled_column": Option("str", "is_enabled", "configurations: boolean; disabled backups "
                             "are not monitored; optional", check=_identifier),
    "log_config_column": Option("str", "backup_config_id", "log: reference to the "
                                "configuration", check=_identifier),
    "status_column": Option("str", "status", "log: run status", check=_identifier),
    "start_column": Option("str", "start_time", "log: start timestamp", check=_identifier),
    "end_column": Option("str", "end_time", "log: end timestamp (NULL while running)",
                         check=_identifier),
    "size_column": Option("str", "backup_size_bytes", "log: size in bytes, optional",
                          check=_identifier),
    "error_column": Option("str", "error_message", "log: error text, optional (never "
                           "exported; only whether it is set)", check=_identifier),
    "verified_column": Option("str", "verified_restore", "log: boolean result of a restore "
                              "test, optional", check=_identifier),
    "restore_duration_column": Option("str", "restore_duration_seconds", "log: restore test "
                                      "duration in seconds, optional", check=_identifier),
    "success_value": Option("str", "completed", "status of a successful run"),
    "running_value": Option("str", "running", "status of a run in progress"),
    "warning_after": Option("duration", 24 * 3600.0, "age of the last success that is a "
                            "warning (default 24h)"),
    "critical_after": Option("duration", 48 * 3600.0, "age of the last success that is "
                             "critical (default 48h)"),
    "thresholds": Option("mapping", {}, "per backup name: {warning_after, critical_after}",
                         parse=_parse_thresholds),
    "average_over": Option("int", 10, "successful runs averaged for the size", minimum=1),
    "rpo_target": Option("duration", 24 * 3600.0, "recovery point objective (default 24h)"),
    "rto_target": Option("duration", 2 * 3600.0, "recovery time objective (default 2h)"),
    "timezone": Option("str", "", "zone of timestamp-without-time-zone columns (default: "
                       "the server's TimeZone)"),
}


@dataclass
class BackupsState:
    known: dict[str, str] = field(default_factory=dict)  # backup_name -> type label


def new_state() -> BackupsState:
    return BackupsState()


# --- plan and query -------------------------------------------------------------------------

# Both tables in one query, configurations first: whether the schema and the table exist,
# whether this role may use and read them, and their columns.
_TABLES = """
SELECT t.role, t.relname AS table,
       n.oid IS NOT NULL AS schema_exists,
       n.oid IS NOT NULL AND pg_catalog.has_schema_privilege(n.oid, 'USAGE') AS usage,
       c.oid IS NOT NULL AS table_exists,
       c.oid IS NOT NULL AND pg_catalog.has_table_privilege(c.oid, 'SELECT') AS can,
       current_user AS me,
       coalesce((SELECT pg_catalog.array_agg(a.attname::text) FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                '{}') AS columns
FROM (VALUES (1, 'configurations', %(configurations)s::text), (2, 'log', %(log)s::text))
     AS t(ord, role, relname)
LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = %(schema)s
LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.relname
                                AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
ORDER BY t.ord"""

# table role -> the option naming the table
_TABLE_OPTIONS = {"configurations": "configurations_table", "log": "log_table"}


def _tables_params(step: Step) -> dict[str, str]:
    o = step.options
    return {"schema": o["schema"], "configurations": o["configurations_table"],
            "log": o["log_table"]}


@dataclass(frozen=True)
class Plan:
    """Where the backup tables are on this server and which configured columns exist."""

    schema: str
    configurations: str  # table names
    log: str
    columns: Mapping[str, str | None]  # column option -> column, None when absent

    @property
    def verification(self) -> bool:
        return self.columns["verified_column"] is not None


def decide(rows: Mapping[str, Rows], step: Step) -> Plan:
    """The plan from the tables' facts, or why the collector cannot run, with the fix."""
    o = step.options
    present: dict[str, set[str]] = {}
    for row in rows["tables"]:
        option = _TABLE_OPTIONS[row["role"]]
        qualified = f"{o['schema']}.{o[option]}"
        if not row["schema_exists"] or not row["table_exists"]:
            raise ReasonedError(Reason(
                "undefined_table",
                f"table {qualified} does not exist; set collectors.backups.{option} (and "
                "schema) to the app's backup table"))
        if not row["usage"] or not row["can"]:
            raise ReasonedError(Reason(
                "permission_denied",
                f"role {row['me']!r} cannot read {qualified}; run: GRANT USAGE ON SCHEMA "
                f"{o['schema']} TO {row['me']}; GRANT SELECT ON {qualified} TO {row['me']};"))
        present[row["role"]] = set(row["columns"])
    columns: dict[str, str | None] = {}
    for option, (table, required) in _COLUMN_OPTIONS.items():
        name = o[option]
        if name and name in present[table]:
            columns[option] = name
        elif required:
            raise ReasonedError(Reason(
                "undefined_column",
                f"column {name!r} is missing in {o['schema']}.{o[_TABLE_OPTIONS[table]]}; "
                f"set collectors.backups.{option} to the right column"))
        else:
            columns[option] = None
    return Plan(o["schema"], o["configurations_table"], o["log_table"], columns)


def _backups(step: Step) -> sql.Composed:
    """The per-backup query, composed from the plan's columns (identifiers and literals,
    never text pasted into SQL)."""
    o, plan = step.options, step.plan
    assert isinstance(plan, Plan)
    col = {option: None if name is None else sql.Identifier(name)
           for option, name in plan.columns.items()}

    def log_col(option: str) -> sql.Composable:
        ident = col[option]
        return sql.SQL("l.{}").format(ident) if ident is not None else sql.SQL("NULL")

    ended = sql.SQL("coalesce(l.{}, l.{})::timestamptz").format(col["end_column"],
                                                                col["start_column"])
    end_time = sql.SQL("l.{}::timestamptz").format(col["end_column"])
    started = sql.SQL("l.{}::timestamptz").format(col["start_column"])
    success = sql.SQL("l.{} = {}").format(col["status_column"], sql.Literal(o["success_value"]))
    running = sql.SQL("l.{} = {}").format(col["status_column"], sql.Literal(o["running_value"]))
    log = sql.SQL("{}.{} l").format(sql.Identifier(plan.schema), sql.Identifier(plan.log))
    same = sql.SQL("l.{} = c.{}").format(col["log_config_column"], col["id_column"])
    enabled = sql.SQL("WHERE c.{} IS NOT FALSE").format(col["enabled_column"]) \
        if col["enabled_column"] is not None else sql.SQL("")
    type_expr = sql.SQL("c.{}::text").format(col["type_column"]) \
        if col["type_column"] is not None else sql.SQL("NULL::text")
    return sql.SQL("""
        SELECT c.{name}::text AS backup_name, c.{id}::text AS backup_id,
               {type_expr} AS backup_type,
               extract(epoch FROM s.ended)::float8 AS last_success,
               extract(epoch FROM now() - s.ended)::float8 AS age,
               s.size::float8 AS last_size,
               extract(epoch FROM s.ended - s.started)::float8 AS last_duration,
               a.avg_size::float8 AS average_size,
               f.failures AS failures_24h,
               r.status AS last_status, extract(epoch FROM r.started)::float8 AS last_run,
               r.has_error AS last_has_error,
               p.running, extract(epoch FROM now() - p.since)::float8 AS running_for,
               v.verified, v.restore_seconds::float8 AS restore_seconds,
               extract(epoch FROM now() - v.at)::float8 AS restore_age,
               extract(epoch FROM v.at)::float8 AS restore_at
        FROM {configs} c
        LEFT JOIN LATERAL (
            SELECT {end_time} AS ended, {started} AS started, {size} AS size FROM {log}
            WHERE {same} AND {success} AND l.{end} IS NOT NULL
            ORDER BY 1 DESC LIMIT 1) s ON true
        LEFT JOIN LATERAL (
            SELECT avg(x.size) AS avg_size FROM (
                SELECT {size} AS size FROM {log} WHERE {same} AND {success}
                ORDER BY {ended} DESC NULLS LAST LIMIT {average_over}) x) a ON true
        LEFT JOIN LATERAL (
            SELECT count(*) AS failures FROM {log}
            WHERE {same} AND NOT {success} AND NOT {running}
              AND {started} > now() - interval '24 hours') f ON true
        LEFT JOIN LATERAL (
            SELECT CASE WHEN {success} THEN 'success' WHEN {running} THEN 'running'
                        ELSE 'failure' END AS status,
                   {started} AS started, {error} IS NOT NULL AS has_error
            FROM {log} WHERE {same} ORDER BY {started} DESC NULLS LAST LIMIT 1) r ON true
        LEFT JOIN LATERAL (
            SELECT count(*) AS running, min({started}) AS since FROM {log}
            WHERE {same} AND {running} AND l.{end} IS NULL) p ON true
        LEFT JOIN LATERAL (
            SELECT {verified_col}::boolean AS verified, {restore}::float8 AS restore_seconds,
                   {ended} AS at
            FROM {log} WHERE {same} AND {verified_col} IS NOT NULL
            ORDER BY {ended} DESC NULLS LAST LIMIT 1) v ON {has_verified}
        {enabled}
        ORDER BY 1""").format(
        name=col["name_column"], id=col["id_column"], type_expr=type_expr,
        end_time=end_time,
        configs=sql.SQL("{}.{}").format(sql.Identifier(plan.schema),
                                        sql.Identifier(plan.configurations)),
        ended=ended, started=started, size=log_col("size_column"), log=log, same=same,
        success=success, running=running, average_over=sql.Literal(o["average_over"]),
        error=log_col("error_column"), end=col["end_column"],
        verified_col=log_col("verified_column"), restore=log_col("restore_duration_column"),
        has_verified=sql.Literal(plan.verification), enabled=enabled)


def session(options: Mapping[str, Any]) -> dict[str, str]:
    """Timestamps without time zone are read in the ``timezone`` option, when set."""
    return {"TimeZone": options["timezone"]} if options["timezone"] else {}


PLAN = PlanStep({"tables": Query(VersionedSQL({130000: _TABLES}), params=_tables_params)},
                decide)
QUERIES: dict[str, Query] = {"backups": Query(_backups)}


# --- transform ------------------------------------------------------------------------------


def _status_family(known: Mapping[str, str], statuses: Mapping[str, str], target: str
                   ) -> Metric:
    family = gauge("hiw_backup_status",
                   "Backup health, one-hot: healthy (< warning_after), warning, critical "
                   "(>= critical_after or never succeeded), unknown (backup tables unreadable "
                   "past stale_after), future (the last success ends after now).",
                   [*LABELS, "status"])
    for name, kind in sorted(known.items()):
        for status in STATUSES:
            family.add_metric([target, name, kind, status],
                              1.0 if statuses[name] == status else 0.0)
    return family


def backup_label(row: Mapping[str, Any]) -> str:
    """The backup_name label: the name, or UNNAMED with the configuration's id.

    >>> backup_label({"backup_name": "nightly", "backup_id": "1"})
    'nightly'
    >>> backup_label({"backup_name": None, "backup_id": "7"})
    '(unnamed, id 7)'
    """
    name = row["backup_name"]
    return str(name) if name is not None else UNNAMED.format(id=row["backup_id"])


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    o, t = ctx.options, ctx.target
    state: BackupsState = ctx.state
    per_name: Mapping[str, Thresholds] = o["thresholds"]
    default = Thresholds(o["warning_after"], o["critical_after"])
    backups = rows["backups"]
    plan: Plan = ctx.plan
    verification = plan.verification

    def fam(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
        return gauge(name, doc, [*LABELS, *extra])

    last = fam("hiw_backup_last_success_timestamp_seconds",
               "End of the newest successful run (absent when it never succeeded).")
    age = fam("hiw_backup_age_seconds",
              "Age of the newest successful run on the database clock (absent when never; "
              "negative when it ends in the future).")
    future = fam("hiw_backup_last_success_in_future",
                 "1 when the newest successful run ends after the database's now (a clock "
                 "or time-zone error in the writer): its status is future.")
    never = fam("hiw_backup_never_succeeded", "1 when the backup has no successful run.")
    warn = fam("hiw_backup_warning_threshold_seconds", "Age at which the status is warning.")
    crit = fam("hiw_backup_critical_threshold_seconds", "Age at which the status is critical.")
    size = fam("hiw_backup_last_size_bytes", "Size of the newest successful run.")
    duration = fam("hiw_backup_last_duration_seconds",
                   "Duration (end - start) of the newest successful run.")
    average = fam("hiw_backup_average_size_bytes",
                  "Mean size of the last `average_over` successful runs.")
    failures = fam("hiw_backup_failures_24h", "Failed runs that started in the last 24 h.")
    outcome = fam("hiw_backup_last_run_status",
                  "Outcome of the newest run, one-hot: success, failure, running.", ("status",))
    last_run = fam("hiw_backup_last_run_timestamp_seconds", "Start of the newest run.")
    running = fam("hiw_backup_running", "1 while a run is in progress (running, no end).")
    running_for = fam("hiw_backup_running_seconds",
                      "How long the oldest run in progress has been running (0 when none).")
    restore_age = fam("hiw_backup_restore_test_age_seconds",
                      "Age of the newest restore verification.")
    restore_ok = fam("hiw_backup_restore_test_success",
                     "1 when the newest restore verification succeeded.")
    restore_time = fam("hiw_backup_restore_test_duration_seconds",
                       "Duration of the newest restore verification.")
    rto_met = fam("hiw_backup_rto_met",
                  "1 when the newest restore verification succeeded within rto_target.")
    statuses: dict[str, str] = {}
    current: dict[str, str] = {}
    newest_age: float | None = None
    for row in backups:
        name, kind = backup_label(row), str(row["backup_type"] or "")
        labels = [t, name, kind]
        current[name] = kind
        thresholds = per_name.get(name, default)
        statuses[name] = backup_status(row["age"], thresholds)
        warn.add_metric(labels, thresholds.warning_after)
        crit.add_metric(labels, thresholds.critical_after)
        never.add_metric(labels, 1.0 if row["last_success"] is None else 0.0)
        future.add_metric(labels, 1.0 if statuses[name] == "future" else 0.0)
        if row["last_success"] is not None:
            last.add_metric(labels, row["last_success"])
            age.add_metric(labels, row["age"])  # negative when in the future: not hidden
            if row["age"] >= 0:  # a success in the future proves no recovery point
                newest_age = row["age"] if newest_age is None else min(newest_age, row["age"])
            if row["last_size"] is not None:
                size.add_metric(labels, row["last_size"])
            if row["last_duration"] is not None:
                duration.add_metric(labels, max(0.0, row["last_duration"]))
            if row["average_size"] is not None:
                average.add_metric(labels, row["average_size"])
        failures.add_metric(labels, float(row["failures_24h"]))
        if row["last_status"] is not None:
            for state_name in RUN_STATES:
                outcome.add_metric([*labels, state_name],
                                   1.0 if row["last_status"] == state_name else 0.0)
            last_run.add_metric(labels, number(row["last_run"]))
        running.add_metric(labels, 1.0 if row["running"] else 0.0)
        running_for.add_metric(labels, max(0.0, row["running_for"] or 0.0))
        if row["verified"] is not None:
            restore_age.add_metric(labels, max(0.0, row["restore_age"]))
            restore_ok.add_metric(labels, 1.0 if row["verified"] else 0.0)
            if row["restore_seconds"] is not None:
                restore_time.add_metric(labels, row["restore_seconds"])
            rto_met.add_metric(labels, 1.0 if row["verified"] and row["restore_seconds"]
                               is not None and row["restore_seconds"] <= o["rto_target"]
                               else 0.0)
    state.known = current
    yield _status_family(current, statuses, t)
    yield from (last, age, never, future, warn, crit, size, duration, average, failures,
                outcome, last_run, running, running_for)

    configured = gauge("hiw_backups_configured", "Backups configured (and enabled).")
    configured.add_metric([t], float(len(current)))
    rpo = gauge("hiw_backup_rpo_target_seconds", "Recovery point objective (rpo_target).")
    rpo.add_metric([t], o["rpo_target"])
    newest = gauge("hiw_backup_newest_success_age_seconds",
                   "Age of the newest successful backup of any configuration (successes "
                   "that end in the future do not count).")
    rpo_met = gauge("hiw_backup_rpo_met",
                    "1 when the newest successful backup is younger than rpo_target.")
    if newest_age is not None:
        newest.add_metric([t], newest_age)
    rpo_met.add_metric([t], 1.0 if newest_age is not None and newest_age < o["rpo_target"]
                       else 0.0)
    rto = gauge("hiw_backup_rto_target_seconds", "Recovery time objective (rto_target).")
    rto.add_metric([t], o["rto_target"])
    verification_family = gauge(
        "hiw_backup_restore_verification_configured",
        "1 when the log has a restore-verification column; 0 means no restore is ever "
        "verified (the review's 'automated backup restore testing' gap).")
    verification_family.add_metric([t], 1.0 if verification else 0.0)
    yield from (configured, rpo, newest, rpo_met, rto, verification_family)
    if verification:
        yield from (restore_age, restore_ok, restore_time, rto_met)


def on_failure(target: str, state: BackupsState, options: Mapping[str, Any],
               reason: str) -> Iterator[Metric]:
    """Once the last good series are stale and runs still fail: every backup seen
    before is ``unknown`` (``Sample.served`` decides when this is shown)."""
    yield _status_family(state.known, dict.fromkeys(state.known, "unknown"), target)


COLLECTOR = Collector(
    name="backups",
    help="the app's backup tables: status per backup, sizes, failures, runs, RPO/RTO",
    interval=60.0,
    timeout=10.0,
    queries=QUERIES,
    transform=transform,
    options=OPTIONS,
    plan=PLAN,
    session=session,
    new_state=new_state,
    on_failure=on_failure,
)
