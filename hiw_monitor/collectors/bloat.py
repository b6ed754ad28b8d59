"""Table and B-tree index bloat, estimated from the catalog and pg_stats (no table scans),
with an optional exact mode (pgstattuple) for the largest relations on a slow schedule.

The estimate (``hiw_monitor.analysis.bloat``, explained in docs/bloat.md) needs each
column's average width. ``pg_stats`` shows a table's columns only to roles that may SELECT
them (and hides tables with row-level security from everyone but their owner), so a
monitoring role with just ``pg_monitor`` sees widths for fixed-width columns only. Tables
whose variable-width columns have no visible statistics are counted in
``hiw_bloat_unestimated_relations`` instead of being guessed at; an optional
``statistics_function`` (a SECURITY DEFINER function that returns widths and null
fractions only, never values) fills the gap. The exact mode needs ``pg_stat_scan_tables``
(part of ``pg_monitor``) and the pgstattuple extension; when it is missing the collector
says so in ``hiw_bloat_exact_status`` and keeps estimating.

How it runs: a plan per connection (:data:`_FACTS`, :func:`decide`: block size, where
pgstattuple is and whether the role may run it, whether the statistics function exists),
then the declared :data:`QUERIES` (tables, indexes, their key columns, the columns' widths)
and the exact mode as a :class:`~hiw_monitor.collectors.base.Probe`: one pgstattuple call
per relation of the round, each in its own savepoint and ``exact_timeout``, within
``exact_budget``. The round (queue, results, failure counts) is state kept between runs:
the probe's parameter sets are read from it, and only :func:`transform` advances it
(with the pure helpers of ``hiw_monitor.analysis.bloat``). One thing is special: while
exact mode is on, its plan is made again every few minutes (``PlanStep.recheck``), because
an administrator creates the extension or grants the role while the agent stays connected.

Lock safety: relations with an ``AccessExclusiveLock`` granted or requested are never
passed to a size function or to pgstattuple (a waiting request would queue us behind
it); they are counted in ``hiw_bloat_locked_relations_skipped``. A lock taken between
that check and the call waits at most the connection's ``lock_timeout``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric
from psycopg import sql

from hiw_monitor.analysis import bloat
from hiw_monitor.collectors.base import (
    LOCKED_RELATIONS_CTE,
    Collector,
    Context,
    Option,
    PlanStep,
    Probe,
    Query,
    Rows,
    Step,
    VersionedSQL,
    counter,
    gauge,
)
from hiw_monitor.errors import Reason, ReasonedError

EXACT_STATES = ("disabled", "ok", "extension_missing", "permission_denied")
# What each kind of exact measurement returns (pgstattuple_approx, pgstatindex).
TABLE_MEASURES = ("table_len", "dead_tuple_len", "approx_free_space")
INDEX_MEASURES = ("index_size", "leaf_pages", "internal_pages", "empty_pages",
                  "deleted_pages", "avg_leaf_density")

# The plan's facts, once per connection: the block size, and where pgstattuple is
# installed and whether this role may execute both functions the exact mode calls
# (to_regprocedure: NULL, never an error, when a function is missing).
_FACTS = """
SELECT pg_catalog.current_setting('block_size')::int AS block_size,
       pg_catalog.current_database() AS db,
       n.nspname AS pgstattuple_schema,
       f.approx IS NOT NULL AND f.stat IS NOT NULL AS pgstattuple_complete,
       coalesce(pg_catalog.has_function_privilege(f.approx, 'EXECUTE')
                AND pg_catalog.has_function_privilege(f.stat, 'EXECUTE'), false)
           AS pgstattuple_allowed
