"""Statements-collector scale benchmark: collection time and agent RSS at 5,000 statements.

Requirement: with 5,000 distinct statements in pg_stat_statements, a statements
collection completes in under 1 s and the agent's RSS stays under 80 MB.

Starts a throwaway PostgreSQL 15 (system binaries) with ``pg_stat_statements.max =
10000`` and the HiW schema, fills pg_stat_statements with distinct statements (one table
``bench_scale`` with enough integer columns; statement ``(i, j)`` is ``SELECT c<i> FROM
bench_scale WHERE c<j> = <constant>``, so every pair has its own query tree and queryid),
then runs the statements collector in a separate Python process that imports only the
agent, so its RSS (``/proc/self/status``) is the agent's. Between collections the
generator re-runs a random subset of the statements, so the latency estimator has work.
Also times the raw pg_stat_statements reads with psycopg and ``hiw-monitor once``, stops
everything, and writes the results to a Markdown file.

    /tmp/v/bin/python bench/statements_scale.py [--statements 5000] [--out docs/scale.md]

Everything binds 127.0.0.1 only, every wait is bounded, processes are stopped by PID and
the cluster is destroyed on exit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import re
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "heroes_in_waiting"
TABLE = "bench_scale"
TABLE_ROWS = 200
CHILD_TIMEOUT = 60.0  # per request to the measuring process
ONCE_TIMEOUT = 120.0
PEER_REPEATS = 15
AGENT_SECONDS = 120.0  # default: how long the full agent runs with a short interval
AGENT_INTERVAL = "1s"
BASELINE_SECONDS = 20.0  # the same agent with the statements collector disabled
AGENT_WINDOW = "5s"  # window / interval = 5, as at the defaults (300 s / 60 s)
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
GOAL_SECONDS = 1.0
GOAL_RSS_MB = 80.0
PREFIX = "BENCH "


class BenchError(RuntimeError):
    """The benchmark could not complete; the message says which step failed."""


# --- the measuring process (imports the agent only) ---------------------------------------


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, in KiB."""
    out: dict[str, int] = {}
    with Path("/proc/self/status").open(encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def _emit(payload: Mapping[str, Any]) -> None:
    sys.stdout.write(PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def child(conninfo: str, query_text: bool, profile: bool) -> int:
    """Serve ``collect`` / ``profile`` / ``quit`` lines on stdin; one JSON line each."""
    started = time.perf_counter()
    before = _proc_status()
    import dataclasses

    import hiw_monitor.cli  # noqa: F401  (the agent's whole import set, as when it runs)
    from hiw_monitor import logs
    from hiw_monitor.collect import run_collection
    from hiw_monitor.collectors import BY_NAME
    from hiw_monitor.config import ConnectionSettings, TargetConfig, load
    from hiw_monitor.snapshot import SnapshotStore
    from hiw_monitor.target import Target

    logs.configure("warning", "json")  # logs to stderr; stdout carries the protocol
    settings = load(environ={}, require_targets=False).collectors["statements"]
    if query_text:
        settings = dataclasses.replace(settings, options={**settings.options,
                                                          "query_text": True})
    phases: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                result = fn(*args)
                if name == "transform":  # a generator: time until it is exhausted
                    result = list(result)
                return result
            finally:
                phases[name] = time.perf_counter() - t0
        return wrapper

    base = BY_NAME["statements"]
    assert base.new_state is not None
    collector = dataclasses.replace(base, transform=timed("transform", base.transform))
    state = base.new_state()
    store = SnapshotStore()
    target = Target(TargetConfig(name="bench", conninfo=conninfo, password_env="PGPASSWORD"),
                    ConnectionSettings(statement_timeout=30.0))
    store.register(target.name, target.redacted, collector.name, settings.interval,
                   settings.stale_after)
    _emit({"event": "ready", "import_seconds": time.perf_counter() - started,
           "rss_kb_start": before["VmRSS"], **_proc_status()})
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command not in ("collect", "profile"):
            _emit({"event": "error", "error": f"unknown command {command!r}"})
            continue
        phases.clear()
        profiler = None
        if command == "profile" and profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        sample = run_collection(target, collector, settings, store, state)
        top: list[str] = []
        if profiler is not None:
            profiler.disable()
            top = _profile_summary(profiler)
        series = {f.name: len(f.samples) for f in sample.families}
        _emit({"event": "collected", "duration": sample.duration,
               "error": sample.error.text if sample.error else None,
               # the queries (and the plan, on a new connection): all but the transform
               "fetch": sample.duration - phases.get("transform", 0.0),
               "transform": phases.get("transform"),
               "series": sum(series.values()), "families": series,
               "tracked": len(state.tracker), "totals": len(state.totals),
               "window_entries": len(getattr(state.window, "_entries", ())),
               "members": len(state.membership.members), "texts": len(state.texts),
               "profile": top, **_proc_status()})
    target.close()
    return 0


def _profile_summary(profiler: Any, limit: int = 15) -> list[str]:
    import io
    import pstats

    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer)
    stats.sort_stats("tottime").print_stats(limit)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    root = str(Path(__file__).resolve().parent.parent) + "/"
    return [re.sub(r"\S*/site-packages/", "", line.replace(root, ""))
            for line in lines[start:] if line.strip()]


# --- the parent: cluster, generator, orchestration ----------------------------------------


@dataclass
class Agent:
    """The measuring process, spoken to line by line over pipes; stopped by PID."""

    proc: subprocess.Popen[str]
    ready: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, conninfo: str, password: str, query_text: bool = False,
              profile: bool = False) -> Agent:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HIW_MONITOR_")}
        env["PGPASSWORD"] = password
        args = [sys.executable, str(Path(__file__).resolve()), "--child", conninfo]
        if query_text:
            args.append("--child-query-text")
        if profile:
            args.append("--child-profile")
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=None, text=True, env=env, cwd=ROOT)
        agent = cls(proc)
        agent.ready = agent._read("ready")
        return agent

    def _read(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + CHILD_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise BenchError(f"measuring process exited ({self.proc.poll()}) "
                                 f"while waiting for {event!r}")
            if line.startswith(PREFIX):
                payload: dict[str, Any] = json.loads(line[len(PREFIX):])
                if payload.get("event") != event:
                    raise BenchError(f"measuring process: {payload}")
                return payload
        raise BenchError(f"timed out waiting for {event!r}")

    def collect(self, command: str = "collect") -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        result = self._read("collected")
        if result["error"]:
            raise BenchError(f"statements collection failed: {result['error']}")
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=15)


