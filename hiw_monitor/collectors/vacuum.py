"""Vacuum health per table: live and dead tuples, modifications since analyze, last
(auto)vacuum and (auto)analyze, counts, whether autovacuum would process the table now
(``hiw_monitor.analysis.vacuum``), transaction ID and multixact age against the freeze
limits, and the vacuums running now (pg_stat_progress_vacuum).

Cardinality: per-table series exist for at most ``top_n`` tables ranked by "due now",
then dead tuples, plus ``top_n_by_age`` tables ranked by freeze age; totals over every
table (``hiw_vacuum_*``) are exact whatever the limits.

Locks: everything here reads statistics views and ``pg_class``, which take no relation
locks, so nothing waits behind an application's ACCESS EXCLUSIVE lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric

from hiw_monitor.analysis import vacuum as av
from hiw_monitor.collectors.base import (
    Collector,
    Context,
    Option,
    Rows,
    VersionedSQL,
    counter,
    gauge,
)

_SETTINGS = """
SELECT name, setting
FROM pg_catalog.pg_settings
WHERE name IN ('autovacuum', 'autovacuum_vacuum_threshold', 'autovacuum_vacuum_scale_factor',
               'autovacuum_vacuum_max_threshold', 'autovacuum_vacuum_insert_threshold',
               'autovacuum_vacuum_insert_scale_factor', 'autovacuum_analyze_threshold',
               'autovacuum_analyze_scale_factor', 'autovacuum_freeze_max_age',
               'autovacuum_multixact_freeze_max_age', 'track_counts')
"""

_TABLES = """
SELECT s.relid, s.schemaname AS schema, s.relname AS table,
       s.n_live_tup AS live_tuples, s.n_dead_tup AS dead_tuples,
       s.n_mod_since_analyze AS mod_since_analyze, s.n_ins_since_vacuum AS ins_since_vacuum,
       extract(epoch FROM pg_catalog.now() - s.last_vacuum)::float8 AS last_vacuum_age,
       extract(epoch FROM pg_catalog.now() - s.last_autovacuum)::float8 AS last_autovacuum_age,
       extract(epoch FROM pg_catalog.now() - s.last_analyze)::float8 AS last_analyze_age,
       extract(epoch FROM pg_catalog.now() - s.last_autoanalyze)::float8 AS last_autoanalyze_age,
       s.vacuum_count, s.autovacuum_count, s.analyze_count, s.autoanalyze_count,
       c.reltuples::float8 AS reltuples, c.relpages, 0 AS relallfrozen, c.reloptions,
       pg_catalog.age(c.relfrozenxid) AS xid_age, pg_catalog.mxid_age(c.relminmxid) AS mxid_age
FROM pg_catalog.pg_stat_user_tables s
JOIN pg_catalog.pg_class c ON c.oid = s.relid
WHERE c.relkind IN ('r', 'm')
"""

# PostgreSQL 18 scales the insert threshold by the share of pages not all-frozen.
_TABLES_18 = _TABLES.replace("0 AS relallfrozen", "c.relallfrozen")

_PROGRESS = """
SELECT p.pid, coalesce(n.nspname, '') AS schema, coalesce(c.relname, p.relid::text) AS table,
       p.phase, p.heap_blks_total, p.heap_blks_scanned, p.heap_blks_vacuumed,
       p.index_vacuum_count,
       extract(epoch FROM pg_catalog.now() - a.xact_start)::float8 AS elapsed,
       (a.backend_type = 'autovacuum worker') AS autovacuum,
       coalesce(a.query LIKE '%(to prevent wraparound)%', false) AS wraparound
