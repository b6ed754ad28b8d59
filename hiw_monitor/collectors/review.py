"""The DBA review's checks that are evaluated from the catalog and from counts (see
``hiw_monitor/review/checks.py`` for the table of every check, docs/review.md for the
rules and GRANTs): row-level security, personal-data column names, retention, the audit
log, SSL, SCRAM, the password trigger, superuser sessions, the analytics materialized
view, the job queue, tables never analyzed and data growth.

Never row values, never query text: the queries return counts, ages and catalog names.
The queries on the application's tables run each in its own savepoint and timeout
(``Target.probe``), so a missing GRANT, a policy that refuses the role, a lock or a slow
count makes only that check ``unknown`` (with the GRANT to add), never the collection.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prometheus_client.core import GaugeMetricFamily, Metric
from psycopg import sql

from hiw_monitor.collectors.base import (
    Collector,
    Context,
    Option,
    Probe,
    Query,
    Rows,
    Step,
    VersionedSQL,
    gauge,
    merge_databases,
)
from hiw_monitor.review.checks import BY_ID, CHECKS, SQL_CHECKS
from hiw_monitor.review.model import STATUSES, Finding, Status, finding
from hiw_monitor.units import format_duration

DAY = 86400.0
MONTH = 30 * DAY
MB = 1_000_000
_NAME = re.compile(r"^[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)?$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def _relation(value: str) -> str | None:
    return None if _NAME.match(value) else \
        f"{value!r}: expected [schema.]table in lower-case letters, digits and underscores"


def _relations(values: Sequence[str]) -> str | None:
    return next((p for p in map(_relation, values) if p), None)


def _patterns(values: Sequence[str]) -> str | None:
    for value in values:
        try:
            re.compile(value)
        except re.error as exc:
            return f"{value!r} is not a regular expression: {exc}"
    return None


def _check_ids(values: Sequence[str]) -> str | None:
    unknown = sorted(set(values) - set(BY_ID))
    return f"unknown check id(s) {', '.join(unknown)}; known: {', '.join(BY_ID)}" \
        if unknown else None


def _school_hours(value: str) -> str | None:
    match = _HOURS.match(value)
    if not match:
        return f"{value!r}: expected HH:MM-HH:MM, e.g. 07:00-17:00"
    h1, m1, h2, m2 = map(int, match.groups())
    if not (h1 * 60 + m1 < h2 * 60 + m2 <= 24 * 60) or m1 > 59 or m2 > 59:
        return f"{value!r}: the start must come before the end, within one day (00:00-24:00)"
    return None


def _days(values: Sequence[str]) -> str | None:
    wrong = [v for v in values if v not in _DAYS]
    return f"unknown day(s) {', '.join(wrong)}; use {', '.join(_DAYS)}" if wrong else None


def _timezone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"{value!r} is not a time zone name (e.g. UTC, America/New_York)"
    return None


OPTIONS: dict[str, Option] = {
    "disabled_checks": Option("str_list", [], "check ids to turn off (they are not "
                              "evaluated, exported or scored)", check=_check_ids),
    "sensitive_tables": Option(
        "str_list", ["public.facilitators", "public.classrooms", "public.student_sessions",
                     "public.student_progress"],
        "tables that must have row-level security enabled with a policy", check=_relations),
    "force_rls_tables": Option("str_list", [], "tables whose owner must not bypass RLS "
                               "(FORCE ROW LEVEL SECURITY)", check=_relations),
    "student_tables": Option("str_list", ["public.student_sessions", "public.student_progress"],
                             "tables about students: no column named like personal data",
                             check=_relations),
    "pii_patterns": Option("str_list", ["name", "e_?mail", "birth", "dob", "address", "phone"],
                           "regular expressions (case-insensitive) for personal-data column "
                           "names", check=_patterns),
    "retention": Option("duration", 730 * DAY, "how long student sessions may be kept",
                        minimum=DAY),
    "retention_table": Option("str", "public.student_sessions", "table under retention",
                              check=_relation),
    "retention_column": Option("str", "created_at", "its creation time column"),
    "retention_count_limit": Option("int", 10000, "count overdue rows up to this many",
                                    minimum=1),
    "audit_table": Option("str", "public.audit_log", "the audit log (id, table_name, "
                          "created_at)", check=_relation),
    "audit_max_age": Option("duration", DAY, "the newest audit entry may be this old"),
    "retention_job_marker": Option("str", "retention_policy", "audit_log.table_name of the "
                                   "retention job's batches"),
    "audit_scan_limit": Option("int", 100000, "newest audit entries searched for the "
                               "retention job's last batch", minimum=1),
    "password_trigger_table": Option("str", "public.facilitators", "table of the password "
                                     "complexity trigger", check=_relation),
    "password_trigger": Option("str", "trigger_validate_password", "its trigger name"),
    "superuser_allowed_applications": Option(
        "str_list", ["^psql$", "^pg_dump", "^pg_restore$", "^pg_basebackup$",
                     "^pgbench$", "^pg_repack"],
        "application_name patterns of superuser sessions that are administrators, not the "
        "application", check=_patterns),
    "app_roles": Option("str_list", [], "roles the application connects as: any of them "
                        "being a superuser fails the check even when not connected"),
    "matview": Option("str", "public.classroom_analytics_summary", "the analytics "
                      "materialized view", check=_relation),
    "matview_max_age": Option("duration", 15 * 60.0, "refreshed at least this often in "
                              "school hours"),
    "matview_refresh_job": Option("str", "refresh_analytics_summary", "job_queue.job_type of "
                                  "its refresh job (empty: only refreshes the agent sees)"),
    "school_hours": Option("str", "07:00-17:00", "school hours, HH:MM-HH:MM",
                           check=_school_hours),
    "school_days": Option("str_list", ["mon", "tue", "wed", "thu", "fri"], "school days",
                          check=_days),
    "school_timezone": Option("str", "UTC", "time zone of school_hours", check=_timezone),
    "job_table": Option("str", "public.job_queue", "the job queue (job_type, status, "
                        "scheduled_at, finished_at)", check=_relation),
    "job_backlog_warn": Option("int", 1000, "pending jobs: warn above", minimum=0),
    "job_backlog_fail": Option("int", 10000, "pending jobs: fail above", minimum=0),
    "job_age_warn": Option("duration", 15 * 60.0, "oldest due pending job: warn above"),
    "job_age_fail": Option("duration", 3600.0, "oldest due pending job: fail above"),
    "analyze_min_rows": Option("int", 1000, "tables with at least this many rows need "
                               "statistics", minimum=0),
    "growth_baseline": Option("float", 500.0 * MB, "expected data growth, bytes per 30 days",
                              minimum=1.0),
    "growth_warn_factor": Option("float", 2.0, "warn above this many times the baseline",
                                 minimum=1.0),
    "growth_fail_factor": Option("float", 4.0, "fail above this many times the baseline",
                                 minimum=1.0),
    "growth_window": Option("duration", 6 * 3600.0, "without backup sizes: the agent's own "
                            "window of database sizes needed before judging growth"),
    "probe_timeout": Option("duration", 5.0, "each count on an application table"),
    # read by the health score (metric checks), kept here with the review's other knobs
    "connection_baseline": Option("float", 0.6, "peak connection use: warn above (the "
                                  "review's 60 %)", minimum=0.0, maximum=1.0),
    "connection_limit": Option("float", 0.8, "peak connection use: fail above",
                               minimum=0.0, maximum=1.0),
    "peak_window": Option("duration", DAY, "window of the connection peak"),
    "availability_target": Option("float", 0.9995, "availability SLA", minimum=0.0,
                                  maximum=1.0),
    "xid_warn": Option("float", 0.5, "wraparound ratio: warn above", minimum=0.0, maximum=1.0),
    "xid_fail": Option("float", 0.75, "wraparound ratio: fail above", minimum=0.0,
                       maximum=1.0),
    "bloat_warn": Option("float", 0.3, "table bloat ratio (tables over 100 MB): warn above",
                         minimum=0.0, maximum=1.0),
    "bloat_fail": Option("float", 0.5, "table bloat ratio (tables over 100 MB): fail above",
                         minimum=0.0, maximum=1.0),
    "bloat_min_bytes": Option("float", 100.0 * 1024 * 1024, "table bloat counts for tables "
                              "of at least this size (bytes; HiwTableBloatHigh's 100 MB)",
                              minimum=0.0),
    "restore_test_period": Option("duration", 7 * DAY, "a successful restore test at least "
                                  "this often"),
    "replication_lag_limit": Option("duration", 300.0, "replay lag: fail above"),
}


# --- queries ----------------------------------------------------------------------------

_SETTINGS = """
SELECT current_setting('ssl') AS ssl,
       current_setting('password_encryption') AS password_encryption,
       pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT') AS can_read_authid,
       pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS read_all_stats,
       (SELECT rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user) AS bypassrls
