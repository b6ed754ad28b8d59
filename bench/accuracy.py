"""Accuracy benchmark: the agent's latency quantiles against per-call truth.

Starts a throwaway PostgreSQL 15 (system binaries) with the HiW demo schema and
``log_min_duration_statement = 0``. For each scenario it resets pg_stat_statements, runs
bounded pgbench workloads (``--log``), runs the ``statements`` collector in-process as
``hiw_monitor`` every few seconds and once at the end, and compares the agent's windowed
``hiw_query_latency_seconds`` p50/p95/p99 with two truths:

* **server truth** (the reference): the server log's duration of every call of an
  application query -- ``execute`` lines for the prepared and extended protocols (their
  ``parse`` and ``bind`` lines are not calls), ``statement:`` lines for the simple
  protocol -- with utility statements (BEGIN, COMMIT, SET, SHOW, ...) left out by
  ``hiw_monitor.analysis.querytext.is_utility``, as the agent leaves them out of the SLA;
* **client truth**: pgbench's per-transaction latency, only where a transaction is one
  call (not in e1, e2 and f, which run explicit transactions).

Scenarios: a, b, c1, c2 shapes known by construction (``pg_sleep``); d1, d2 the realistic
HiW mix (d2 with a lock holder); e1, e2 explicit transactions of 3 to 5 HiW statements
(simple and extended protocol); f ORM chatter (``SELECT 1`` pings, SET, SHOW, SET LOCAL
around a transaction); g statement churn (new statements start a third and two thirds
into the run).

To tell estimator error from measurement differences it also runs the collector's own
``transform`` on the server log's moments (the recorded rows with the workload's counters
replaced by the log's), and writes a Markdown report.

    .venv/bin/python bench/accuracy.py [--duration 30] [--only KEY ...]
                                       [--out docs/accuracy.md] [--dump DIR]
    .venv/bin/python bench/accuracy.py --replay DIR [--only KEY ...]

``--dump DIR`` writes ``DIR/<scenario>.json`` per scenario: every row set the collector's
``fetch`` returned (``statements``, ``summary``, ``texts``) with the wall-clock and
database times of its collection, the server info and options the collector ran with, the
server log's application calls (``[time, queryid, seconds]``) with a short label per
query id, the agent's final quantiles and the truths, and a fingerprint of the
estimator's code (latency, statements, querytext, deltas, topn).

``--replay DIR`` needs no database: per dumped scenario it feeds the recorded rows into a
fresh ``hiw_monitor.collectors.statements`` state through ``transform(rows, Context(...))``
with the recorded collection times and today's default options (differences from the
recorded options are printed), and prints the server truth and the agent's p50/p95/p99,
the p95 error, the live run's p95 (unchanged code reproduces it exactly; it says when the
code changed since) and the p95 error of the same code on the log's moments. A change to
``hiw_monitor/analysis/latency.py`` is judged in seconds.

Everything binds 127.0.0.1 only, every wait is bounded, every pgbench is stopped by PID if
it overruns its -T, and the cluster is destroyed at the end.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime as dt
import decimal
import hashlib
import itertools
import json
import math
import os
import platform
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from peer import stop_process  # SIGTERM, then SIGKILL, by PID: shared with bench/peer.py
from prometheus_client.core import Metric

from hiw_monitor.analysis import deltas, latency, querytext, topn
from hiw_monitor.analysis.querytext import is_utility
from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import statements as statements_collector
from hiw_monitor.collectors.base import Context, Rows, ServerInfo
from hiw_monitor.collectors.statements import (
    COLLECTOR,
    Plan,
    StatementsState,
    new_state,
    transform,
)
from hiw_monitor.config import CollectorSettings, ConnectionSettings, TargetConfig, load
from hiw_monitor.demo.cluster import Cluster, ClusterError, system_binaries
from hiw_monitor.logs import configure as configure_logging
from hiw_monitor.snapshot import Sample, SnapshotStore
from hiw_monitor.target import Target

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "heroes_in_waiting"
TARGET = "bench"
WORKLOAD_USER = "postgres"  # pgbench's role; the agent runs as hiw_monitor
QUANTILES = (0.5, 0.95, 0.99)
GOAL = 0.10  # relative error allowed at p95
COLLECT_EVERY = 5.0  # seconds between collections during a run
WINDOW = 600.0  # the agent's rolling window: longer than any run
PGBENCH_GRACE = 60.0  # pgbench must exit this long after -T, or it is stopped
APP_PREFIX = "hiw_bench_"
DUMP_FORMAT = 2  # 2: the per-poll queries' rows and the plan (1: one summary row)
# Server-side truth: every statement's duration, one line each, no parameter values.
SERVER_SETTINGS = {
    "logging_collector": "off",  # stderr goes to the pg_ctl -l logfile
    "log_min_duration_statement": "0",
    # %n: Unix epoch with milliseconds; %Q: the query id pg_stat_statements keys on
    "log_line_prefix": "'%n [%p] app=%a user=%u qid=%Q '",
    "log_parameter_max_length": "0",
    "log_min_messages": "warning",
    "max_connections": "50",
}
# One call: Execute (prepared, extended) or a simple-protocol Query; not Parse or Bind.
LOG_LINE = re.compile(
    r"^(?P<t>\d+\.\d+) \[\d+\] app=(?P<app>\S*) user=(?P<user>\S*) qid=(?P<qid>-?\d+) LOG:  "
    r"duration: (?P<ms>[0-9.]+) ms  (?:execute [^:]*|statement): (?P<text>.*)$")


# The code behind the agent's numbers, as imported: a dump says which version it ran.
CODE = hashlib.sha256(b"".join(
    Path(str(module.__file__)).read_bytes()
    for module in (latency, statements_collector, querytext, deltas, topn))).hexdigest()[:16]


class Event(NamedTuple):
    """One call of an application query, from the server log."""

    at: float  # log time (Unix epoch), just after the call
    queryid: int
    seconds: float


class BenchError(RuntimeError):
    """The benchmark could not complete; the message says which step failed."""


# --- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Script:
    """One pgbench script file: ``\\set`` lines, then one SQL command per line."""

    body: str
    weight: int

    @property
    def calls(self) -> int:
        """SQL commands per execution (per pgbench transaction)."""
        return sum(1 for line in self.body.splitlines()
                   if line.strip() and not line.startswith("\\"))


Statement = tuple[str, str]  # (a ``\set`` line or "", one SQL command)


def script(statements: Sequence[Statement], weight: int, before: Sequence[str] = (),
           after: Sequence[str] = ()) -> Script:
    """A script running ``statements`` in order between the ``before`` and ``after``
    commands."""
    sets = [line for line, _ in statements if line]
    return Script("\n".join([*sets, *before, *(sql for _, sql in statements), *after]), weight)


@dataclass(frozen=True, slots=True)
class Load:
    """One pgbench process, started ``start`` (a fraction of the run) into the run."""

    scripts: tuple[Script, ...]
    clients: int
    rate: int | None = None  # pgbench -R (transactions/s); None: as fast as possible
    start: float = 0.0

    @property
    def threads(self) -> int:
        return min(2, self.clients)

    @property
    def flags(self) -> str:
        return f"-c {self.clients} -j {self.threads}" + (f" -R {self.rate}" if self.rate else "")


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    mix: str  # Markdown: what runs, and what the truth looks like by construction
    loads: tuple[Load, ...]
    protocol: str = "prepared"  # pgbench -M

    @property
    def one_call(self) -> bool:
        """Every pgbench transaction is one call: the client truth applies."""
        return all(s.calls == 1 for load in self.loads for s in load.scripts)

    @property
    def clients(self) -> int:
        return sum(load.clients for load in self.loads)


def single(sql: str, clients: int = 4) -> tuple[Load, ...]:
    return (Load((Script(sql, 1),), clients),)


UNIFORM = Scenario(
    "a", "uniform",
    "`SELECT pg_sleep(random() * 0.2)`: uniform on [0, 200] ms (p50 100, p95 190, p99 198 "
    "ms by construction).",
    single("SELECT pg_sleep(random() * 0.2);"))
BIMODAL = Scenario(
    "b", "bimodal",
    "92 % fast HiW primary-key lookups (two statements: `student_progress` by id, weight "
    "60; `job_queue` by id, weight 32) and 8 % slow calls of a third statement, "
    "`SELECT pg_sleep(0.15 + random() * 0.05)` (uniform on [150, 200] ms). p95 lands "
    "37.5 % into the slow mode (about 169 ms by construction), p99 at 87.5 % (about "
    "194 ms), p50 in the fast mode.",
    (Load((Script("\\set p random(1, 30000)\n"
                  "SELECT completion_percentage, completed_at FROM student_progress "
                  "WHERE id = :p;", 60),
           Script("\\set j random(1, 2000)\n"
                  "SELECT status, attempts, scheduled_at FROM job_queue WHERE id = :j;", 32),
           Script("SELECT pg_sleep(0.15 + random() * 0.05);", 8)), 4),))
LOGNORMAL = Scenario(
    "c1", "heavy tail, lognormal",
    "`pg_sleep` of a lognormal drawn server-side by Box-Muller (median 10 ms, sigma 0.8, "
    "capped at 1 s): p50 10, p95 37.3, p99 64.3 ms by construction. This is the shape the "
    "agent assumes, so it is the favourable case.",
    single("SELECT pg_sleep(least(1.0, 0.01 * exp(0.8 * sqrt(-2 * ln(1 - random()))"
           " * cos(2 * pi() * random()))));"))
PARETO = Scenario(
    "c2", "heavy tail, Pareto",
    "`SELECT pg_sleep(least(1.0, 0.005 / sqrt(1 - random())))`: Pareto with alpha 2 and "
    "minimum 5 ms (infinite variance before the 1 s cap): p50 7.07, p95 22.4, p99 50 ms by "
    "construction. Not the agent's shape, and the sample variance is dominated by the few "
    "largest calls of each interval.",
    single("SELECT pg_sleep(least(1.0, 0.005 / sqrt(1 - random())));"))

# The demo workload's statements (hiw_monitor/demo/workload.py), pgbench variables for
# ORDER BY random().
CLASSROOMS = ("\\set f random(0, 49)",
              "SELECT id, name FROM classrooms WHERE facilitator_id = "
              "(SELECT id FROM facilitators ORDER BY id OFFSET :f LIMIT 1) AND is_active;")
ACTIVE = ("\\set c random(0, 199)",
          "SELECT count(*) FROM student_sessions WHERE classroom_id = "
          "(SELECT id FROM classrooms ORDER BY id OFFSET :c LIMIT 1) AND is_active;")
HEARTBEAT = ("\\set s random(0, 49)",
             "UPDATE student_sessions SET last_activity_at = now() WHERE id = "
             "(SELECT id FROM student_sessions ORDER BY id OFFSET :s LIMIT 1);")
PROGRESS = ("\\set p random(1, 10)",
            "UPDATE student_progress SET completion_percentage = "
            "least(100, completion_percentage + 5), updated_at = now() WHERE id = :p;")
JOBS = ("", "SELECT id FROM job_queue WHERE status = 'pending' "
            "ORDER BY priority, scheduled_at LIMIT 5;")
LESSON_AVG = ("", "SELECT lesson_id, avg(completion_percentage) FROM student_progress "
                  "GROUP BY lesson_id;")
SUMMARY = ("", "SELECT * FROM classroom_analytics_summary "
               "ORDER BY avg_completion DESC NULLS LAST LIMIT 10;")
REFRESH = ("", "SELECT refresh_analytics_summary();")
HIW_MIX = tuple(script([statement], weight) for statement, weight in (
    (CLASSROOMS, 100), (ACTIVE, 100), (HEARTBEAT, 80), (PROGRESS, 80), (JOBS, 60),
    (LESSON_AVG, 20), (SUMMARY, 40), (REFRESH, 1)))
HIW_MIX_TEXT = (
    "The demo workload's statements (`hiw_monitor/demo/workload.py`, same relative weights "
    "x20) with pgbench variables instead of `ORDER BY random()`: facilitator's classrooms "
    "(100), active students of a classroom (100), session heartbeat `UPDATE` on a hot set "
    "of 50 sessions (80), progress `UPDATE` on a hot set of 10 rows (80), job queue poll "
    "(60), per-lesson average over `student_progress` (20), top of "
    "`classroom_analytics_summary` (40), `SELECT refresh_analytics_summary()` (1, a "
    "`REFRESH MATERIALIZED VIEW CONCURRENTLY`).")
REALISTIC = Scenario(
    "d1", "realistic HiW mix",
    HIW_MIX_TEXT + " 10 clients, throttled to 1500 transactions/s in all. 21 of the 481 "
    "weight units (4.4 % of the calls) are the two millisecond-scale analytics statements, "
    "so p95 lands in the upper tail of the sub-millisecond ones.",
    (Load(HIW_MIX, 10, 1500),))
CONTENDED = Scenario(
    "d2", "realistic HiW mix + lock holder",
    "As d1, plus a grading job that holds a row of the hot progress set for 30 ms "
    "(`SELECT pg_sleep(0.03) FROM (SELECT id FROM student_progress WHERE id = :p FOR "
    "UPDATE) AS locked`, weight 4), so some progress updates wait on its row lock: that "
    "statement's latency becomes bimodal, and p95 moves into the millisecond range.",
    (Load((*HIW_MIX, Script(
        "\\set p random(1, 10)\n"
        "SELECT pg_sleep(0.03) FROM "
        "(SELECT id FROM student_progress WHERE id = :p FOR UPDATE) AS locked;", 4)),
        10, 1500),))

# Reads first, updates last and always sessions before progress: no lock-order deadlock.
TRANSACTIONS = tuple(script(statements, weight, ("BEGIN;",), ("COMMIT;",))
                     for statements, weight in (
    ((CLASSROOMS, ACTIVE, SUMMARY, JOBS), 19),  # facilitator's dashboard
    ((CLASSROOMS, ACTIVE, HEARTBEAT, PROGRESS), 61),  # student activity
    ((JOBS, HEARTBEAT, PROGRESS), 19),  # job worker
    ((CLASSROOMS, ACTIVE, LESSON_AVG, SUMMARY, JOBS), 20),  # lesson report
    ((REFRESH, SUMMARY, JOBS), 1),  # analytics refresh
))
TRANSACTIONS_TEXT = (
    "Explicit transactions of 3 to 5 d1 statements between `BEGIN` and `COMMIT`, five "
    "shapes: facilitator's dashboard (classrooms, active students, analytics top, job "
    "poll; weight 19), student activity (classrooms, active students, heartbeat `UPDATE`, "
    "progress `UPDATE`; 61), job worker (job poll, heartbeat, progress; 19), lesson report "
    "(classrooms, active students, per-lesson average, analytics top, job poll; 20), "
    "analytics refresh (refresh, analytics top, job poll; 1). Per statement that is d1's "
    "mix (job poll 59 instead of 60): 4.0 application statements and 2 utility statements "
    "per transaction. Reads first, updates last, sessions before progress (no deadlock); "
    "the updates' row locks are now held until `COMMIT`, one round trip later. 10 "
    "clients, 300 transactions/s in all.")
TX_SIMPLE = Scenario(
    "e1", "transactions, simple protocol",
    TRANSACTIONS_TEXT + " Simple protocol: every command is a Query message with the "
    "values inlined (as psycopg2 sends them); the log's `statement:` duration covers "
    "parse, analysis, planning and execution.",
    (Load(TRANSACTIONS, 10, 300),), protocol="simple")
TX_EXTENDED = Scenario(
    "e2", "transactions, extended protocol",
    "As e1, with the extended protocol and unnamed statements: Parse, Bind and Execute for "
    "every command (as psycopg 3 and JDBC send them); the log's `execute` duration is "
    "execution only.",
    (Load(TRANSACTIONS, 10, 300),), protocol="extended")
ORM_BEFORE = ("SELECT 1;",  # pool pre-ping
              f"SET application_name = '{APP_PREFIX}f';",  # checkout reset (same name)
              "SHOW transaction_isolation;",  # dialect / driver probe
              "BEGIN;", "SET LOCAL statement_timeout = '5s';")
ORM = tuple(script(statements, weight, ORM_BEFORE, ("COMMIT;",))
            for statements, weight in (((CLASSROOMS, ACTIVE), 3), ((HEARTBEAT, PROGRESS), 2),
                                       ((JOBS, SUMMARY), 2), ((LESSON_AVG, CLASSROOMS), 1)))
ORM_CHATTER = Scenario(
    "f", "ORM chatter",
    "What a pooled ORM session sends around two HiW statements, per transaction: "
    "`SELECT 1` (pool pre-ping), `SET application_name`, `SHOW transaction_isolation`, "
    "`BEGIN`, `SET LOCAL statement_timeout`, two d1 statements, `COMMIT`. The pairs: "
    "classrooms + active students (weight 3), heartbeat + progress `UPDATE` (2), job poll "
    "+ analytics top (2), per-lesson average + classrooms (1). 5 utility statements and 3 "
    "application queries per transaction, a third of those the `SELECT 1` ping (a "
    "planned statement, so in the SLA, and in the truth). Extended protocol (psycopg 3, "
    "JDBC). 10 clients, 200 transactions/s in all.",
    (Load(ORM, 10, 200),), protocol="extended")

PROGRESS_COLUMNS = ("lesson_id", "completion_percentage", "completed_at", "created_at",
                    "updated_at", "student_session_id")
RELEASE_2 = tuple(script([statement], weight) for statement, weight in (
    (("\\set n random(1, 12)", "SELECT id, title, duration_minutes FROM lessons "
      "WHERE lesson_number = :n AND is_published;"), 30),
    (("\\set s random(0, 199)", "SELECT lesson_id, completion_percentage, completed_at "
      "FROM student_progress WHERE student_session_id = (SELECT id FROM student_sessions "
      "ORDER BY id OFFSET :s LIMIT 1) ORDER BY lesson_id;"), 30),
    (("\\set j random(1, 2000)", "UPDATE job_queue SET attempts = attempts + 1 "
      "WHERE id = :j;"), 20),
    (("", "SELECT count(*) FROM job_queue WHERE status = 'running';"), 20)))
RELEASE_3 = tuple(script([statement], weight) for statement, weight in (
    (("\\set f random(0, 49)", "SELECT c.name, count(s.id) FROM classrooms c JOIN "
      "student_sessions s ON s.classroom_id = c.id WHERE c.facilitator_id = (SELECT id "
      "FROM facilitators ORDER BY id OFFSET :f LIMIT 1) GROUP BY c.name;"), 20),
    (("\\set c random(0, 199)", "SELECT avg_completion, active_students FROM "
      "classroom_analytics_summary WHERE classroom_id = (SELECT id FROM classrooms "
      "ORDER BY id OFFSET :c LIMIT 1);"), 20),
    (("", "SELECT id, job_type, attempts FROM job_queue WHERE status = 'failed' "
      "ORDER BY finished_at DESC NULLS LAST LIMIT 10;"), 12),
    *((("\\set p random(1, 30000)",
        f"SELECT id, {a}, {b} FROM student_progress WHERE id = :p;"), 4)
      for a, b in itertools.islice(itertools.combinations(PROGRESS_COLUMNS, 2), 12))))
CHURN = Scenario(
    "g", "statement churn",
    "d1's mix from the start (6 clients, 800 transactions/s); a third into the run a "
    "second pgbench adds 4 new statements (a lesson page, a student's progress, a job "
    "retry `UPDATE`, a running-jobs count; 2 clients, 300/s), two thirds in a third one "
    "adds 15 more (a per-classroom join, an analytics lookup, failed jobs, and 12 "
    "ORM-style primary-key lookups on `student_progress` that differ only in their two "
    "selected columns, each its own query id; 2 clients, 400/s). Every new statement "
    "first appears between two collections, so the agent meets it with calls already in "
    "its first interval. One statement per transaction.",
    (Load(HIW_MIX, 6, 800), Load(RELEASE_2, 2, 300, start=1 / 3),
     Load(RELEASE_3, 2, 400, start=2 / 3)))
SCENARIOS = (UNIFORM, BIMODAL, LOGNORMAL, PARETO, REALISTIC, CONTENDED, TX_SIMPLE,
             TX_EXTENDED, ORM_CHATTER, CHURN)


# --- statistics -----------------------------------------------------------------------------


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default, type 7).

    >>> quantile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.5
    """
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Quantiles:
    """Call count and p50/p95/p99 (seconds) of one view of a run."""

    calls: float
    values: tuple[float, float, float]

    @classmethod
    def of(cls, samples: Iterable[float]) -> Quantiles:
        ordered = sorted(samples)
        p50, p95, p99 = (quantile(ordered, q) for q in QUANTILES)
        return cls(len(ordered), (p50, p95, p99))

    @property
    def p95(self) -> float:
        return self.values[1]