FROM (SELECT 1) one
LEFT JOIN pg_catalog.pg_extension e ON e.extname = 'pgstattuple'
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
LEFT JOIN LATERAL (
    SELECT pg_catalog.to_regprocedure(
               pg_catalog.quote_ident(n.nspname) || '.pgstattuple_approx(regclass)')::oid
               AS approx,
           pg_catalog.to_regprocedure(
               pg_catalog.quote_ident(n.nspname) || '.pgstatindex(regclass)')::oid AS stat
) f ON true
"""

_STATISTICS_FUNCTION = "SELECT pg_catalog.to_regprocedure(%s) IS NOT NULL AS found"

# Heap relations (tables, materialized views) at or above the size threshold, plus every
# locked one (its size is unknown: it is counted, never measured).
_TABLES = f"""
WITH {LOCKED_RELATIONS_CTE}
SELECT * FROM (
    SELECT c.oid, n.nspname AS schema, c.relname AS table, c.relnatts AS natts,
           c.reltuples::float8 AS reltuples, c.reloptions,
           pg_catalog.pg_stat_get_live_tuples(c.oid) AS live_tuples,
           pg_catalog.pg_stat_get_dead_tuples(c.oid) AS dead_tuples,
           (k.oid IS NOT NULL) AS locked,
           CASE WHEN k.oid IS NULL THEN pg_catalog.pg_relation_size(c.oid) END AS size_bytes
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN locked k ON k.oid = c.oid
    WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
      AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_toast'
) r
WHERE r.locked OR r.size_bytes >= %(min_size)s
"""

# Valid B-tree indexes of those heap relations, same rule; an index counts as locked when
# it or its table is.
_INDEXES = f"""
WITH {LOCKED_RELATIONS_CTE}
SELECT * FROM (
    SELECT ic.oid, n.nspname AS schema, tc.relname AS table, ic.relname AS index,
           tc.oid AS table_oid, ic.reltuples::float8 AS index_reltuples,
           tc.reltuples::float8 AS table_reltuples, (i.indpred IS NOT NULL) AS partial,
           ic.reloptions,
           pg_catalog.pg_stat_get_live_tuples(tc.oid) AS live_tuples,
           pg_catalog.pg_stat_get_dead_tuples(tc.oid) AS dead_tuples,
           (ki.oid IS NOT NULL OR kt.oid IS NOT NULL) AS locked,
           CASE WHEN ki.oid IS NULL AND kt.oid IS NULL
                THEN pg_catalog.pg_relation_size(ic.oid) END AS size_bytes
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_catalog.pg_class tc ON tc.oid = i.indrelid
    JOIN pg_catalog.pg_am am ON am.oid = ic.relam
    JOIN pg_catalog.pg_namespace n ON n.oid = tc.relnamespace
    LEFT JOIN locked ki ON ki.oid = ic.oid
    LEFT JOIN locked kt ON kt.oid = tc.oid
    WHERE am.amname = 'btree' AND ic.relkind = 'i' AND i.indisvalid
      AND tc.relkind IN ('r', 'm') AND tc.relpersistence <> 't'
      AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_toast'
) r
WHERE r.locked OR r.size_bytes >= %(min_size)s
"""

# Stored attributes of tables (and of expression indexes, whose statistics are kept under
# the index's name) with their visible statistics; {extra_join} / {extra_width} /
# {extra_null} bring in the optional statistics function.
_COLUMNS = """
SELECT a.attrelid AS relid, a.attnum, t.typlen, t.typalign,
       coalesce(s.avg_width::float8, {extra_width}) AS avg_width,
       coalesce(s.null_frac::float8, {extra_null}) AS null_frac
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_stats s
       ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = a.attname
      AND NOT s.inherited
{extra_join}
WHERE a.attrelid = ANY(%(relids)s) AND a.attnum > 0 AND NOT a.attisdropped
"""

# Key (and INCLUDE) columns of indexes: the stored type, and the table column they come
# from (0 for an expression).
_INDEX_COLUMNS = """
SELECT a.attrelid AS index_oid, a.attnum AS position, t.typlen, t.typalign,
       i.indkey[a.attnum - 1] AS table_attnum
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_index i ON i.indexrelid = a.attrelid
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0
"""

_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


def _check_function(value: str) -> str | None:
    if value == "" or _FUNCTION_NAME.match(value):
        return None
    return "expected a function name like hiw_monitor.column_widths (schema optional) or empty"


OPTIONS: dict[str, Option] = {
    "min_size_bytes": Option("int", 10 * 1024 * 1024, "relations smaller than this (main fork, "
                             "bytes) are not estimated (default 10 MiB)", minimum=0),
    "top_n": Option("int", 50, "tables and indexes exported one by one (each), ranked by "
                    "wasted bytes", minimum=1),
    "statistics_function": Option(
        "str", "", "a SECURITY DEFINER function returning (relid, attnum, null_frac, "
        "avg_width) from pg_statistic, for tables pg_stats hides (docs/bloat.md); empty: none",
        check=_check_function),
    "exact": Option("bool", False, "measure the largest relations with pgstattuple_approx / "
                    "pgstatindex (reads them) on the exact_interval schedule"),
    "exact_top_n": Option("int", 10, "exact mode: the N largest tables and the N largest "
                          "B-tree indexes", minimum=1, maximum=1000),
    "exact_interval": Option("duration", 6 * 3600.0, "exact mode: how often a new round of "
                             "measurements starts (default 6h)"),
    "exact_timeout": Option("duration", 10.0, "exact mode: statement timeout of each "
                            "pgstattuple call (default 10s)"),
    "exact_budget": Option("duration", 20.0, "exact mode: time spent measuring per run; the "
                           "rest of a round continues at the next run (default 20s)"),
}


def check_settings(interval: float, timeout: float, options: Mapping[str, Any]
                   ) -> list[tuple[str, str, str]]:
    """Exact-mode options that cannot fit the collector's time budget, as (option, problem,
    fix). Each pgstattuple call is one statement of the run, under the client-side deadline
    of the collector's ``timeout``; the whole exact budget, after the estimate queries,
    must fit in the ``interval`` so that runs keep to their schedule.

    >>> check_settings(900, 60, {"exact": True, "exact_timeout": 10, "exact_budget": 20})
    []
    >>> [key for key, _, _ in check_settings(60, 5, {"exact": True, "exact_timeout": 10,
    ...                                             "exact_budget": 58})]
    ['exact_timeout', 'exact_budget']
    >>> check_settings(60, 5, {"exact": False, "exact_timeout": 10, "exact_budget": 58})
    []
    """
    if not options.get("exact"):
        return []  # the exact options are not used
    problems = []
    exact_timeout, budget = options.get("exact_timeout"), options.get("exact_budget")
    if exact_timeout is not None and exact_timeout > timeout:
        problems.append((
            "exact_timeout",
            f"{exact_timeout:g}s is longer than the collector's timeout ({timeout:g}s), the "
            "client-side deadline of every statement, pgstattuple calls included",
            f"set exact_timeout to at most {timeout:g}s, or raise collectors.bloat.timeout"))
    if budget is not None and budget + timeout > interval:
        fix = (f"set exact_budget to at most {interval - timeout:g}s, or raise "
               "collectors.bloat.interval" if interval > timeout
               else "raise collectors.bloat.interval above its timeout")
        problems.append((
            "exact_budget",
            f"{budget:g}s plus the estimate queries' timeout ({timeout:g}s) does not fit "
            f"in the interval ({interval:g}s): every run would overrun its schedule", fix))
    return problems


# --- plan: once per connection ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What the collector knows about this server until it reconnects."""

    block_size: int
    exact_status: str  # one of EXACT_STATES
    pgstattuple_schema: str | None = None