"""

# the share of TCP client connections using SSL (Unix-socket sessions have no client_addr)
_SSL = """
SELECT count(*) FILTER (WHERE s.ssl) AS ssl, count(*) AS total
FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_stat_ssl s ON s.pid = a.pid
WHERE a.backend_type = 'client backend' AND a.client_addr IS NOT NULL
"""

_MD5 = ("SELECT count(*) AS md5 FROM pg_catalog.pg_authid "
        "WHERE left(rolpassword, 3) = 'md5'")  # no '%': the query is sent with parameters

# each application object the checks read: present? the columns missing? readable?
_OBJECTS = """
SELECT o.key, o.tbl AS table, c.oid IS NOT NULL AS present, c.relkind::text AS relkind,
       c.relrowsecurity AS rls,
       ARRAY(SELECT col FROM unnest(string_to_array(o.cols, ',')) col
             WHERE c.oid IS NOT NULL AND NOT EXISTS (
                 SELECT 1 FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attname = col AND NOT a.attisdropped))
           AS missing,
       CASE WHEN c.oid IS NOT NULL THEN coalesce((
           SELECT bool_and(pg_catalog.has_column_privilege(c.oid, a.attname, 'SELECT'))
           FROM pg_catalog.pg_attribute a
           WHERE a.attrelid = c.oid AND NOT a.attisdropped
             AND a.attname = ANY(string_to_array(o.cols, ','))), true) END AS readable
FROM unnest(%(keys)s::text[], %(tables)s::text[], %(cols)s::text[]) AS o(key, tbl, cols)
LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(o.tbl)
"""

_RLS = """
SELECT t.name, c.oid IS NOT NULL AS present, coalesce(c.relrowsecurity, false) AS enabled,
       coalesce(c.relforcerowsecurity, false) AS forced,
       (SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid) AS policies