def relative_error(estimate: float, truth: float) -> float:
    return (estimate - truth) / truth if truth > 0 else math.nan


@dataclass(frozen=True, slots=True)
class StatementTruth:
    """One statement's server-log durations and what the agent's fit makes of them."""

    label: str
    truth: Quantiles
    mean: float
    maximum: float
    fit_kind: str  # the family fit() picks for the whole run's moments
    fit_p95: float
    tail_variance: float  # share of the variance carried by the calls above the own p99
    pgss_calls: float  # pg_stat_statements at the end: calls, mean execution and planning (s)
    pgss_mean: float
    pgss_plan: float


def grid_quantiles(samples: Sequence[float], grid: Sequence[float]) -> Quantiles:
    """The exact samples counted on the agent's grid, read back with its interpolation:
    the error of the grid and of ``latency.quantile`` alone, with no shape assumed."""
    ordered = sorted(samples)
    cumulative = [float(bisect.bisect_right(ordered, bound)) for bound in grid]
    p50, p95, p99 = (latency.quantile(grid, cumulative, len(ordered), q) for q in QUANTILES)
    return Quantiles(len(ordered), (p50, p95, p99))


def statement_truths(events: Sequence[Event], grid: Sequence[float],
                     pgss: Mapping[int, tuple[float, float, float]],
                     labels: Mapping[int, str]) -> list[StatementTruth]:
    by_id: dict[int, list[float]] = defaultdict(list)
    for event in events:
        by_id[event.queryid].append(event.seconds)
    result = []
    for queryid, values in sorted(by_id.items(), key=lambda kv: -len(kv[1])):
        n = len(values)
        mean = sum(values) / n
        var = max(0.0, sum(v * v for v in values) / n - mean * mean)
        dist = latency.fit(mean, var, lo=min(values), hi=max(values), lifetime_calls=n)
        counts = [0.0] * len(grid)
        latency.spread(dist, n, grid, counts)
        truth = Quantiles.of(values)
        squares = sum((v - mean) ** 2 for v in values)
        tail = sum((v - mean) ** 2 for v in values if v > truth.values[2])
        result.append(StatementTruth(
            labels.get(queryid, str(queryid)), truth, mean, max(values), type(dist).__name__,
            latency.quantile(grid, counts, n, 0.95), tail / squares if squares > 0 else 0.0,
            *pgss.get(queryid, (math.nan, math.nan, math.nan))))
    return result


