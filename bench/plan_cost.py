"""Plan-step cost: the agent's database time per minute, plan per poll vs once per connect.

With the plan made once per connection ("after") and re-made at every poll ("before", as
the code did before the plan step), measured in the same run (issue 11 item 4).

Starts a throwaway PostgreSQL 15 (system binaries) with the HiW demo database,
pg_stat_statements preloaded and ``track_planning`` on. Every built-in collector
(``hiw_monitor.collectors.ALL``, default options) runs in-process through
``hiw_monitor.collect.run_collection`` as the ``hiw_monitor`` role, on one connection per
mode:

- **after**: the plan cache as it is (``Target.plans``): plans made once per connection;
- **before**: ``Target.plans`` cleared before every poll, so each poll re-runs the plan
  step's discovery queries. Collectors without a plan step (still on ``fetch``, with their
  own discovery at every poll) run the same code in both modes: their ratio is the noise;
- **old code** (statements only, best effort): the statements collector as it was before
  the plan step (``--old-rev``, read with ``git show``), which ran four discovery queries
  at every poll. Skipped with a note when that code no longer runs on today's core.

Per collector, mode and round: ``pg_stat_statements_reset()`` for the agent's role (from a
superuser connection, whose own queries are therefore never counted), ``--polls`` polls,
then the sum of ``total_exec_time + total_plan_time`` and of ``calls`` over the role's
top-level statements (``peer.statement_times``, as bench/peer.py measures database time),
and the collections' wall time. Rounds alternate the order of the modes to cancel drift;
the report gives medians over rounds, normalised to one minute at each collector's
declared default interval, and the ratio after/before. Every connection has a warm-up of
``--warmup`` polls first (the connect, the first plan, psycopg's prepare threshold of 5).

    .venv/bin/python bench/plan_cost.py [--polls 30] [--rounds 9] [--out docs/plan-cost.md]

Everything binds 127.0.0.1 only, every query runs under the collectors' timeouts, and the
cluster is destroyed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from peer import (  # shared with bench/peer.py: same database-time reading
    ROOT,
    BenchError,
    changed_files,
    git_describe,
    source_hashes,
    statement_times,
)

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import ALL
from hiw_monitor.collectors.base import Collector
from hiw_monitor.config import CollectorSettings, ConnectionSettings, TargetConfig, load
from hiw_monitor.demo.cluster import Cluster, system_binaries
from hiw_monitor.logs import configure as configure_logging
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

DBNAME = "heroes_in_waiting"
ROLE = "hiw_monitor"
MAX_POLLS = 200
MAX_ROUNDS = 21
OLD_REV = "feec0d8^"  # the last commit before the plan step
MODES = ("before", "after")


@dataclass
class Cell:
    """One (collector, mode, round): per poll."""

    calls: float
    ms: float
    wall_ms: float
    entries: dict[Any, tuple[int, float]]  # the role's top-level statements: calls, ms


@dataclass
class Line:
    """One collector (or the old statements code): its cells per mode, over rounds."""

    name: str
    interval: float
    planned: bool  # has a plan step
    fetches: bool  # still on fetch (its own discovery at every poll)
    cells: dict[str, list[Cell]] = field(default_factory=lambda: {m: [] for m in MODES})
    errors: set[str] = field(default_factory=set)

    def plan_queries(self, polls: int) -> tuple[float, float]:
        """The plan step's own statements per poll (calls, ms): what "before" runs more
        often than "after", statement by statement, median over rounds."""
        calls, ms = [], []
        for before, after in zip(self.cells["before"], self.cells["after"], strict=True):
            extra = [(c - after.entries.get(k, (0, 0.0))[0], t / c)
                     for k, (c, t) in before.entries.items()
                     if c > after.entries.get(k, (0, 0.0))[0]]
            calls.append(sum(n for n, _ in extra) / polls)
            ms.append(sum(n * each for n, each in extra) / polls)
        return (statistics.median(calls), statistics.median(ms)) if calls else (0.0, 0.0)

    def paired(self, what: str = "ms") -> float:
        """Median over rounds of after/before, each round's pair measured back to back."""
        pairs = [getattr(a, what) / getattr(b, what)
                 for b, a in zip(self.cells["before"], self.cells["after"], strict=True)
                 if getattr(b, what) > 0]
        return statistics.median(pairs) if pairs else float("nan")

    def per_minute(self, mode: str, what: str) -> float:
        """Median over rounds of ``what`` per minute at the default interval."""
        values = [getattr(c, what) for c in self.cells[mode]]
        return statistics.median(values) * 60 / self.interval if values else float("nan")


