"""Query performance from pg_stat_statements: per-statement counters for the top N,
and the latency distribution behind the SLA (p95 < 100 ms in the DBA review).

How the numbers stay honest:

* **Counters are the agent's own sums of interval increments.** Each poll reads the
  cumulative counters with ``pg_stat_statements(false)`` (no query text file read) and a
  :class:`~hiw_monitor.analysis.deltas.CounterTracker` turns them into increments that are
  never negative: a reset, a deallocated and re-created entry or a server restart counts
  as "started again inside the interval". Every increment is added to exactly one
  exported series: the statement's own if it is in the top N, else ``queryid="other"``.
  So the exported ``_total`` series only grow, and their sum is exact. A statement that
  leaves the top N keeps its last value (its series stops); when it comes back it
  continues from there, without a jump.
* **Top N with hysteresis.** Ranked by execution time in the interval; a member keeps its
  place until it falls below rank 2N, so statements near the edge do not flap.
* **Latency.** For every statement with calls in the interval, the increments of calls,
  time and sum of squares give the interval's exact mean and variance; a distribution is
  fitted per statement (:mod:`hiw_monitor.analysis.latency`) and the calls are spread
  over a fine grid, summed over statements. That gives the exported histogram
  (``hiw_query_duration_seconds``), and over a rolling window the agent's own p50/p95/p99.
* **No query text leaves the database** unless ``query_text: true``, and even then never
  for utility statements, never text with a string literal, and never comments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric
from psycopg import sql

from hiw_monitor.analysis import latency
from hiw_monitor.analysis.deltas import CounterTracker
from hiw_monitor.analysis.querytext import is_utility, safe_text
from hiw_monitor.analysis.topn import Membership
from hiw_monitor.collectors.base import (
    Collector,
    Context,
    Option,
    PlanStep,
    Query,
    Rows,
    Step,
    VersionedSQL,
    counter,
    gauge,
)
from hiw_monitor.errors import Reason, ReasonedError

Key = tuple[int, int, int]  # (dbid, userid, queryid)
OTHER = "other"
FORGET_AFTER = 3600.0  # seconds a vanished statement's sums are kept in case it returns
QUANTILES = (0.5, 0.95, 0.99)
SLA_BAND = 0.01  # the uncertainty band: the quantiles 1 point either side of sla_quantile
GRID_LO, GRID_HI = 1e-6, 1e3  # seconds: the latency grid, from primary-key lookups up
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.09, 0.1, 0.11, 0.125,
                   0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)

# logical field -> physical column candidates, newest name first (17 renamed the I/O times)
_COLUMNS: dict[str, tuple[str, ...]] = {
    "calls": ("calls",),
    "total": ("total_exec_time",),
    "stddev": ("stddev_exec_time",),
    "min": ("min_exec_time",),
    "max": ("max_exec_time",),
    "plans": ("plans",),
    "plan_time": ("total_plan_time",),
    "rows": ("rows",),
    "blks_hit": ("shared_blks_hit",),
    "blks_read": ("shared_blks_read",),
    "blks_dirtied": ("shared_blks_dirtied",),
    "blks_written": ("shared_blks_written",),
    "temp_read": ("temp_blks_read",),
    "temp_written": ("temp_blks_written",),
    "io_read_time": ("shared_blk_read_time", "blk_read_time"),
    "io_write_time": ("shared_blk_write_time", "blk_write_time"),
    "toplevel": ("toplevel",),
    "stats_since": ("stats_since",),
}
_REQUIRED = ("calls", "total", "stddev", "min", "max", "rows")

# (field, metric name without _total, help, scale, needs)  needs: None | "planning" | "io"
_COUNTERS: tuple[tuple[str, str, str, float, str | None], ...] = (
    ("calls", "hiw_statement_calls", "Calls of the statement.", 1.0, None),
    ("total", "hiw_statement_exec_seconds", "Execution time of the statement.", 0.001, None),
    ("plan_time", "hiw_statement_plan_seconds",
     "Planning time (only with pg_stat_statements.track_planning = on).", 0.001, "planning"),
    ("rows", "hiw_statement_rows", "Rows returned or affected.", 1.0, None),
    ("blks_hit", "hiw_statement_shared_blocks_hit", "Shared buffer hits.", 1.0, None),
    ("blks_read", "hiw_statement_shared_blocks_read", "Shared blocks read.", 1.0, None),
    ("blks_dirtied", "hiw_statement_shared_blocks_dirtied", "Shared blocks dirtied.", 1.0,
     None),
    ("blks_written", "hiw_statement_shared_blocks_written", "Shared blocks written.", 1.0,
     None),
    ("temp_read", "hiw_statement_temp_blocks_read", "Temporary blocks read.", 1.0, None),
    ("temp_written", "hiw_statement_temp_blocks_written", "Temporary blocks written.", 1.0,
     None),
    ("io_read_time", "hiw_statement_io_read_seconds",
     "Time reading shared blocks (only with track_io_timing = on).", 0.001, "io"),
    ("io_write_time", "hiw_statement_io_write_seconds",
     "Time writing shared blocks (only with track_io_timing = on).", 0.001, "io"),
)
_DELTA_FIELDS = (*(f for f, *_ in _COUNTERS), "sumsq")


def _valid_regexes(patterns: Sequence[str]) -> str | None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"{pattern!r} is not a valid regular expression ({exc})"
    return None


def _valid_buckets(buckets: Sequence[float]) -> str | None:
    if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
        return "buckets must be positive, strictly increasing seconds"
    if buckets[0] < GRID_LO:
        return (f"buckets below {GRID_LO:g} s (1 us, the resolution of the latency grid) are "
                f"not supported; the smallest given is {buckets[0]:g} s")
    if buckets[-1] > GRID_HI:
        return f"buckets above {GRID_HI:g} s are not supported"
    return None


OPTIONS = {
    "top_n": Option("int", 100, "statements exported one by one; the rest sum to 'other'",
                    minimum=1, maximum=10000),
    "top_n_hold": Option("duration", 600.0, "a top-N member without calls for this long "
                         "leaves (its sums are kept for an hour in case it returns)",
                         minimum=0.0),
    "buckets": Option("float_list", DEFAULT_BUCKETS,
                      "upper bounds (seconds) of hiw_query_duration_seconds",
                      check=_valid_buckets),
    "window": Option("duration", 300.0, "rolling window of hiw_query_latency_seconds",
                     minimum=1.0),
    "sla_latency": Option("duration", 0.1, "SLA latency target at sla_quantile", minimum=0.0001),
    "sla_quantile": Option("float", 0.95, "quantile the SLA applies to", minimum=0.5,
                           maximum=0.9999),
    "slow_threshold": Option("duration", 0.1, "interval mean above which a statement is slow",
                             minimum=0.0001),
    "sla_exclude_self": Option("bool", True, "leave the agent's own queries out of the SLA"),
    "sla_include_utility": Option(
        "bool", False, "count utility statements (BEGIN, COMMIT, SET, SHOW, DDL, ...) in the "
        "SLA latency; off: only the application's queries (each statement's text is "
        "classified once, never exported or logged)"),
    "sla_exclude_roles": Option("str_list", (), "roles whose statements the SLA ignores"),
    "sla_exclude_queries": Option(
        "str_list", (), "regular expressions (case-insensitive) on the normalized query text; "
        "matching statements are left out of the SLA (e.g. '^REFRESH MATERIALIZED VIEW')",
        check=_valid_regexes),
    "query_text": Option("bool", False, "export normalized query text of the top N "
                         "(never utility statements); off: no text leaves the database"),
    "query_text_length": Option("int", 200, "longest exported query text", minimum=16,
                                maximum=4096),
}


# --- state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What this server's pg_stat_statements offers, decided once per connection."""

    schema: str
    columns: Mapping[str, str]  # logical field -> physical column
    has_info: bool
    track_planning: bool
    track_io_timing: bool
    maximum: int  # pg_stat_statements.max

    @property
    def toplevel(self) -> bool:
        """Whether nested statements can be left out (the ``toplevel`` column, 14+). On 13
        (pg_stat_statements 1.8) with ``pg_stat_statements.track = all``, statements run
        inside functions are counted too, SLA latency included."""
        return "toplevel" in self.columns