# --- the agent's code on recorded rows ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentView:
    """What the agent exported after a run."""

    quantiles: Quantiles  # the window's p50/p95/p99 and calls
    mean: float  # the window's mean
    utility: float  # calls left out of the SLA as utility statements
    band: tuple[float, float] = (math.nan, math.nan)  # p94 / p96: the uncertainty band

    @property
    def p95(self) -> float:
        return self.quantiles.p95


def agent_view(families: Iterable[Metric]) -> AgentView:
    found: dict[str, float] = {}
    calls = mean = utility = math.nan
    for family in families:
        for s in family.samples:
            if s.name == "hiw_query_latency_seconds":
                found[s.labels["quantile"]] = s.value
            elif s.name == "hiw_query_latency_window_calls":
                calls = s.value
            elif s.name == "hiw_query_latency_mean_seconds":
                mean = s.value
            elif s.name == "hiw_sla_excluded_calls_total" and s.labels["reason"] == "utility":
                utility = s.value
            elif s.name == "hiw_sla_query_latency_band_seconds":
                found[s.labels["bound"]] = s.value
    p50, p95, p99 = (found.get(f"{q:g}", math.nan) for q in QUANTILES)
    band = (found.get("lower", math.nan), found.get("upper", math.nan))
    return AgentView(Quantiles(calls, (p50, p95, p99)), mean, utility, band)