FROM unnest(%(tables)s::text[]) WITH ORDINALITY AS t(name, position)
LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(t.name)
ORDER BY t.position
"""

_COLUMNS = """
SELECT t.name AS table, a.attname AS column
FROM unnest(%(tables)s::text[]) AS t(name)
JOIN pg_catalog.pg_attribute a ON a.attrelid = pg_catalog.to_regclass(t.name)
WHERE a.attnum > 0 AND NOT a.attisdropped
ORDER BY 1, a.attnum
"""

_TRIGGERS = """
SELECT t.tgname AS name, t.tgenabled::text AS enabled
FROM pg_catalog.pg_trigger t
WHERE t.tgrelid = pg_catalog.to_regclass(%(table)s) AND NOT t.tgisinternal
"""

_SUPERUSERS = """
SELECT a.usename AS role, coalesce(a.application_name, '') AS application, count(*) AS sessions
FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid
WHERE r.rolsuper AND a.backend_type = 'client backend' AND a.pid <> pg_catalog.pg_backend_pid()
  AND a.datname = pg_catalog.current_database()
GROUP BY 1, 2
"""

_APP_ROLES = """
SELECT rolname AS role, rolsuper AS superuser FROM pg_catalog.pg_roles
WHERE rolname = ANY(%(roles)s::text[])
"""

_NEVER_ANALYZED = """
SELECT s.schemaname AS schema, s.relname AS table, s.n_live_tup AS live_rows
FROM pg_catalog.pg_stat_user_tables s
WHERE s.last_analyze IS NULL AND s.last_autoanalyze IS NULL AND s.n_live_tup >= %(min_rows)s
ORDER BY s.n_live_tup DESC, 1, 2
LIMIT 100
"""

_MATVIEW = """
SELECT c.relfilenode::text AS filenode, c.relispopulated AS populated,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                 AND i.indpred IS NULL AND i.indexprs IS NULL) AS unique_index,
       coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0) AS changes
FROM pg_catalog.pg_class c
LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid
WHERE c.oid = pg_catalog.to_regclass(%(name)s) AND c.relkind = 'm'
"""

_DB_SIZE = "SELECT pg_catalog.pg_database_size(pg_catalog.current_database())::float8 AS size"

# the keys of _OBJECTS: (option naming the table, the columns the check reads)
_READS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "retention": ("retention_table", ()),  # + retention_column
    "retention_log": ("audit_table", ("id", "table_name", "created_at")),
    "audit": ("audit_table", ("id", "created_at")),
    "matview_job": ("job_table", ("job_type", "status", "finished_at")),
    "jobs": ("job_table", ("status", "scheduled_at")),
    "growth_log": ("", ("backup_config_id", "status", "end_time", "backup_size_bytes")),
    "growth_configs": ("", ("id", "backup_type")),
    "matview": ("matview", ()),
    "trigger": ("password_trigger_table", ()),
}
_GROWTH_TABLES = {"growth_log": "public.backup_execution_log",
                  "growth_configs": "public.backup_configurations"}


def _enabled(options: Mapping[str, Any], check: str) -> bool:
    return check not in options["disabled_checks"]


def _reads(options: Mapping[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    out = []
    for key, (option, columns) in _READS.items():
        table = options[option] if option else _GROWTH_TABLES[key]
        if key == "retention":
            columns = (options["retention_column"],)
        out.append((key, table, columns))
    return out


def _objects_params(step: Step) -> Mapping[str, Any]:
    reads = _reads(step.options)
    return {"keys": [k for k, _, _ in reads], "tables": [t for _, t, _ in reads],
            "cols": [",".join(c) for _, _, c in reads]}


def _object(step: Step, key: str) -> Mapping[str, Any] | None:
    return next((r for r in step.rows.get("objects", ()) if r["key"] == key), None)


def _usable(step: Step, key: str, *checks: str) -> bool:
    """The object exists, has its columns and is readable, and one of ``checks`` is on."""
    row = _object(step, key)
    return (any(_enabled(step.options, c) for c in checks) and row is not None
            and bool(row["present"]) and not row["missing"] and bool(row["readable"]))


def _ident(name: str) -> sql.Composable:
    return sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))


def _probe(*checks: str, key: str) -> Probe:
    """The app-table query of ``checks`` runs once, in its own savepoint, when usable."""
    return Probe(each=lambda step: [{"key": key}] if _usable(step, key, *checks) else [],
                 timeout=lambda options: float(options["probe_timeout"]),
                 budget=lambda options: 2.0 * float(options["probe_timeout"]))


def _retention_sql(step: Step) -> sql.Composed:
    o = step.options
    return sql.SQL(
        "SELECT count(*) AS overdue FROM (SELECT 1 FROM {table} WHERE {column} < now() - "
        "make_interval(secs => {retention}) LIMIT {limit}) s").format(
        table=_ident(o["retention_table"]), column=sql.Identifier(o["retention_column"]),
        retention=sql.Literal(float(o["retention"])),
        limit=sql.Literal(int(o["retention_count_limit"]) + 1))


def _retention_log_sql(step: Step) -> sql.Composed:
    o = step.options
    return sql.SQL(
        "SELECT extract(epoch FROM now() - max(created_at))::float8 AS age FROM "
        "(SELECT table_name, created_at FROM {table} ORDER BY id DESC LIMIT {limit}) s "
        "WHERE table_name = {marker}").format(
        table=_ident(o["audit_table"]), limit=sql.Literal(int(o["audit_scan_limit"])),
        marker=sql.Literal(o["retention_job_marker"]))


def _audit_sql(step: Step) -> sql.Composed:
    # the newest entry among the latest ids (an entry may be logged late, with an older time)
    return sql.SQL(
        "SELECT extract(epoch FROM now() - max(created_at))::float8 AS age FROM "
        "(SELECT created_at FROM {table} ORDER BY id DESC LIMIT 1000) s").format(
        table=_ident(step.options["audit_table"]))


def _matview_job_sql(step: Step) -> sql.Composed | None:
    job = step.options["matview_refresh_job"]
    if not job:
        return None
    return sql.SQL(
        "SELECT extract(epoch FROM now() - max(finished_at))::float8 AS age FROM {table} "
        "WHERE job_type = {job} AND status = 'done' AND finished_at <= now()").format(
        table=_ident(step.options["job_table"]), job=sql.Literal(job))


def _jobs_sql(step: Step) -> sql.Composed:
    return sql.SQL(
        "SELECT count(*) AS pending, coalesce(extract(epoch FROM now() - min(scheduled_at) "
        "FILTER (WHERE scheduled_at <= now())), 0)::float8 AS oldest_age "
        "FROM {table} WHERE status = 'pending'").format(table=_ident(step.options["job_table"]))


def _growth_sql(step: Step) -> sql.Composed:
    return sql.Composed([sql.SQL("""