FROM pg_catalog.pg_stat_progress_vacuum p
LEFT JOIN pg_catalog.pg_class c ON c.oid = p.relid
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid
WHERE p.datname = pg_catalog.current_database()
"""

PHASES = ("initializing", "scanning heap", "vacuuming indexes", "vacuuming heap",
          "cleaning up indexes", "truncating heap", "performing final cleanup")
VACUUM_KINDS = ("manual", "autovacuum", "wraparound")

OPTIONS: dict[str, Option] = {
    "top_n": Option("int", 100, "tables with per-table series, ranked by 'autovacuum due "
                    "now', then dead tuples", minimum=1),
    "top_n_by_age": Option("int", 20, "more tables with per-table series: the oldest by "
                           "transaction ID / multixact age relative to the freeze limits",
                           minimum=0),
}


@dataclass(frozen=True, slots=True)
class TableView:
    row: Mapping[str, Any]
    decision: av.Decision
    settings: av.Settings

    @property
    def labels(self) -> tuple[str, str]:
        return str(self.row["schema"]), str(self.row["table"])

    @property
    def freeze_ratio(self) -> float:
        return max(float(self.row["xid_age"] or 0) / self.settings.freeze_max_age,
                   float(self.row["mxid_age"] or 0) / self.settings.multixact_freeze_max_age)


def _f(value: Any) -> float:
    return float(value) if value is not None else 0.0


def evaluate(tables: Rows, server_settings: Mapping[str, str | None]) -> list[TableView]:
    base = av.Settings.from_server(server_settings)
    autovacuum_on = (server_settings.get("autovacuum") or "on") == "on" and \
        (server_settings.get("track_counts") or "on") == "on"
    views = []
    for row in tables:
        settings = base.override(av.parse_reloptions(row["reloptions"]))
        counters = av.TableCounters(
            reltuples=_f(row["reltuples"]), dead_tuples=_f(row["dead_tuples"]),
            inserts_since_vacuum=_f(row["ins_since_vacuum"]),
            modifications_since_analyze=_f(row["mod_since_analyze"]),
            xid_age=_f(row["xid_age"]), mxid_age=_f(row["mxid_age"]),
            relpages=_f(row["relpages"]), relallfrozen=_f(row["relallfrozen"]))
        views.append(TableView(row, av.decide(counters, settings, autovacuum_on), settings))
    return views


def select(views: Sequence[TableView], top_n: int, top_n_by_age: int) -> list[TableView]:
    """The tables that get per-table series: the top ``top_n`` by (due now, dead tuples),
    then the ``top_n_by_age`` oldest relative to their freeze limits; sorted by name."""
    by_dead = sorted(views, key=lambda v: (
        -(v.decision.vacuum_due or v.decision.analyze_due), -_f(v.row["dead_tuples"]),
        v.labels))
    by_age = sorted(views, key=lambda v: (-v.freeze_ratio, v.labels))
    chosen = {v.labels: v for v in by_dead[:top_n]}
    for view in by_age[:top_n_by_age]:
        chosen.setdefault(view.labels, view)
    return [chosen[k] for k in sorted(chosen)]


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    t = ctx.target
    server = {str(r["name"]): r["setting"] for r in rows["settings"]}
    views = evaluate(rows["tables"], server)
    chosen = select(views, int(ctx.options["top_n"]), int(ctx.options["top_n_by_age"]))
    yield from _per_table(t, chosen)
    yield from _totals(t, views, len(chosen), server)
    yield from _progress(t, rows["progress"])


def _per_table(t: str, chosen: Sequence[TableView]) -> Iterator[Metric]:
    st = ["schema", "table"]
    live = gauge("hiw_table_live_tuples", "Estimated live rows (n_live_tup).", st)
    dead = gauge("hiw_table_dead_tuples", "Estimated dead rows not yet vacuumed (n_dead_tup).",
                 st)
    dead_ratio = gauge("hiw_table_dead_tuples_ratio", "Dead rows / (live + dead) (0..1).", st)
    mods = gauge("hiw_table_modifications_since_analyze",
                 "Rows modified since the last analyze (n_mod_since_analyze).", st)
    inserts = gauge("hiw_table_inserts_since_vacuum",
                    "Rows inserted since the last vacuum (n_ins_since_vacuum).", st)
    vac_age = gauge("hiw_table_last_vacuum_age_seconds", "Since the last vacuum, by kind "
                    "(manual, auto); absent when never.", [*st, "kind"])
    anl_age = gauge("hiw_table_last_analyze_age_seconds", "Since the last analyze, by kind "
                    "(manual, auto); absent when never.", [*st, "kind"])
    vacuums = counter("hiw_table_vacuums", "Vacuums of the table, by kind (manual, auto).",
                      [*st, "kind"])
    analyzes = counter("hiw_table_analyzes", "Analyzes of the table, by kind (manual, auto).",
                       [*st, "kind"])
    threshold = gauge("hiw_table_autovacuum_vacuum_threshold", "Dead rows above which "
                      "autovacuum vacuums the table (threshold + scale_factor x reltuples, "
                      "per-table settings applied).", st)
    vac_due = gauge("hiw_table_autovacuum_vacuum_due", "1 when autovacuum would vacuum the "
                    "table now (dead rows, inserts, or wraparound).", st)
    anl_due = gauge("hiw_table_autovacuum_analyze_due", "1 when autovacuum would analyze the "
                    "table now.", st)
    xid = gauge("hiw_table_xid_age", "age(relfrozenxid) in transactions.", st)
    mxid = gauge("hiw_table_mxid_age", "mxid_age(relminmxid) in multixacts.", st)
    xid_ratio = gauge("hiw_table_xid_freeze_ratio", "age(relfrozenxid) / the table's "
                      "autovacuum_freeze_max_age (1 = forced anti-wraparound vacuum).", st)
    mxid_ratio = gauge("hiw_table_mxid_freeze_ratio", "mxid_age(relminmxid) / "
                       "autovacuum_multixact_freeze_max_age.", st)
    for view in chosen:
        row = view.row
        labels = [t, *view.labels]
        live_n, dead_n = _f(row["live_tuples"]), _f(row["dead_tuples"])
        live.add_metric(labels, live_n)
        dead.add_metric(labels, dead_n)
        dead_ratio.add_metric(labels, dead_n / (live_n + dead_n) if live_n + dead_n else 0.0)
        mods.add_metric(labels, _f(row["mod_since_analyze"]))
        inserts.add_metric(labels, _f(row["ins_since_vacuum"]))
        for kind, column in (("manual", "last_vacuum_age"), ("auto", "last_autovacuum_age")):
            if row[column] is not None:
                vac_age.add_metric([*labels, kind], max(0.0, float(row[column])))
        for kind, column in (("manual", "last_analyze_age"), ("auto", "last_autoanalyze_age")):
            if row[column] is not None:
                anl_age.add_metric([*labels, kind], max(0.0, float(row[column])))
        vacuums.add_metric([*labels, "manual"], _f(row["vacuum_count"]))
        vacuums.add_metric([*labels, "auto"], _f(row["autovacuum_count"]))
        analyzes.add_metric([*labels, "manual"], _f(row["analyze_count"]))
        analyzes.add_metric([*labels, "auto"], _f(row["autoanalyze_count"]))
        threshold.add_metric(labels, view.decision.vacuum_threshold)
        vac_due.add_metric(labels, 1.0 if view.decision.vacuum_due else 0.0)
        anl_due.add_metric(labels, 1.0 if view.decision.analyze_due else 0.0)
        xid.add_metric(labels, _f(row["xid_age"]))
        mxid.add_metric(labels, _f(row["mxid_age"]))
        xid_ratio.add_metric(labels, _f(row["xid_age"]) / view.settings.freeze_max_age)
        mxid_ratio.add_metric(labels, _f(row["mxid_age"]) / view.settings.multixact_freeze_max_age)
    yield from (live, dead, dead_ratio, mods, inserts, vac_age, anl_age, vacuums, analyzes,
                threshold, vac_due, anl_due, xid, mxid, xid_ratio, mxid_ratio)


def _totals(t: str, views: Sequence[TableView], exported: int,
            server: Mapping[str, str | None]) -> Iterator[Metric]:
    tables = gauge("hiw_vacuum_tables", "User tables seen (all), and those with per-table "
                   "series (exported).", ["set"])
    tables.add_metric([t, "all"], float(len(views)))
    tables.add_metric([t, "exported"], float(exported))
    due = gauge("hiw_vacuum_tables_due", "Tables autovacuum would process now, by kind "
                "(vacuum, analyze, wraparound), over every user table.", ["kind"])
    due.add_metric([t, "vacuum"], float(sum(v.decision.vacuum_due for v in views)))
    due.add_metric([t, "analyze"], float(sum(v.decision.analyze_due for v in views)))
    due.add_metric([t, "wraparound"], float(sum(v.decision.wraparound for v in views)))
    disabled = gauge("hiw_vacuum_tables_autovacuum_disabled",
                     "User tables with the storage parameter autovacuum_enabled = false.")
    disabled.add_metric([t], float(sum(not v.settings.enabled for v in views)))
    dead = gauge("hiw_vacuum_dead_tuples", "Dead rows summed over every user table.")
    dead.add_metric([t], sum(_f(v.row["dead_tuples"]) for v in views))
    oldest = gauge("hiw_vacuum_oldest_xid_age", "The largest age(relfrozenxid) of any user "
                   "table.")
    oldest.add_metric([t], max((_f(v.row["xid_age"]) for v in views), default=0.0))
    oldest_m = gauge("hiw_vacuum_oldest_mxid_age", "The largest mxid_age(relminmxid) of any "
                     "user table.")
    oldest_m.add_metric([t], max((_f(v.row["mxid_age"]) for v in views), default=0.0))
    enabled = gauge("hiw_autovacuum_enabled", "1 when the autovacuum launcher runs "
                    "(autovacuum and track_counts on).")
    enabled.add_metric([t], 1.0 if (server.get("autovacuum") or "on") == "on"
                       and (server.get("track_counts") or "on") == "on" else 0.0)
    base = av.Settings.from_server(server)
    freeze = gauge("hiw_autovacuum_freeze_max_age", "autovacuum_freeze_max_age (server).")
    freeze.add_metric([t], base.freeze_max_age)
    mfreeze = gauge("hiw_autovacuum_multixact_freeze_max_age",
                    "autovacuum_multixact_freeze_max_age (server).")
    mfreeze.add_metric([t], base.multixact_freeze_max_age)
    yield from (tables, due, disabled, dead, oldest, oldest_m, enabled, freeze, mfreeze)


def _progress(t: str, rows: Rows) -> Iterator[Metric]:
    running = gauge("hiw_vacuums_in_progress", "VACUUMs running in this database now, by "
                    "kind (manual, autovacuum, wraparound = an anti-wraparound autovacuum).",
                    ["kind"])
    counts = dict.fromkeys(VACUUM_KINDS, 0.0)
    st = ["schema", "table"]
    phase = gauge("hiw_vacuum_phase", "Phase of a running VACUUM, one-hot over the phases "
                  "of pg_stat_progress_vacuum.", [*st, "phase"])
    progress = gauge("hiw_vacuum_progress_ratio", "heap_blks_scanned / heap_blks_total of a "
                     "running VACUUM (0..1).", st)
    blocks = gauge("hiw_vacuum_heap_blocks", "Heap blocks of a running VACUUM: total, "
                   "scanned, vacuumed.", [*st, "state"])
    passes = gauge("hiw_vacuum_index_passes", "Index vacuuming passes of a running VACUUM "
                   "(more than 1: maintenance_work_mem too small for the dead tuples).", st)
    elapsed = gauge("hiw_vacuum_elapsed_seconds", "How long a running VACUUM has been at "
                    "its current table.", st)
    for row in sorted(rows, key=lambda r: (str(r["schema"]), str(r["table"]), int(r["pid"]))):
        kind = "wraparound" if row["wraparound"] else (
            "autovacuum" if row["autovacuum"] else "manual")
        counts[kind] += 1
        labels = [t, str(row["schema"]), str(row["table"])]
        current = str(row["phase"])
        for name in (*PHASES, *((current,) if current not in PHASES else ())):
            phase.add_metric([*labels, name], 1.0 if name == current else 0.0)
        total = _f(row["heap_blks_total"])
        progress.add_metric(labels, _f(row["heap_blks_scanned"]) / total if total else 0.0)
        blocks.add_metric([*labels, "total"], total)
        blocks.add_metric([*labels, "scanned"], _f(row["heap_blks_scanned"]))
        blocks.add_metric([*labels, "vacuumed"], _f(row["heap_blks_vacuumed"]))
        passes.add_metric(labels, _f(row["index_vacuum_count"]))
        if row["elapsed"] is not None:
            elapsed.add_metric(labels, max(0.0, float(row["elapsed"])))
    for kind in VACUUM_KINDS:
        running.add_metric([t, kind], counts[kind])
    yield from (running, phase, progress, blocks, passes, elapsed)


COLLECTOR = Collector(
    name="vacuum",
    per_database=True,
    help="pg_stat_user_tables, autovacuum thresholds, freeze ages, pg_stat_progress_vacuum",
    interval=60.0,
    timeout=10.0,
    queries={
        "settings": VersionedSQL({130000: _SETTINGS}),
        "tables": VersionedSQL({130000: _TABLES, 180000: _TABLES_18}),
        "progress": VersionedSQL({130000: _PROGRESS}),
    },
    transform=transform,
    options=OPTIONS,
)