def in_band(r: Result) -> bool:
    """The server truth's p95 lies inside the agent's uncertainty band."""
    lower, upper = r.agent.band
    return lower <= r.server.p95 <= upper


@dataclass(frozen=True, slots=True)
class Collection:
    """One collection as the collector's ``transform`` saw it."""

    wall: float  # time.time() just before it: where the server log is cut
    now: float  # the database clock (Context.now)
    rows: Mapping[str, Rows]  # what the collector's fetch returned


def estimate(collections: Sequence[Collection], server: ServerInfo, plan: Plan,
             options: Mapping[str, Any]) -> tuple[AgentView, StatementsState]:
    """The agent's numbers after these collections: ``transform`` on a fresh state."""
    state = new_state()
    families: list[Metric] = []
    for c in collections:
        families = list(transform(c.rows, Context(TARGET, server, options, c.now, state,
                                                  plan)))
    return agent_view(families), state


def upgrade_format_1(data: dict[str, Any]) -> None:
    """Dumps of format 1 hold one ``summary`` row per collection and no plan."""
    summaries = [c["rows"]["summary"][0] for c in data["collections"]]
    first = summaries[0]
    data["plan"] = {"schema": "public", "columns": {}, "has_info": "stats_reset" in first,
                    "track_planning": first["track_planning"],
                    "track_io_timing": first["track_io_timing"], "maximum": first["max"]}
    for c, summary in zip(data["collections"], summaries, strict=True):
        rows = c["rows"]
        del rows["summary"]
        rows["server"] = [{key: summary.get(key) for key in
                           ("system_identifier", "timeline", "started")}]
        rows["tracked"] = [{"tracked": summary["tracked"]}]
        info = "stats_reset" in summary
        rows["reset_before"] = [{"stats_reset": summary.get("stats_reset_before",
                                                           summary.get("stats_reset"))}] \
            if info else []
        rows["reset_after"] = [{"dealloc": summary.get("dealloc"),
                                "stats_reset": summary["stats_reset"]}] if info else []


def on_log_moments(collections: Sequence[Collection], events: Sequence[Event]
                   ) -> list[Collection]:
    """The collections with the workload's statements counted from the server log: calls,
    total, stddev, min and max (ms) of each one's logged calls up to the collection (those
    after the last one count in the last one). Every other row as it was read."""
    templates = {row["queryid"]: row for c in collections for row in c.rows["statements"]
                 if row["rolname"] == WORKLOAD_USER}
    logged = {event.queryid for event in events}
    ordered = sorted(events)
    sums: dict[int, list[float]] = {}  # query id -> [calls, total, sum of squares, min, max]
    position = 0
    result = []
    for index, c in enumerate(collections):
        last = index == len(collections) - 1
        while position < len(ordered) and (last or ordered[position].at <= c.wall):
            event = ordered[position]
            value = event.seconds * 1000.0
            s = sums.setdefault(event.queryid, [0.0, 0.0, 0.0, math.inf, 0.0])
            s[0], s[1], s[2] = s[0] + 1, s[1] + value, s[2] + value * value
            s[3], s[4] = min(s[3], value), max(s[4], value)
            position += 1
        rows = [row for row in c.rows["statements"]
                if row["rolname"] != WORKLOAD_USER or row["queryid"] not in logged]
        for queryid, (n, total, sumsq, lo, hi) in sums.items():
            if queryid in templates:
                mean = total / n
                rows.append({**templates[queryid], "calls": n, "total": total, "min": lo,
                             "max": hi, "stddev": math.sqrt(max(0.0, sumsq / n - mean * mean))})
        result.append(Collection(c.wall, c.now, {**c.rows, "statements": rows}))
    return result


# --- one run --------------------------------------------------------------------------------


class ServerLog(NamedTuple):
    events: list[Event]  # application queries only
    texts: dict[int, str]  # query id -> one logged text
    utility_calls: int
    utility_ids: set[int]
    errors: int


def read_server_log(path: Path, offset: int, app: str) -> ServerLog:
    """``app``'s calls after ``offset``: application queries, utility statements counted
    apart (``is_utility``, once per query id), and the ERROR lines."""
    with path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", errors="replace")
    events: list[Event] = []
    texts: dict[int, str] = {}
    utility: dict[int, int] = defaultdict(int)  # query id -> calls
    kinds: dict[int | str, bool] = {}  # query id (or text without one) -> is utility
    errors = 0
    marker = f" app={app} "
    for line in text.splitlines():
        if marker not in line:
            continue
        match = LOG_LINE.match(line)
        if match is None or match["app"] != app:
            errors += " ERROR:  " in line
            continue
        queryid, statement = int(match["qid"]), match["text"].strip()
        key = queryid or statement
        if key not in kinds:
            kinds[key] = bool(is_utility(statement))
        if kinds[key]:
            utility[queryid] += 1
            continue
        events.append(Event(float(match["t"]), queryid, float(match["ms"]) / 1000.0))
        texts.setdefault(queryid, statement)
    return ServerLog(events, texts, sum(utility.values()), set(utility), errors)


def read_pgbench_logs(directory: Path, prefix: str) -> tuple[list[float], int]:
    """Per-transaction latencies (seconds) from pgbench ``--log`` files, and failures.

    Columns: client, transaction, latency (us), script, epoch s, epoch us[, lag (us)].
    With ``-R`` the latency counts from the *scheduled* start, so the schedule lag (the
    7th column) is subtracted: the truth is the time from sending to the answer.
    """
    latencies: list[float] = []
    failures = 0
    for path in sorted(directory.glob(f"{prefix}.*")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) < 6 or not parts[2].isdigit():
                failures += 1
                continue
            micros = int(parts[2]) - (int(parts[6]) if len(parts) >= 7 else 0)
            latencies.append(micros / 1e6)
    return latencies, failures


@dataclass
class Result:
    scenario: Scenario
    client: Quantiles | None  # None where a transaction is more than one call
    transactions: int
    server: Quantiles
    server_p94_p96: tuple[float, float]  # how steep the true CDF is around p95
    server_mean: float
    agent: AgentView
    replayed: AgentView  # the recorded rows through a fresh transform: must equal agent
    on_log: AgentView  # the agent's code on the server log's moments
    grid_only: Quantiles
    grid_floor: float
    statements: list[StatementTruth]
    collections: int
    client_errors: int
    server_errors: int
    utility_calls: int  # in the server log (left out of the truth)
    foreign: list[tuple[float, str, str]]  # (calls, user, text) in the window, not workload


def server_info_json(server: ServerInfo) -> dict[str, Any]:
    return {"version_num": server.version_num, "version": server.version,
            "in_recovery": server.in_recovery, "extensions": dict(server.extensions)}


def _to_json(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, (tuple, frozenset, set)):
        return list(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} in the collector's rows: not dumpable")


def _from_json(obj: dict[str, Any]) -> Any:
    return dt.datetime.fromisoformat(obj["$datetime"]) if set(obj) == {"$datetime"} else obj


def json_copy(value: Any) -> Any:
    """``value`` as it comes back from the dump file."""
    return json.loads(json.dumps(value, default=_to_json), object_hook=_from_json)