# what a statement's text says about it, learned once per statement (bit flags)
RESET_REASONS = ("server_changed", "reset_during_read", "stats_reset", "entry_reset")
EXCLUSION_REASONS = ("self", "role", "utility", "pattern")
UTILITY = 1  # transaction control, SET/SHOW, DDL, maintenance: not an application query
PATTERN = 2  # matches one of sla_exclude_queries


@dataclass
class StatementsState:
    tracker: CounterTracker[Key] = field(
        default_factory=lambda: CounterTracker(reset_fields=("calls", "total")))
    totals: dict[Key, dict[str, float]] = field(default_factory=dict)
    other: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_DELTA_FIELDS, 0.0))
    membership: Membership[Key] = field(default_factory=lambda: Membership(n=100, hold=600.0))
    labels: dict[Key, tuple[str, str]] = field(default_factory=dict)  # (datname, user)
    texts: dict[Key, str] = field(default_factory=dict)  # normalized text (query_text only)
    kinds: dict[Key, int] = field(default_factory=dict)  # UTILITY | PATTERN, per statement
    grid: tuple[float, ...] = ()
    bucket_index: tuple[int, ...] = ()
    window: latency.RollingWindow | None = None
    histogram: list[float] = field(default_factory=list)  # cumulative bucket counters
    histogram_count: float = 0.0
    histogram_sum: float = 0.0
    last_member: dict[Key, float] = field(default_factory=dict)
    extremes: dict[Key, tuple[float, float]] = field(default_factory=dict)  # (min, max) s
    server: tuple[Any, ...] | None = None  # (system identifier, timeline, postmaster start)
    last_reset: float | None = None  # pg_stat_statements_info.stats_reset (14+)
    baselines: dict[str, float] = field(default_factory=dict)  # reason -> new baselines
    excluded: dict[str, float] = field(default_factory=dict)  # reason -> calls left out

    def configure(self, options: Mapping[str, Any]) -> None:
        buckets, window = options["buckets"], options["window"]
        self.membership.n, self.membership.hold = options["top_n"], options["top_n_hold"]
        if self.grid and self.window is not None and self.window.seconds == window and \
                tuple(self.grid[i] for i in self.bucket_index) == tuple(buckets):
            return
        self.grid = latency.log_grid(lo=GRID_LO, hi=GRID_HI, extra=buckets)
        self.bucket_index = tuple(self.grid.index(b) for b in buckets)
        self.window = latency.RollingWindow(window, len(self.grid))
        self.histogram = [0.0] * len(buckets)