def _check_statistics_function(facts: Mapping[str, Any], found: Rows, function: str) -> None:
    """Raise the reason with its fix when the configured statistics function is missing."""
    if function and not (found and found[0]["found"]):
        raise ReasonedError(Reason(
            "statistics_function_missing",
            f"statistics_function {function}() does not exist in database {facts['db']!r}; "
            "create it as shown in docs/bloat.md or set collectors.bloat.statistics_function "
            "to an empty string"))


def _exact_status(facts: Mapping[str, Any], options: Mapping[str, Any]) -> str:
    if not options["exact"]:
        return "disabled"
    if facts["pgstattuple_schema"] is None or not facts["pgstattuple_complete"]:
        return "extension_missing"
    return "ok" if facts["pgstattuple_allowed"] else "permission_denied"


def decide(rows: Mapping[str, Rows], step: Step) -> Plan:
    """The plan from the facts. A missing statistics function stops the collector (with
    the fix); exact mode that cannot run here is only a status, and the estimates go on."""
    facts = rows["facts"][0]
    _check_statistics_function(facts, rows["statistics_function"],
                               str(step.options["statistics_function"]))
    return Plan(int(facts["block_size"]), _exact_status(facts, step.options),
                facts["pgstattuple_schema"])


def _statistics_function_sql(step: Step) -> str | None:
    return _STATISTICS_FUNCTION if step.options["statistics_function"] else None