class Bench:
    def __init__(self, cluster: Cluster, target: Target, settings: CollectorSettings,
                 workdir: Path, duration: float, dump: Path | None) -> None:
        self.cluster = cluster
        self.target = target
        self.settings = settings
        self.workdir = workdir
        self.duration = duration
        self.dump = dump
        self.pgbench = cluster.binaries.bindir / "pgbench"
        # the collector with a transform that also records the rows it was given
        self.collector = dataclasses.replace(COLLECTOR, transform=self._transform)
        self.recorded: list[Collection] = []
        self.server: ServerInfo | None = None
        self.plan: Plan | None = None
        self._wall = 0.0

    def _transform(self, rows: Mapping[str, Rows], ctx: Context) -> Iterable[Metric]:
        self.recorded.append(Collection(self._wall, ctx.now, json_copy(rows)))
        self.server, self.plan = ctx.server, ctx.plan
        return COLLECTOR.transform(rows, ctx)

    def collect(self, store: SnapshotStore, state: StatementsState) -> Sample:
        self._wall = time.time()
        sample = run_collection(self.target, self.collector, self.settings, store, state)
        if sample.error is not None:
            raise BenchError(f"statements collection failed: {sample.error.text}")
        return sample

    def pgbench_command(self, scenario: Scenario, index: int, seconds: int) -> list[str]:
        load = scenario.loads[index]
        command = [str(self.pgbench), "-h", "127.0.0.1", "-p", str(self.cluster.port),
                   "-U", WORKLOAD_USER, "-n", "-M", scenario.protocol, "-c", str(load.clients),
                   "-j", str(load.threads), "-T", str(seconds), "--log",
                   f"--log-prefix={self.workdir / 'log' / f'{scenario.key}-{index}'}"]
        if load.rate:
            command += ["-R", str(load.rate)]
        for i, s in enumerate(load.scripts):
            path = self.workdir / f"{scenario.key}-{index}-{i}.sql"
            path.write_text(s.body + "\n", encoding="utf-8")
            command += ["-f", f"{path}@{s.weight}"]
        return [*command, DBNAME]

    def drive(self, scenario: Scenario, app: str, store: SnapshotStore,
              state: StatementsState) -> None:
        """Run the scenario's pgbench processes, each started on time, bounded by its -T plus
        a grace and stopped by PID, collecting every COLLECT_EVERY seconds meanwhile."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGAPPNAME"] = app
        pending = list(range(len(scenario.loads)))
        running: list[tuple[subprocess.Popen[bytes], float, Path]] = []
        started = time.monotonic()
        next_tick = started + COLLECT_EVERY
        try:
            while True:
                now = time.monotonic()
                for index in [i for i in pending
                              if now >= started + scenario.loads[i].start * self.duration]:
                    pending.remove(index)
                    seconds = max(1, round(self.duration * (1 - scenario.loads[index].start)))
                    output = self.workdir / f"{scenario.key}-{index}.out"
                    with output.open("wb") as out:
                        running.append((subprocess.Popen(
                            self.pgbench_command(scenario, index, seconds), stdout=out,
                            stderr=subprocess.STDOUT, env=env, cwd=self.workdir),
                            now + seconds + PGBENCH_GRACE, output))
                if not pending and all(proc.poll() is not None for proc, _, _ in running):
                    break
                if any(proc.poll() is None and now > deadline for proc, deadline, _ in running):
                    raise BenchError(f"pgbench ({scenario.key}) overran -T by "
                                     f"{PGBENCH_GRACE:g} s")
                if now >= next_tick:
                    self.collect(store, state)
                    next_tick += COLLECT_EVERY
                else:
                    time.sleep(min(0.1, next_tick - now))
        finally:
            for proc, _, _ in running:
                stop_process(proc)
        for proc, _, output in running:
            if proc.returncode != 0:
                raise BenchError(f"pgbench ({scenario.key}) exited {proc.returncode}:\n"
                                 f"{output.read_text(errors='replace')[-2000:]}")

    def run(self, scenario: Scenario) -> Result:
        app = f"{APP_PREFIX}{scenario.key}"
        with self.cluster.connect(DBNAME) as admin:
            admin.execute("SELECT pg_stat_statements_reset()")
        offset = self.cluster.logfile.stat().st_size
        self.recorded = []
        state = new_state()
        store = SnapshotStore()
        store.register(TARGET, self.target.redacted, COLLECTOR.name, COLLECT_EVERY, WINDOW)
        self.collect(store, state)  # baseline
        self.drive(scenario, app, store, state)
        time.sleep(0.2)  # let the last backends' log lines land (they precede the replies)
        agent = agent_view(self.collect(store, state).families)
        assert self.server is not None
        assert self.plan is not None

        latencies: list[float] = []
        failures = 0
        for index in range(len(scenario.loads)):
            found, failed = read_pgbench_logs(self.workdir / "log", f"{scenario.key}-{index}")
            latencies += found
            failures += failed
        log = read_server_log(self.cluster.logfile, offset, app)
        if not latencies or not log.events:
            raise BenchError(f"{scenario.key}: no truth ({len(latencies)} pgbench log lines, "
                             f"{len(log.events)} server log durations)")
        with self.cluster.connect(DBNAME) as admin:
            rows = admin.execute(
                "SELECT s.queryid, s.calls, s.total_exec_time / s.calls, "
                "s.total_plan_time / nullif(s.plans, 0), left(s.query, 200) "
                "FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid "
                "WHERE s.toplevel AND s.calls > 0 AND r.rolname = %s",
                [WORKLOAD_USER]).fetchall()
        pgss = {row[0]: (float(row[1]), float(row[2]) / 1000.0,
                         math.nan if row[3] is None else float(row[3]) / 1000.0)
                for row in rows}
        normalized = {row[0]: short(row[4], 80) for row in rows}
        labels = {queryid: normalized.get(queryid, short(text, 80))
                  for queryid, text in log.texts.items()}
        # what else the agent's window counted (its state sums every interval's deltas)
        workload = {event.queryid for event in log.events} | log.utility_ids
        foreign = [(totals["calls"], state.labels[key][1], normalized.get(key[2], str(key[2])))
                   for key, totals in state.totals.items()
                   if key[2] not in workload and state.labels[key][1] != "hiw_monitor"
                   and totals.get("calls", 0.0) > 0]
        for calls, user, text in foreign:
            print(f"  also in the agent's window: {calls:.0f} calls by {user}: {text!r}")
        values = sorted(event.seconds for event in log.events)
        server = Quantiles.of(values)
        client = Quantiles.of(latencies) if scenario.one_call else None
        options = self.settings.options
        result = Result(
            scenario=scenario, client=client, transactions=len(latencies), server=server,
            server_p94_p96=(quantile(values, 0.94), quantile(values, 0.96)),
            server_mean=sum(values) / len(values), agent=agent,
            replayed=estimate(self.recorded, self.server, self.plan, options)[0],
            on_log=estimate(on_log_moments(self.recorded, log.events), self.server,
                            self.plan, options)[0],
            grid_only=grid_quantiles(values, state.grid), grid_floor=state.grid[0],
            statements=statement_truths(log.events, state.grid, pgss, labels),
            collections=len(self.recorded) - 1, client_errors=failures,
            server_errors=log.errors, utility_calls=log.utility_calls, foreign=foreign)
        if self.dump is not None:
            self.dump.mkdir(parents=True, exist_ok=True)
            data = {
                "format": DUMP_FORMAT, "code": CODE,
                "scenario": {"key": scenario.key, "title": scenario.title,
                             "protocol": scenario.protocol, "one_call": scenario.one_call},
                "server": server_info_json(self.server), "options": options,
                "plan": dataclasses.asdict(self.plan),
                "collections": [{"wall": c.wall, "now": c.now, "rows": c.rows}
                                for c in self.recorded],
                "labels": {str(queryid): label for queryid, label in labels.items()},
                "events": [list(event) for event in log.events],
                "utility_calls": log.utility_calls,
                "truth": {"server": [server.calls, *server.values],
                          "client": [client.calls, *client.values] if client else None},
                "agent": {"calls": agent.quantiles.calls, "quantiles": agent.quantiles.values,
                          "mean": agent.mean, "utility": agent.utility},
            }
            (self.dump / f"{scenario.key}.json").write_text(
                json.dumps(data, default=_to_json, separators=(",", ":")), encoding="utf-8")
        return result


@dataclass(frozen=True, slots=True)
class Environment:
    server_version: str
    pgbench_version: str
    duration: float
    load_before: float  # 1-minute load average before the first and after the last run
    load_after: float


def bench_settings() -> CollectorSettings:
    """The statements collector's defaults, with a window that covers a whole run."""
    base = load(environ={}, require_targets=False).collectors["statements"]
    return dataclasses.replace(base, options={**base.options, "window": WINDOW})