def new_state() -> StatementsState:
    return StatementsState()


# --- plan and queries ------------------------------------------------------------------------

# Everything the plan needs, in one query: privileges, whether the library is preloaded,
# the extension's schema, the columns its function returns, and the settings that decide
# which counters exist.
_FACTS = """
SELECT n.nspname AS schema, pg_catalog.current_database() AS db, current_user AS me,
       r.rolsuper OR pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')
           AS can_read,
       CASE WHEN r.rolsuper
                 OR pg_catalog.pg_has_role(current_user, 'pg_read_all_settings', 'MEMBER')
            THEN pg_catalog.current_setting('shared_preload_libraries') END AS preload,
       (SELECT pg_catalog.array_agg(a.name ORDER BY a.ord)
        FROM pg_catalog.pg_proc p,
             unnest(p.proargnames, p.proargmodes) WITH ORDINALITY AS a(name, mode, ord)
        WHERE p.proname = 'pg_stat_statements' AND p.pronamespace = e.extnamespace
          AND p.pronargs = 1 AND a.mode IN ('o', 't')) AS columns,
       EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
               WHERE p.proname = 'pg_stat_statements_info'
                 AND p.pronamespace = e.extnamespace) AS info,
       pg_catalog.current_setting('pg_stat_statements.track_planning', true) AS planning,
       pg_catalog.current_setting('pg_stat_statements.max', true) AS maximum,
       pg_catalog.current_setting('track_io_timing') AS io
FROM pg_catalog.pg_roles r
LEFT JOIN pg_catalog.pg_extension e ON e.extname = 'pg_stat_statements'
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
WHERE r.rolname = current_user
"""


def decide(rows: Mapping[str, Rows], step: Step) -> Plan:
    """The plan from the facts, or the reason the collector cannot run, with the fix."""
    facts = rows["facts"][0]
    if not facts["can_read"]:
        raise ReasonedError(Reason(
            "permission_denied",
            f"role {facts['me']!r} may see only its own statements and no settings; run: "
            f"GRANT pg_monitor TO {facts['me']};"))
    if facts["preload"] is not None and "pg_stat_statements" not in facts["preload"]:
        also = "" if facts["schema"] else \
            f", then in database {facts['db']!r}: CREATE EXTENSION pg_stat_statements;"
        raise ReasonedError(Reason(
            "not_preloaded",
            "pg_stat_statements is not in shared_preload_libraries; run: ALTER SYSTEM SET "
            "shared_preload_libraries = 'pg_stat_statements' (keep any existing entries), "
            f"restart PostgreSQL{also}"))
    if facts["schema"] is None:
        raise ReasonedError(Reason(
            "extension_missing",
            f"the pg_stat_statements extension is not installed in database {facts['db']!r};"
            f" run as a superuser in that database: CREATE EXTENSION pg_stat_statements;"))
    present = set(facts["columns"] or ())
    columns = {}
    for logical, candidates in _COLUMNS.items():
        found = next((c for c in candidates if c in present), None)
        if found:
            columns[logical] = found
    missing = [f for f in _REQUIRED if f not in columns]
    if missing:
        raise ReasonedError(Reason(
            "extension_outdated",
            f"pg_stat_statements lacks {', '.join(missing)}; run: ALTER EXTENSION "
            "pg_stat_statements UPDATE;"))
    return Plan(facts["schema"], columns, bool(facts["info"]), facts["planning"] == "on",
                facts["io"] == "on", int(facts["maximum"] or 5000))