def statement_texts(count: int) -> tuple[int, Iterator[tuple[int, int]]]:
    """Columns needed and the (selected, filtered) column pairs of ``count`` statements."""
    columns = math.isqrt(count - 1) + 1 if count > 1 else 1

    def pairs() -> Iterator[tuple[int, int]]:
        made = 0
        for i in range(columns):
            for j in range(columns):
                if made == count:
                    return
                yield i, j
                made += 1
    return columns, pairs()


class Generator:
    """Runs the benchmark statements as the postgres superuser in the HiW database."""

    def __init__(self, cluster: Any, count: int, seed: int = 42) -> None:
        self.conn = cluster.connect(DBNAME)
        self.columns, pairs = statement_texts(count)
        self.pairs = list(pairs)
        self.random = random.Random(seed)
        self.executed = 0

    def create_table(self) -> None:
        cols = ", ".join(f"c{i} int" for i in range(self.columns))
        values = ", ".join(f"(g + {i}) % 97" for i in range(self.columns))
        self.conn.execute(f"CREATE TABLE {TABLE} ({cols})".encode())
        self.conn.execute(f"INSERT INTO {TABLE} SELECT {values} "
                          f"FROM generate_series(1, {TABLE_ROWS}) g".encode())
        self.conn.execute(f"ANALYZE {TABLE}".encode())

    def run(self, pairs: list[tuple[int, int]]) -> float:
        t0 = time.perf_counter()
        with self.conn.pipeline():
            for i, j in pairs:
                constant = self.random.randrange(97)
                self.conn.execute(f"SELECT c{i} FROM {TABLE} WHERE c{j} = {constant}".encode())
        self.executed += len(pairs)
        return time.perf_counter() - t0

    def subset(self, size: int) -> list[tuple[int, int]]:
        return self.random.sample(self.pairs, min(size, len(self.pairs)))

    def close(self) -> None:
        self.conn.close()