def run_bench(duration: float, only: Sequence[str], dump: Path | None
              ) -> tuple[list[Result], Environment]:
    binaries = system_binaries(15)
    if binaries is None:
        raise BenchError("no PostgreSQL 15 server binaries: apt-get install postgresql-15")
    if not (binaries.bindir / "pgbench").exists():
        raise BenchError(f"no pgbench in {binaries.bindir}")
    load_before = os.getloadavg()[0]
    password = secrets.token_urlsafe(18)
    settings = bench_settings()
    cluster = Cluster(binaries, settings=SERVER_SETTINGS)
    results: list[Result] = []
    try:
        cluster.init().start()
        cluster.create_hiw_database(monitor_password=password)
        with cluster.connect(DBNAME) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        server_version = str(row[0]) if row else "unknown"
        pgbench_version = subprocess.run(
            [str(cluster.binaries.bindir / "pgbench"), "--version"], capture_output=True,
            text=True, timeout=30, check=True).stdout.strip()
        target = Target(TargetConfig(name=TARGET, conninfo=cluster.dsn(DBNAME, user="hiw_monitor"),
                                     password=password), ConnectionSettings())
        try:
            with tempfile.TemporaryDirectory(prefix="hiw-accuracy-") as tmp:
                (Path(tmp) / "log").mkdir()
                bench = Bench(cluster, target, settings, Path(tmp), duration, dump)
                for scenario in SCENARIOS:
                    if only and scenario.key not in only:
                        continue
                    print(f"scenario {scenario.key} ({scenario.title}): {duration:g} s, "
                          f"{scenario.clients} clients", flush=True)
                    result = bench.run(scenario)
                    results.append(result)
                    print("  " + summary_line(result), flush=True)
        finally:
            target.close()
    finally:
        cluster.destroy()
    return results, Environment(server_version, pgbench_version, duration, load_before,
                                os.getloadavg()[0])


# --- replay ---------------------------------------------------------------------------------