# Which server the rows come from: a failover, switchover or restore changes one of them.
# (pg_control_* may be revoked: then the other markers still work.)
_SERVER_MARKERS = """
    SELECT CASE WHEN pg_catalog.has_function_privilege('pg_catalog.pg_control_system()',
                                                        'EXECUTE')
                THEN (SELECT system_identifier FROM pg_catalog.pg_control_system()) END
               AS system_identifier,
           CASE WHEN pg_catalog.has_function_privilege('pg_catalog.pg_control_checkpoint()',
                                                        'EXECUTE')
                THEN (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()) END
               AS timeline,
           extract(epoch FROM pg_catalog.pg_postmaster_start_time())::float8 AS started"""


def _reset_marker(step: Step) -> sql.Composed | None:
    plan: Plan = step.plan
    if not plan.has_info:
        return None
    return sql.SQL("""
        SELECT dealloc, extract(epoch FROM stats_reset)::float8 AS stats_reset
        FROM {}.pg_stat_statements_info""").format(sql.Identifier(plan.schema))


def _statements(step: Step) -> sql.Composed:
    plan: Plan = step.plan
    selected = [sql.SQL("s.{} AS {}").format(sql.Identifier(column), sql.Identifier(logical))
                for logical, column in plan.columns.items() if logical != "toplevel"]
    where = sql.SQL("WHERE s.queryid IS NOT NULL")
    if "toplevel" in plan.columns:
        where = sql.SQL("WHERE s.queryid IS NOT NULL AND s.toplevel")
    return sql.SQL("""
        SELECT s.dbid, s.userid, s.queryid, d.datname, r.rolname,
               (r.rolname = current_user) AS is_self, {fields}
        FROM {schema}.pg_stat_statements(false) s
        LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid
        LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.userid
        {where}""").format(fields=sql.SQL(", ").join(selected),
                           schema=sql.Identifier(plan.schema), where=where)


def _tracked(step: Step) -> sql.Composed:
    return sql.SQL("SELECT count(*) AS tracked FROM {}.pg_stat_statements(false)").format(
        sql.Identifier(step.plan.schema))


def _texts(step: Step) -> sql.Composed | None:
    return None if not _unclassified(step) else sql.SQL("""
        SELECT dbid, userid, queryid, query FROM {}.pg_stat_statements(true)
        WHERE queryid = ANY(%s)""").format(sql.Identifier(step.plan.schema))


def _unclassified(step: Step) -> list[int]:
    """Query ids of statements whose text was not classified yet (read once each)."""
    if not _needs_text(step.options):
        return []
    state: StatementsState = step.state
    return sorted({row["queryid"] for row in step.rows["statements"]
                   if (row["dbid"], row["userid"], row["queryid"]) not in state.kinds})


def _needs_text(options: Mapping[str, Any]) -> bool:
    return bool(options["query_text"] or options["sla_exclude_queries"]
                or not options["sla_include_utility"])


# The reset time is read before the rows and again after them: a reset that lands
# between the two reads makes this poll a new baseline instead of counting every
# statement's lifetime again.
QUERIES: dict[str, Query] = {
    "server": Query(VersionedSQL({130000: _SERVER_MARKERS})),
    "reset_before": Query(_reset_marker),
    "statements": Query(_statements),
    "tracked": Query(_tracked),
    "reset_after": Query(_reset_marker),
    "texts": Query(_texts, params=lambda step: [_unclassified(step)]),
}


def summary_of(rows: Mapping[str, Rows], plan: Plan) -> dict[str, Any]:
    """One summary row from the per-poll queries and the plan."""
    summary: dict[str, Any] = {**rows["server"][0], **rows["tracked"][0],
                               "max": plan.maximum, "track_planning": plan.track_planning,
                               "track_io_timing": plan.track_io_timing,
                               "toplevel": plan.toplevel}
    if rows["reset_after"]:
        summary.update(rows["reset_after"][0])
        summary["stats_reset_before"] = rows["reset_before"][0]["stats_reset"]
    return summary