SELECT c.id::text AS config, count(*) AS runs,
       regr_slope(l.backup_size_bytes::float8, extract(epoch FROM l.end_time)::float8) AS slope
FROM public.backup_execution_log l
JOIN public.backup_configurations c ON c.id = l.backup_config_id
WHERE c.backup_type = 'full' AND l.status = 'completed' AND l.backup_size_bytes IS NOT NULL
  AND l.end_time > now() - interval '30 days' AND l.end_time <= now()
GROUP BY c.id ORDER BY count(*) DESC, c.id LIMIT 1""")])


def _when(*checks: str) -> Any:
    """Params for a catalog query run only while one of ``checks`` is on."""
    def params(step: Step) -> Mapping[str, Any] | None:
        return {} if any(_enabled(step.options, c) for c in checks) else None
    return params


QUERIES: dict[str, Query] = {
    "settings": Query(VersionedSQL({130000: _SETTINGS})),
    "ssl": Query(VersionedSQL({130000: _SSL}), params=_when("ssl_enabled")),
    "md5": Query(VersionedSQL({130000: _MD5}), params=lambda step: {} if (
        _enabled(step.options, "scram_passwords") and step.rows["settings"]
        and step.rows["settings"][0]["can_read_authid"]) else None),
    "objects": Query(VersionedSQL({130000: _OBJECTS}), params=_objects_params),
    "rls": Query(VersionedSQL({130000: _RLS}), params=lambda step: {
        "tables": list(step.options["sensitive_tables"])}
        if _enabled(step.options, "rls_enabled") else None),
    "columns": Query(VersionedSQL({130000: _COLUMNS}), params=lambda step: {
        "tables": list(step.options["student_tables"])}
        if _enabled(step.options, "student_pii_columns") else None),
    "triggers": Query(VersionedSQL({130000: _TRIGGERS}), params=lambda step: {
        "table": step.options["password_trigger_table"]}
        if _enabled(step.options, "password_complexity_trigger") else None),
    "superusers": Query(VersionedSQL({130000: _SUPERUSERS}),
                        params=_when("superuser_sessions")),
    "app_roles": Query(VersionedSQL({130000: _APP_ROLES}), params=lambda step: {
        "roles": list(step.options["app_roles"])}
        if step.options["app_roles"] and _enabled(step.options, "superuser_sessions")
        else None),
    "never_analyzed": Query(VersionedSQL({130000: _NEVER_ANALYZED}), params=lambda step: {
        "min_rows": int(step.options["analyze_min_rows"])}
        if _enabled(step.options, "tables_analyzed") else None),
    "matview": Query(VersionedSQL({130000: _MATVIEW}), params=lambda step: {
        "name": step.options["matview"]} if _enabled(step.options, "matview_fresh") else None),
    "db_size": Query(VersionedSQL({130000: _DB_SIZE}), params=_when("data_growth")),
    # the application's tables: each in its own savepoint (Target.probe)
    "retention": Query(_retention_sql, probe=_probe("retention_overdue", key="retention")),
    "retention_log": Query(_retention_log_sql,
                           probe=_probe("retention_overdue", key="retention_log")),
    "audit": Query(_audit_sql, probe=_probe("audit_log_active", key="audit")),
    "matview_job": Query(_matview_job_sql, probe=_probe("matview_fresh", key="matview_job")),
    "jobs": Query(_jobs_sql, probe=_probe("job_queue_backlog", key="jobs")),
    "growth": Query(_growth_sql, probe=Probe(
        each=lambda step: [{"key": "growth"}] if _usable(step, "growth_log", "data_growth")
        and _usable(step, "growth_configs", "data_growth") else [],
        timeout=lambda options: float(options["probe_timeout"]),
        budget=lambda options: 2.0 * float(options["probe_timeout"]))),
}


# --- state ------------------------------------------------------------------------------


@dataclass
class ReviewState:
    """What the review remembers between runs of one target: when the materialized view
    was last seen to change, and the database sizes it saw (data growth)."""

    matview_signature: tuple[str, int] | None = None
    matview_changed_at: float | None = None
    sizes: list[tuple[float, float]] = field(default_factory=list)  # (time, bytes)


# --- evaluation (pure) ------------------------------------------------------------------


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{format_duration(max(0.0, seconds))} ago"


def _one(rows: Rows) -> Mapping[str, Any] | None:
    return rows[0] if rows else None


def _attempt(rows: Rows) -> Mapping[str, Any] | None:
    """The one probe attempt of an app-table query, if it ran."""
    return rows[0] if rows else None


def _unreadable(rows: Mapping[str, Rows], key: str, check: str,
                options: Mapping[str, Any]) -> str | None:
    """Why ``check`` cannot read its object (table missing, column missing, no GRANT, the
    query refused or too slow), or None when it could."""
    obj = next((r for r in rows["objects"] if r["key"] == key), None)
    if obj is None:
        return "not evaluated"
    table = obj["table"]
    if not obj["present"]:
        return f"no table {table} in this database (configure collectors.review options " \
               "if it lives elsewhere)"
    if obj["missing"]:
        return f"{table} has no column {', '.join(obj['missing'])}"
    if not obj["readable"]:
        columns = ", ".join(_READS[key][1] or (options["retention_column"],))
        return f"the monitoring role cannot read it: GRANT SELECT ({columns}) ON {table} " \
               "TO <monitoring role>"
    attempt = _attempt(rows.get(key, ()))
    if attempt is None:
        return None
    outcome = attempt["outcome"]
    if outcome == "ok":
        return None
    if outcome == "timeout":
        return f"the query on {table} took longer than probe_timeout " \
               f"({options['probe_timeout']:g} s)"
    if outcome == "locked":
        return f"{table} is locked (lock_timeout); tried again next run"
    if attempt.get("sqlstate") == "42501":
        hint = " (a row-level security policy needs privileges the role lacks: give the " \
               "monitoring role BYPASSRLS, or a policy of its own)" if obj["rls"] else ""
        return f"permission denied on {table}{hint}"
    return f"the query on {table} failed (SQLSTATE {attempt.get('sqlstate')})"


def rls(rows: Mapping[str, Rows], options: Mapping[str, Any]) -> Finding:
    check = BY_ID["rls_enabled"]
    forced = set(options["force_rls_tables"])
    problems, absent = [], []
    for row in rows["rls"]:
        name = str(row["name"])
        if not row["present"]:
            absent.append(name)
        elif not row["enabled"]:
            problems.append(f"{name}: RLS not enabled")
        elif int(row["policies"]) == 0:
            problems.append(f"{name}: RLS enabled without a policy (nobody but the owner "
                            "sees rows)")
        elif name in forced and not row["forced"]:
            problems.append(f"{name}: not FORCE ROW LEVEL SECURITY (the owner bypasses it)")
    present = len(rows["rls"]) - len(absent)
    if problems:
        return finding(check, "fail", "; ".join(problems), tables=present,
                       failing=len(problems))
    if present == 0:
        return finding(check, "unknown", "none of the sensitive tables exists here: "
                       + ", ".join(absent) + " (option sensitive_tables)")
    note = f"; not found: {', '.join(absent)}" if absent else ""
    return finding(check, "pass", f"{present} sensitive table(s) with RLS and a policy{note}",
                   tables=present)


def pii(rows: Mapping[str, Rows], options: Mapping[str, Any]) -> Finding:
    check = BY_ID["student_pii_columns"]
    patterns = [re.compile(p, re.IGNORECASE) for p in options["pii_patterns"]]
    tables = sorted({str(r["table"]) for r in rows["columns"]})
    found = [f"{r['table']}.{r['column']}" for r in rows["columns"]
             if any(p.search(str(r["column"])) for p in patterns)]
    if found:
        return finding(check, "fail", "columns named like personal data: " + ", ".join(found),
                       columns=len(found))
    if not tables:
        return finding(check, "unknown", "none of the student tables exists here: "
                       + ", ".join(options["student_tables"]) + " (option student_tables)")
    return finding(check, "pass", f"no column of {', '.join(tables)} is named like personal "
                   "data", columns=0)


def retention(rows: Mapping[str, Rows], options: Mapping[str, Any]
              ) -> tuple[Finding, int | None, float | None]:
    check = BY_ID["retention_overdue"]
    why = _unreadable(rows, "retention", "retention_overdue", options)
    if why is not None:
        return finding(check, "unknown", why), None, None
    overdue = int(_attempt(rows["retention"])["overdue"])  # type: ignore[index]
    limit = int(options["retention_count_limit"])
    log_why = _unreadable(rows, "retention_log", "retention_overdue", options)
    attempt = _attempt(rows.get("retention_log", ()))
    last = None if log_why is not None or attempt is None else attempt.get("age")
    job = f"the retention job last logged a batch {_ago(last)}" if log_why is None else \
        f"the retention job's log is unreadable: {log_why}"
    period = format_duration(float(options["retention"]))
    table = options["retention_table"]
    count = f"more than {limit:,}" if overdue > limit else f"{overdue:,}"
    if overdue > 0:
        return (finding(check, "fail", f"{count} row(s) of {table} older than {period}; "
                        f"{job}", overdue_rows=overdue, retention_seconds=options["retention"]),
                overdue, last)
    return (finding(check, "pass", f"nothing in {table} older than {period}; {job}",
                    overdue_rows=0), 0, last)


def audit(rows: Mapping[str, Rows], options: Mapping[str, Any]) -> tuple[Finding, float | None]:
    check = BY_ID["audit_log_active"]
    why = _unreadable(rows, "audit", "audit_log_active", options)
    if why is not None:
        return finding(check, "unknown", why), None
    attempt = _attempt(rows["audit"])
    age = attempt.get("age") if attempt else None
    limit = float(options["audit_max_age"])
    if age is None:
        return finding(check, "fail", f"{options['audit_table']} is empty"), None
    if age > limit:
        return finding(check, "fail", f"the newest audit entry is {_ago(age)} (limit "
                       f"{format_duration(limit)})", age_seconds=age), age
    return finding(check, "pass", f"the newest audit entry is {_ago(age)}",
                   age_seconds=age), age


def ssl(rows: Mapping[str, Rows], options: Mapping[str, Any]) -> tuple[Finding, float | None]:
    check = BY_ID["ssl_enabled"]
    settings = rows["settings"][0]
    counts = _one(rows["ssl"])
    total = int(counts["total"]) if counts else 0
    used = int(counts["ssl"]) if counts else 0
    ratio = used / total if total else 1.0
    visible = "" if settings["read_all_stats"] else \
        " (only this role's sessions are visible: GRANT pg_monitor TO <monitoring role>)"
    if settings["ssl"] != "on":
        return finding(check, "fail", f"ssl = {settings['ssl']}: connections travel in clear "
                       f"text ({total - used} of {total} TCP client connections without SSL)"
                       + visible, ssl_ratio=ratio), ratio
    if used < total:
        return finding(check, "warn", f"ssl = on, but {total - used} of {total} TCP client "
                       "connections do not use it (require hostssl in pg_hba.conf)" + visible,
                       ssl_ratio=ratio), ratio
    return finding(check, "pass", f"ssl = on; {used} of {total} TCP client connections use "
                   "SSL" + visible, ssl_ratio=ratio), ratio


def scram(rows: Mapping[str, Rows]) -> Finding:
    check = BY_ID["scram_passwords"]
    settings = rows["settings"][0]
    setting = settings["password_encryption"]
    md5 = _one(rows["md5"])
    if setting != "scram-sha-256":
        return finding(check, "fail", f"password_encryption = {setting}: new passwords are "
                       "stored as MD5")
    if md5 is not None and int(md5["md5"]) > 0:
        return finding(check, "fail", f"password_encryption = scram-sha-256, but {md5['md5']} "
                       "role(s) still have an MD5 password", md5_roles=int(md5["md5"]))
    seen = "no role has an MD5 password" if md5 is not None else \
        "stored secrets not checked (pg_authid needs a superuser)"
    return finding(check, "pass", f"password_encryption = scram-sha-256; {seen}")


def trigger(rows: Mapping[str, Rows], options: Mapping[str, Any]) -> Finding:
    check = BY_ID["password_complexity_trigger"]
    table, name = options["password_trigger_table"], options["password_trigger"]
    obj = next((r for r in rows["objects"] if r["key"] == "trigger"), None)
    if obj is not None and not obj["present"]:
        return finding(check, "unknown", f"no table {table} in this database (option "
                       "password_trigger_table)")
    found = next((r for r in rows["triggers"] if r["name"] == name), None)
    if found is None:
        return finding(check, "fail", f"no trigger {name} on {table}")
    if found["enabled"] not in ("O", "A"):  # D: disabled; R: fires on replicas only
        state = "disabled" if found["enabled"] == "D" else "enabled for replicas only"
        return finding(check, "fail", f"trigger {name} on {table} is {state} "
                       f"(ALTER TABLE {table} ENABLE TRIGGER {name};)")
    return finding(check, "pass", f"trigger {name} on {table} is enabled")


def superusers(rows: Mapping[str, Rows], options: Mapping[str, Any]) -> Finding:
    check = BY_ID["superuser_sessions"]
    allowed = [re.compile(p) for p in options["superuser_allowed_applications"]]
    app = [r for r in rows["superusers"]
           if not any(p.search(str(r["application"])) for p in allowed)]
    roles = sorted({str(r["role"]) for r in app})
    count = sum(int(r["sessions"]) for r in app)
    super_apps = sorted(str(r["role"]) for r in rows["app_roles"] if r["superuser"])
    if super_apps:
        return finding(check, "fail", "application role(s) with SUPERUSER: "
                       + ", ".join(super_apps), sessions=count)
    if count:
        return finding(check, "fail", f"{count} session(s) in this database as superuser "
                       f"role(s) {', '.join(roles)} from applications other than the "
                       "administration tools (option superuser_allowed_applications)",
                       sessions=count)
    return finding(check, "pass", "no application session as a superuser", sessions=0)


def analyzed(rows: Mapping[str, Rows], options: Mapping[str, Any]) -> Finding:
    check = BY_ID["tables_analyzed"]
    never = rows["never_analyzed"]
    if never:
        names = ", ".join(f"{r['schema']}.{r['table']}" for r in never[:5])
        more = f" and {len(never) - 5} more" if len(never) > 5 else ""
        return finding(check, "warn", f"{len(never)} table(s) with "
                       f"{options['analyze_min_rows']}+ rows never analyzed (since the "
                       f"statistics were last reset): {names}{more}", tables=len(never))
    return finding(check, "pass", f"every table with {options['analyze_min_rows']}+ rows has "
                   "been analyzed", tables=0)


def in_school_hours(now: float, options: Mapping[str, Any]) -> bool:
    """``now`` (Unix time) falls on a school day within school hours, in their time zone.

    >>> opts = {"school_hours": "07:00-17:00", "school_days": ["mon"], "school_timezone": "UTC"}
    >>> in_school_hours(1796601600.0 + 8 * 3600, opts)  # Monday 2026-12-07 08:00 UTC
    True
    >>> in_school_hours(1796601600.0 + 18 * 3600, opts), in_school_hours(1796515200.0, opts)
    (False, False)
    """
    local = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(options["school_timezone"]))
    if _DAYS[local.weekday()] not in options["school_days"]:
        return False
    h1, m1, h2, m2 = map(int, _HOURS.match(options["school_hours"]).groups())  # type: ignore[union-attr]
    minute = local.hour * 60 + local.minute
    return h1 * 60 + m1 <= minute < h2 * 60 + m2


def matview(rows: Mapping[str, Rows], options: Mapping[str, Any], state: ReviewState,
            now: float) -> tuple[Finding, float | None]:
    check = BY_ID["matview_fresh"]
    name = options["matview"]
    row = _one(rows["matview"])
    if row is None:
        return finding(check, "unknown", f"no materialized view {name} in this database "
                       "(option matview)"), None
    signature = (str(row["filenode"]), int(row["changes"]))
    if state.matview_signature is not None and signature != state.matview_signature:
        state.matview_changed_at = now
    state.matview_signature = signature
    ages = []
    if state.matview_changed_at is not None:
        ages.append(now - state.matview_changed_at)
    job_why = _unreadable(rows, "matview_job", "matview_fresh", options) \
        if options["matview_refresh_job"] else "no refresh job configured"
    attempt = _attempt(rows.get("matview_job", ()))
    if job_why is None and attempt is not None and attempt.get("age") is not None:
        ages.append(float(attempt["age"]))
    age = min(ages) if ages else None
    limit = float(options["matview_max_age"])
    problems = []
    if not row["unique_index"]:
        problems.append(f"{name} has no unique index, so REFRESH ... CONCURRENTLY fails")
    if not row["populated"]:
        problems.append(f"{name} was never populated (REFRESH MATERIALIZED VIEW {name};)")
    school = in_school_hours(now, options)
    seen = f"last refresh seen {_ago(age)}"
    if job_why is not None and options["matview_refresh_job"]:
        seen += f" (its refresh jobs are not readable: {job_why})"
    if problems:
        return finding(check, "fail", "; ".join(problems) + f"; {seen}"), age
    if age is None:
        if job_why is not None:
            return finding(check, "unknown", f"no refresh of {name} seen yet; {seen}"), None
        status: Status = "fail" if school else "pass"
        return finding(check, status, f"{name} has no recorded refresh "
                       f"({options['matview_refresh_job']} never done)"
                       + ("" if school else "; outside school hours")), None
    if age > limit and school:
        return finding(check, "fail", f"{seen}, over {format_duration(limit)} in school hours",
                       age_seconds=age), age
    suffix = "" if school else " (outside school hours: not required)"
    return finding(check, "pass", seen + suffix, age_seconds=age), age


def jobs(rows: Mapping[str, Rows], options: Mapping[str, Any]
         ) -> tuple[Finding, int | None, float | None]:
    check = BY_ID["job_queue_backlog"]
    why = _unreadable(rows, "jobs", "job_queue_backlog", options)
    if why is not None:
        return finding(check, "unknown", why), None, None
    attempt = _attempt(rows["jobs"])
    assert attempt is not None
    pending, age = int(attempt["pending"]), float(attempt["oldest_age"] or 0.0)
    text = f"{pending:,} pending job(s); the oldest due one waits {format_duration(age)}"
    status: Status
    if pending > options["job_backlog_fail"] or age > options["job_age_fail"]:
        status = "fail"
    elif pending > options["job_backlog_warn"] or age > options["job_age_warn"]:
        status = "warn"
    else:
        status = "pass"
    return finding(check, status, text, pending=pending, oldest_age_seconds=age), pending, age


def growth(rows: Mapping[str, Rows], options: Mapping[str, Any], state: ReviewState,
           now: float) -> tuple[Finding, float | None]:
    check = BY_ID["data_growth"]
    size = _one(rows["db_size"])
    if size is not None and size["size"] is not None:
        state.sizes.append((now, float(size["size"])))
        state.sizes = [(t, s) for t, s in state.sizes if now - t <= 30 * DAY][-2000:]
    per_second, source = None, ""
    attempt = _attempt(rows.get("growth", ()))
    if attempt is not None and attempt["outcome"] == "ok" and attempt.get("slope") is not None \
            and int(attempt["runs"]) >= 3:
        per_second = float(attempt["slope"])
        source = f"full backup sizes ({attempt['runs']} in 30 days)"
    elif len(state.sizes) >= 2 and state.sizes[-1][0] - state.sizes[0][0] >= \
            float(options["growth_window"]):
        (t0, s0), (t1, s1) = state.sizes[0], state.sizes[-1]
        per_second = (s1 - s0) / (t1 - t0)
        source = f"database size over {format_duration(t1 - t0)}"
    if per_second is None or not math.isfinite(per_second):
        return finding(check, "unknown", "measuring: no full backup sizes over the last 30 "
                       "days, and the agent's own window of database sizes is shorter than "
                       f"{format_duration(float(options['growth_window']))}"), None
    month = per_second * MONTH
    baseline = float(options["growth_baseline"])
    text = f"{month / MB:,.0f} MB per 30 days from {source} (baseline {baseline / MB:,.0f} MB)"
    status: Status
    if month > baseline * float(options["growth_fail_factor"]):
        status = "fail"
    elif month > baseline * float(options["growth_warn_factor"]):
        status = "warn"
    else:
        status = "pass"
    return finding(check, status, text, bytes_per_month=month), per_second * DAY


# --- the families -------------------------------------------------------------------------


class FindingsFamily(GaugeMetricFamily):
    """``hiw_review_check_status``, carrying the findings it was made from, so the health
    score, ``/health`` and the pages read the reasons from the same stored result."""

    findings: tuple[Finding, ...] = ()


def status_family(target: str, findings: Sequence[Finding]) -> FindingsFamily:
    family = FindingsFamily(
        "hiw_review_check_status",
        "The DBA review's checks, one-hot over pass / warn / fail / unknown; the reasons "
        "and remediations are in /health and docs/review.md.",
        labels=["target", "check", "category", "severity", "status"])
    for f in findings:
        c = f.check
        for status in STATUSES:
            family.add_metric([target, c.id, c.category, c.severity, status],
                              1.0 if f.status == status else 0.0)
    family.findings = tuple(findings)
    return family


def evaluate(rows: Mapping[str, Rows], options: Mapping[str, Any], state: ReviewState,
             now: float) -> tuple[list[Finding], dict[str, Any]]:
    """Every enabled SQL check's finding, and the measured values behind the gauges."""
    found: list[Finding] = []
    measured: dict[str, Any] = {}
    on = {c.id for c in SQL_CHECKS if _enabled(options, c.id)}
    if "rls_enabled" in on:
        found.append(rls(rows, options))
    if "student_pii_columns" in on:
        found.append(pii(rows, options))
    if "retention_overdue" in on:
        f, measured["overdue"], measured["retention_age"] = retention(rows, options)
        found.append(f)
    if "audit_log_active" in on:
        f, measured["audit_age"] = audit(rows, options)
        found.append(f)
    if "ssl_enabled" in on:
        f, measured["ssl_ratio"] = ssl(rows, options)
        found.append(f)
    if "scram_passwords" in on:
        found.append(scram(rows))
    if "password_complexity_trigger" in on:
        found.append(trigger(rows, options))
    if "superuser_sessions" in on:
        found.append(superusers(rows, options))
    if "matview_fresh" in on:
        f, measured["matview_age"] = matview(rows, options, state, now)
        found.append(f)
    if "job_queue_backlog" in on:
        f, measured["pending"], measured["job_age"] = jobs(rows, options)
        found.append(f)
    if "tables_analyzed" in on:
        found.append(analyzed(rows, options))
    if "data_growth" in on:
        f, measured["growth_per_day"] = growth(rows, options, state, now)
        found.append(f)
    order = {c.id: i for i, c in enumerate(CHECKS)}
    found.sort(key=lambda f: order[f.check.id])
    return found, measured


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    t, options = ctx.target, ctx.options
    state = ctx.state if isinstance(ctx.state, ReviewState) else ReviewState()
    found, m = evaluate(rows, options, state, ctx.now)
    yield status_family(t, found)

    def single(name: str, doc: str, value: Any, labels: Sequence[str] = (),
               label_values: Sequence[str] = ()) -> GaugeMetricFamily:
        family = gauge(name, doc, labels)
        if value is not None:
            family.add_metric([t, *label_values], float(value))
        return family

    yield single("hiw_review_retention_overdue_rows",
                 "Rows older than the retention period (counted up to the limit + 1).",
                 m.get("overdue"), ["table"], [options["retention_table"]])
    yield single("hiw_review_retention_last_run_age_seconds",
                 "Since the retention job last logged a batch.", m.get("retention_age"))
    yield single("hiw_review_audit_log_last_entry_age_seconds", "Since the newest audit entry.",
                 m.get("audit_age"))
    yield single("hiw_review_matview_last_refresh_age_seconds",
                 "Since the materialized view was last seen refreshed.", m.get("matview_age"),
                 ["matview"], [options["matview"]])
    yield single("hiw_review_job_queue_pending", "Pending jobs.", m.get("pending"))
    yield single("hiw_review_job_queue_oldest_pending_age_seconds",
                 "Age of the oldest due pending job.", m.get("job_age"))
    yield single("hiw_review_ssl_connections_ratio",
                 "Share of TCP client connections using SSL.", m.get("ssl_ratio"))
    yield single("hiw_review_data_growth_bytes_per_day", "Data growth per day.",
                 m.get("growth_per_day"))