def time_query(conn: Any, query: str) -> tuple[float, int]:
    """Median seconds of execute + fetchall over PEER_REPEATS runs, and the row count."""
    seconds = []
    rows = 0
    for _ in range(PEER_REPEATS):
        t0 = time.perf_counter()
        rows = len(conn.execute(query.encode()).fetchall())
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), rows


def run_once(dsn: str, password: str) -> dict[str, Any]:
    """``hiw-monitor once`` as a subprocess: wall time, statements duration from its log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIW_MONITOR_")}
    env["PGPASSWORD"] = password
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "hiw_monitor", "once", "--dsn", dsn, "--log-format", "json",
         "--log-level", "info"],
        capture_output=True, text=True, env=env, timeout=ONCE_TIMEOUT, check=False, cwd=ROOT)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise BenchError(f"hiw-monitor once exited {result.returncode}: "
                         f"{result.stderr.strip()[-2000:]}")
    duration_ms = None
    for line in (result.stderr + result.stdout).splitlines():
        if line.startswith("{") and '"collection"' in line:
            record = json.loads(line)
            if record.get("collector") == "statements":
                duration_ms = record.get("duration_ms")
    series = sum(1 for line in result.stdout.splitlines()
                 if line.startswith(("hiw_statement", "hiw_query", "hiw_sla_", "hiw_slow_"))
                 and not line.startswith("#"))
    return {"wall": wall, "statements_ms": duration_ms, "statements_series": series}


def run_agent(dsn: str, password: str, gen: Generator, subset: int,
              seconds: float, statements: bool = True) -> dict[str, Any]:
    """``hiw-monitor run`` (all collectors, statements every AGENT_INTERVAL, or disabled)
    for ``seconds`` with activity and a scrape about every second; RSS sampled by PID."""
    import tempfile
    import urllib.request

    from hiw_monitor.demo.cluster import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("HIW_MONITOR_")}
    env["PGPASSWORD"] = password
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "agent.yaml"
        config.write_text(f"collectors:\n  statements:\n    interval: {AGENT_INTERVAL}\n"
                          f"    window: {AGENT_WINDOW}\n    enabled: {str(statements).lower()}\n",
                          encoding="utf-8")
        log_path = Path(tmp) / "agent.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hiw_monitor", "run", "--config", str(config), "--dsn",
                 dsn, "--listen", f"127.0.0.1:{port}", "--log-format", "json",
                 "--log-level", "info"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        status_path = Path(f"/proc/{proc.pid}/status")
        rss: list[int] = []
        hwm = 0
        scrapes = 0
        body = b""
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"hiw-monitor run exited {proc.returncode}: "
                                     f"{log_path.read_text(errors='replace')[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{base}/ready", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError("hiw-monitor run: /ready did not answer 200 in time")
                time.sleep(0.2)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                gen.run(gen.subset(subset))
                with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
                    body = response.read()
                scrapes += 1
                for _ in range(4):
                    fields = dict(line.split(":", 1) for line in
                                  status_path.read_text(encoding="ascii").splitlines())
                    rss.append(int(fields["VmRSS"].split()[0]))
                    hwm = int(fields["VmHWM"].split()[0])
                    time.sleep(0.25)
        finally:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM to this PID only
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT)
        durations = []
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"statements"' in line:
                record = json.loads(line)
                if record.get("event") == "collection" and record.get("collector") == \
                        "statements" and record.get("error") is None:
                    durations.append(float(record["duration_ms"]) / 1000)
    if not rss or (statements and not durations):
        raise BenchError("hiw-monitor run: no statements collection or RSS sample recorded")
    collectors = sorted(set(re.findall(r'hiw_collector_up\{[^}]*collector="([^"]+)"',
                                       body.decode(errors="replace"))))
    quarters = [rss[min(len(rss) - 1, len(rss) * k // 4)] for k in (1, 2, 3)]
    return {"seconds": seconds, "quarters": quarters, "interval": AGENT_INTERVAL,
            "runs": len(durations),
            "median": statistics.median(durations) if durations else math.nan,
            "max": max(durations) if durations else math.nan, "collectors": collectors,
            "rss_first": rss[0], "rss_last": rss[-1], "hwm": hwm, "scrapes": scrapes,
            "exit": proc.returncode}


@dataclass
class Results:
    server_version: str = ""
    requested: int = 0
    entries_total: int = 0
    entries_bench: int = 0
    generate_seconds: float = 0.0
    ready: dict[str, Any] = field(default_factory=dict)
    first: dict[str, Any] = field(default_factory=dict)
    subset_runs: list[dict[str, Any]] = field(default_factory=list)
    all_active: dict[str, Any] = field(default_factory=dict)
    subset_size: int = 0
    final: dict[str, Any] = field(default_factory=dict)
    text_ready: dict[str, Any] = field(default_factory=dict)
    text_runs: list[dict[str, Any]] = field(default_factory=list)
    peers: list[tuple[str, str, float, int]] = field(default_factory=list)
    once: dict[str, Any] | None = None
    full: dict[str, Any] | None = None
    no_statements: dict[str, Any] | None = None
    revision: str = ""
    profile: list[str] = field(default_factory=list)
    activity_seconds: list[float] = field(default_factory=list)
    load: list[tuple[float, float, float]] = field(default_factory=list)


def run_bench(count: int, polls: int, subset: int, profile: bool, once: bool,
              agent_seconds: float) -> Results:
    from hiw_monitor.demo.cluster import Cluster, system_binaries

    binaries = system_binaries(15)
    if binaries is None:
        raise BenchError("no PostgreSQL 15 server binaries: apt-get install postgresql-15")
    password = secrets.token_urlsafe(18)
    results = Results(requested=count, subset_size=min(subset, count))
    results.load.append(os.getloadavg())
    with Cluster(binaries, settings={"pg_stat_statements.max": "10000"}) as cluster:
        cluster.create_hiw_database(monitor_password=password)
        dsn = cluster.dsn(DBNAME, user="hiw_monitor")
        gen = Generator(cluster, count)
        agents: list[Agent] = []
        try:
            row = gen.conn.execute(b"SHOW server_version").fetchone()
            results.server_version = str(row[0]) if row else "unknown"
            gen.create_table()
            gen.conn.execute(b"SELECT pg_stat_statements_reset()")
            print(f"PostgreSQL {results.server_version}: running {count} distinct statements",
                  flush=True)
            results.generate_seconds = gen.run(gen.pairs)
            row = gen.conn.execute(
                b"SELECT count(*), count(*) FILTER (WHERE query LIKE '%bench_scale WHERE%') "
                b"FROM pg_stat_statements").fetchone()
            assert row is not None
            results.entries_total, results.entries_bench = int(row[0]), int(row[1])
            print(f"  pg_stat_statements: {results.entries_total} entries, "
                  f"{results.entries_bench} benchmark statements", flush=True)
            if results.entries_bench < count:
                raise BenchError(f"only {results.entries_bench} distinct benchmark statements "
                                 f"in pg_stat_statements (wanted {count})")

            agent = Agent.start(dsn, password, profile=profile)
            agents.append(agent)
            results.ready = agent.ready
            results.first = agent.collect()
            print(f"  first collection (baseline, no deltas): {results.first['duration']:.3f} s",
                  flush=True)
            for n in range(polls):
                results.activity_seconds.append(gen.run(gen.subset(subset)))
                run = agent.collect()
                results.subset_runs.append(run)
                print(f"  poll {n + 1}/{polls} ({results.subset_size} active): "
                      f"{run['duration']:.3f} s (fetch {run['fetch']:.3f}, transform "
                      f"{run['transform']:.3f}), RSS {run['VmRSS'] / 1024:.1f} MiB", flush=True)
            gen.run(gen.pairs)
            results.all_active = agent.collect()
            print(f"  all {count} active: {results.all_active['duration']:.3f} s", flush=True)
            if profile:
                gen.run(gen.pairs)
                results.profile = agent.collect("profile")["profile"]
            results.final = agent.collect()  # a quiet interval: no benchmark activity
            agent.stop()

            # query_text: true - the first run reads the text of every statement it lacks
            text_agent = Agent.start(dsn, password, query_text=True)
            agents.append(text_agent)
            results.text_ready = text_agent.ready
            results.text_runs.append(text_agent.collect())
            gen.run(gen.subset(subset))
            results.text_runs.append(text_agent.collect())
            text_agent.stop()
            print(f"  query_text: true: first {results.text_runs[0]['duration']:.3f} s, "
                  f"second {results.text_runs[1]['duration']:.3f} s", flush=True)

            import psycopg
            with psycopg.connect(cluster.dsn(DBNAME, user="hiw_monitor", password=password),
                                 autocommit=True) as conn:
                for query, note in (
                        ("SELECT * FROM pg_stat_statements", "with query text"),
                        ("SELECT * FROM pg_stat_statements(false)", "no text"),
                        ("SELECT count(*) FROM pg_stat_statements(false)",
                         "the agent's summary count")):
                    seconds, rows = time_query(conn, query)
                    results.peers.append((query, note, seconds, rows))
            if once:
                gen.run(gen.subset(subset))
                results.once = run_once(dsn, password)
                print(f"  hiw-monitor once: {results.once['wall']:.2f} s wall, statements "
                      f"{results.once['statements_ms']} ms", flush=True)
            if agent_seconds > 0:
                print(f"  hiw-monitor run for {agent_seconds:g} s, statements every "
                      f"{AGENT_INTERVAL}", flush=True)
                results.full = run_agent(dsn, password, gen, subset, agent_seconds)
                print(f"    {results.full['runs']} statements runs: median "
                      f"{results.full['median']:.3f} s, max {results.full['max']:.3f} s; peak "
                      f"RSS {_mb(results.full['hwm']):.1f} MiB", flush=True)
                seconds = min(agent_seconds, BASELINE_SECONDS)
                print(f"  hiw-monitor run for {seconds:g} s with the statements collector "
                      "disabled", flush=True)
                results.no_statements = run_agent(dsn, password, gen, subset, seconds,
                                                  statements=False)
                print(f"    peak RSS {_mb(results.no_statements['hwm']):.1f} MiB", flush=True)
        finally:
            for agent in agents:
                agent.stop()
            gen.close()
    results.load.append(os.getloadavg())
    results.revision = revision()
    return results


def revision() -> str:
    """HEAD of the checkout, and whether the agent's code differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True, cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hiw_monitor"],
                               capture_output=True, text=True, timeout=10, check=True,
                               cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{head}" + (" plus uncommitted changes under hiw_monitor/" if dirty else "")