# --- pure parts -----------------------------------------------------------------------------

def _cumulative(row: Mapping[str, Any]) -> dict[str, float]:
    values = {f: float(row[f] or 0.0) for f in _DELTA_FIELDS if f != "sumsq" and f in row}
    # sum of squares (ms^2) implied by the population stddev: additive, so it has deltas
    calls, total, stddev = values["calls"], values["total"], float(row["stddev"] or 0.0)
    values["sumsq"] = latency.Moments.from_stats(calls, total, stddev).sumsq
    return values


def _classify(state: StatementsState, texts: Rows, options: Mapping[str, Any]) -> None:
    """Learn each new statement's kind from its text once; keep the text only when it
    may be exported (``query_text``)."""
    patterns = options["sla_exclude_queries"]
    for row in texts:
        key = (row["dbid"], row["userid"], row["queryid"])
        text = row["query"]
        kind = UTILITY if is_utility(text) else 0
        if text and any(re.search(p, text, re.I) for p in patterns):
            kind |= PATTERN
        state.kinds[key] = kind
        if options["query_text"] and text:
            state.texts[key] = text


def _exclusion(row: Mapping[str, Any], kind: int, options: Mapping[str, Any]) -> str | None:
    """Why a statement's calls stay out of the SLA latency, or None."""
    if options["sla_exclude_self"] and row["is_self"]:
        return "self"
    if row["rolname"] in options["sla_exclude_roles"]:
        return "role"
    if kind & UTILITY and not options["sla_include_utility"]:
        return "utility"
    if kind & PATTERN:
        return "pattern"
    return None


def _new_baseline(state: StatementsState, summary: Mapping[str, Any]) -> str | None:
    """Why every counter must be read as a new baseline this poll, or None.

    A different server behind the target (failover, switchover, restore: another system
    identifier, timeline or postmaster start) has other counters, not larger ones; a
    reset between the reads of the reset marker and of the rows leaves some rows from
    before it. Either way, no interval can be computed from this poll.
    """
    server = (summary.get("system_identifier"), summary.get("timeline"), summary.get("started"))
    previous, state.server = state.server, server
    if previous is not None and previous != server:
        return "server_changed"
    after = summary.get("stats_reset")
    before = summary.get("stats_reset_before", after)
    if before != after:
        return "reset_during_read"
    return None


def _entry_restarted(row: Mapping[str, Any], delta: Mapping[str, float],
                     previous: tuple[float, float] | None) -> bool:
    """True when a statement's increments cannot be calls of one continuing entry: it was
    reset on its own (``pg_stat_statements_reset(userid, dbid, queryid)``) or evicted and
    created again, so its counters started over inside the interval.

    A min that rose or a max that fell is impossible for a continuing entry, and so are
    interval moments that no set of calls within [min, max] can have.
    """
    lo, hi = float(row["min"] or 0.0), float(row["max"] or 0.0)
    if previous is not None and (lo > previous[0] * 1000.0 * (1 + 1e-9) or
                                 hi < previous[1] * 1000.0 * (1 - 1e-9)):
        return True
    calls, total, sumsq = delta["calls"], delta["total"], delta["sumsq"]
    if calls <= 0:
        return False
    slack = 1e-6 * max(abs(total), 1.0)
    if total < calls * lo - slack or total > calls * hi + slack:
        return True
    # sum of squares below total^2 / calls is a negative variance (beyond rounding)
    return sumsq < total * total / calls * (1.0 - 1e-6) - slack


def _interval(state: StatementsState, summary: Mapping[str, Any], by_key: Mapping[Key, Any],
              cumulative: Mapping[Key, Mapping[str, float]]
              ) -> tuple[dict[Key, dict[str, float]], bool]:
    """This interval's increments per statement, with every kind of reset accounted for
    (and counted in ``state.baselines``), and whether this poll only set a baseline."""
    since = {key: row["stats_since"] for key, row in by_key.items() if "stats_since" in row}
    reason = _new_baseline(state, summary)
    reset_at = summary.get("stats_reset")
    if reason is None and state.last_reset is not None and reset_at is not None and \
            reset_at != state.last_reset:
        reason = "stats_reset" if state.tracker.has_baseline else None
    state.last_reset = reset_at
    if reason in ("server_changed", "reset_during_read"):
        state.tracker.forget()
    baseline = not state.tracker.has_baseline
    restarts = state.tracker.restarts
    deltas = state.tracker.update(cumulative, full_reset=reason == "stats_reset", since=since)
    restarts = state.tracker.restarts - restarts
    for key, delta in deltas.items():
        if delta["calls"] < cumulative[key]["calls"] and \
                _entry_restarted(by_key[key], delta, state.extremes.get(key)):
            deltas[key] = dict(cumulative[key])
            restarts += 1
    if reason is not None:
        state.baselines[reason] = state.baselines.get(reason, 0.0) + 1
    state.baselines["entry_reset"] = state.baselines.get("entry_reset", 0.0) + restarts
    return deltas, baseline