PLAN = PlanStep(
    queries={
        "facts": Query(VersionedSQL({130000: _FACTS})),
        "statistics_function": Query(
            _statistics_function_sql,
            params=lambda step: [f"{step.options['statistics_function']}()"]),
    },
    decide=decide,
    # the extension and the grant may come (or go) while the agent stays connected
    recheck=lambda plan: plan.exact_status != "disabled",
)


# --- state: the exact mode's round, kept between runs --------------------------------------


@dataclass
class BloatState:
    """Exact-mode memory of one target: the relations still to measure in this round,
    the latest measurement of each, when the round started, and failure counts."""

    queue: list[bloat.Key] = field(default_factory=list)  # (kind, oid)
    results: dict[bloat.Key, dict[str, Any]] = field(default_factory=dict)
    round_started: float | None = None
    timeouts: int = 0
    errors: int = 0


def new_state() -> BloatState:
    return BloatState()


# --- declared queries ---------------------------------------------------------------------


def _min_size(step: Step) -> dict[str, Any]:
    return {"min_size": int(step.options["min_size_bytes"])}


def _measurable_indexes(rows: Mapping[str, Rows]) -> list[Mapping[str, Any]]:
    return [r for r in rows["indexes"] if not r["locked"]]


def _index_oids(step: Step) -> dict[str, Any] | None:
    oids = [r["oid"] for r in _measurable_indexes(step.rows)]
    return {"oids": oids} if oids else None


def _column_relids(step: Step) -> dict[str, Any] | None:
    """Tables (and expression indexes) whose columns' widths the estimates need."""
    relids = {r["oid"] for r in step.rows["tables"] if not r["locked"]}
    relids |= {r["table_oid"] for r in _measurable_indexes(step.rows)}
    relids |= {r["index_oid"] for r in step.rows["index_columns"] if r["table_attnum"] == 0}
    return {"relids": sorted(relids)} if relids else None


def _columns_query(step: Step) -> sql.SQL | sql.Composed:
    function = str(step.options["statistics_function"])
    if not function:
        return sql.SQL(_COLUMNS.format(extra_join="", extra_width="NULL", extra_null="NULL"))
    name = sql.SQL(".").join(sql.Identifier(part) for part in function.split("."))
    join = sql.SQL("LEFT JOIN {}() f ON f.relid = a.attrelid AND f.attnum = a.attnum").format(
        name)
    template = _COLUMNS.format(extra_join="{join}", extra_width="f.avg_width::float8",
                              extra_null="f.null_frac::float8")
    return sql.SQL(template).format(join=join)


def _relations(rows: Mapping[str, Rows]) -> dict[bloat.Key, Mapping[str, Any]]:
    """This run's tables and indexes (locked ones too) by (kind, oid)."""
    current = {("table", int(r["oid"])): r for r in rows["tables"]}
    current.update({("index", int(r["oid"])): r for r in rows["indexes"]})
    return current


def _locked(current: Mapping[bloat.Key, Mapping[str, Any]]) -> set[bloat.Key]:
    return {key for key, row in current.items() if row["locked"]}


def _round(state: BloatState, current: Mapping[bloat.Key, Mapping[str, Any]],
           options: Mapping[str, Any], now: float) -> tuple[list[bloat.Key], float | None]:
    """The exact round as this run finds it: the queue and when the round started."""
    n = int(options["exact_top_n"])
    fresh = []
    for kind in ("table", "index"):
        fresh += bloat.largest([(key, int(row["size_bytes"])) for key, row in current.items()
                                if key[0] == kind and not row["locked"]
                                and row["size_bytes"] is not None], n)
    return bloat.current_round(state.queue, state.round_started, current, fresh, now,
                               float(options["exact_interval"]))


def _exact_each(step: Step) -> list[dict[str, Any]]:
    """The relations this run measures, in order: the round's queue (a new round when
    one is due), without the locked ones. Reads the state; the transform advances it."""
    plan: Plan | None = step.plan
    if plan is None or plan.exact_status != "ok" or step.now is None:
        return []
    state: BloatState = step.state if step.state is not None else BloatState()
    current = _relations(step.rows)
    queue, _ = _round(state, current, step.options, step.now)
    return [{"kind": kind, "oid": oid}
            for kind, oid in bloat.measurable(queue, _locked(current))]