# --- report -------------------------------------------------------------------------------


def _mb(kib: float) -> float:
    return kib / 1024


def render_doc(r: Results, command: str, polls: int) -> str:
    durations = [run["duration"] for run in r.subset_runs]
    fetches = [run["fetch"] for run in r.subset_runs]
    transforms = [run["transform"] for run in r.subset_runs]
    every = [r.first, *r.subset_runs, r.all_active, r.final]
    worst = max(run["duration"] for run in every)
    peak_kib = max(run["VmHWM"] for run in every)
    final_kib = r.final["VmRSS"]
    series = r.all_active["series"]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        "# Statements collector at scale",
        "",
        f"Goal: with {r.requested:,} distinct statements in pg_stat_statements, a statements "
        f"collection completes in under {GOAL_SECONDS:g} s and the agent's RSS stays under "
        f"{GOAL_RSS_MB:g} MB.",
        "",
        "Generated by `bench/statements_scale.py`; rerun it to refresh this file.",
        "",
        "## Result",
        "",
        "| Measure | Value | Goal | |",
        "|---|---:|---:|---|",
        f"| Collection, median of {polls} polls with {r.subset_size:,} active statements | "
        f"{statistics.median(durations):.3f} s | < {GOAL_SECONDS:g} s | "
        f"{verdict(statistics.median(durations) < GOAL_SECONDS)} |",
        f"| Collection, max of those {polls} | {max(durations):.3f} s | < {GOAL_SECONDS:g} s | "
        f"{verdict(max(durations) < GOAL_SECONDS)} |",
        f"| Collection, all {r.requested:,} active | {r.all_active['duration']:.3f} s | "
        f"< {GOAL_SECONDS:g} s | {verdict(r.all_active['duration'] < GOAL_SECONDS)} |",
        f"| Collection, slowest of all {len(every)} runs (default options) | {worst:.3f} s | "
        f"< {GOAL_SECONDS:g} s | {verdict(worst < GOAL_SECONDS)} |",
        f"| RSS after import | {_mb(r.ready['VmRSS']):.1f} MiB | | |",
        f"| RSS peak (VmHWM) | {_mb(peak_kib):.1f} MiB ({peak_kib * 1024 / 1e6:.1f} MB) | "
        f"< {GOAL_RSS_MB:g} MB | "
        f"{verdict(peak_kib * 1024 < GOAL_RSS_MB * 1e6)} |",
        f"| RSS after the last run | {_mb(final_kib):.1f} MiB ({final_kib * 1024 / 1e6:.1f} MB) "
        f"| < {GOAL_RSS_MB:g} MB | "
        f"{verdict(final_kib * 1024 < GOAL_RSS_MB * 1e6)} |",
        f"| Series exported by one statements collection | {series} | | |",
    ]
    if r.full:
        f = r.full
        lines += [
            f"| Whole agent (`hiw-monitor run`, {f['seconds']:g} s): statements collection, "
            f"median / max | {f['median']:.3f} s / {f['max']:.3f} s | < {GOAL_SECONDS:g} s | "
            f"{verdict(f['max'] < GOAL_SECONDS)} |",
            f"| Whole agent: peak RSS (VmHWM) | {_mb(f['hwm']):.1f} MiB "
            f"({f['hwm'] * 1024 / 1e6:.1f} MB) | < {GOAL_RSS_MB:g} MB | "
            f"{verdict(f['hwm'] * 1024 < GOAL_RSS_MB * 1e6)} |",
        ]
    lines += [
        "",
        "RSS is `VmRSS` / `VmHWM` from `/proc/self/status` of the measuring process, in MiB "
        f"(1 MiB = 1.048576 MB; {GOAL_RSS_MB:g} MB = {GOAL_RSS_MB * 1e6 / 2**20:.1f} MiB).",
        "",
        "## Every run",
        "",
        "Duration is `Sample.duration` from `run_collection` (lock, SQL, transform, store). "
        "Fetch is the collector's `fetch` (discovery queries, the counters read with "
        "`pg_stat_statements(false)` and `fetchall` into dict rows, the summary, any "
        "texts); transform is the pure Python part (deltas, top N, latency fit, families).",
        "",
        "| Run | Active statements | Duration (s) | Fetch (s) | Transform (s) | Series | "
        "Kept totals | Window entries | RSS (MiB) | Peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, active: str, run: Mapping[str, Any]) -> str:
        return (f"| {label} | {active} | {run['duration']:.3f} | {run['fetch']:.3f} | "
                f"{run['transform']:.3f} | {run['series']} | {run['totals']:,} | "
                f"{run['window_entries']} | {_mb(run['VmRSS']):.1f} | {_mb(run['VmHWM']):.1f} |")

    lines.append(row("1 (first: baseline, no deltas)", "-", r.first))
    lines += [row(str(n + 2), f"{r.subset_size:,}", run) for n, run in enumerate(r.subset_runs)]
    lines.append(row(str(polls + 2), f"{r.requested:,} (all)", r.all_active))
    lines.append(row(f"{polls + 3} (quiet interval)", "0", r.final))
    lines += [
        "",
        f"Over the {polls} polls with {r.subset_size:,} active statements: fetch median "
        f"{statistics.median(fetches):.3f} s, transform median "
        f"{statistics.median(transforms):.3f} s. "
        + (f"(A profiled run, not in the table, was made between runs {polls + 2} and "
           f"{polls + 3}.)" if r.profile else ""),
        "",
        "\"Kept totals\" is the number of statements whose exported totals the collector "
        "keeps (`StatementsState.totals`: every statement that has been in the top N and "
        "is still in pg_stat_statements, so it is bounded by the entries); \"window "
        "entries\" is the number of interval histograms in the latency window (bounded by "
        "`window` / interval: 5 at the defaults of 300 s / 60 s, but here every run falls "
        "inside one window because the polls are back to back). Both grow during this "
        "run and account for part of the RSS growth between runs.",
        "",
        "### With `query_text: true`",
        "",
        "A second measuring process with `query_text: true` (otherwise defaults); its first "
        "run reads the text of every statement it does not know yet.",
        "",
        "| Run | Duration (s) | Fetch (s) | Transform (s) | Texts held | RSS (MiB) | "
        "Peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, run in zip(("1 (first)", f"2 ({r.subset_size:,} active)"), r.text_runs,
                          strict=False):
        lines.append(f"| {label} | {run['duration']:.3f} | {run['fetch']:.3f} | "
                     f"{run['transform']:.3f} | {run['texts']:,} | {_mb(run['VmRSS']):.1f} | "
                     f"{_mb(run['VmHWM']):.1f} |")
    lines += [
        "",
        f"RSS of this process after import: {_mb(r.text_ready['VmRSS']):.1f} MiB.",
        "",
        "## Series per family (run with all statements active)",
        "",
        "| Family | Series |",
        "|---|---:|",
    ]
    lines += [f"| `{name}` | {n} |" for name, n in
              sorted(r.all_active["families"].items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += [
        "",
        "## Context: reading pg_stat_statements directly",
        "",
        f"psycopg in the benchmark's parent process, as `hiw_monitor`, `execute` + `fetchall` "
        f"(tuple rows), median of {PEER_REPEATS}, after the runs above.",
        "",
        "| Query | | Median (s) | Rows |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| `{query}` | {note} | {seconds:.4f} | {rows:,} |"
              for query, note, seconds, rows in r.peers]
    lines += [
        "",
        "No other exporter was measured: prometheus-postgres-exporter (or any peer agent) is "
        "not installed on this machine.",
        "",
    ]
    if r.once:
        lines += [
            "## Reality check: `hiw-monitor once`",
            "",
            f"`hiw-monitor once --dsn ...` as a subprocess (all collectors, a fresh process, so "
            f"its statements run is a first run without deltas): {r.once['wall']:.2f} s wall "
            f"clock including interpreter start; its log line reports the statements "
            f"collection at {r.once['statements_ms']} ms; "
            f"{r.once['statements_series']} statements/latency/SLA series printed.",
            "",
        ]
    if r.full:
        f = r.full
        lines += [
            "## Reality check: the whole agent (`hiw-monitor run`)",
            "",
            f"`hiw-monitor run` as a subprocess with every collector at its defaults except "
            f"`collectors.statements.interval: {f['interval']}` and `window: {AGENT_WINDOW}` "
            "(so the latency window holds 5 intervals, as at the defaults of 60 s / 300 s), "
            f"for {f['seconds']:g} s while "
            f"the parent re-ran a random {r.subset_size:,} statements and scraped `/metrics` "
            f"about once a second ({f['scrapes']} scrapes); VmRSS/VmHWM read from "
            f"`/proc/<pid>/status` every 0.25 s.",
            "",
            "| Measure | Value | Goal |",
            "|---|---|---:|",
            f"| Statements collections (from the agent's log) | {f['runs']} | |",
            f"| Median / max statements `duration_ms` | {f['median']:.3f} s / "
            f"{f['max']:.3f} s | < {GOAL_SECONDS:g} s |",
            "| RSS at the first sample / 25 % / 50 % / 75 % of the run / last sample | "
            + " / ".join(f"{_mb(v):.1f}" for v in (f["rss_first"], *f["quarters"],
                                                     f["rss_last"]))
            + f" MiB | < {GOAL_RSS_MB:g} MB |",
            f"| Peak RSS (VmHWM) | {_mb(f['hwm']):.1f} MiB | < {GOAL_RSS_MB:g} MB |",
            "",
            f"RSS changed by {_mb(f['rss_last'] - f['quarters'][2]):+.1f} MiB over the last "
            f"quarter of the run. Collectors: {', '.join(f['collectors'])}. The agent exited "
            f"with code {f['exit']} after SIGTERM.",
            "",
        ]
        b = r.no_statements
        if b:
            lines += [
                f"For attribution, the same agent with `collectors.statements.enabled: false` "
                f"(same activity and scrapes, {b['seconds']:g} s): RSS at the first / last "
                f"sample {_mb(b['rss_first']):.1f} / {_mb(b['rss_last']):.1f} MiB, peak "
                f"{_mb(b['hwm']):.1f} MiB; collectors: {', '.join(b['collectors'])}.",
                "",
            ]
    if r.profile:
        lines += [
            "## Profile (cProfile, one collection, all statements active, by own time)",
            "",
            "```",
            *r.profile,
            "```",
            "",
        ]
    lines += [
        "## How it was measured",
        "",
        f"- Machine: {os.cpu_count()} cores as reported by `os.cpu_count()`, "
        f"{platform.machine()}, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}",
        f"- PostgreSQL {r.server_version} (system binaries), a throwaway cluster on 127.0.0.1 "
        "with the HiW demo schema, `pg_stat_statements.max = 10000`, `track = all`, "
        "`track_planning = on`, `track_io_timing = on`",
        f"- Date: {now}",
        "- Load average (1, 5, 15 min) at the start / end of the benchmark: "
        + " / ".join(", ".join(f"{v:.2f}" for v in load) for load in r.load)
        + " (the machine was not otherwise idle: other processes may have been running)",
        f"- Command: `{command}`",
        f"- Code: {r.revision}",
        "",
        f"Statements: a table `{TABLE}` with integer columns c0..cK and {TABLE_ROWS} rows; "
        f"statement (i, j) is `SELECT c<i> FROM {TABLE} WHERE c<j> = <constant>`. Constants "
        "are normalized away, but the column numbers are part of the query tree, so every "
        "pair has its own queryid. After `pg_stat_statements_reset()` all "
        f"{r.requested:,} were run once ({r.generate_seconds:.2f} s, psycopg pipeline, as "
        f"the postgres superuser): pg_stat_statements then held {r.entries_total:,} entries, "
        f"{r.entries_bench:,} of them benchmark statements.",
        "",
        "The collector ran in a separate Python process that imports the agent "
        "(`hiw_monitor.cli` and what it imports) and nothing of the generator; it builds a "
        "`Target` for the `hiw_monitor` role (password via `PGPASSWORD`), keeps one "
        "`StatementsState` across runs as the scheduler does, and calls `run_collection` "
        "with the default statements options when the parent asks, reporting "
        "`Sample.duration`, the series count and VmRSS/VmHWM. Fetch and transform are timed "
        "by wrapping the collector's own functions (`dataclasses.replace` on the "
        "`Collector`; the agent's code is unchanged). Between polls the parent re-ran a "
        f"random {r.subset_size:,} of the statements (one call each, different constants); "
        "before the all-active run it re-ran all of them. The agent's RSS before importing "
        f"anything was {_mb(r.ready['rss_kb_start']):.1f} MiB (bare interpreter); imports "
        f"took {r.ready['import_seconds']:.2f} s.",
        "",
    ]
    return "\n".join(lines)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--statements", type=int, default=5000,
                        help="distinct statements to create (default 5000, at most 9000)")
    parser.add_argument("--polls", type=int, default=10,
                        help="collections with a random subset active (default 10)")
    parser.add_argument("--active", type=int, default=2000,
                        help="statements re-run between polls (default 2000)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one all-active collection with cProfile")
    parser.add_argument("--no-once", action="store_true",
                        help="skip the hiw-monitor once reality check")
    parser.add_argument("--agent-seconds", type=float, default=AGENT_SECONDS,
                        help="how long the hiw-monitor run (full agent) check lasts; 0 skips "
                        f"it (default {AGENT_SECONDS:g}, at most 180)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "scale.md",
                        help="Markdown file to write (default docs/scale.md)")
    parser.add_argument("--child", metavar="CONNINFO", help=argparse.SUPPRESS)
    parser.add_argument("--child-query-text", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.child_query_text, args.child_profile)
    if not 1 <= args.statements <= 9000:
        parser.error("--statements must be between 1 and 9000")
    if not 0 <= args.agent_seconds <= 180:
        parser.error("--agent-seconds must be between 0 and 180")
    if args.polls < 1 or args.active < 1:
        parser.error("--polls and --active must be at least 1")
    try:
        signal.signal(signal.SIGTERM, _terminate)  # unwind: the cluster is destroyed
        results = run_bench(args.statements, args.polls, args.active, args.profile,
                            not args.no_once, args.agent_seconds)
    except BenchError as exc:
        print(f"bench/statements_scale.py: {exc}", file=sys.stderr)
        return 1
    command = shlex.join([sys.executable, *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_doc(results, command, args.polls), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