def _account(state: StatementsState, deltas: Mapping[Key, Mapping[str, float]],
             promoted: set[Key], by_key: Mapping[Key, Any], now: float) -> None:
    """Add each increment to exactly one exported series: its statement's, or "other"."""
    members = state.membership.members
    # A statement that leaves the top N (or pg_stat_statements) stops being exported, but
    # its sums are kept for an hour: if it comes back, its counter continues upward. After
    # that its series has long been stale in Prometheus, and a new one may start at 0.
    for key in members:
        state.last_member[key] = now
    for key, seen in list(state.last_member.items()):
        if now - seen > FORGET_AFTER:
            del state.last_member[key]
            state.totals.pop(key, None)
            state.labels.pop(key, None)
    # The poll that promotes a statement counts its interval under "other" and starts its
    # series where it stood (0 when new): rate() and increase() then see every later
    # interval, and the sum over all series stays the server's total.
    continuing = set(members) - promoted
    for key, delta in deltas.items():
        into = state.totals[key] if key in continuing else state.other
        for name, value in delta.items():
            into[name] = into.get(name, 0.0) + value
    for key in members:
        state.totals.setdefault(key, dict.fromkeys(_DELTA_FIELDS, 0.0))
        row = by_key[key]
        # a dropped database or role keeps its oid in the label: two of them must not
        # collide into one series
        state.labels[key] = (row["datname"] or f"(dropped database {key[0]})",
                             row["rolname"] or f"(dropped role {key[1]})")


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    state: StatementsState = ctx.state
    options = ctx.options
    summary = summary_of(rows, ctx.plan)
    state.configure(options)
    _classify(state, rows["texts"], options)
    by_key = {(r["dbid"], r["userid"], r["queryid"]): r for r in rows["statements"]}
    for cache in (state.texts, state.kinds):  # bounded: only statements still tracked
        for key in [k for k in cache if k not in by_key]:
            del cache[key]
    cumulative = {key: _cumulative(row) for key, row in by_key.items()}
    deltas, baseline = _interval(state, summary, by_key, cumulative)
    # no interval yet (first poll, new server): free places are filled by lifetime totals
    lifetime = {key: values["total"] for key, values in cumulative.items()} if baseline \
        else None
    promoted = state.membership.update(
        {key: delta["total"] for key, delta in deltas.items()}, by_key, ctx.now, lifetime)
    _account(state, deltas, promoted, by_key, ctx.now)
    yield from _statement_families(state, ctx.target, summary, options)
    yield from _latency_families(state, ctx, by_key, deltas, cumulative)
    yield from _summary_families(state, summary, ctx.target)


def _statement_families(state: StatementsState, t: str, summary: Mapping[str, Any],
                        options: Mapping[str, Any]) -> Iterator[Metric]:
    labels = ["datname", "user", "queryid"]
    for name, metric, doc, scale, needs in _COUNTERS:
        if needs == "planning" and not summary["track_planning"]:
            continue
        if needs == "io" and not summary["track_io_timing"]:
            continue
        family = counter(metric, doc + " Top N statements; the rest under queryid='other'.",
                         labels)
        for key in state.membership.members:
            datname, user = state.labels[key]
            family.add_metric([t, datname, user, str(key[2])],
                              state.totals[key].get(name, 0.0) * scale)
        family.add_metric([t, "", "", OTHER], state.other.get(name, 0.0) * scale)
        yield family
    if options["query_text"]:
        info = gauge("hiw_statement_query_info",
                     "Normalized query text of a top-N statement (opt-in; never utility "
                     "statements, literals or comments).", [*labels, "query"])
        for key in state.membership.members:
            text = safe_text(state.texts.get(key), options["query_text_length"])
            if text:
                datname, user = state.labels[key]
                info.add_metric([t, datname, user, str(key[2]), text], 1.0)
        yield info