@dataclass
class Run:
    lines: list[Line]
    old: Line | None
    old_note: str
    totals: dict[str, dict[str, float]]  # mode -> what -> median per-round total per minute
    total_ratio: float  # median over rounds of the total's after/before
    server_version: str
    git: str
    changed: list[str]
    args: argparse.Namespace
    seconds: float


def load_old_statements(rev: str) -> Collector:
    """The statements collector as it was at ``rev`` (it imports today's helpers)."""
    text = subprocess.run(["git", "--no-optional-locks", "show",
                           f"{rev}:hiw_monitor/collectors/statements.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="hiw-plan-cost-") as tmp:
        path = Path(tmp) / "old_statements.py"
        path.write_text(text, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("hiw_old_statements", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    collector: Collector = module.COLLECTOR
    return collector


class Runner:
    def __init__(self, cluster: Cluster, password: str, polls: int) -> None:
        self.admin = cluster.connect(DBNAME)
        row = self.admin.execute("SELECT oid FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone()
        assert row is not None
        self.oid = int(row[0])
        self.polls = polls
        self.settings = load(environ={}, require_targets=False).collectors
        self.store = SnapshotStore()
        self.targets = {mode: Target(TargetConfig(f"plan-cost-{mode}", cluster.dsn(
            DBNAME, user=ROLE), password=password), ConnectionSettings())
            for mode in (*MODES, "old")}
        self.states: dict[tuple[str, str], Any] = {}

    def close(self) -> None:
        for target in self.targets.values():
            target.close()
        self.admin.close()

    def poll(self, collector: Collector, mode: str, line: Line) -> float:
        """One collection; its wall time in ms."""
        target = self.targets[mode]
        key = (mode, collector.name)
        if key not in self.states:
            self.states[key] = collector.new_state() if collector.new_state else None
            self.store.register(target.name, target.redacted, collector.name,
                                collector.interval, collector.interval * 4)
        if mode == "before":
            target.plans.pop(collector.name, None)  # the plan re-made at every poll
        settings: CollectorSettings = self.settings[collector.name]
        sample = run_collection(target, collector, settings, self.store, self.states[key])
        if sample.error is not None:
            line.errors.add(f"{mode}: {sample.error.code}")
        return sample.duration * 1000

    def measure(self, collector: Collector, mode: str, line: Line) -> Cell:
        self.admin.execute("SELECT pg_stat_statements_reset(%s::oid)", [self.oid])
        wall = sum(self.poll(collector, mode, line) for _ in range(self.polls))
        top = {k: (c, ms) for k, (c, ms, _) in statement_times(self.admin, [ROLE]).items()
               if k[3] and c}
        return Cell(sum(c for c, _ in top.values()) / self.polls,
                    sum(ms for _, ms in top.values()) / self.polls, wall / self.polls, top)


def run_bench(args: argparse.Namespace) -> Run:
    t0 = time.monotonic()
    git, sources = git_describe(), source_hashes()
    binaries = system_binaries(15)
    if binaries is None:
        raise BenchError("no PostgreSQL 15: apt-get install postgresql-15")
    old: Collector | None = None
    old_note = f"the statements collector at `{args.old_rev}`"
    try:
        old = load_old_statements(args.old_rev) if args.old_rev else None
    except Exception as exc:  # noqa: BLE001 - best effort: say why and go on
        old_note = f"not measured: `{args.old_rev}` did not load ({type(exc).__name__}: {exc})"
    lines = [Line(c.name, c.interval, c.plan is not None, c.fetch is not None) for c in ALL]
    old_line = Line("statements, old code", old.interval, False, True) if old else None
    if old_line:
        old_line.cells["old"] = []
    password = secrets.token_urlsafe(18)
    with Cluster(binaries) as cluster:
        cluster.create_hiw_database(monitor_password=password)
        with cluster.connect(DBNAME) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            planning = conn.execute(
                "SHOW pg_stat_statements.track_planning").fetchone()
        if planning is None or planning[0] != "on":
            raise BenchError("pg_stat_statements.track_planning is not on")
        runner = Runner(cluster, password, args.polls)
        try:
            jobs = [(c, m, line) for c, line in zip(ALL, lines, strict=True) for m in MODES]
            if old is not None and old_line is not None:
                jobs.append((old, "old", old_line))
            for collector, mode, line in jobs:  # warm-up: connect, first plan, prepares
                for _ in range(args.warmup):
                    runner.poll(collector, mode, line)
            if old_line is not None and old_line.errors:
                old_note = f"not measured: it failed ({', '.join(sorted(old_line.errors))})"
                jobs, old_line = jobs[:-1], None
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", flush=True)
                order = jobs if r % 2 == 0 else jobs[::-1]
                for collector, mode, line in order:
                    line.cells[mode].append(runner.measure(collector, mode, line))
        finally:
            runner.close()
    totals = {m: {w: statistics.median(
        sum(getattr(line.cells[m][r], w) * 60 / line.interval for line in lines)
        for r in range(args.rounds)) for w in ("calls", "ms", "wall_ms")} for m in MODES}
    per_round = [[sum(line.cells[m][r].ms * 60 / line.interval for line in lines)
                  for m in MODES] for r in range(args.rounds)]
    total_ratio = statistics.median([a / b for b, a in per_round if b > 0] or [float("nan")])
    return Run(lines, old_line, old_note, totals, total_ratio,
               str(row[0]) if row else "unknown", git, changed_files(sources, source_hashes()),
               args, time.monotonic() - t0)


# --- the report -------------------------------------------------------------------------------


def ratio(after: float, before: float) -> str:
    return f"{after / before:.2f}" if before > 0 else "-"


def render(run: Run, command: str) -> str:
    a = run.args
    planned = [line.name for line in run.lines if line.planned]
    fetching = [line.name for line in run.lines if line.fetches]
    lines = [
        "# Plan-step cost: database time per minute, plan per poll vs once per connection",
        "",
        "Generated by `bench/plan_cost.py` (issue 11 item 4). **before**: the plan re-made at "
        "every poll (`Target.plans` cleared before each run, as the code did before the plan "
        "step); **after**: the plan made once per connection. Per collector at its default "
        "interval; medians over rounds; after/before is the median of each round's ratio (the "
        "two modes of a collector run back to back).",
        "",
        f"Collectors with a plan step in this run: {', '.join(planned) or 'none'}. Still on "
        f"`fetch` (own discovery at every poll, the same code in both modes): "
        f"{', '.join(fetching) or 'none'}.",
        "",
        "| collector | interval | plan step | calls/min before | after | DB ms/min before "
        "| after | after/before | wall ms/min before | after | plan step per run: calls, DB ms |",
        "|---|--:|:-:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def row(name: str, interval: str, mark: str, b: dict[str, float], f: dict[str, float],
            paired: float, per_connect: str) -> str:
        return (f"| {name} | {interval} | {mark} | {b['calls']:,.1f} | {f['calls']:,.1f} | "
                f"{b['ms']:,.2f} | {f['ms']:,.2f} | **{paired:.2f}** | "
                f"{b['wall_ms']:,.1f} | {f['wall_ms']:,.1f} | {per_connect} |")

    for line in run.lines:
        b, f = ({w: line.per_minute(m, w) for w in ("calls", "ms", "wall_ms")} for m in MODES)
        calls, ms = line.plan_queries(a.polls)
        one = f"{calls:.0f}, {ms:.3f}" if line.planned else "-"
        lines.append(row(line.name, f"{line.interval:g} s", "yes" if line.planned else "",
                         b, f, line.paired(), one))
    t = run.totals
    lines.append(row("**total**", "", "", t["before"], t["after"], run.total_ratio, ""))
    lines.append("")
    if run.old is not None:
        o = {w: run.old.per_minute("old", w) for w in ("calls", "ms", "wall_ms")}
        new = next(line for line in run.lines if line.name == "statements")
        f = {w: new.per_minute("after", w) for w in ("calls", "ms", "wall_ms")}
        lines += [f"Old code ({run.old_note}, discovery at every poll): statements "
                  f"{o['calls']:,.1f} calls/min, {o['ms']:,.2f} DB ms/min, {o['wall_ms']:,.1f} "
                  f"wall ms/min; after/old code: **{ratio(f['ms'], o['ms'])}** (DB time), "
                  f"{ratio(f['calls'], o['calls'])} (calls).", ""]
    else:
        lines += [f"Old statements code: {run.old_note}.", ""]
    errors = [f"- {line.name}: {', '.join(sorted(line.errors))}"
              for line in [*run.lines, *([run.old] if run.old else [])] if line.errors]
    if errors:
        lines += ["Collections that failed (their numbers are of failed runs):", "", *errors, ""]
    plans = [(line.plan_queries(a.polls), 60 / line.interval) for line in run.lines
             if line.planned]
    plan_calls = sum(c * k for (c, _), k in plans)
    plan_ms = sum(ms * k for (_, ms), k in plans)
    noise = [line.paired() for line in run.lines if not line.planned]
    band = f"{min(noise):.2f} to {max(noise):.2f}" if noise else "-"
    lines += [
        "## What it shows",
        "",
        f"- Re-made at every poll, the plan steps ({', '.join(planned) or 'none'}) run "
        f"{plan_calls:,.1f} statements and {plan_ms:,.3f} ms of database time per minute "
        "(\"plan step per run\": the statements \"before\" runs more often than \"after\", "
        "counted statement by statement; prepared after psycopg's 5th execution on a "
        "connection, as the old per-poll discovery was); made once per connection, that cost "
        "is paid once per connect. In total: "
        f"{t['before']['calls']:,.1f} -> {t['after']['calls']:,.1f} statements per minute, "
        f"{t['before']['ms']:,.2f} -> {t['after']['ms']:,.2f} DB ms per minute (after/before "
        f"{run.total_ratio:.2f}).",
        "- The collectors without a plan step run the same code in both modes: their "
        f"after/before ratios ({band}) are this run's noise; a whole collector's ratio inside "
        "that band says its plan step is too cheap to see in its total.",
        "- Database time is what pg_stat_statements counts (execution plus planning of the "
        "agent's top-level statements, BEGIN/COMMIT included); connection set-up and round "
        "trips are not in it, but are in the wall time (which also holds the transforms).",
        "",
        "## How it was run",
        "",
        f"- Command: `{command}`",
        f"- {a.polls} polls per collector, mode and round; {a.rounds} rounds, the order of "
        f"the (collector, mode) runs reversed every other round; warm-up polls per connection "
        f"first: {a.warmup}. Each mode has its own connection (its own `Target`) as "
        f"`{ROLE}`, default collector options.",
        f"- PostgreSQL {run.server_version} (system binaries), a throwaway cluster on 127.0.0.1 "
        "with the HiW demo database, `pg_stat_statements.track = all`, `track_planning = on`.",
        f"- Python {platform.python_version()}, psycopg {psycopg.__version__}; hiw-monitor "
        f"{run.git}" + (f" (**changed on disk during the run**: {', '.join(run.changed)})"
                        if run.changed else " (unchanged during the run)"),
        f"- Machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
        f"{platform.release()}; load average {os.getloadavg()[0]:.2f} at the end",
        f"- {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; the run took {run.seconds:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--polls", type=int, default=30,
                        help=f"polls per collector, mode and round (default 30, max {MAX_POLLS})")
    parser.add_argument("--rounds", type=int, default=9,
                        help=f"rounds, alternating the order (default 9, max {MAX_ROUNDS})")
    parser.add_argument("--warmup", type=int, default=6,
                        help="unmeasured polls per collector and connection first (default 6)")
    parser.add_argument("--old-rev", default=OLD_REV,
                        help=f"git revision of the old statements code ('' to skip; default "
                             f"{OLD_REV})")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "plan-cost.md",
                        help="Markdown file to write (default docs/plan-cost.md)")
    args = parser.parse_args()
    if not (1 <= args.polls <= MAX_POLLS and 1 <= args.rounds <= MAX_ROUNDS
            and 0 <= args.warmup <= MAX_POLLS):
        parser.error(f"--polls 1..{MAX_POLLS}, --rounds 1..{MAX_ROUNDS}, --warmup 0..{MAX_POLLS}")
    configure_logging("warning", "console")
    try:
        run = run_bench(args)
    except BenchError as exc:
        print(f"bench/plan_cost.py: {exc}", file=sys.stderr)
        return 1
    text = render(run, shlex.join([".venv/bin/python", *sys.argv]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