def _exact_sql(step: Step) -> sql.Composed | None:
    """One statement for both kinds, ``kind`` and ``oid`` its parameters: the branch
    whose WHERE names the other kind becomes a one-time filter that is false, so its
    function is never called (in custom and generic plans alike)."""
    if not _exact_each(step):
        return None
    plan: Plan = step.plan
    none = sql.SQL(", ").join(sql.SQL("NULL AS {}").format(sql.Identifier(c))
                              for c in INDEX_MEASURES)
    nulls = sql.SQL(", ").join(sql.SQL("NULL") for _ in TABLE_MEASURES)
    return sql.SQL("""
        SELECT {table_columns}, {no_index}
        FROM {schema}.pgstattuple_approx(%(oid)s::oid::regclass)
        WHERE %(kind)s::text = 'table'
        UNION ALL
        SELECT {nulls}, {index_columns}
        FROM {schema}.pgstatindex(%(oid)s::oid::regclass)
        WHERE %(kind)s::text = 'index'""").format(
        table_columns=sql.SQL(", ").join(map(sql.Identifier, TABLE_MEASURES)),
        no_index=none, nulls=nulls,
        index_columns=sql.SQL(", ").join(map(sql.Identifier, INDEX_MEASURES)),
        schema=sql.Identifier(plan.pgstattuple_schema or ""))


QUERIES: dict[str, Query] = {
    "tables": Query(VersionedSQL({130000: _TABLES}), params=_min_size),
    "indexes": Query(VersionedSQL({130000: _INDEXES}), params=_min_size),
    "index_columns": Query(VersionedSQL({130000: _INDEX_COLUMNS}), params=_index_oids),
    "columns": Query(_columns_query, params=_column_relids),
    "exact": Query(_exact_sql, probe=Probe(
        each=_exact_each,
        timeout=lambda options: float(options["exact_timeout"]),
        budget=lambda options: float(options["exact_budget"]))),
}


# --- the exact round, advanced once per run ----------------------------------------------------