def _latency_families(state: StatementsState, ctx: Context, by_key: Mapping[Key, Any],
                      deltas: Mapping[Key, Mapping[str, float]],
                      cumulative: Mapping[Key, Mapping[str, float]]) -> Iterator[Metric]:
    options, t = ctx.options, ctx.target
    grid = state.grid
    accumulator = latency.GridAccumulator(grid)
    calls = total = 0.0
    slow = 0
    previous = state.extremes
    state.extremes = {key: (float(row["min"] or 0.0) / 1000.0, float(row["max"] or 0.0) / 1000.0)
                      for key, row in by_key.items()}
    for key, delta in deltas.items():
        n = delta["calls"]
        if n <= 0:
            continue
        row = by_key[key]
        why = _exclusion(row, state.kinds.get(key, 0), options)
        if why is not None:
            state.excluded[why] = state.excluded.get(why, 0.0) + n
            continue
        moments = latency.Moments(n, delta["total"] / 1000.0, delta["sumsq"] / 1e6)
        mean, _ = moments.mean_var()
        if mean > options["slow_threshold"]:
            slow += 1
        lo, hi = float(row["min"] or 0.0) / 1000.0, float(row["max"] or 0.0) / 1000.0
        atoms = latency.known_calls(n, lo, hi, previous.get(key),
                                    fresh=delta["calls"] >= cumulative[key]["calls"])
        for atom in atoms:
            accumulator.add(latency.PointMass(atom), 1.0)
        rest = latency.Moments(n - len(atoms), moments.total - sum(atoms),
                               moments.sumsq - sum(a * a for a in atoms))
        if rest.calls > 0:
            rest_mean, rest_var = rest.mean_var()
            dist = latency.fit(max(rest_mean, 0.0), rest_var, lo=lo, hi=hi,
                               lifetime_calls=cumulative[key]["calls"])
            accumulator.add(dist, rest.calls)
        calls += n
        total += moments.total
    interval = accumulator.finish()
    assert state.window is not None
    if state.tracker.has_baseline:
        state.window.add(ctx.now, interval, calls, total)
    for j, index in enumerate(state.bucket_index):
        state.histogram[j] += interval[index]
    state.histogram_count += calls
    state.histogram_sum += total

    # OpenMetrics wants whole bucket counts: the estimate's fractions are rounded (the
    # cumulative float only grows, so the rounded buckets stay monotone in time and le)
    buckets = [(_le(grid[index]), float(math.floor(state.histogram[j] + 0.5))) for j, index in
               enumerate(state.bucket_index)]
    buckets.append(("+Inf", state.histogram_count))
    histogram = HistogramMetricFamily(
        "hiw_query_duration_seconds",
        "Execution time of top-level statements (SLA scope), estimated per call from "
        "pg_stat_statements moments.", labels=["target"])
    histogram.add_metric([t], buckets, sum_value=state.histogram_sum)
    yield histogram

    counts, window_calls, window_total = state.window.totals()
    # a summary, like Go's: quantiles over a sliding window, _count and _sum cumulative
    quantiles = Metric("hiw_query_latency_seconds",
                       "Query latency quantiles over the rolling window, computed by the agent "
                       "(NaN without calls); _count and _sum are cumulative.", "summary")
    wanted = sorted({*QUANTILES, options["sla_quantile"]})
    values = {q: latency.quantile(grid, counts, window_calls, q) for q in wanted}
    for q in wanted:
        quantiles.add_sample("hiw_query_latency_seconds", {"target": t, "quantile": f"{q:g}"},
                             values[q])
    quantiles.add_sample("hiw_query_latency_seconds_count", {"target": t},
                         state.histogram_count)
    quantiles.add_sample("hiw_query_latency_seconds_sum", {"target": t}, state.histogram_sum)
    yield quantiles
    mean_family = gauge("hiw_query_latency_mean_seconds",
                        "Mean query latency over the rolling window (NaN without calls).")
    mean_family.add_metric([t], window_total / window_calls if window_calls else math.nan)
    yield mean_family
    window_calls_family = gauge("hiw_query_latency_window_calls",
                                "Calls in the rolling window behind the latency quantiles.")
    window_calls_family.add_metric([t], window_calls)
    yield window_calls_family

    target = gauge("hiw_sla_query_latency_target_seconds", "SLA latency target.")
    target.add_metric([t], options["sla_latency"])
    sla_q = gauge("hiw_sla_query_latency_quantile", "Quantile the SLA target applies to.")
    sla_q.add_metric([t], options["sla_quantile"])
    met = gauge("hiw_sla_query_latency_met",
                "1 when the windowed latency at the SLA quantile is within the target "
                "(also 1 without calls), else 0.")
    observed = values[options["sla_quantile"]]
    met.add_metric([t], 0.0 if observed > options["sla_latency"] else 1.0)
    # How sure the estimate at the SLA quantile is: where it would be if SLA_BAND of the
    # window's calls sat on the other side of it. pg_stat_statements keeps two moments per
    # statement, not the calls: the estimator misplaces well under 1 % of them in
    # docs/accuracy.md, but where the SLA quantile sits in a gap between fast and slow
    # statements, that small share moves it a lot, and this band shows by how much.
    band = gauge("hiw_sla_query_latency_band_seconds",
                 f"The latency at sla_quantile -/+ {SLA_BAND:g} over the window: an estimate "
                 "whose band is wide is uncertain (NaN without calls).", ["bound"])
    sla_quantile = options["sla_quantile"]
    for bound, q in (("lower", max(0.0, sla_quantile - SLA_BAND)),
                     ("upper", min(0.9999, sla_quantile + SLA_BAND))):
        band.add_metric([t, bound], latency.quantile(grid, counts, window_calls, q))
    slow_family = gauge("hiw_slow_statements",
                        "Statements whose mean in the last interval exceeded slow_threshold.")
    slow_family.add_metric([t], float(slow))
    threshold = gauge("hiw_slow_statement_threshold_seconds", "The slow_threshold setting.")
    threshold.add_metric([t], options["slow_threshold"])
    yield from (target, sla_q, met, band, slow_family, threshold)