_RANK = {"unknown": 0, "pass": 1, "warn": 2, "fail": 3}


def merge(results: Sequence[tuple[str, Sequence[Metric]]]) -> list[Metric]:
    """The review of several databases: the families merged (each database's series with
    its ``datname``), and one finding per check for the score, the worst of the
    databases' (a check the app's tables decide passes where they are and is unknown
    elsewhere), its reason naming the database when there are several."""
    merged = merge_databases(results)
    per_db = [(datname, f.findings) for datname, families in results for f in families
              if isinstance(f, FindingsFamily)]
    worst: dict[str, tuple[str, Finding]] = {}
    for datname, findings in per_db:
        for found in findings:
            known = worst.get(found.check.id)
            if known is None or _RANK[found.status] > _RANK[known[1].status]:
                worst[found.check.id] = (datname, found)
    several = len(per_db) > 1
    chosen = tuple(
        replace(found, reason=f"in database {datname}: {found.reason}") if several else found
        for datname, found in worst.values())
    for family in merged:
        if isinstance(family, FindingsFamily):
            family.findings = chosen
    return merged


COLLECTOR = Collector(
    name="review",
    per_database=True,
    merge=merge,
    help="the DBA review's catalog checks: RLS, PII column names, retention, audit log, SSL, "
         "SCRAM, the password trigger, superuser sessions, the analytics view, the job "
         "queue, statistics, data growth",
    interval=300.0,
    timeout=20.0,
    queries=QUERIES,
    transform=transform,
    options=OPTIONS,
    new_state=ReviewState,
)