def replay(directory: Path, only: Sequence[str]) -> int:
    """Recompute the agent's numbers from a ``--dump`` directory; no database."""
    order = {s.key: i for i, s in enumerate(SCENARIOS)}
    paths = sorted(directory.glob("*.json"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
    paths = [p for p in paths if not only or p.stem in only]
    if not paths:
        print(f"bench/accuracy.py: no scenario dumps in {directory}", file=sys.stderr)
        return 1
    options = bench_settings().options
    started = time.perf_counter()
    print("ms as p50 / p95 / p99. agent: the recorded rows through today's transform; "
          "live: the agent during the run (the same if the code is); on log: today's "
          "transform on the log's moments.")
    print(f"{'':4} {'calls':>7}  {'server truth':>24}  {'agent':>24}  {'p95 err':>8}  "
          f"{'live p95':>8}  {'on log':>8}  {'band (p94 - p96)':>18}")
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"), object_hook=_from_json)
        if data.get("format") == 1:
            upgrade_format_1(data)
        elif data.get("format") != DUMP_FORMAT:
            print(f"{path.stem}: dump format {data.get('format')}, expected {DUMP_FORMAT}")
            continue
        changed = {k: (data["options"].get(k), v) for k, v in json_copy(options).items()
                   if data["options"].get(k) != v}
        if changed:
            print(f"{path.stem}: options now differ from the recorded run (recorded, now): "
                  f"{changed}")
        if data.get("code") != CODE:
            print(f"{path.stem}: the estimator's code changed since the run "
                  f"({data.get('code')} then, {CODE} now)")
        server = ServerInfo(**data["server"])
        plan = Plan(**data["plan"])
        collections = [Collection(c["wall"], c["now"], c["rows"]) for c in data["collections"]]
        events = [Event(*e) for e in data["events"]]
        truth = Quantiles.of(e.seconds for e in events)
        agent = estimate(collections, server, plan, options)[0]
        on_log = estimate(on_log_moments(collections, events), server, plan, options)[0]
        print(f"{path.stem:4} {truth.calls:>7.0f}  {triple(truth):>24}  "
              f"{triple(agent.quantiles):>24}  {pct(relative_error(agent.p95, truth.p95)):>8}  "
              f"{ms(data['agent']['quantiles'][1]):>8}  "
              f"{pct(relative_error(on_log.p95, truth.p95)):>8}  "
              f"{ms(agent.band[0]) + ' - ' + ms(agent.band[1]):>18} "
              f"{'in' if agent.band[0] <= truth.p95 <= agent.band[1] else 'OUT'}")
    print(f"replayed {len(paths)} scenario(s) in {time.perf_counter() - started:.1f} s")
    return 0


# --- report ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    value = seconds * 1000
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def triple(q: Quantiles | None) -> str:
    return "n/a" if q is None else " / ".join(ms(v) for v in q.values)


def pct(error: float) -> str:
    return "n/a" if math.isnan(error) else f"{error * 100:+.1f} %"


def verdict(error: float) -> str:
    return "n/a" if math.isnan(error) else "pass" if abs(error) <= GOAL else "**miss**"


def short(text: str, length: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "…"


def vs_client(r: Result) -> float:
    return relative_error(r.agent.p95, r.client.p95) if r.client else math.nan


def summary_line(r: Result) -> str:
    client = f"{ms(r.client.p95)} ms" if r.client else "n/a"
    return (f"{r.server.calls:.0f} calls; p95 client {client}, server {ms(r.server.p95)} ms, "
            f"agent {ms(r.agent.p95)} ms "
            f"({pct(vs_client(r))} vs client, {pct(relative_error(r.agent.p95, r.server.p95))} "
            f"vs server); replay of the recorded rows: p95 {ms(r.replayed.p95)} ms")


def decompose(r: Result, index: int) -> tuple[float, float, float, float]:
    """Relative errors at one quantile against the server truth: grid only, the agent's
    code on the log's moments, the agent; and the agent against the code on the log."""
    truth = r.server.values[index]
    agent, on_log = r.agent.quantiles.values[index], r.on_log.quantiles.values[index]
    return (relative_error(r.grid_only.values[index], truth), relative_error(on_log, truth),
            relative_error(agent, truth), relative_error(agent, on_log))


def worst_statements(r: Result, count: int = 2) -> list[StatementTruth]:
    """The statements (with at least 1 % of the calls) whose own p95 the fit misses most."""
    big = [st for st in r.statements if st.truth.calls >= 0.01 * r.server.calls]
    return sorted(big, key=lambda st: -abs(relative_error(st.fit_p95, st.truth.p95)))[:count]


def fit_misses(r: Result) -> str:
    return "; ".join(
        f"`{short(st.label, 60)}` (median {ms(st.truth.values[0])} ms, p95 {ms(st.truth.p95)} "
        f"ms, max {ms(st.maximum)} ms, {st.tail_variance * 100:.0f} % of its variance above "
        f"its p99; {st.fit_kind} fit p95 {ms(st.fit_p95)} ms, "
        f"{pct(relative_error(st.fit_p95, st.truth.p95))})" for st in worst_statements(r))


def discussion(r: Result) -> str:
    """What the numbers of one scenario say, in words built from those numbers."""
    s = r.scenario
    vs_server = relative_error(r.agent.p95, r.server.p95)
    grid_error, log_error, _, agent_vs_log = decompose(r, 1)
    parts = [f"**{s.key}, {s.title}.** Agent p95 {ms(r.agent.p95)} ms, {pct(vs_server)} "
             "against the server truth"]
    if r.client is not None:
        parts[0] += (f" and {pct(vs_client(r))} against the client truth (whose p95 is "
                     f"{pct(relative_error(r.client.p95, r.server.p95))} off the server's: "
                     "round trip, Bind and scheduling of client and backend).")
    else:
        per = sum(sc.calls * sc.weight for sc in s.loads[0].scripts) / sum(
            sc.weight for sc in s.loads[0].scripts)
        parts[0] += (f"; no client truth: each of the {r.transactions} pgbench transactions "
                     f"is {per:.1f} calls, utility statements included.")
    parts.append(
        f"At p95 the grid alone costs {pct(grid_error)}, the agent's code on the log's moments "
        f"{pct(log_error)}, and the agent on pg_stat_statements differs from that by "
        f"{pct(agent_vs_log)}. Means: agent {ms(r.agent.mean)} ms, log {ms(r.server_mean)} ms "
        f"({pct(relative_error(r.agent.mean, r.server_mean))}).")
    gaps = sorted((st.mean - st.pgss_mean) * 1e6 for st in r.statements
                  if not math.isnan(st.pgss_mean))
    plans = sorted(st.pgss_plan * 1e6 for st in r.statements if not math.isnan(st.pgss_plan))
    if gaps and (s.protocol == "simple" or abs(agent_vs_log) > 0.02):
        what = ("parse, analysis and planning, which pg_stat_statements keeps out of its "
                "execution time" if s.protocol == "simple" else "executor start-up and "
                "shutdown, which pg_stat_statements does not time")
        parts.append(
            f"Per call the log's mean is a median {quantile(gaps, 0.5):.1f} µs above "
            f"pg_stat_statements' execution mean (range {gaps[0]:.1f} to {gaps[-1]:.1f} µs "
            f"over the statements): the log's duration includes {what}.")
        if s.protocol == "simple" and plans:
            parts.append(f"pg_stat_statements' own planning time is a median "
                         f"{quantile(plans, 0.5):.1f} µs per plan.")
    mismatched = [st for st in r.statements if st.truth.calls != st.pgss_calls]
    if mismatched:
        parts.append(f"{len(mismatched)} statements have another call count in the log than "
                     "in pg_stat_statements (per-statement table).")
    if r.utility_calls or r.agent.utility:
        parts.append(f"Utility calls left out: {r.utility_calls} in the log, "
                     f"{r.agent.utility:.0f} by the agent.")
    p94, p96 = r.server_p94_p96
    if p94 > 0 and p96 / p94 > 1.5:
        parts.append(f"p95 is ill-conditioned: the server truth goes from {ms(p94)} ms at p94 "
                     f"to {ms(p96)} ms at p96.")
    if r.foreign:
        listed = "; ".join(f"{calls:.0f} of `{short(text, 50)}` by {user}"
                           for calls, user, text in r.foreign)
        parts.append(f"Besides the workload the agent's window counted: {listed}.")
    if abs(vs_server) <= GOAL:
        parts.append("Within the 10 % goal against the server truth.")
    elif abs(log_error) > GOAL:
        parts.append(f"The miss is the estimator's: on the log's exact moments it misses as "
                     f"well. Fits that miss their statement's own p95 most: {fit_misses(r)}.")
    else:
        parts.append("On the log's moments the estimator is within the goal: the miss comes "
                     "from the input, what pg_stat_statements times against what the log "
                     "times, and which interval a call lands in.")
    for index, name in ((0, "p50"), (2, "p99")):
        _, log_q, agent_q, _ = decompose(r, index)
        if abs(agent_q) > GOAL:
            below = (f" (the true {name} is below the grid's floor of {ms(r.grid_floor)} ms)"
                     if r.server.values[index] < r.grid_floor else "")
            parts.append(f"{name} is off by {pct(agent_q)}{below} (on the log's moments "
                         f"{pct(log_q)}).")
    return " ".join(parts)


def conclusions(results: Sequence[Result]) -> list[str]:
    """The limits this run demonstrates, each only if the run shows it."""
    def keys(rs: Iterable[Result]) -> str:
        return ", ".join(r.scenario.key for r in rs)
    good = [r for r in results if all(abs(decompose(r, i)[2]) <= GOAL for i in range(3))]
    estimator = [r for r in results if abs(decompose(r, 1)[1]) > GOAL]
    measured = [r for r in results if abs(decompose(r, 1)[2]) > GOAL >= abs(decompose(r, 1)[1])]
    simple = [r for r in results if r.scenario.protocol == "simple"]
    overhead = [r for r in results
                if r.client and abs(relative_error(r.client.p95, r.server.p95)) > GOAL]
    lines = ["## What this run shows", ""]
    if good:
        lines.append(f"- p50, p95 and p99 all within 10 % of the server truth: {keys(good)}.")
    if estimator:
        lines.append(
            f"- The estimator misses p95 even on the log's exact moments in {keys(estimator)}. "
            "The statements whose own p95 the fit misses most are named in the Discussion; "
            "most carry the bulk of their variance in a few calls above their own p99 (lock "
            "waits, CPU scheduling; column *Variance above p99*), which two moments cannot "
            "tell from a wide body. Where p95 also sits on a steep step of the true "
            "distribution (ill-conditioned), small misplacements of calls move it a lot.")
    if measured:
        lines.append(f"- Within the goal on the log's moments but not on pg_stat_statements' "
                     f"({keys(measured)}): the inputs differ (what each times, interval "
                     "boundaries; Discussion).")
    if simple:
        lines.append(
            f"- Simple protocol ({keys(simple)}): the log's `statement:` duration includes "
            "parse, analysis and planning, pg_stat_statements' execution time (the agent's "
            "input) does not, so against this truth the agent is low by that time per call. "
            "The column *on log moments* shows what the estimator makes of the log's own "
            "durations.")
    if overhead:
        lines.append(
            "- Client-side p95 is more than 10 % above the server's where statements are short "
            "and the machine is busy (" + "; ".join(
                f"{r.scenario.key}: client {ms(r.client.p95)} ms, server {ms(r.server.p95)} ms"
                for r in overhead if r.client) + "): time the server does not measure. The "
            "agent reports execution time, by design.")
    missed = [r for r in results if abs(relative_error(r.agent.p95, r.server.p95)) > GOAL]
    if missed:
        flagged = [r for r in missed if in_band(r)]
        unflagged = [r for r in missed if not in_band(r)]
        line = (f"- Uncertainty: where p95 misses the goal ({keys(missed)}), the agent's own "
                "band (`hiw_sla_query_latency_band_seconds`, its p94 to p96) contains the "
                f"server truth in {len(flagged)} of {len(missed)}")
        line += f" ({keys(flagged)})." if flagged else "."
        if unflagged:
            line += (f" Not in {keys(unflagged)}: there the estimate is off and its band does "
                     "not show it.")
        lines.append(line)
    lines.append("")
    return lines


def render_doc(results: Sequence[Result], env: Environment, command: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    comparable = [r for r in results if r.client is not None]
    met_client = sum(abs(vs_client(r)) <= GOAL for r in comparable)
    met_server = sum(abs(relative_error(r.agent.p95, r.server.p95)) <= GOAL for r in results)
    replay_gap = max(abs(relative_error(replayed, agent)) for r in results
                     for replayed, agent in zip(r.replayed.quantiles.values,
                                                r.agent.quantiles.values, strict=True))
    lines = [
        "# Latency accuracy",
        "",
        "The `statements` collector never sees individual calls. Each poll it reads "
        "pg_stat_statements' cumulative `calls`, `total_exec_time` and `stddev_exec_time` "
        "per statement; the increments give the exact mean and variance of every "
        "statement's calls in the interval. `hiw_monitor/analysis/latency.py` fits a "
        "distribution with those two moments per statement, spreads the calls over a fine "
        "log grid, sums over statements and intervals of the rolling window, and reads "
        "p50/p95/p99 off the sum: `hiw_query_latency_seconds{quantile=...}`. Utility "
        "statements (BEGIN, COMMIT, SET, SHOW, ...) are left out by default. This page "
        "measures how close those estimates are to the real per-call latencies of the "
        "application's queries. The goal is p95 within 10 % of the server truth in every "
        "scenario.",
        "",
        "Generated by `bench/accuracy.py`; every number below is as measured by that run.",
        "",
        "## Method",
        "",
        f"- PostgreSQL {env.server_version} (system binaries), a throwaway cluster on "
        "127.0.0.1 with the HiW demo schema and seed data, `pg_stat_statements.track = all`, "
        "`track_planning = on`, `log_min_duration_statement = 0`; "
        f"{env.pgbench_version}; Python {platform.python_version()}; {os.cpu_count()} "
        f"cores, {platform.machine()}, {platform.system()} {platform.release()}; 1-minute "
        f"load average {env.load_before:.2f} before the first scenario and "
        f"{env.load_after:.2f} after the last (the benchmark's clients, server and agent "
        f"share those cores, as may anything else on the machine). Date: {now}.",
        f"- Command: `{command}`",
        "- Each scenario: `SELECT pg_stat_statements_reset()`, a fresh collector state, a "
        f"baseline collection, then `pgbench -n -M <protocol> -T {env.duration:g} --log` as "
        f"`{WORKLOAD_USER}` (one `-f script@weight` per script; g starts two more pgbench "
        "processes with new statements a third and two thirds into the run). Meanwhile the "
        "collector runs in-process as `hiw_monitor` (`run_collection`, defaults except "
        f"`window: {WINDOW:g}s`, which covers the whole run) every {COLLECT_EVERY:g} s, and "
        "once more after pgbench exits; the tables report that last collection's window. "
        "The agent leaves out its own statements (`sla_exclude_self`) and utility "
        "statements (`sla_include_utility: false`), nothing else.",
        "- What the server log times per call: `-M prepared` (a to d2, g) parses once per "
        "connection and logs `parse`, `bind` and `execute` lines separately; `-M extended` "
        "(e2, f) does Parse, Bind and Execute for every call and logs the three as well. "
        "Only `execute` lines are calls: planning happens at Bind, so their duration is "
        "execution, as pg_stat_statements' `total_exec_time` counts it (it times "
        "ExecutorRun and ExecutorFinish; the log also ExecutorStart, ExecutorEnd and the "
        "portal around them). `-M simple` (e1) logs one `statement:` line per call whose "
        "duration covers parse, analysis, planning and execution, while "
        "pg_stat_statements puts planning in `total_plan_time`, which the agent does not use.",
        "- **Server truth** (the reference): every such line of the scenario's application "
        "name (`log_line_prefix = '%n [%p] app=%a user=%u qid=%Q '`; `%Q` is the query id "
        "pg_stat_statements keys on) whose text is not a utility statement by "
        "`hiw_monitor.analysis.querytext.is_utility`, the classification the agent applies "
        "to pg_stat_statements' texts. Checks: calls per statement in the log against "
        "pg_stat_statements (per-statement table), utility calls in the log against the "
        "agent's `hiw_sla_excluded_calls_total{reason=\"utility\"}`.",
        "- **Client truth**: pgbench's per-transaction latency (3rd column of its logs, "
        "microseconds, minus the `-R` schedule lag), only where a transaction is one call "
        "(a to d2, g): it includes the loopback round trip, Bind and the client's own "
        "scheduling. In e1, e2 and f a transaction is several calls: n/a.",
        "- Quantiles of the truths: linear interpolation between order statistics over all "
        "calls of the run. Relative error = (agent - truth) / truth.",
        "- *Where the error comes from*: *grid only* counts the exact log durations on the "
        "agent's grid and reads them back with `latency.quantile` (no shape assumed); *on "
        "log moments* runs the collector's own `transform` on the rows it read, with the "
        "workload statements' calls, total, stddev, min and max replaced by those of their "
        "logged calls up to each collection: every step of the agent on exact moments of "
        "the truth.",
        f"- Every row set the collector read was recorded; replaying them through a fresh "
        f"`transform` gave the agent's numbers again (largest difference {pct(replay_gap)}): "
        "`--dump DIR` saves them, `--replay DIR` recomputes without a database.",
        "- One run per scenario. a to c spend their time in `pg_sleep` and barely load the "
        "machine; d1 to g keep 10 clients busy on the same cores as the server and the "
        "agent, so their tails move with whatever else runs: expect their numbers to vary "
        "from run to run.",
        "",
        "## Scenarios",
        "",
    ]
    for r in results:
        s = r.scenario
        flags = ", ".join([f"`-M {s.protocol} {s.loads[0].flags}`"] + [
            f"from {load.start * env.duration:.0f} s `{load.flags}`" for load in s.loads[1:]])
        lines.append(f"- **{s.key}, {s.title}** ({flags}): {s.mix}")
    lines += [
        "",
        "## Results",
        "",
        f"The p95 goal (within 10 %) is met in {met_server} of {len(results)} scenarios "
        f"against the server truth, and in {met_client} of the {len(comparable)} with a "
        "client truth; the discussion below says why each miss happens.",
        "",
        "Latencies in ms as p50 / p95 / p99. Calls: pgbench transactions / application "
        "calls in the server log / calls in the agent's window.",
        "",
        "| Scenario | Calls | Client truth | Server truth | Agent | Agent p95 vs client "
        "| Agent p95 vs server | Goal (server) | Agent band (p94 - p96) | Truth in band |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        vs_server = relative_error(r.agent.p95, r.server.p95)
        lines.append(
            f"| {r.scenario.key}, {r.scenario.title} | {r.transactions} / "
            f"{r.server.calls:.0f} / {r.agent.quantiles.calls:.0f} | {triple(r.client)} | "
            f"{triple(r.server)} | {triple(r.agent.quantiles)} | {pct(vs_client(r))} | "
            f"{pct(vs_server)} | {verdict(vs_server)} | {ms(r.agent.band[0])} - "
            f"{ms(r.agent.band[1])} | {'yes' if in_band(r) else '**no**'} |")
    lines += [
        "",
        "Agent against the server truth at the other quantiles, the means (the agent's "
        "window mean is total execution time / calls, exact up to what pg_stat_statements "
        "measures), and the checks:",
        "",
        "| Scenario | p50 error | p99 error | Agent mean (ms) | Server-log mean (ms) "
        "| Calls/s | Collections | Utility calls (log / agent) | Failed transactions / "
        "server errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario.key} | {pct(decompose(r, 0)[2])} | {pct(decompose(r, 2)[2])} | "
            f"{ms(r.agent.mean)} | {ms(r.server_mean)} | {r.server.calls / env.duration:.0f} | "
            f"{r.collections} | {r.utility_calls} / {r.agent.utility:.0f} | "
            f"{r.client_errors} / {r.server_errors} |")
    lines += [
        "",
        "### Where the error comes from",
        "",
        "Relative error against the server truth at p50 / p95 / p99.",
        "",
        "| Scenario | Grid only | On log moments | Agent |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        cells = [" / ".join(pct(decompose(r, i)[k]) for i in range(3)) for k in range(3)]
        lines.append(f"| {r.scenario.key} | {cells[0]} | {cells[1]} | {cells[2]} |")
    lines += ["", "## Discussion", ""]
    for r in results:
        lines += [discussion(r), ""]
    lines += [
        *conclusions(results),
        "## Per statement (server log)",
        "",
        "Each application statement's own distribution over the whole run, and the family "
        "`latency.fit` picks for the whole run's moments (the agent fits per interval; this "
        "shows the shape problem without the interval noise). Means: the log's, and "
        "pg_stat_statements' execution and planning time per call. ms.",
        "",
        "| Scenario | Statement | Calls (log / pgss) | Mean (log / exec / plan) | p50 | p95 "
        "| p99 | Max | Variance above p99 | Fit | Fit p95 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        for st in r.statements:
            lines.append(
                f"| {r.scenario.key} | `{short(st.label, 70)}` | {st.truth.calls:.0f} / "
                f"{st.pgss_calls:.0f} | {ms(st.mean)} / {ms(st.pgss_mean)} / "
                f"{ms(st.pgss_plan)} | {triple(st.truth).replace(' / ', ' | ')} | "
                f"{ms(st.maximum)} | {st.tail_variance * 100:.0f} % | {st.fit_kind} | "
                f"{ms(st.fit_p95)} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=30.0, metavar="SECONDS",
                        help="pgbench -T per scenario, 10 to 40 (default 30)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy.md",
                        help="Markdown file to write (default docs/accuracy.md)")
    parser.add_argument("--only", nargs="*", default=[], metavar="KEY",
                        choices=[s.key for s in SCENARIOS],
                        help="run (or replay) only these scenarios (default: all)")
    parser.add_argument("--dump", type=Path, metavar="DIR",
                        help="also save each scenario's recorded rows and truths as "
                             "DIR/<key>.json")
    parser.add_argument("--replay", type=Path, metavar="DIR",
                        help="no database: recompute the agent's numbers from a --dump DIR")
    args = parser.parse_args()
    configure_logging("warning", "console")
    if args.replay is not None:
        return replay(args.replay, args.only)
    if not 10 <= args.duration <= 40:
        parser.error("--duration must be between 10 and 40 seconds (the whole run stays "
                     "under 10 minutes)")
    try:
        results, env = run_bench(args.duration, args.only, args.dump)
    except (BenchError, ClusterError, subprocess.SubprocessError, OSError) as exc:
        print(f"bench/accuracy.py: {exc}", file=sys.stderr)
        return 1
    command = shlex.join([".venv/bin/python", "bench/accuracy.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_doc(results, env, command), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