def _le(bound: float) -> str:
    return f"{bound:g}"


def _summary_families(state: StatementsState, summary: Mapping[str, Any], t: str
                      ) -> Iterator[Metric]:
    tracked = gauge("hiw_statements_tracked",
                    "Entries in pg_stat_statements (all levels, all databases).")
    tracked.add_metric([t], float(summary["tracked"]))
    maximum = gauge("hiw_statements_max", "pg_stat_statements.max.")
    maximum.add_metric([t], float(summary["max"]))
    fill = gauge("hiw_statements_fill_ratio",
                 "Entries / pg_stat_statements.max; near 1, entries are being evicted.")
    fill.add_metric([t], float(summary["tracked"]) / float(summary["max"]))
    toplevel = gauge("hiw_statements_toplevel_tracked",
                     "1: only top-level statements count (pg_stat_statements 1.9+, "
                     "PostgreSQL 14+); 0: no toplevel column (13), so with "
                     "pg_stat_statements.track = all nested statements (inside functions) "
                     "are counted too, SLA latency included.")
    toplevel.add_metric([t], 1.0 if summary.get("toplevel", True) else 0.0)
    yield from (tracked, maximum, fill, toplevel)
    if "dealloc" in summary:
        dealloc = counter("hiw_statements_deallocations",
                          "Times pg_stat_statements evicted entries to make room (14+).")
        dealloc.add_metric([t], float(summary["dealloc"]))
        reset = gauge("hiw_statements_stats_reset_timestamp_seconds",
                      "When pg_stat_statements was last reset (14+).")
        reset.add_metric([t], float(summary["stats_reset"]))
        yield from (dealloc, reset)
    resets = counter("hiw_statements_resets_detected",
                     "Resets the agent detected and kept out of the counters and latency: "
                     "server_changed (failover, switchover, restore: new baseline), "
                     "reset_during_read (new baseline), stats_reset (pg_stat_statements_reset"
                     "()), entry_reset (one statement reset or evicted and re-created).",
                     ["reason"])
    for reason in RESET_REASONS:
        resets.add_metric([t, reason], state.baselines.get(reason, 0.0))
    excluded = counter("hiw_sla_excluded_calls",
                       "Calls left out of the SLA latency (histogram, quantiles, _met) but "
                       "counted in their statement's counters: self (the agent), role "
                       "(sla_exclude_roles), utility (BEGIN, SET, DDL, ...), pattern "
                       "(sla_exclude_queries).", ["reason"])
    for reason in EXCLUSION_REASONS:
        excluded.add_metric([t, reason], state.excluded.get(reason, 0.0))
    yield from (resets, excluded)


COLLECTOR = Collector(
    name="statements",
    help="pg_stat_statements: per-statement counters (top N) and SLA latency percentiles",
    interval=60.0,
    timeout=10.0,
    queries=QUERIES,
    transform=transform,
    options=OPTIONS,
    plan=PlanStep({"facts": Query(VersionedSQL({130000: _FACTS}))}, decide),
    new_state=new_state,
)