def advance(state: BloatState, plan: Plan, rows: Mapping[str, Rows], now: float,
            options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Take this run's measurements into the round (the only place the state changes):
    forget relations that went away, start a round when one is due, count timeouts and
    errors, keep the results, leave in the queue what the budget did not reach. Returns
    the measurements still current."""
    if plan.exact_status == "disabled":
        state.queue.clear()
        state.results.clear()
        state.round_started = None
        return []
    if plan.exact_status != "ok":
        return []
    current = _relations(rows)
    state.results = {key: result for key, result in state.results.items() if key in current}
    queue, state.round_started = _round(state, current, options, now)
    attempts = rows["exact"]
    for attempt in attempts:
        key = (str(attempt["kind"]), int(attempt["oid"]))
        outcome = attempt["outcome"]
        if outcome == "ok":
            measures = TABLE_MEASURES if key[0] == "table" else INDEX_MEASURES
            state.results[key] = {**_labels(current[key], key[0]),
                                  **{m: attempt.get(m) for m in measures},
                                  "kind": key[0], "measured_at": now}
        elif outcome == "timeout":
            state.timeouts += 1
        elif outcome == "error":
            state.errors += 1  # e.g. dropped meanwhile
        # locked meanwhile (lock_timeout): not counted, tried again next round
    state.queue = bloat.remaining(queue, _locked(current), len(attempts))
    return list(state.results.values())


def _labels(row: Mapping[str, Any], kind: str) -> dict[str, str]:
    labels = {"schema": str(row["schema"]), "table": str(row["table"])}
    if kind == "index":
        labels["index"] = str(row["index"])
        labels["fillfactor"] = str(bloat.fillfactor_of(row["reloptions"],
                                                        bloat.BTREE_LEAF_FILLFACTOR))
    return labels


# --- pure parts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    kind: str  # table | index
    labels: tuple[str, ...]  # schema, table[, index]
    size_bytes: int
    estimate: bloat.Estimate


def _column(typlen: Any, typalign: Any, stats: Mapping[str, Any] | None) -> bloat.Column | None:
    """A column's layout, or None when its width is unknown (variable width, no stats)."""
    null_frac = float(stats["null_frac"]) if stats and stats["null_frac"] is not None else 0.0
    if typlen is not None and int(typlen) > 0:
        return bloat.Column(float(typlen), str(typalign), False, null_frac)
    if stats is None or stats["avg_width"] is None:
        return None
    return bloat.Column(float(stats["avg_width"]), str(typalign), True, null_frac)


def live_tuples(row: Mapping[str, Any]) -> float | None:
    """Live tuples now: the statistics system's count while it has one (it follows
    deletes before any VACUUM or ANALYZE), else ``reltuples``; None when neither is known.

    >>> live_tuples({"live_tuples": 70, "dead_tuples": 30, "reltuples": 100.0})
    70.0
    >>> live_tuples({"live_tuples": 0, "dead_tuples": 0, "reltuples": 100.0})
    100.0
    >>> live_tuples({"live_tuples": 0, "dead_tuples": 0, "reltuples": -1.0}) is None
    True
    """
    live, dead = float(row["live_tuples"] or 0), float(row["dead_tuples"] or 0)
    if live + dead > 0:
        return live
    reltuples = float(row["reltuples"]) if row["reltuples"] is not None else -1.0
    return reltuples if reltuples >= 0 else None


def estimate_tables(rows: Rows, columns: Mapping[int, Mapping[int, Mapping[str, Any]]],
                    block_size: int) -> tuple[list[Result], int]:
    """Estimates for the unlocked tables, and how many could not be estimated."""
    results, unestimated = [], 0
    for row in rows:
        if row["locked"] or row["size_bytes"] is None:
            continue
        layout = [_column(c["typlen"], c["typalign"], c)
                  for _, c in sorted(columns.get(int(row["oid"]), {}).items())]
        live = live_tuples(row)
        if not layout or live is None or any(c is None for c in layout):
            unestimated += 1
            continue
        known = [c for c in layout if c is not None]
        fillfactor = bloat.fillfactor_of(row["reloptions"], bloat.HEAP_DEFAULT_FILLFACTOR)
        expected = bloat.expected_heap_pages(live, known, fillfactor, block_size,
                                             natts=int(row["natts"] or len(known)))
        actual = math.ceil(int(row["size_bytes"]) / block_size)
        results.append(Result("table", (str(row["schema"]), str(row["table"])),
                              int(row["size_bytes"]),
                              bloat.estimate(actual, expected, block_size)))
    return results, unestimated


def estimate_indexes(rows: Rows, index_columns: Mapping[int, Sequence[Mapping[str, Any]]],
                     columns: Mapping[int, Mapping[int, Mapping[str, Any]]],
                     block_size: int) -> tuple[list[Result], int]:
    """Estimates for the unlocked B-tree indexes, and how many could not be estimated."""
    results, unestimated = [], 0
    for row in rows:
        if row["locked"] or row["size_bytes"] is None:
            continue
        layout: list[bloat.Column | None] = []
        for key in sorted(index_columns.get(int(row["oid"]), ()),
                          key=lambda k: int(k["position"])):
            attnum = int(key["table_attnum"])
            if attnum > 0:
                stats = columns.get(int(row["table_oid"]), {}).get(attnum)
            else:
                stats = columns.get(int(row["oid"]), {}).get(int(key["position"]))
            layout.append(_column(key["typlen"], key["typalign"], stats))
        live = live_tuples({**row, "reltuples": row["table_reltuples"]})
        if not layout or live is None or any(c is None for c in layout):
            unestimated += 1
            continue
        entries = live
        table_rt, index_rt = float(row["table_reltuples"]), float(row["index_reltuples"])
        if row["partial"]:
            if table_rt > 0 and index_rt >= 0:
                entries = live * min(1.0, index_rt / table_rt)
            elif index_rt >= 0:
                entries = index_rt
        fillfactor = bloat.fillfactor_of(row["reloptions"], bloat.BTREE_LEAF_FILLFACTOR)
        expected = bloat.expected_btree_pages(entries, [c for c in layout if c is not None],
                                              fillfactor, block_size)
        actual = math.ceil(int(row["size_bytes"]) / block_size)
        results.append(Result("index",
                              (str(row["schema"]), str(row["table"]), str(row["index"])),
                              int(row["size_bytes"]),
                              bloat.estimate(actual, expected, block_size)))
    return results, unestimated


def exact_waste(row: Mapping[str, Any], block_size: int) -> tuple[float, float] | None:
    """(wasted bytes, ratio) of one pgstattuple measurement.

    Tables (pgstattuple_approx): dead tuples plus free space, over the table's length.
    Indexes (pgstatindex): the pages beyond leaf pages packed to the fillfactor, internal
    pages and the metapage.

    >>> exact_waste({"kind": "table", "table_len": 1000, "dead_tuple_len": 100,
    ...              "approx_free_space": 200}, 8192)
    (300.0, 0.3)
    >>> exact_waste({"kind": "index", "index_size": 8192 * 101, "leaf_pages": 90,
    ...              "internal_pages": 1, "empty_pages": 0, "deleted_pages": 9,
    ...              "avg_leaf_density": 45.0, "fillfactor": "90"}, 8192)
    (442368.0, 0.5346534653465347)
    """
    if row["kind"] == "table":
        size = float(row["table_len"] or 0)
        if size <= 0:
            return 0.0, 0.0
        wasted = float(row["dead_tuple_len"] or 0) + float(row["approx_free_space"] or 0)
        return wasted, min(1.0, wasted / size)
    size = float(row["index_size"] or 0)
    density = row["avg_leaf_density"]
    if size <= 0 or density is None or math.isnan(float(density)):
        return 0.0, 0.0
    pages = size / block_size
    packed = math.ceil(float(row["leaf_pages"]) * float(density) / float(row["fillfactor"]))
    expected = packed + float(row["internal_pages"]) + 1
    wasted_pages = max(0.0, pages - expected)
    return wasted_pages * block_size, wasted_pages / pages


def _by_relation(rows: Rows) -> dict[int, dict[int, Mapping[str, Any]]]:
    out: dict[int, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(int(row["relid"]), {})[int(row["attnum"])] = row
    return out


def _by_index(rows: Rows) -> dict[int, list[Mapping[str, Any]]]:
    out: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(int(row["index_oid"]), []).append(row)
    return out


def top(results: Sequence[Result], n: int) -> list[Result]:
    """The ``n`` results with the most wasted bytes (then the largest, then by name)."""
    ranked = sorted(results, key=lambda r: (-r.estimate.wasted_bytes, -r.size_bytes, r.labels))
    return ranked[:n]


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    t = ctx.target
    plan: Plan = ctx.plan
    state: BloatState = ctx.state if ctx.state is not None else BloatState()
    exact = advance(state, plan, rows, ctx.now, ctx.options)
    block_size = plan.block_size
    n = int(ctx.options["top_n"])
    columns = _by_relation(rows["columns"])
    tables, tables_blind = estimate_tables(rows["tables"], columns, block_size)
    indexes, indexes_blind = estimate_indexes(rows["indexes"], _by_index(rows["index_columns"]),
                                              columns, block_size)

    table_ratio = gauge("hiw_table_bloat_ratio", "Estimated share of the table's main fork "
                        "that is dead or free space (0..1); top N tables by wasted bytes.",
                        ["schema", "table"])
    table_bytes = gauge("hiw_table_bloat_bytes", "Estimated dead or free space in the "
                        "table's main fork, in bytes; top N tables by wasted bytes.",
                        ["schema", "table"])
    for result in top(tables, n):
        table_ratio.add_metric([t, *result.labels], result.estimate.ratio)
        table_bytes.add_metric([t, *result.labels], float(result.estimate.wasted_bytes))
    yield from (table_ratio, table_bytes)

    index_ratio = gauge("hiw_index_bloat_ratio", "Estimated share of the B-tree index beyond "
                        "its freshly built size (0..1); top N indexes by wasted bytes.",
                        ["schema", "table", "index"])
    index_bytes = gauge("hiw_index_bloat_bytes", "Estimated bytes of the B-tree index beyond "
                        "its freshly built size; top N indexes by wasted bytes.",
                        ["schema", "table", "index"])
    for result in top(indexes, n):
        index_ratio.add_metric([t, *result.labels], result.estimate.ratio)
        index_bytes.add_metric([t, *result.labels], float(result.estimate.wasted_bytes))
    yield from (index_ratio, index_bytes)

    estimated = gauge("hiw_bloat_estimated_relations", "Relations at or above min_size_bytes "
                      "with an estimate (exported or not), by kind.", ["kind"])
    blind = gauge("hiw_bloat_unestimated_relations", "Relations at or above min_size_bytes "
                  "without an estimate: a variable-width column has no visible statistics, "
                  "or the table was never analyzed. By kind.", ["kind"])
    wasted = gauge("hiw_bloat_wasted_bytes", "Estimated wasted bytes summed over every "
                   "estimated relation (not only the exported top N), by kind.", ["kind"])
    estimated.add_metric([t, "table"], float(len(tables)))
    estimated.add_metric([t, "index"], float(len(indexes)))
    blind.add_metric([t, "table"], float(tables_blind))
    blind.add_metric([t, "index"], float(indexes_blind))
    wasted.add_metric([t, "table"], float(sum(r.estimate.wasted_bytes for r in tables)))
    wasted.add_metric([t, "index"], float(sum(r.estimate.wasted_bytes for r in indexes)))
    yield from (estimated, blind, wasted)

    locked = gauge("hiw_bloat_locked_relations_skipped", "Relations skipped in this run "
                   "because an ACCESS EXCLUSIVE lock on them was held or awaited.")
    locked_ids = {int(r["oid"]) for r in (*rows["tables"], *rows["indexes"]) if r["locked"]}
    locked.add_metric([t], float(len(locked_ids)))
    yield locked

    yield from _exact_families(t, plan.exact_status, state, exact, block_size)


def _exact_families(t: str, exact_status: str, state: BloatState, exact: Rows,
                    block_size: int) -> Iterator[Metric]:
    status = gauge("hiw_bloat_exact_status", "Exact mode (pgstattuple), one-hot: disabled, "
                   "ok, extension_missing (CREATE EXTENSION pgstattuple), permission_denied "
                   "(GRANT pg_stat_scan_tables).", ["status"])
    for name in EXACT_STATES:
        status.add_metric([t, name], 1.0 if name == exact_status else 0.0)
    yield status
    table_ratio = gauge("hiw_table_bloat_exact_ratio", "Dead tuples plus free space over the "
                        "table's length, measured by pgstattuple_approx (exact mode).",
                        ["schema", "table"])
    table_bytes = gauge("hiw_table_bloat_exact_bytes", "Dead tuples plus free space in bytes, "
                        "measured by pgstattuple_approx (exact mode).", ["schema", "table"])
    index_ratio = gauge("hiw_index_bloat_exact_ratio", "Share of the index beyond its leaf "
                        "pages packed to the fillfactor, measured by pgstatindex (exact "
                        "mode).", ["schema", "table", "index"])
    index_bytes = gauge("hiw_index_bloat_exact_bytes", "Bytes of the index beyond its leaf "
                        "pages packed to the fillfactor, measured by pgstatindex (exact "
                        "mode).", ["schema", "table", "index"])
    for row in sorted(exact, key=lambda r: (r["kind"], r["schema"], r["table"],
                                            r.get("index", ""))):
        waste = exact_waste(row, block_size)
        if waste is None:
            continue
        if row["kind"] == "table":
            labels = [t, row["schema"], row["table"]]
            table_ratio.add_metric(labels, waste[1])
            table_bytes.add_metric(labels, waste[0])
        else:
            labels = [t, row["schema"], row["table"], row["index"]]
            index_ratio.add_metric(labels, waste[1])
            index_bytes.add_metric(labels, waste[0])
    yield from (table_ratio, table_bytes, index_ratio, index_bytes)
    started = gauge("hiw_bloat_exact_round_start_timestamp_seconds", "When the current exact "
                    "round started; absent before the first one.")
    if state.round_started is not None:
        started.add_metric([t], float(state.round_started))
    pending = gauge("hiw_bloat_exact_pending_relations", "Relations of the current exact round "
                    "not measured yet (they continue at the next run).")
    pending.add_metric([t], float(len(state.queue)))
    timeouts = counter("hiw_bloat_exact_timeouts", "pgstattuple calls stopped by "
                       "exact_timeout since the agent started.")
    timeouts.add_metric([t], float(state.timeouts))
    errors = counter("hiw_bloat_exact_errors", "pgstattuple calls that failed otherwise "
                     "(e.g. the relation was dropped meanwhile) since the agent started.")
    errors.add_metric([t], float(state.errors))
    yield from (started, pending, timeouts, errors)


COLLECTOR = Collector(
    name="bloat",
    per_database=True,
    help="table and B-tree index bloat estimated from the catalog and pg_stats; optional "
         "exact mode with pgstattuple",
    interval=900.0,
    timeout=60.0,
    queries=QUERIES,
    transform=transform,
    options=OPTIONS,
    plan=PLAN,
    new_state=new_state,
)
