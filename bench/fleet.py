"""Fleet benchmark: what one agent costs per watched database, from 1 to 200 targets.

Starts ``--instances`` throwaway PostgreSQL 15 clusters (system binaries) on 127.0.0.1,
loads the HiW demo schema into ``heroes_in_waiting`` on each and copies it (``CREATE
DATABASE ... TEMPLATE heroes_in_waiting``) until there is one database per target of the
largest size; a target is one database (name, host, port, dbname, user ``hiw_monitor``,
``password_file``), the targets taken round-robin over the instances. A light pgbench
load (the HiW script of bench/peer.py) runs on each instance's ``heroes_in_waiting``.

For each size (``--sizes``) it starts ``hiw-monitor run --config FILE`` as a subprocess
with those targets and every collector at its default interval, waits for every
(target, collector) pair's first run (bounded), and from ``--offset`` seconds after the
start measures a steady ``--window``:

- agent CPU seconds (utime + stime from /proc/PID/stat), per hour and per target;
- RSS (VmRSS, VmHWM) and threads from /proc/PID/status, sampled every 5 s;
- connections held by the agent: pg_stat_activity rows with application_name
  ``hiw_monitor``, summed over the instances, sampled every 5 s;
- database time: the delta of ``total_exec_time`` (and ``total_plan_time``) of the
  top-level pg_stat_statements entries of role ``hiw_monitor`` on every instance;
- collections done in the window (the agent's ``collection`` log records) against due;
- one /metrics scrape every 15 s with Prometheus's headers (paced latency).

After the window: series (one plain-text /metrics, parsed), /metrics p50/p99 in three
variants (plain text; OpenMetrics + gzip as Prometheus asks; text 0.0.4 + gzip) and
``/probe?target=NAME`` p50/p99 when the agent has it (a 404 for every probed name means
"not available in this run"); then the agent is stopped by PID (SIGTERM) and the
instances are polled until none of its connections remains (bounded). Last, in this
process and with the agent gone, the same exposition is re-rendered (text, OpenMetrics,
gzip) to estimate what one full re-render costs at that size.

``--targets-are instances`` measures the other way to watch the same databases: a size
N is still N databases watched (the same N databases, round-robin over the instances), but
the agent gets one target per instance that holds any of them (so 3 targets from 3
databases on), its DSN on ``heroes_in_waiting`` and ``databases: {include: [...]}`` listing
the exact names of that instance's share; the per-database collectors (vacuum, indexes,
bloat, review) walk those databases with a ``datname`` label and the instance-wide ones run
once per instance. The connection bound is then the agent's ``max_connections`` per
instance (default 2). Every figure is reported per database watched as well as per target;
the collections due are per target (one per-database run walks all of its databases).
The default, ``--targets-are databases``, is one target per database, as before.

Writes (or replaces) the section of ``--out`` titled ``--label``, keeping the others, and
rebuilds the comparison table at the top of the file from every section's data (each row
says which mode its run used).

    .venv/bin/python bench/fleet.py [--sizes 1,10,50,200] [--window 300] [--instances 3]
        [--targets-are databases|instances] [--offset SECONDS]
        [--label "Baseline (before the fleet work)"] [--out docs/fleet.md]

Everything binds or connects to 127.0.0.1 only, every wait and loop is bounded in count
and time, every process this script starts (agent, pgbench) is stopped by its PID, and
every cluster is destroyed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gzip
import itertools
import json
import math
import os
import platform
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psycopg
from peer import (  # shared with bench/peer.py: processes, HTTP timing, pgbench, exposition
    DBNAME,
    PROMETHEUS_HEADERS,
    ROOT,
    BenchError,
    Pgbench,
    changed_files,
    get,
    git_describe,
    parse_exposition,
    pct,
    proc_sample,
    source_hashes,
    stop_process,
    timed_get,
)

from hiw_monitor.demo.cluster import Cluster, free_port, system_binaries

APP = "hiw_monitor"  # the agent's application_name
BENCH_APP = "bench_fleet"
ROLE = "hiw_monitor"
COPY_PREFIX = "hiw_fleet_"
DEFAULT_LABEL = "Baseline (before the fleet work)"
SAMPLE_EVERY = 5.0
FAST_CONN_EVERY = 0.5  # --targets-are instances: connections per instance, in a thread
PY_SPY_RATE = 50  # samples per second with --py-spy
PACED_EVERY = 15.0  # Prometheus-like scrape interval inside the window
SETTLE = 15.0  # after the last first run, before a window may start
HTTP_UP_TIMEOUT = 60.0
CONN_GONE_TIMEOUT = 30.0
SCRAPE_TIMEOUT = 120.0
# Goals of issue 14
GOAL_CPU_PER_TARGET_H = 5.0  # s per hour per target at default intervals
GOAL_RSS_BASE, GOAL_RSS_PER_TARGET = 40.0, 1.0  # MiB
GOAL_PROBE_P99_MS = 5.0
GOAL_METRICS_P99_MS = 250.0
GOAL_AT = 200  # targets
LINEAR_TOLERANCE = 1.5  # largest step's marginal CPU per target vs the first step's

VARIANTS: dict[str, dict[str, str]] = {
    "text": {},
    "openmetrics+gzip": PROMETHEUS_HEADERS,
    "text+gzip": {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"},
}
PROBE_VARIANTS: dict[str, dict[str, str]] = {
    "probe text": {},
    "probe openmetrics+gzip": PROMETHEUS_HEADERS,
}
SECTION_RE = re.compile(r"<!-- fleet:section (?P<label>.*?) -->\n(?P<body>.*?)"
                        r"<!-- fleet:end -->\n?", re.S)
DATA_RE = re.compile(r"<!-- fleet:data (?P<json>\{.*?\}) -->", re.S)  # no '>' inside


# --- the fleet ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetTarget:
    name: str
    instance: int
    port: int
    dbname: str
    # --targets-are instances: the exact names of the databases this target walks (its
    # ``databases: {include: [...]}``); empty: the target is its dbname alone
    databases: tuple[str, ...] = ()

    @property
    def watched(self) -> int:
        return len(self.databases) or 1


def copy_name(index: int) -> str:
    return f"{COPY_PREFIX}{index:03d}"


def create_copies(cluster: Cluster, count: int, deadline: float) -> None:
    """``count`` copies of the HiW database, as the superuser, nobody connected to the
    template (an autovacuum worker on it makes CREATE DATABASE fail: retried, bounded)."""
    with cluster.connect(application_name=BENCH_APP) as conn:
        for index in range(1, count + 1):
            for attempt in range(20):
                try:
                    conn.execute(f'CREATE DATABASE "{copy_name(index)}" TEMPLATE "{DBNAME}"'
                                 .encode())
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 19 or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            if time.monotonic() > deadline:
                raise BenchError(f"creating databases: past the deadline at {index}/{count}")


def fleet_targets(clusters: Sequence[Cluster], total: int) -> list[FleetTarget]:
    """Target k on instance k % instances: the first on each is heroes_in_waiting (the one
    with the pgbench load), then the copies."""
    out = []
    for k in range(total):
        inst, nth = k % len(clusters), k // len(clusters)
        dbname = DBNAME if nth == 0 else copy_name(nth)
        out.append(FleetTarget(f"pg{inst}-{dbname}", inst, clusters[inst].port, dbname))
    return out


def instance_targets(databases: Sequence[FleetTarget]) -> list[FleetTarget]:
    """--targets-are instances: one target per instance holding any of ``databases``
    (those of the first N, as in the default mode), its DSN on the first of its share
    (heroes_in_waiting) and ``databases`` the exact names of its share."""
    out = []
    for inst in sorted({t.instance for t in databases}):
        share = [t for t in databases if t.instance == inst]
        out.append(FleetTarget(f"pg{inst}", inst, share[0].port, share[0].dbname,
                               tuple(t.dbname for t in share)))
    return out


def config_yaml(targets: Sequence[FleetTarget], password_file: Path) -> str:
    lines = ["targets:"]
    for t in targets:
        lines += [f"  - name: {t.name}", "    host: 127.0.0.1", f"    port: {t.port}",
                  f"    dbname: {t.dbname}", f"    user: {ROLE}",
                  f"    password_file: {password_file}"]
        if t.databases:  # exact names: none holds a glob character
            lines += ["    databases:", "      include:"]
            lines += [f"        - {name}" for name in t.databases]
    return "\n".join(lines) + "\n"


# --- readings ----------------------------------------------------------------------------


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


class Monitor:
    """One superuser connection per instance (application_name bench_fleet)."""

    def __init__(self, clusters: Sequence[Cluster]) -> None:
        self.clusters = list(clusters)
        self.conns = [c.connect(DBNAME, application_name=BENCH_APP, connect_timeout=10)
                      for c in clusters]

    def connections(self) -> list[int]:
        out = []
        for conn in self.conns:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                               "WHERE application_name = %s", [APP]).fetchone()
            out.append(int(row[0]) if row else -1)
        return out

    def statements(self) -> dict[tuple[Any, ...], tuple[int, float, float]]:
        """(instance, dbid, queryid, toplevel) -> (calls, exec ms, plan ms) of role
        hiw_monitor, every instance."""
        out: dict[tuple[Any, ...], tuple[int, float, float]] = {}
        for i, conn in enumerate(self.conns):
            rows = conn.execute(
                "SELECT s.dbid, s.queryid, s.toplevel, s.calls, s.total_exec_time, "
                "s.total_plan_time FROM pg_stat_statements(false) s "
                "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = %s", [ROLE]).fetchall()
            for dbid, queryid, toplevel, calls, exec_ms, plan_ms in rows:
                out[(i, dbid, queryid, toplevel)] = (int(calls), float(exec_ms), float(plan_ms))
        return out

    def texts(self, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[int, int], str]:
        """(instance, queryid) -> the statement's first words, for the given entries."""
        out: dict[tuple[int, int], str] = {}
        for i, conn in enumerate(self.conns):
            ids = sorted({k[2] for k in keys if k[0] == i})
            if not ids:
                continue
            for queryid, query in conn.execute(
                    "SELECT queryid, left(query, 400) FROM pg_stat_statements "
                    "WHERE queryid = ANY(%s)", [ids]).fetchall():
                out[(i, queryid)] = " ".join(str(query).split())
        return out

    def dealloc(self) -> int:
        total = 0
        for conn in self.conns:
            row = conn.execute("SELECT dealloc FROM pg_stat_statements_info").fetchone()
            total += int(row[0]) if row else 0
        return total

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()


class ConnSampler:
    """--targets-are instances: the agent's connections per instance every ``every`` s in
    a thread of its own (its own superuser connections), from start() to stop(), bounded:
    a per-database connection lives only while its database is collected, which the 5 s
    samples of the window can miss."""

    def __init__(self, clusters: Sequence[Cluster], every: float, limit_s: float) -> None:
        self.monitor = Monitor(clusters)
        self.every, self.limit_s = every, limit_s
        self.max_total = 0
        self.max_per = [0] * len(clusters)
        self.samples = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conn-sampler", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        try:
            for _ in range(int(self.limit_s / self.every) + 1):
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                counts = self.monitor.connections()
                self.samples += 1
                self.max_total = max(self.max_total, sum(counts))
                self.max_per = [max(a, b) for a, b in zip(self.max_per, counts, strict=True)]
                self._stop.wait(self.every)
        except psycopg.Error as exc:  # reported, not fatal: the 5 s samples remain
            self.error = f"{type(exc).__name__}: {exc}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.monitor.close()


GENERIC_FRAMES = ("threading.py", "thread.py", "runpy.py", "<module>", "__main__.py",
                  "selectors.py", "socketserver.py", "queue.py")


def read_profile(path: Path, top: int = 14) -> dict[str, Any]:
    """py-spy's raw output (one ``frame;frame;... count`` line per distinct stack, idle
    threads left out): the samples, and the functions (file without the line) with the
    most samples inclusive (on the stack) and self (the leaf), as [count, frame]."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        leaf[frames[-1]] += n
    return {"samples": total,
            "inclusive": [[c, f] for f, c in inclusive.most_common(top * 3)
                          if not any(g in f for g in GENERIC_FRAMES)][:top],
            "self": [[c, f] for f, c in leaf.most_common(top)]}


class AgentLog:
    """The agent's JSON log, read incrementally (records kept: collections, warnings)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.collections: list[dict[str, Any]] = []
        self.problems: Counter[str] = Counter()
        self.skipped = 0
        self.started: dict[str, Any] | None = None

    def read(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            if not raw.startswith(b"{"):
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            event = record.get("event")
            if event == "collection":
                self.collections.append({k: record.get(k) for k in
                                         ("target", "collector", "duration_ms", "error")})
            elif event == "scheduler_started":
                self.started = record
            if event == "collection_skipped":
                self.skipped += 1
            if record.get("level") in ("warning", "error", "critical"):
                what = " ".join(str(record.get(k)) for k in ("event", "collector", "reason")
                                if record.get(k))
                self.problems[what[:120]] += 1


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def quantiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    if not seconds:
        return {}
    p99 = pct(seconds, 99) if len(seconds) > 1 else seconds[0]
    return {"n": len(seconds), "p50": statistics.median(seconds) * 1000, "p99": p99 * 1000,
            "max": max(seconds) * 1000}


def render_cost(text: str) -> dict[str, float]:
    """Re-render this exposition in this process as the agent's prerender does after each
    recorded run (client_python's plain text, its OpenMetrics, gzip of the OpenMetrics
    bytes at level 6): CPU ms of this thread (not wall time: the machine is shared), best
    of up to 3. client_python directly, not the agent's code, so the estimate does not
    change when the agent's rendering does."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import exposition as text_format
    from prometheus_client.openmetrics import exposition as openmetrics
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(text))

    class Frozen:
        def collect(self) -> Any:
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Frozen())
    out: dict[str, float] = {}
    budget = time.monotonic() + 60.0
    for _ in range(3):
        t0 = time.thread_time()
        text_format.generate_latest(registry)
        t1 = time.thread_time()
        om = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
        t2 = time.thread_time()
        gzip.compress(om, compresslevel=6, mtime=0)
        t3 = time.thread_time()
        for key, value in (("text", t1 - t0), ("openmetrics", t2 - t1), ("gzip", t3 - t2)):
            out[key] = min(out.get(key, math.inf), value * 1000)
        if time.monotonic() > budget:
            break
    out["total"] = out["text"] + out["openmetrics"] + out["gzip"]
    return out


# --- the agent's code --------------------------------------------------------------------


@dataclass(frozen=True)
class AgentCode:
    """Where the agent under test is imported from: the working tree (None) or a snapshot
    of hiw_monitor/ at a commit, extracted with git archive (the working tree untouched)."""

    root: Path  # the agent's cwd, first on its sys.path
    commit: str | None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("HIW_MONITOR_", "PG", "PYTHONPATH"))}
        if self.commit is not None:
            env["PYTHONPATH"] = str(self.root)
        return env


def agent_code(rev: str | None, tmp: Path) -> AgentCode:
    if rev is None:
        return AgentCode(ROOT, None)
    out = subprocess.run(["git", "--no-optional-locks", "rev-parse", "--verify",
                          f"{rev}^{{commit}}"], capture_output=True, text=True, cwd=ROOT,
                         timeout=30, check=False)
    if out.returncode != 0:
        raise BenchError(f"--code {rev}: not a commit: {out.stderr.strip()}")
    commit = out.stdout.strip()
    dest = tmp / "agent-code"
    dest.mkdir()
    archive = subprocess.run(["git", "--no-optional-locks", "archive", commit, "hiw_monitor"],
                             capture_output=True, cwd=ROOT, timeout=60, check=False)
    if archive.returncode != 0:
        raise BenchError(f"git archive {commit}: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True,
                   timeout=60)
    return AgentCode(dest, commit)


AGENT_FACTS = """
import json, hiw_monitor
from hiw_monitor.collectors import ALL, PGBOUNCER_NAMES
from hiw_monitor.config import load
config = load(environ={}, require_targets=False)
print(json.dumps({"file": hiw_monitor.__file__, "version": hiw_monitor.__version__,
    "collectors": {c.name: c.interval for c in config.enabled_collectors
                   if c.name not in PGBOUNCER_NAMES},
    "per_database": sorted(c.name for c in ALL if getattr(c, "per_database", False)),
    "max_connections": getattr(config.connection, "max_connections", None)}))
"""


def agent_facts(code: AgentCode) -> dict[str, Any]:
    """The agent's enabled PostgreSQL collectors and default intervals, asked of the code
    under test, and where it was imported from (checked against ``code``)."""
    out = subprocess.run([sys.executable, "-c", AGENT_FACTS], capture_output=True, text=True,
                         cwd=code.root, env=code.env(), timeout=60, check=False)
    if out.returncode != 0:
        raise BenchError(f"the agent's code does not import: {out.stderr[-1500:]}")
    facts: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(facts["file"]).resolve().is_relative_to(code.root.resolve()):
        raise BenchError(f"hiw_monitor imported from {facts['file']}, not {code.root}")
    return facts


# --- one run of each collector ------------------------------------------------------------

ONCE_TIMEOUT = 300.0  # one ``once --collector NAME`` at most
ONCE_BASELINE = "connections"  # the cheapest collector: start-up, config, connect, render


def once_cpu(code: AgentCode, config: Path, collector: str, log_path: Path
             ) -> tuple[float, float, int]:
    """``hiw-monitor once --config FILE --collector NAME`` as a subprocess: its CPU (utime +
    stime from wait4, ms), wall time (ms) and exit code (-9: killed at ONCE_TIMEOUT)."""
    with log_path.open("ab") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hiw_monitor", "once", "--config", str(config),
             "--collector", collector, "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=err, env=code.env(), cwd=code.root)
        status, usage = 0, None
        for _ in range(int(ONCE_TIMEOUT / 0.1) + 1):
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.monotonic() - t0 > ONCE_TIMEOUT:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
        wall = (time.monotonic() - t0) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    cpu = (usage.ru_utime + usage.ru_stime) * 1000 if usage is not None else float("nan")
    return cpu, wall, proc.returncode


def once_costs(code: AgentCode, config: Path, collectors: Sequence[str], tmp: Path,
               tag: str) -> dict[str, list[float]]:
    """Each collector run once on every target, one process each, and the baseline
    collector twice more: name -> [CPU ms, wall ms, exit code]; the baseline's best of
    three is under ``_baseline``."""
    out: dict[str, list[float]] = {}
    log_path = tmp / f"once-{tag}.log"
    base = []
    for name in [ONCE_BASELINE, *collectors, ONCE_BASELINE, ONCE_BASELINE]:
        cpu, wall, code_ = once_cpu(code, config, name, log_path)
        if name == ONCE_BASELINE:
            base.append(cpu)
        if name not in out or name != ONCE_BASELINE:
            out[name] = [cpu, wall, float(code_)]
        print(f"    once --collector {name}: CPU {cpu:,.0f} ms, wall {wall:,.0f} ms, exit "
              f"{code_}", flush=True)
    out["_baseline"] = [min(base), max(base), 0.0]  # CPU ms: best and worst of three
    return out


# --- one size ----------------------------------------------------------------------------


@dataclass
class SizeResult:
    targets: int
    per_instance: list[int]
    started_at: str
    warmup_s: float  # agent start to the last first run (or the timeout)
    warmup_complete: bool
    pairs_missing: int
    window_start_s: float  # after the agent started
    window_s: float
    cpu_s: float  # in the window
    machine_busy: float  # fraction of all cores busy in the window (everyone)
    load_start: str
    load_end: str
    rss_median: float
    rss_end: float
    rss_peak: float  # VmHWM at the end, after the latency runs
    threads_median: float
    threads_max: int
    conns_max: int
    conns_end: int
    conns_per_instance_max: list[int]
    conns_after_stop: int
    conns_gone_s: float
    stop_s: float
    exit_code: int | None
    db_exec_ms: float
    db_plan_ms: float
    db_calls: int
    db_statements: int
    dealloc: int  # pg_stat_statements evictions in the window, all instances
    done: dict[str, int]  # collections in the window, per collector
    failed: dict[str, int]
    due: dict[str, float]
    wall_ms: dict[str, float]  # median wall time per collector in the window
    skipped: int  # collection_skipped records in the window
    series: int
    families: int
    body_bytes: int
    latency: dict[str, dict[str, float]]
    paced: dict[str, float]
    probe: str  # "available", or why not
    probe_status: dict[str, int]
    render_ms: dict[str, float]
    problems: list[str]
    pairs_total: int = 0  # (target, collector) pairs
    pairs_collected: int = 0  # of them, with a successful run before the series scrape
    top_statements: list[tuple[float, int, str]] = field(default_factory=list)  # ms, calls
    notes: list[str] = field(default_factory=list)
    # --targets-are: "databases" (one target per database; runs before the option) or
    # "instances" (one target per instance, walking its share of the databases)
    targets_are: str = "databases"
    databases: int = 0  # databases watched (0 in older data: one per target)
    conn_bound: int = 0  # connections the agent may hold at most (0: one per target)
    conn_bound_per_instance: int = 0  # (0: the targets on the instance)
    wall_sum_ms: dict[str, float] = field(default_factory=dict)  # per collector, window
    conns_fast: str = ""  # the 0.5 s connection samples (--targets-are instances)
    profile: dict[str, Any] = field(default_factory=dict)  # --py-spy, in the window
    # --once-costs: collector -> [CPU ms, wall ms, exit] of one ``once --collector`` process
    # (every target), "_baseline": the cheapest collector's best of three
    once: dict[str, list[float]] = field(default_factory=dict)

    def once_run_ms(self, collector: str) -> float:
        """CPU of one run of ``collector`` on every target, the baseline (start-up,
        config, connecting, the cheapest collector) taken off; nan when not measured."""
        if collector not in self.once or "_baseline" not in self.once:
            return float("nan")
        return max(0.0, self.once[collector][0] - self.once["_baseline"][0])

    @property
    def unseen(self) -> list[str]:
        """Collectors with no run finished in the window."""
        return [c for c in self.due if not self.done.get(c)]

    @property
    def unseen_h(self) -> float:
        """CPU per hour the window did not see: for each collector with no run in it, one
        run's CPU on every target (from --once-costs) x its runs per hour per target at the
        default interval."""
        return sum(self.once_run_ms(c) / 1000 * self.due[c] / self.targets / self.window_s
                   * 3600 for c in self.unseen)  # one ``once`` run covers every target

    @property
    def full_h_per_db(self) -> float:
        """Total CPU per hour (measured, or projected when saturated) plus what the window
        did not see, per database watched; nan without --once-costs."""
        if not self.once:
            return float("nan")
        return (self.effective_h_per_target * self.targets + self.unseen_h) / self.dbs

    @property
    def dbs(self) -> int:
        """Databases watched (the size)."""
        return self.databases or self.targets

    @property
    def instance_mode(self) -> bool:
        return self.targets_are == "instances"

    @property
    def bound(self) -> int:
        return self.conn_bound or self.targets

    @property
    def cpu_h(self) -> float:
        return self.cpu_s / self.window_s * 3600

    @property
    def cpu_h_per_target(self) -> float:
        return self.cpu_h / self.targets

    @property
    def cpu_h_per_db(self) -> float:
        return self.cpu_h / self.dbs

    @property
    def db_ms_per_target_min(self) -> float:
        return self.db_exec_ms / self.targets / (self.window_s / 60)

    @property
    def db_ms_per_db_min(self) -> float:
        return self.db_exec_ms / self.dbs / (self.window_s / 60)

    @property
    def runs(self) -> int:
        return sum(self.done.values())

    @property
    def due_total(self) -> float:
        return sum(self.due.values())

    @property
    def saturated(self) -> bool:
        """The agent could not keep up: fewer than 90% of the due collections done, and
        runs skipped as still queued or its CPU above 80% of a core (a short window's
        edges alone can also leave due runs out)."""
        return self.runs < 0.9 * self.due_total and (
            self.skipped > 0 or self.cpu_s / self.window_s > 0.8)

    @property
    def projected_h_per_target(self) -> float:
        """CPU per collection x collections due per hour, per target: what doing all the
        due work would cost at this CPU per collection."""
        return self.cpu_ms_per_run / 1000 * self.due_total / self.window_s * 3600 \
            / self.targets

    @property
    def effective_h_per_target(self) -> float:
        """The measured CPU per target, or the projection when the agent was saturated
        (its measured CPU is then capped by the core it can use)."""
        return max(self.cpu_h_per_target, self.projected_h_per_target) if self.saturated \
            else self.cpu_h_per_target

    @property
    def projected_h_per_db(self) -> float:
        return self.projected_h_per_target * self.targets / self.dbs

    @property
    def effective_h_per_db(self) -> float:
        return self.effective_h_per_target * self.targets / self.dbs

    @property
    def cpu_ms_per_run(self) -> float:
        return self.cpu_s * 1000 / self.runs if self.runs else float("nan")


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + HTTP_UP_TIMEOUT
    for _ in range(int(HTTP_UP_TIMEOUT / 0.2) + 1):
        if proc.poll() is not None:
            raise BenchError(f"agent exited {proc.returncode}: "
                             f"{log_path.read_text(errors='replace')[-1500:]}")
        with contextlib.suppress(OSError):
            if http_status(url) == 200:
                return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise BenchError(f"{url} not 200 within {HTTP_UP_TIMEOUT:g} s")


def wait_connections_gone(monitor: Monitor, timeout: float) -> tuple[int, float]:
    t0 = time.monotonic()
    for _ in range(int(timeout / 0.5) + 1):
        left = sum(monitor.connections())
        if left == 0 or time.monotonic() - t0 > timeout:
            return left, time.monotonic() - t0
        time.sleep(0.5)
    return sum(monitor.connections()), time.monotonic() - t0


def measure_size(n: int, fleet: list[FleetTarget], monitor: Monitor, tmp: Path,
                 password_file: Path, collectors: dict[str, float], code: AgentCode,
                 args: argparse.Namespace, max_connections: int | None = None
                 ) -> SizeResult:
    """One agent watching the first ``n`` databases of ``fleet``: one target each, or
    (--targets-are instances) one per instance walking its share of them."""
    watched = fleet[:n]
    instances = args.targets_are == "instances"
    targets = instance_targets(watched) if instances else watched
    per_inst_bound = (max_connections or 2) if instances else 0
    print(f"== {n} database(s), {len(targets)} target(s) (targets are {args.targets_are})",
          flush=True)
    left, _ = wait_connections_gone(monitor, CONN_GONE_TIMEOUT)
    if left:
        raise BenchError(f"{left} hiw_monitor connection(s) before the agent started")
    config = tmp / f"fleet-{args.targets_are}-{n}.yaml"
    config.write_text(config_yaml(targets, password_file), encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp / f"agent-{args.targets_are}-{n}.log"
    started_at = dt.datetime.now(dt.UTC).strftime("%H:%M:%S UTC")
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hiw_monitor", "run", "--config", str(config),
             "--listen", f"127.0.0.1:{port}", "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT, env=code.env(), cwd=code.root)
    t_start = time.monotonic()
    log = AgentLog(log_path)
    try:
        wait_http(f"{base}/healthz", proc, log_path)
        # warm-up: every (target, collector) pair's first run, bounded
        wanted = {(t.name, c) for t in targets for c in collectors}
        deadline = t_start + args.warmup_timeout
        seen: set[tuple[str, str]] = set()
        for _ in range(int(args.warmup_timeout) + 2):
            log.read()
            seen = {(r["target"], r["collector"]) for r in log.collections}
            if wanted <= seen or time.monotonic() > deadline:
                break
            if proc.poll() is not None:
                raise BenchError(f"agent exited {proc.returncode} in the warm-up")
            time.sleep(1.0)
        warmup = time.monotonic() - t_start
        missing = len(wanted - seen)
        print(f"  warm-up {warmup:.0f} s, {len(wanted) - missing}/{len(wanted)} first runs",
              flush=True)
        start_at = max(time.monotonic() + SETTLE, t_start + args.offset)
        time.sleep(max(0.0, start_at - time.monotonic()))

        # --- the window ---
        log.read()
        runs_before = len(log.collections)
        skipped_before = log.skipped
        pgss_before = monitor.statements()
        dealloc_before = monitor.dealloc()
        busy0, total0 = machine_cpu()
        load_start = loadavg()
        w_start = time.monotonic()
        cpu0 = proc_sample(proc.pid)[2]
        rss, threads, conns, per_inst_max = [], [], [], [0] * len(monitor.conns)
        paced: list[float] = []
        sampler = ConnSampler(monitor.clusters, FAST_CONN_EVERY, args.window + 60) \
            if instances else None
        spy = spy_path = None
        if args.py_spy:  # sampling, not pausing the agent (--nonblocking)
            spy_path = tmp / f"py-spy-{args.targets_are}-{n}.txt"
            spy = subprocess.Popen(
                [str(args.py_spy), "record", "--pid", str(proc.pid), "--duration",
                 str(int(args.window)), "--rate", str(PY_SPY_RATE), "--nonblocking",
                 "--format", "raw", "--output", str(spy_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if sampler is not None:
            sampler.start()
        ticks = int(args.window / SAMPLE_EVERY)
        print(f"  window {args.window:g} s from {w_start - t_start:.0f} s after start "
              f"(agent pid {proc.pid})", flush=True)
        for tick in range(ticks + 1):
            due = w_start + tick * SAMPLE_EVERY
            time.sleep(max(0.0, due - time.monotonic()))
            if proc.poll() is not None:
                raise BenchError(f"agent exited {proc.returncode} in the window")
            rss.append(proc_sample(proc.pid)[0])
            threads.append(proc_threads(proc.pid))
            counts = monitor.connections()
            conns.append(sum(counts))
            per_inst_max = [max(a, b) for a, b in zip(per_inst_max, counts, strict=True)]
            if tick < ticks and tick % int(PACED_EVERY / SAMPLE_EVERY) == 1:
                paced.append(timed_get(f"{base}/metrics")[0])
            if tick % 6 == 0:
                log.read()
                print(f"    {tick * SAMPLE_EVERY:4.0f}/{args.window:g} s  rss "
                      f"{rss[-1]:6.1f} MiB  threads {threads[-1]}  conns {conns[-1]}  runs "
                      f"{len(log.collections) - runs_before}", flush=True)
        # the window ends at w_start + ticks * SAMPLE_EVERY
        cpu1 = proc_sample(proc.pid)[2]
        profile: dict[str, Any] = {}
        if spy is not None and spy_path is not None:
            try:
                _, err = spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(spy)
                err = b"did not finish 30 s after the window"
            if spy_path.exists():
                profile = read_profile(spy_path)
            else:
                profile = {"error": err.decode(errors="replace")[-300:]}
        fast = ""
        if sampler is not None:
            sampler.stop()
            fast = (f"{sampler.samples} samples, max {sampler.max_total}, per instance "
                    f"{'/'.join(str(c) for c in sampler.max_per)}"
                    + (f"; sampler stopped early: {sampler.error}" if sampler.error else ""))
            conns.append(sampler.max_total)  # into the window's max (not its end)
            per_inst_max = [max(a, b) for a, b in zip(per_inst_max, sampler.max_per,
                                                      strict=True)]
        window = time.monotonic() - w_start
        busy1, total1 = machine_cpu()
        load_end = loadavg()
        pgss_after = monitor.statements()
        dealloc_after = monitor.dealloc()
        log.read()
        in_window = log.collections[runs_before:]
        skipped = log.skipped - skipped_before

        exec_ms = plan_ms = 0.0
        calls = statements = 0
        by_query: dict[tuple[int, int], list[float]] = {}  # (instance, queryid): ms, calls
        for key, (c, e, p) in pgss_after.items():
            if not key[3]:
                continue  # nested statements are inside their top-level one's time
            c0, e0, p0 = pgss_before.get(key, (0, 0.0, 0.0))
            if c > c0:
                calls += c - c0
                exec_ms += e - e0
                plan_ms += p - p0
                statements += 1
                acc = by_query.setdefault((key[0], key[2]), [0.0, 0.0])
                acc[0] += e - e0
                acc[1] += c - c0
        top_keys = sorted(by_query, key=lambda k: -by_query[k][0])[:20]
        texts = monitor.texts([(i, 0, q) for i, q in top_keys])
        merged: dict[str, list[float]] = {}  # same text on several instances: one row
        for k in top_keys:
            acc = merged.setdefault(texts.get(k, f"queryid {k[1]}")[:110], [0.0, 0.0])
            acc[0] += by_query[k][0]
            acc[1] += by_query[k][1]
        top = sorted(((ms, int(c), q) for q, (ms, c) in merged.items()), reverse=True)[:5]
        done = Counter(r["collector"] for r in in_window)
        failed = Counter(r["collector"] for r in in_window if r.get("error"))
        wall = {c: statistics.median([float(r["duration_ms"] or 0) for r in in_window
                                      if r["collector"] == c]) for c in done}
        wall_sum = {c: sum(float(r["duration_ms"] or 0) for r in in_window
                           if r["collector"] == c) for c in done}

        # --- after the window: exposition, latency, /probe ---
        t_body = time.monotonic()
        body = get(f"{base}/metrics").decode()
        body_s = time.monotonic() - t_body
        series, fams = parse_exposition(body)
        log.read()
        collected = len({(r["target"], r["collector"]) for r in log.collections
                         if not r.get("error")})
        latency, probe, probe_status = scrape_latency(base, targets, args, body_s < 1.0)
        rss_end, rss_peak, _ = proc_sample(proc.pid)
        log.read()
    finally:
        t_stop = time.monotonic()
        exit_code = stop_process(proc)
        stop_s = time.monotonic() - t_stop
    after, gone_s = wait_connections_gone(monitor, CONN_GONE_TIMEOUT)
    log.read()
    print(f"  stopped (exit {exit_code}) in {stop_s:.1f} s; {after} connection(s) left after "
          f"{gone_s:.1f} s; re-rendering the exposition in the bench process", flush=True)
    render_ms = {}
    try:
        render_ms = render_cost(body)
    except Exception as exc:  # noqa: BLE001 - an estimate: reported as missing
        print(f"  render estimate failed: {type(exc).__name__}: {exc}", flush=True)
    once: dict[str, list[float]] = {}
    if args.once_costs:
        print("  one run of each collector (hiw-monitor once --collector NAME)", flush=True)
        once = once_costs(code, config, list(collectors), tmp, f"{args.targets_are}-{n}")
        left, _ = wait_connections_gone(monitor, CONN_GONE_TIMEOUT)
        if left:
            raise BenchError(f"{left} connection(s) left after the once runs")
    return SizeResult(
        targets=len(targets), per_instance=[sum(1 for t in watched if t.instance == i)
                                            for i in range(len(monitor.conns))],
        started_at=started_at, warmup_s=warmup, warmup_complete=missing == 0,
        pairs_missing=missing, window_start_s=w_start - t_start, window_s=window,
        cpu_s=cpu1 - cpu0,
        machine_busy=(busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan"),
        load_start=load_start, load_end=load_end,
        rss_median=statistics.median(rss), rss_end=rss_end, rss_peak=rss_peak,
        threads_median=statistics.median(threads), threads_max=max(threads),
        conns_max=max(conns), conns_end=conns[-2 if fast else -1],
        conns_per_instance_max=per_inst_max,
        conns_after_stop=after, conns_gone_s=gone_s, stop_s=stop_s, exit_code=exit_code,
        db_exec_ms=exec_ms, db_plan_ms=plan_ms, db_calls=calls, db_statements=statements,
        dealloc=dealloc_after - dealloc_before,
        done=dict(done), failed=dict(failed),
        due={c: len(targets) * window / interval for c, interval in collectors.items()},
        wall_ms=wall, skipped=skipped, series=series, families=len(fams),
        body_bytes=len(body.encode()), latency=latency, paced=quantiles_ms(paced),
        probe=probe, probe_status=probe_status, render_ms=render_ms,
        problems=[f"{count} x {what}" for what, count in log.problems.most_common(8)],
        pairs_total=len(wanted), pairs_collected=collected, top_statements=top,
        targets_are=args.targets_are, databases=n,
        conn_bound=per_inst_bound * len(targets) if instances else len(targets),
        conn_bound_per_instance=per_inst_bound, wall_sum_ms=wall_sum,
        conns_fast=fast, profile=profile, once=once,
    )


def scrape_latency(base: str, targets: Sequence[FleetTarget], args: argparse.Namespace,
                   warm_up: bool) -> tuple[dict[str, dict[str, float]], str, dict[str, int]]:
    """/metrics in each variant and /probe (when there), sequential, one request of each
    variant in turn (the order rotating), at most --scrapes per variant; past
    --latency-budget s once every variant has 2, past twice that once every one has 1."""
    names = [t.name for t in targets]
    probe_status: dict[str, int] = {}
    for name in names[:3]:
        with contextlib.suppress(OSError):
            probe_status[name] = http_status(
                f"{base}/probe?target={urllib.parse.quote(name)}")
    if probe_status and all(code == 404 for code in probe_status.values()):
        probe = "not available in this run (404 for every probed target)"
    elif any(code == 200 for code in probe_status.values()):
        probe = "available"
    else:
        probe = f"not measured: answered {sorted(set(probe_status.values()))}"
    urls: dict[str, tuple[Callable[[int], str], dict[str, str]]] = {
        k: ((lambda i: f"{base}/metrics"), h) for k, h in VARIANTS.items()}
    if probe == "available":
        for key, headers in PROBE_VARIANTS.items():
            urls[key] = ((lambda i: f"{base}/probe?target="
                          f"{urllib.parse.quote(names[i % len(names)])}"), headers)
    samples: dict[str, list[float]] = {k: [] for k in urls}
    keys = list(urls)
    start = time.monotonic()
    deadline, hard = start + args.latency_budget, start + 2 * args.latency_budget
    if warm_up:  # one unmeasured request each, when a scrape is cheap (see the caller)
        for url, headers in urls.values():
            timed_get(url(0), headers)
    print(f"  latency: up to {args.scrapes} scrapes per variant, interleaved "
          f"({', '.join(keys)}), about {args.latency_budget:g} s", flush=True)
    for i in range(args.scrapes):
        shift = i % len(keys)
        for key in keys[shift:] + keys[:shift]:
            now = time.monotonic()
            if samples[key] and (now > hard or (now > deadline and len(samples[key]) >= 2)):
                continue
            url, headers = urls[key]
            samples[key].append(timed_get(url(len(samples[key])), headers)[0])
        now = time.monotonic()
        if now > hard or (now > deadline and all(len(v) >= 2 for v in samples.values())):
            break
    return {k: quantiles_ms(v) for k, v in samples.items()}, probe, probe_status


# --- the report --------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def tg(n: int) -> str:
    return f"{n} target{'' if n == 1 else 's'}"


def dbs(n: int) -> str:
    return f"{n} database{'' if n == 1 else 's'}"


def size_name(r: SizeResult) -> str:
    """A size as the report names it: its targets (one per database), or with targets
    that are instances, the databases watched and the targets."""
    return f"{dbs(r.dbs)} ({tg(r.targets)})" if r.instance_mode else tg(r.targets)


def unit(r: SizeResult) -> str:
    """What a size counts: targets (one per database) or databases watched."""
    return "database" if r.instance_mode else "target"


def total_h(r: SizeResult) -> float:
    """Total CPU per hour: measured, or projected when the agent was saturated."""
    return r.effective_h_per_target * r.targets


def growth_exponent(a: SizeResult, b: SizeResult) -> float:
    """Over the databases watched (the targets, one per database, by default)."""
    if total_h(a) <= 0 or total_h(b) <= 0 or a.dbs == b.dbs:
        return float("nan")
    return math.log(total_h(b) / total_h(a)) / math.log(b.dbs / a.dbs)


def marginal(a: SizeResult, b: SizeResult) -> float:
    """Total CPU per hour per added database watched (target, by default)."""
    return (total_h(b) - total_h(a)) / (b.dbs - a.dbs)


def full_marginal(a: SizeResult, b: SizeResult) -> float:
    """As marginal(), with the CPU the window did not see (--once-costs) added."""
    return (b.full_h_per_db * b.dbs - a.full_h_per_db * a.dbs) / (b.dbs - a.dbs)


def full_exponent(a: SizeResult, b: SizeResult) -> float:
    fa, fb = a.full_h_per_db * a.dbs, b.full_h_per_db * b.dbs
    if not fa > 0 or not fb > 0 or a.dbs == b.dbs:
        return float("nan")
    return math.log(fb / fa) / math.log(b.dbs / a.dbs)


def ascii_chart(results: Sequence[SizeResult], width: int = 60) -> list[str]:
    """Total agent CPU per hour by size on a log scale: '#' measured, '+' on to the
    projection where the agent was saturated, '|' where linear growth from the smallest
    size would be (its CPU per target times the targets; per database watched times the
    databases with targets that are instances)."""
    first = results[0]
    linear = [first.effective_h_per_db * r.dbs for r in results]
    values = [v for r in results for v in (r.cpu_h, total_h(r))] + linear
    low = 10 ** math.floor(math.log10(max(1e-3, min(values))))
    high = 10 ** math.ceil(math.log10(max(values) * 1.0001))

    def col(value: float) -> int:
        return max(0, min(width, round(math.log10(max(value, low) / low)
                                       / math.log10(high / low) * width)))

    lines = [f"Total agent CPU, s per hour, log scale: # measured, + projected (saturated: "
             f"CPU per collection x due), | linear from {first.dbs} {unit(first)}(s)"]
    for r, lin in zip(results, linear, strict=True):
        cells = [" "] * (width + 1)
        for x in range(max(1, col(r.cpu_h))):
            cells[x] = "#"
        for x in range(col(r.cpu_h), col(total_h(r))):
            cells[x] = "+"
        cells[col(lin)] = "|"
        figure = f"{r.cpu_h:,.0f}" + (f" (projected {total_h(r):,.0f})" if r.saturated
                                      else "")
        lines.append(f"{r.dbs:>4} {unit(r)}s {''.join(cells)} {figure}")
    axis = [" "] * (width + 12)
    decade, labels = low, []
    while decade <= high:
        labels.append((col(decade), f"{decade:,.0f}"))
        decade *= 10
    for x, text in labels:
        for j, ch in enumerate(text):
            if x + j < len(axis):
                axis[x + j] = ch
    lines.append(f"{'':{len(unit(first)) + 7}}{''.join(axis).rstrip()}")
    return lines


def goals(results: Sequence[SizeResult]) -> tuple[list[str], list[str]]:
    """The goals table and the reasons for each miss, from the measurements. Sizes are
    targets (one per database) or, with targets that are instances, databases watched:
    the goals are per database watched either way (the same thing by default)."""
    big = results[-1]
    inst = big.instance_mode
    u = unit(big)  # target, or database (watched)
    at = f"{size_name(big)}" + ("" if big.dbs == GOAL_AT else
                                f" (the largest size run; the goal is at {GOAL_AT})")
    rows = ["| Goal | Measured | Met |", "|---|---|---|"]
    why: list[str] = []
    sat = [r for r in results if r.saturated]

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    def per_unit(r: SizeResult) -> str:
        text = f"{r.dbs}: {r.cpu_h_per_db:,.1f}" + (
            f" measured, {r.projected_h_per_db:,.0f} projected" if r.saturated else "")
        if inst:  # and per target (an instance walking its share)
            text += (f" (per target: {r.cpu_h_per_target:,.1f}"
                     + (f" measured, {r.projected_h_per_target:,.0f} projected"
                        if r.saturated else "") + ")")
        return text

    full = all(r.once for r in results)  # --once-costs: what the window missed added

    def cpu_goal_h(r: SizeResult) -> float:
        return max(r.effective_h_per_db, r.full_h_per_db) if full else r.effective_h_per_db

    ok_cpu = all(cpu_goal_h(r) <= GOAL_CPU_PER_TARGET_H for r in results)
    rows.append(f"| CPU per {u}{' watched' if inst else ''} at most "
                f"{GOAL_CPU_PER_TARGET_H:g} s/hour at default "
                f"intervals, every size | {'; '.join(per_unit(r) for r in results)} "
                "(s/h)" + ("; with the collectors that had no run in the window (one "
                           "`once` run each x its runs per hour): " + "; ".join(
                               f"{r.dbs}: {r.full_h_per_db:,.1f}" for r in results)
                           + " (s/h)" if full else "") + f" | {met(ok_cpu)} |")
    ok_lin = True
    if len(results) >= 3:
        first, last = marginal(results[0], results[1]), marginal(results[-2], results[-1])
        ok_lin = last <= first * LINEAR_TOLERANCE and not sat
        if full:
            ok_lin = ok_lin and full_marginal(results[-2], results[-1]) <= \
                full_marginal(results[0], results[1]) * LINEAR_TOLERANCE
        rows.append(
            f"| Total CPU linear in {u}s{' watched' if inst else ''} (marginal CPU per added "
            f"{u} at the largest "
            f"step at most {LINEAR_TOLERANCE:g}x the first step's, and the agent keeping "
            "up with its schedule) | "
            + "; ".join(f"{x.dbs}->{y.dbs}: {marginal(x, y):,.1f} s/h per added "
                        f"{u}, exponent {growth_exponent(x, y):.2f}"
                        for x, y in itertools.pairwise(results))
            + (f" ({', '.join(str(r.dbs) for r in sat)} {u}s: projected, the agent "
               "could not keep up)" if sat else "")
            + ("; with the collectors the window missed: " + "; ".join(
                f"{x.dbs}->{y.dbs}: {full_marginal(x, y):,.1f} s/h per added {u}, exponent "
                f"{full_exponent(x, y):.2f}" for x, y in itertools.pairwise(results))
               if full else "") + f" | {met(ok_lin)} |")
    rss_goal = GOAL_RSS_BASE + GOAL_RSS_PER_TARGET * big.dbs
    ok_rss = big.rss_peak < rss_goal
    partial = big.pairs_collected < big.pairs_total
    rows.append(f"| RSS under {GOAL_RSS_BASE:g} MiB + {GOAL_RSS_PER_TARGET:g} MiB per {u} "
                f"at {at} ({rss_goal:,.0f} MiB) | peak {big.rss_peak:,.1f} MiB, median "
                f"{big.rss_median:,.1f} in the window"
                + (f" ({(big.rss_peak - GOAL_RSS_BASE) / big.dbs:,.2f} MiB per database "
                   f"above {GOAL_RSS_BASE:g} at the peak)" if inst else "")
                + (f" (only {big.pairs_collected:,} of {big.pairs_total:,} target/collector "
                   "pairs had collected: the full snapshot would be larger)" if partial else "")
                + f" | {'**no**' if not ok_rss else 'inconclusive' if partial else 'yes'} |")
    probe_of = (f" (each target: about {big.dbs / big.targets:,.0f} databases, "
                f"{big.series / big.targets:,.0f} series)" if inst else "")
    if big.probe == "available":
        p99 = max(big.latency[k]["p99"] for k in PROBE_VARIANTS)
        ok_probe: bool | None = p99 < GOAL_PROBE_P99_MS
        rows.append(f"| `/probe` p99 under {GOAL_PROBE_P99_MS:g} ms at {at} | "
                    + ", ".join(f"{k} {big.latency[k]['p99']:,.2f} ms" for k in PROBE_VARIANTS)
                    + f"{probe_of} | {met(bool(ok_probe))} |")
    else:
        ok_probe = None
        rows.append(f"| `/probe` p99 under {GOAL_PROBE_P99_MS:g} ms at {at} | {big.probe} | "
                    "not measured |")
    worst = max(big.latency[k]["p99"] for k in VARIANTS)
    ok_metrics = worst < GOAL_METRICS_P99_MS
    rows.append(f"| Full `/metrics` p99 under {GOAL_METRICS_P99_MS:g} ms at {at}, every "
                "variant | " + ", ".join(f"{k} {big.latency[k]['p99']:,.1f} ms (n = "
                                         f"{big.latency[k]['n']:g})" for k in VARIANTS)
                + f" | {met(ok_metrics)} |")
    if inst:
        ok_bound = all(r.conns_max <= r.bound and max(r.conns_per_instance_max, default=0)
                       <= r.conn_bound_per_instance for r in results)
        rows.append(f"| Never more connections than the bound ({big.conn_bound_per_instance} "
                    "per instance, `max_connections`) | "
                    + "; ".join(f"{size_name(r)}: max {r.conns_max} of {r.bound}, per "
                                f"instance {'/'.join(str(c) for c in r.conns_per_instance_max)}"
                                for r in results) + f" | {met(ok_bound)} |")
    else:
        ok_bound = all(r.conns_max <= r.targets for r in results)
        rows.append("| Never more connections than the bound (one per target today) | "
                    + "; ".join(f"{r.targets}: max {r.conns_max}" for r in results)
                    + f" | {met(ok_bound)} |")
    ok_leak = all(r.conns_after_stop == 0 for r in results)
    rows.append("| No connection left after the targets are removed (agent stopped) | "
                + "; ".join(f"{r.dbs}: {r.conns_after_stop} after {r.conns_gone_s:.1f} s"
                            for r in results) + f" | {met(ok_leak)} |")

    if (not ok_cpu or not ok_lin) and inst:
        runs = "; ".join(f"{size_name(r)}: {r.cpu_ms_per_run:,.0f} ms" for r in results)
        busy = []
        for r in results:
            total = sum(r.wall_sum_ms.values())
            top = sorted(r.wall_sum_ms.items(), key=lambda kv: -kv[1])[:3]
            if total > 0:
                busy.append(f"{size_name(r)}: " + ", ".join(
                    f"{c} {ms / total * 100:.0f}% ({r.done.get(c, 0):,} runs, median "
                    f"{r.wall_ms.get(c, float('nan')):,.0f} ms)" for c, ms in top))
        why.append(
            f"- **CPU per database / linearity.** CPU per collection: {runs} (the agent's "
            "CPU in the window / the collections it did; a per-database collector's run "
            "walks every database of its target, so its cost grows with the databases per "
            "instance while the runs due per hour do not). Wall time of the collections in "
            "the window by collector (the largest shares; wall time includes the database's "
            "and the connections' time, not only the agent's CPU): "
            + ("; ".join(busy) or "none recorded") + ".")
    elif not ok_cpu or not ok_lin:
        runs = "; ".join(f"{r.targets}: {r.cpu_ms_per_run:,.0f} ms" for r in results)
        render = "; ".join(f"{r.targets}: {r.render_ms.get('total', float('nan')):,.0f} ms "
                           f"({r.series:,} series)" for r in results)
        share = "; ".join(
            f"{r.targets}: {r.runs * r.render_ms.get('total', 0) / 1000 / r.cpu_s * 100:,.0f}%"
            for r in results if r.cpu_s > 0)
        why.append(
            f"- **CPU per target / linearity.** CPU per collection grows with the fleet: "
            f"{runs} (the agent's CPU in the window / the collections it did). Where the "
            "agent re-renders the whole exposition after every recorded run (every target's "
            "series: plain text, OpenMetrics, gzip of the OpenMetrics bytes, in the "
            "collecting thread; the design before the fleet work), one collection costs in "
            "proportion to the series of all targets, and an hour's collections in "
            "proportion to targets x series: O(targets^2). One full re-render of the "
            f"exposition served at the end of the window, in the bench process: {render}. "
            "If every collection in the window had paid one, that would be this share of "
            f"the agent's CPU: {share} (an estimate: above 100% where the exposition grew "
            "during the window because the agent was still making its first runs; the agent "
            "also rebuilds its family list and health score per render, not in it).")
    if sat:
        why.append("- **Saturation: the agent could not keep up.** " + "; ".join(
            f"{size_name(r)}: {r.runs:,} collections done in the window of "
            f"{r.due_total:,.0f} due ({r.runs / r.due_total * 100:.0f}%), {r.skipped:,} runs "
            f"skipped as still queued, {r.pairs_collected:,} of {r.pairs_total:,} "
            f"target/collector pairs had ever succeeded, agent CPU "
            f"{r.cpu_s / r.window_s * 100:.0f}% of one core, machine {r.machine_busy * 100:.0f}"
            "% busy" for r in sat)
            + ". The collecting threads serialise on the exposition's lock and the "
            "interpreter lock, so the measured CPU per hour is capped near one core and "
            "understates the cost: the projected figures (CPU per collection x the "
            "collections due at default intervals) are what keeping the schedule would "
            "take, and a lower bound where not every pair had collected yet (a fuller "
            "snapshot renders slower). Those sizes never reached a steady state in this "
            "run.")
    if ok_rss and partial:
        why.append(f"- **RSS (inconclusive).** {big.rss_peak:,.1f} MiB at {size_name(big)} "
                   f"is under {rss_goal:,.0f} MiB only because the snapshot held "
                   f"{big.pairs_collected:,} of {big.pairs_total:,} target/collector pairs' "
                   f"results ({big.series:,} series); "
                   + "; ".join(f"{size_name(r)}: {r.rss_peak:,.1f} MiB for {r.series:,} "
                               f"series" + (" (complete)" if r.pairs_collected == r.pairs_total
                                            else "") for r in results) + ".")
    if not ok_rss:
        why.append(f"- **RSS.** {big.rss_peak:,.1f} MiB at {size_name(big)} against "
                   f"{rss_goal:,.0f}: the snapshot holds {big.series:,} series "
                   f"({big.series / big.dbs:,.0f} per {u}"
                   + (f", {big.series / big.targets:,.0f} per target" if inst else "")
                   + ") as client_python objects, "
                   "plus each rendered variant cached "
                   f"({big.body_bytes / 2**20:,.1f} MiB of plain text alone); "
                   f"{big.threads_max} threads.")
    if not ok_metrics:
        why.append(
            f"- **/metrics p99.** At {size_name(big)} the exposition is "
            f"{big.series:,} series ({big.body_bytes / 2**20:,.1f} MiB as text); a scrape "
            "that arrives after a collection changed the snapshot waits on the exposition "
            "lock behind the collecting threads' re-renders, or re-renders itself, and with "
            "collections back to back the cache is nearly always stale (one full re-render "
            f"in the bench process: {big.render_ms.get('total', 0):,.0f} ms of CPU). Paced "
            f"as Prometheus would scrape (every 15 s), the p50 was "
            f"{big.paced.get('p50', float('nan')):,.0f} ms.")
    if ok_probe is False:
        why.append(f"- **/probe p99** above {GOAL_PROBE_P99_MS:g} ms at {size_name(big)}"
                   f"{probe_of}.")
    if not ok_bound and inst:
        why.append("- **Connections above the bound**: "
                   + "; ".join(f"{size_name(r)}: {r.conns_max} of {r.bound}, per instance "
                               f"{'/'.join(str(c) for c in r.conns_per_instance_max)}"
                               for r in results) + ".")
    elif not ok_bound:
        why.append("- **Connections above one per target**: "
                   + "; ".join(f"{r.targets}: {r.conns_max}" for r in results
                               if r.conns_max > r.targets) + ".")
    if not ok_leak:
        why.append("- **Connections left after the stop**: "
                   + "; ".join(f"{r.dbs}: {r.conns_after_stop}" for r in results
                               if r.conns_after_stop) + ".")
    return rows, why


def section(label: str, results: list[SizeResult], meta: dict[str, Any]) -> str:
    a = meta
    inst = a.get("targets_are") == "instances"
    if inst:
        agent = (
            "- Agent: `python -m hiw_monitor run --config FILE --listen 127.0.0.1:<port> "
            "--log-format json`, **one target per instance** (`--targets-are instances`) "
            "holding any of the databases watched (host, port, dbname `heroes_in_waiting`, "
            "user `hiw_monitor`, `password_file`, and `databases: {include: [...]}` listing "
            "the exact names of that instance's share of the N databases watched, taken "
            "round-robin over the instances as in the default mode; `max_connections` left "
            f"at the agent's default, {a.get('max_connections')} per instance), so a size "
            "is the databases watched; the per-database collectors ("
            + ", ".join(a.get("per_database", [])) + ") walk the target's databases one at "
            "a time with a `datname` label, the others run once per instance; default "
            "collectors and intervals ("
            + ", ".join(f"{k} {v:g} s" for k, v in a["collectors"].items())
            + "). A new agent per size. Per-database figures divide by the databases "
            "watched, per-target ones by the targets (instances); collections due are per "
            "target (one per-database run walks all of its target's databases).")
    else:
        agent = (
            "- Agent: `python -m hiw_monitor run --config FILE --listen 127.0.0.1:<port> "
            "--log-format json`, one target per database (host, port, dbname, user "
            "`hiw_monitor`, `password_file`), targets round-robin over the instances, default "
            "collectors and intervals ("
            + ", ".join(f"{k} {v:g} s" for k, v in a["collectors"].items())
            + "). A new agent per size.")
    lines = [
        f"## {label}",
        "",
        f"- Mode: `--targets-are {a.get('targets_are', 'databases')}`: "
        + ("one target per PostgreSQL instance, walking its share of the databases watched; "
           "sizes are databases watched" if inst else
           "one target per database watched (the default)"),
        f"- Date: {a['date']}; the whole run took {a['elapsed_min']:.1f} min",
        f"- Command: `{a['command']}`",
        f"- Code: hiw-monitor {a['git']}" + (
            f" (**changed on disk during the run**: {', '.join(a['changed'])}; each size's "
            "agent ran the code on disk when it started)" if a['changed']
            else " (unchanged during the run)"),
        f"- Machine: {a['machine']}; **shared** with other engineers' work and a CI run "
        f"(load average {a['load_start']} at the start, {a['load_end']} at the end; the "
        "machine's busy share of all cores in each window is in the table). The agent's "
        "CPU seconds are its own (utime + stime), less affected by sharing than wall time; "
        "wall-time figures (latency, collections done when the agent is CPU-bound) are.",
        f"- PostgreSQL {a['server_version']} (system binaries), {a['instances']} instances on "
        f"127.0.0.1 ({', '.join(a['settings'])}), {a['databases']} HiW databases in all "
        "(`heroes_in_waiting` on each and copies made with `CREATE DATABASE ... TEMPLATE "
        f"heroes_in_waiting`, {a['setup_s']:.0f} s of set-up), all of them present for every "
        "size (so instance-wide views, pg_stat_database and pg_stat_statements, hold every "
        "database of the instance even when the agent watches one); pgbench "
        f"`-R {a['pgbench_rate']:g} -c 1` with bench/peer.py's HiW script on "
        "each instance's `heroes_in_waiting` throughout.",
        agent,
        f"- Window: {a['window']:g} s per size, starting {a['offset']:g} s after the agent "
        f"started (or {SETTLE:g} s after every pair's first run, if later; the wait for the "
        f"first runs is bounded by {a['warmup_timeout']:g} s), one /metrics scrape every "
        "15 s with Prometheus's headers inside it.",
        "",
        "### Per size",
        "",
    ]
    head = "| | " + " | ".join(size_name(r) for r in results) + " |"
    lines += [head, "|---|" + "---:|" * len(results)]
    first = results[0]

    def row(name: str, fn: Callable[[SizeResult], str]) -> None:
        lines.append(f"| {name} | " + " | ".join(fn(r) for r in results) + " |")

    def lat(r: SizeResult, k: str, digits: int) -> str:
        q = r.latency.get(k)
        if not q:
            return "404" if k in PROBE_VARIANTS and r.probe.startswith("not available") \
                else "n/a"
        return f"{q['p50']:,.{digits}f} / {q['p99']:,.{digits}f} ({q['n']:g})"

    if inst:
        row("Databases watched per instance (one target per instance with any)",
            lambda r: "/".join(str(x) for x in r.per_instance))
    else:
        row("Targets per instance", lambda r: "/".join(str(x) for x in r.per_instance))
    row("Agent CPU, s per hour (measured)", lambda r: fmt(r.cpu_h, 0))
    if inst:
        row("**Agent CPU per database watched, s per hour (measured)**",
            lambda r: f"**{fmt(r.cpu_h_per_db)}**")
        row(f"Measured CPU per database vs {dbs(first.dbs)}",
            lambda r: f"{r.cpu_h_per_db / first.cpu_h_per_db:,.1f}x")
        row("Agent CPU per target (instance), s per hour (measured)",
            lambda r: fmt(r.cpu_h_per_target))
    else:
        row("**Agent CPU per target, s per hour (measured)**",
            lambda r: f"**{fmt(r.cpu_h_per_target)}**")
        row(f"Measured CPU per target vs {first.targets} target(s)",
            lambda r: f"{r.cpu_h_per_target / first.cpu_h_per_target:,.1f}x")
    row("Agent CPU, share of one core", lambda r: f"{r.cpu_s / r.window_s * 100:,.0f}%")
    row("Collections done / due in the window",
        lambda r: f"{r.runs:,} / {r.due_total:,.0f} ({r.runs / r.due_total * 100:.0f}%)")
    row("Kept up with the schedule (>= 90% of due done)",
        lambda r: "no" if r.saturated else "yes")
    row("CPU per collection, ms", lambda r: fmt(r.cpu_ms_per_run, 0))
    if inst:
        row("**CPU per database watched projected at default intervals** (CPU per "
            "collection x due / databases), s/h",
            lambda r: f"**{fmt(r.projected_h_per_db, 0 if r.saturated else 1)}**")
        row("CPU per target (instance) projected at default intervals, s/h",
            lambda r: fmt(r.projected_h_per_target, 0 if r.saturated else 1))
    else:
        row("**CPU per target projected at default intervals** (CPU per collection x due), "
            "s/h", lambda r: f"**{fmt(r.projected_h_per_target, 0 if r.saturated else 1)}**")
    if any(r.once for r in results):
        row("CPU the window did not see: collectors without a run in it, one `once` run "
            "each (baseline off) x its runs per hour, s/h",
            lambda r: f"{r.unseen_h:,.1f} ({', '.join(r.unseen) or 'none'})" if r.once
            else "n/a")
        row(f"**CPU per {unit(first)}{' watched' if inst else ''} at default intervals "
            "with those** (measured or projected + not seen), s/h",
            lambda r: f"**{fmt(r.full_h_per_db)}**")
    row("Runs skipped (still queued) in the window", lambda r: f"{r.skipped:,}")
    row("Failed collections in the window", lambda r: f"{sum(r.failed.values()):,}")
    row("Target/collector pairs that had succeeded by the series scrape",
        lambda r: f"{r.pairs_collected:,} / {r.pairs_total:,}")
    row("RSS median in the window / peak, MiB",
        lambda r: f"{r.rss_median:,.1f} / {r.rss_peak:,.1f}")
    if inst:
        row(f"RSS goal ({GOAL_RSS_BASE:g} + {GOAL_RSS_PER_TARGET:g} per database) / peak "
            f"above {GOAL_RSS_BASE:g} MiB per database, MiB",
            lambda r: f"{GOAL_RSS_BASE + GOAL_RSS_PER_TARGET * r.dbs:,.0f} / "
                      f"{(r.rss_peak - GOAL_RSS_BASE) / r.dbs:,.2f}")
    row("Threads median / max (max minus targets)",
        lambda r: f"{r.threads_median:g} / {r.threads_max} ({r.threads_max - r.targets})")
    if inst:
        row("Connections max / at window end (bound: "
            f"{first.conn_bound_per_instance} per instance, `max_connections`)",
            lambda r: f"{r.conns_max} / {r.conns_end} (bound {r.bound})")
        row("Connections max per instance", lambda r: "/".join(
            str(c) for c in r.conns_per_instance_max))
        row(f"Connections sampled every {FAST_CONN_EVERY:g} s in the window",
            lambda r: r.conns_fast or "n/a")
        row("Connections held per database watched (max / databases)",
            lambda r: f"{r.conns_max / r.dbs:,.3f}")
    else:
        row("Connections max / at window end (bound: 1 per target)",
            lambda r: f"{r.conns_max} / {r.conns_end}")
    row(f"Connections left after stop (polled up to {CONN_GONE_TIMEOUT:g} s)",
        lambda r: f"{r.conns_after_stop}")
    if inst:
        row("DB exec time per database watched, ms per minute",
            lambda r: fmt(r.db_ms_per_db_min, 1))
    row("DB exec time per target, ms per minute", lambda r: fmt(r.db_ms_per_target_min, 1))
    row("DB plan time, all targets, ms per minute",
        lambda r: fmt(r.db_plan_ms / (r.window_s / 60), 1))
    row("Statement calls in the window (distinct)",
        lambda r: f"{r.db_calls:,} ({r.db_statements:,})")
    if inst:
        row("Series / per database watched / per target",
            lambda r: f"{r.series:,} / {r.series / r.dbs:,.0f} / {r.series / r.targets:,.0f}")
    else:
        row("Series / per target", lambda r: f"{r.series:,} / {r.series / r.targets:,.0f}")
    row("Exposition, plain text bytes", lambda r: f"{r.body_bytes:,}")
    for key in VARIANTS:
        row(f"`/metrics` {key}, p50 / p99 ms (n)", functools.partial(lat, k=key, digits=1))
    row("`/metrics` paced (every 15 s, OpenMetrics + gzip), p50 / max ms (n)",
        lambda r: f"{r.paced['p50']:,.1f} / {r.paced['max']:,.1f} ({r.paced['n']:g})"
        if r.paced else "n/a")
    for key in PROBE_VARIANTS:
        row(f"`/probe` {key.split(' ', 1)[1]}, p50 / p99 ms (n)",
            functools.partial(lat, k=key, digits=2))
    if inst:
        row("`/probe` answers one target: its databases / series (about)",
            lambda r: f"{r.dbs / r.targets:,.0f} / {r.series / r.targets:,.0f}")
    row("One full re-render in the bench process (text + OpenMetrics + gzip), CPU ms",
        lambda r: fmt(r.render_ms.get("total", float("nan")), 0))
    row("Wait for the first runs, s",
        lambda r: f"{r.warmup_s:.0f}" + ("" if r.warmup_complete else
                                         f" (timed out, {r.pairs_missing:,} pairs without)"))
    row("Window start after agent start / length, s",
        lambda r: f"{r.window_start_s:.0f} / {r.window_s:.0f}")
    row("Machine busy (all cores, everyone) in the window",
        lambda r: f"{r.machine_busy * 100:.0f}%")
    row("Agent stop (SIGTERM) s / exit code", lambda r: f"{r.stop_s:.1f} / {r.exit_code}")
    lines += [
        "",
        "### Growth of the total CPU",
        "",
        "Total CPU per hour: measured where the agent kept up, projected where it did not.",
        "",
        f"| From | To | Total CPU at To, s/h | Marginal CPU per added {unit(first)}, s/h | "
        f"Growth exponent (log CPU / log {unit(first)}s; 1 = linear, 2 = quadratic) |",
        "|---:|---:|---:|---:|---:|",
    ]
    if inst:
        lines[-2:-2] = ["From and To are databases watched (the targets are the instances "
                        "holding them).", ""]
    for x, y in itertools.pairwise(results):
        lines.append(f"| {x.dbs} | {y.dbs} | {total_h(y):,.0f}"
                     f"{' (projected)' if y.saturated else ''} | {marginal(x, y):,.1f} | "
                     f"{growth_exponent(x, y):.2f} |")
    lines += ["", "```", *ascii_chart(results), "```", ""]
    rows, why = goals(results)
    lines += ["### Goals", "", *rows, ""]
    lines += ["### Misses and why", ""] + (why or ["None."]) + [""]
    lines += [
        "### Collections in the window (done / due, median wall time ms)",
        "",
        "| Collector | Interval (s) | " + " | ".join(
            f"{r.dbs} ({r.targets})" if inst else str(r.targets) for r in results) + " |",
        "|---|---:|" + "---:|" * len(results),
    ]
    if inst:
        lines[-2:-2] = ["Columns: databases watched (targets). Due and done count runs per "
                        "target; a run of a per-database collector ("
                        + ", ".join(a.get("per_database", [])) + ") walks every database "
                        "of its target, so its wall time grows with the databases per "
                        "instance.", ""]
    for name, interval in a["collectors"].items():
        lines.append(f"| {name} | {interval:g} | " + " | ".join(
            f"{r.done.get(name, 0):,} / {r.due.get(name, 0):,.0f}, "
            f"{fmt(r.wall_ms.get(name, float('nan')))}" for r in results) + " |")
    absent = [name for name in a["collectors"] if not any(r.done.get(name) for r in results)]
    if absent:
        per_hour = {k: 3600 / v for k, v in a["collectors"].items()}
        share = sum(per_hour[k] for k in absent) / sum(per_hour.values())
        lines += ["", f"No run of {', '.join(absent)} fell inside any window: "
                  f"{sum(per_hour[k] for k in absent):,.0f} of the "
                  f"{sum(per_hour.values()):,.0f} runs per target per hour at the default "
                  f"intervals ({share * 100:.1f}%), so their own cost is not in the measured "
                  "CPU and database time (the projection counts their runs at the window's "
                  "CPU per collection)."]
    if any(r.once for r in results):
        lines += ["", "### One run of each collector (`--once-costs`)", "",
                  "After each size's agent stopped: `hiw-monitor once --config FILE "
                  "--collector NAME`, one process per collector, every target of the size "
                  "(one run each, sequential), its CPU (utime + stime from wait4) and wall "
                  f"time. The `{ONCE_BASELINE}` run (best of three) is the baseline: "
                  "interpreter start-up, imports, config, connecting to each target, the "
                  "cheapest collector and one render; a collector's cost is its CPU minus "
                  "that. The agent runs the same code, but its own connection stays open "
                  "between runs (a `once` connects anew), so these are upper bounds for the "
                  "instance-wide collectors; per-database connections are opened for each "
                  "run by the agent too. Cells: CPU above the baseline / wall, ms.", "",
                  "| Collector | Interval (s) | " + " | ".join(
                      f"{r.dbs} ({r.targets})" if inst else str(r.targets) for r in results)
                  + " |", "|---|---:|" + "---:|" * len(results)]
        for name, interval in a["collectors"].items():
            lines.append(f"| {name} | {interval:g} | " + " | ".join(
                (f"{r.once_run_ms(name):,.0f} / {r.once[name][1]:,.0f}"
                 + (f" (exit {r.once[name][2]:g})" if r.once[name][2] else ""))
                if name in r.once else "n/a" for r in results) + " |")
        lines.append(f"| baseline (`{ONCE_BASELINE}`), CPU best / worst of three | | "
                     + " | ".join(f"{r.once['_baseline'][0]:,.0f} / "
                                  f"{r.once['_baseline'][1]:,.0f}" if "_baseline" in r.once
                                  else "n/a" for r in results) + " |")
        lines += ["", "The baseline's spread (worst minus best) is the noise of one such "
                  "figure; the best is taken off, so the costs lean high."]
    profiled = [r for r in results if r.profile.get("samples")]
    if profiled:
        lines += ["", "### Where the agent's CPU went (py-spy, in the window)", "",
                  f"`py-spy record --nonblocking --rate {PY_SPY_RATE}` on the agent for the "
                  "window (idle threads left out, so a share is of the samples where a "
                  "thread was running Python, not of the CPU seconds exactly); functions "
                  "by samples with them on the stack (inclusive) and as the leaf (self). "
                  "Thread and server plumbing frames are left out of the inclusive list.", ""]
        for r in profiled:
            total = r.profile["samples"]
            lines += [f"**{size_name(r)}** ({total:,} samples)", "",
                      "| Inclusive | Function | Self | Function |", "|---:|---|---:|---|"]
            inc, own = r.profile.get("inclusive", []), r.profile.get("self", [])
            for i in range(max(len(inc), len(own))):
                a_ = (f"{inc[i][0] / total * 100:.1f}%", f"`{inc[i][1]}`") if i < len(inc) \
                    else ("", "")
                b_ = (f"{own[i][0] / total * 100:.1f}%", f"`{own[i][1]}`") if i < len(own) \
                    else ("", "")
                lines.append(f"| {a_[0]} | {a_[1]} | {b_[0]} | {b_[1]} |")
            lines.append("")
    for r in results:
        if r.profile.get("error"):
            lines += ["", f"py-spy at {size_name(r)} failed: {r.profile['error']}"]
    lines += ["", "### The agent's most expensive statements in the window", "",
              "Top-level entries of role `hiw_monitor`, summed over databases and instances "
              "by text.", "",
              f"| {'Databases' if inst else 'Targets'} | DB exec ms in window | Calls | "
              "Statement (start) |",
              "|---:|---:|---:|---|"]
    for r in results:
        for ms, calls, text in r.top_statements[:3]:
            cell = text.replace("|", "/").replace("`", "'")
            lines.append(f"| {r.dbs} | {ms:,.0f} | {calls:,} | `{cell}` |")
    notes = []
    for r in results:
        if r.problems:
            notes.append(f"- {size_name(r)}, warnings/errors in the agent's log: "
                         + "; ".join(r.problems))
        if r.dealloc:
            notes.append(f"- {size_name(r)}: pg_stat_statements evicted {r.dealloc} "
                         "entries in the window (database time undercounted)")
        if r.probe != "available":
            notes.append(f"- {size_name(r)}: `/probe` {r.probe} "
                         f"({', '.join(f'{k}: {v}' for k, v in r.probe_status.items())})")
        if r.exit_code is None or r.exit_code < 0:
            notes.append(f"- {size_name(r)}: the agent had not exited {r.stop_s:.0f} s "
                         f"after SIGTERM and was killed (exit {r.exit_code}); its connections "
                         f"were gone {r.conns_gone_s:.1f} s later (closed with the process)")
        notes += [f"- {size_name(r)}: {n}" for n in r.notes]
    notes += [f"- {n}" for n in a.get("notes", [])]
    lines += ["", "### Also seen", ""] + (notes or ["Nothing else."]) + [""]
    lines += [
        "### How it was measured",
        "",
        "- **CPU**: utime + stime of the agent process (all its threads) from /proc/PID/stat "
        "at the window's start and end, per hour (x 3600 / window) and per target. The "
        "agent's first runs are before the window when they finish in time. **Projected**: "
        "CPU per collection (CPU in the window / collections finished in it) x the "
        "collections due per hour at the default intervals, per target; where the agent "
        "kept up, it is close to the measured figure.",
        "- **RSS / threads**: VmRSS and Threads from /proc/PID/status every 5 s in the "
        "window (median); peak is VmHWM after the latency runs.",
        "- **Connections**: `count(*) FROM pg_stat_activity WHERE application_name = "
        "'hiw_monitor'` on every instance every 5 s, summed; after SIGTERM the instances are "
        f"polled every 0.5 s for up to {CONN_GONE_TIMEOUT:g} s until none is left.",
        "- **Database time**: on every instance, the delta over the window of "
        "`total_exec_time` (plan time separately) of pg_stat_statements entries with "
        "`toplevel` of role `hiw_monitor` (all its databases), summed, per target per minute "
        "(`pg_stat_statements.max` large enough that nothing is evicted; evictions are "
        "reported). Connection set-up and round trips are not in it.",
        "- **Collections**: the agent's `collection` log records (one per finished run) in "
        "the window; due = targets x window / interval per collector; skipped = its "
        "`collection_skipped` records.",
        f"- **Latency**: after the window, sequential GETs, a fresh connection each (urllib), "
        f"request to last byte, one request of each variant in turn (the order rotating), "
        f"up to {a['scrapes']} per variant and about {a['latency_budget']:g} s per size (at "
        "least 2 per variant, 1 past twice that; n in the table), after one unmeasured "
        "request per variant when a scrape takes under 1 s: plain text (no headers), "
        "OpenMetrics + gzip (Prometheus 2.x's Accept and `Accept-Encoding: gzip`), text + "
        "gzip (`Accept: text/plain;version=0.0.4`, `Accept-Encoding: gzip`); "
        "`/probe?target=NAME` cycling over the targets in plain text and OpenMetrics + gzip "
        "when the agent answers it. The agent keeps rendering the variants it has been "
        "asked for after each collection, so the variants asked after the window add to "
        "its CPU then (not inside the window).",
        "- **Series**: sample lines of one plain-text /metrics after the window.",
        *(["- **Targets are instances**: per database watched = the figure / the databases "
           "watched (the size); per target = / the targets (instances with any of them). "
           "Connections are counted per instance too, against `max_connections` per "
           "instance, and besides the 5 s samples a thread of the bench counts them every "
           f"{FAST_CONN_EVERY:g} s through the window on connections of its own (a "
           "per-database connection is open only while its database is collected); the "
           "maxima include those samples. `/probe` cycles over the (few) targets, each "
           "answering all of its databases' series."] if inst else []),
        "- **Re-render estimate**: that plain text parsed with client_python's parser and "
        "rendered again with client_python (plain text, OpenMetrics, then gzip of the "
        "OpenMetrics bytes at level 6: what the agent's prerender does after each recorded "
        "run), CPU time of the bench's thread, best of up to 3, after the agent stopped. It "
        "uses client_python directly, not the agent's code, so it measures the same thing "
        "before and after changes to the agent's rendering.",
        "",
    ]
    data = {"label": label, "meta": meta, "results": [asdict(r) for r in results]}
    text = json.dumps(data, separators=(",", ":")).replace(">", "\\u003e")
    lines += [f"<!-- fleet:data {text} -->", ""]
    return "\n".join(lines)


def section_data(body: str) -> tuple[list[SizeResult], dict[str, Any]] | None:
    found = DATA_RE.search(body)
    if not found:
        return None
    data = json.loads(found.group("json"))
    names = {f.name for f in fields(SizeResult)}
    results = [SizeResult(**{k: v for k, v in r.items() if k in names})
               for r in data["results"]]
    return results, data["meta"]


def header(sections: list[tuple[str, str]]) -> str:
    lines = [
        "# One agent, a fleet of databases",
        "",
        "Generated by `bench/fleet.py` (issue 14: make one agent watch a fleet cheaply). "
        "Each run writes the section named by its `--label`, replacing a section of that "
        "name and keeping the others; this summary is rebuilt from every section's data "
        "(`--rerender` rebuilds the sections from their data without measuring). Numbers "
        "are as measured, goals missed included. To measure a change: `.venv/bin/python "
        "bench/fleet.py --label \"After ...\"` (the agent runs the working tree; "
        "`--code REV` runs a commit's `hiw_monitor/` instead, `--window 60 --offset 0 "
        "--sizes 1,10` is a smoke test of a few minutes; `--targets-are instances` gives "
        "the agent one target per instance walking its share of the databases instead of "
        "one target per database).",
        "",
        "Goals: CPU per target (per database watched, with targets that are instances) at "
        "most 5 s/hour at default intervals; total CPU linear in targets (databases "
        "watched); RSS under 40 MiB + 1 MiB per target (database) at 200 targets "
        "(databases); `/probe` p99 under 5 ms and full `/metrics` p99 under 250 ms at 200 "
        "targets (databases); never more connections than the bound, none left after the "
        "targets are removed.",
        "",
        "## Summary of the runs",
        "",
        "Targets are: `databases` (the default) is one target per database watched; "
        "`instances` (`--targets-are instances`) is one target per PostgreSQL instance "
        "walking its share of the databases watched (`databases: {include: [...]}`), so "
        "there a size is the databases watched, and per-database figures divide by them. "
        "The connection bound is 1 per target with `databases`, `max_connections` (2) per "
        "instance with `instances`.",
        "",
        "| Run | Targets are | Databases watched | Targets | CPU per database, measured "
        "(s/h) | CPU per target, measured (s/h) | Collections done / due | CPU per database, "
        "projected at default intervals (s/h) | CPU per target, projected (s/h) | Peak RSS "
        "(MiB) | `/metrics` p99, OpenMetrics + gzip (ms) | `/probe` p99 (ms) | Max "
        "connections (bound) | Left after stop | DB exec ms per database per min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, body in sections:
        parsed = section_data(body)
        if parsed is None:
            continue
        for r in parsed[0]:
            probe = [r.latency[k]["p99"] for k in PROBE_VARIANTS if r.latency.get(k)]
            om = r.latency.get("openmetrics+gzip")
            lines.append(
                f"| {label} | {r.targets_are} | {r.dbs} | {r.targets} | "
                f"{r.cpu_h_per_db:,.1f} | {r.cpu_h_per_target:,.1f} | "
                f"{r.runs / r.due_total * 100:.0f}% | {r.projected_h_per_db:,.1f} | "
                f"{r.projected_h_per_target:,.1f} | "
                f"{r.rss_peak:,.1f} | {fmt(om['p99']) if om else 'n/a'} | "
                f"{f'{max(probe):,.2f}' if probe else 'n/a'} | {r.conns_max} ({r.bound}) | "
                f"{r.conns_after_stop} | {r.db_ms_per_db_min:,.1f} |")
    return "\n".join(lines) + "\n\n"


def read_sections(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [(found.group("label"), found.group("body"))
            for found in SECTION_RE.finditer(path.read_text(encoding="utf-8"))]


def write_doc(path: Path, sections: list[tuple[str, str]]) -> None:
    text = header(sections) + "".join(
        f"<!-- fleet:section {name} -->\n{body.rstrip(chr(10))}\n<!-- fleet:end -->\n\n"
        for name, body in sections)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def put_section(path: Path, label: str, body: str) -> None:
    """Replace the section called ``label`` (or append it), keeping the others."""
    sections = read_sections(path)
    for i, (old, _) in enumerate(sections):
        if old == label:
            sections[i] = (label, body)
            break
    else:
        sections.append((label, body))
    write_doc(path, sections)


def rerender(path: Path, label: str, notes: Sequence[str]) -> int:
    """Rebuild every section from its embedded data with today's report code; ``notes``
    are added to the "Also seen" list of the section called ``label``."""
    sections = []
    for name, body in read_sections(path):
        parsed = section_data(body)
        if parsed is None:
            sections.append((name, body))
            continue
        results, meta = parsed
        if name == label and notes:
            meta["notes"] = [*meta.get("notes", []), *notes]
        sections.append((name, section(name, results, meta)))
    write_doc(path, sections)
    return len(sections)


# --- main --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[list[SizeResult], dict[str, Any]]:
    t0 = time.monotonic()
    git = git_describe()
    sources = source_hashes()
    load_start = loadavg()
    binaries = system_binaries(15)
    if binaries is None:
        raise BenchError("no PostgreSQL 15: apt-get install postgresql-15")
    sizes = args.sizes
    per_instance = math.ceil(max(sizes) / args.instances)
    settings = {"max_connections": str(per_instance + 40),
                "pg_stat_statements.max": str(max(5000, 200 * per_instance + 2000))}
    password = secrets.token_urlsafe(18)
    clusters: list[Cluster] = []
    pgbenches: list[Pgbench] = []
    monitor: Monitor | None = None
    results: list[SizeResult] = []
    with tempfile.TemporaryDirectory(prefix="hiw-fleet-") as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        password_file = tmp / "hiw_monitor.password"
        password_file.write_text(password + "\n", encoding="utf-8")
        password_file.chmod(0o600)
        code = agent_code(args.code, tmp)
        facts = agent_facts(code)
        collectors: dict[str, float] = facts["collectors"]
        if code.commit is not None:
            git = (f"at commit {code.commit[:7]} (`--code {args.code}`: the agent ran a "
                   "snapshot of that commit's hiw_monitor/ made with `git archive`, not the "
                   "working tree)")
        print(f"agent code: {facts['file']} (hiw-monitor {facts['version']})", flush=True)
        try:
            deadline = time.monotonic() + args.setup_timeout
            for _ in range(args.instances):
                cluster = Cluster(binaries, settings=settings)
                clusters.append(cluster)
                cluster.init().start()
                cluster.create_hiw_database(monitor_password=password)
            fleet = fleet_targets(clusters, max(sizes))
            for i, cluster in enumerate(clusters):
                copies = max((int(t.dbname.removeprefix(COPY_PREFIX)) for t in fleet
                              if t.instance == i and t.dbname != DBNAME), default=0)
                print(f"instance {i} (port {cluster.port}): {copies} copies", flush=True)
                create_copies(cluster, copies, deadline)
            setup_s = time.monotonic() - t0
            with clusters[0].connect() as conn:
                row = conn.execute("SHOW server_version").fetchone()
            server_version = str(row[0]) if row else "unknown"
            budget = int(len(sizes) * (args.offset + args.window + args.warmup_timeout
                                       + args.latency_budget + 200) + 600)
            for i, cluster in enumerate(clusters):
                sub = tmp / f"pgbench-{i}"
                sub.mkdir()
                sub.chmod(0o755)
                pgbenches.append(Pgbench(cluster, sub, 1, args.pgbench_rate, budget))
            monitor = Monitor(clusters)
            for n in sizes:
                results.append(measure_size(n, fleet, monitor, tmp, password_file,
                                            collectors, code, args,
                                            facts.get("max_connections")))
        finally:
            if monitor is not None:
                monitor.close()
            for bench in pgbenches:
                with contextlib.suppress(Exception):
                    bench.stop()
            for cluster in clusters:
                cluster.destroy()
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_min": (time.monotonic() - t0) / 60,
        "command": shlex.join([sys.executable, *sys.argv]),
        "git": git, "changed": [] if code.commit is not None else
        changed_files(sources, source_hashes()),
        "machine": f"{os.cpu_count()} cores (`os.cpu_count()`), {platform.machine()}, "
                   f"{platform.system()} {platform.release()}, {mem_total_gib():.1f} GiB RAM, "
                   f"Python {platform.python_version()}",
        "load_start": load_start, "load_end": loadavg(),
        "server_version": server_version, "instances": args.instances,
        "settings": [f"`{k} = {v}`" for k, v in settings.items()],
        "databases": len(fleet), "setup_s": setup_s, "pgbench_rate": args.pgbench_rate,
        "collectors": collectors, "window": args.window, "offset": args.offset,
        "scrapes": args.scrapes, "latency_budget": args.latency_budget,
        "warmup_timeout": args.warmup_timeout, "notes": list(args.note),
        "targets_are": args.targets_are, "per_database": facts.get("per_database", []),
        "max_connections": facts.get("max_connections"),
    }
    return results, meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1,10,50,200",
                        help="targets per run, comma-separated (default 1,10,50,200)")
    parser.add_argument("--window", type=float, default=300.0, metavar="SECONDS",
                        help="steady measurement window per size (default 300)")
    parser.add_argument("--offset", type=float, default=None, metavar="SECONDS",
                        help="start the window this long after the agent started (or after "
                             "the warm-up, if later); default max(60, 330 - window), so the "
                             "window holds the 300 s collectors' second runs; 0 for a quick "
                             "smoke test")
    parser.add_argument("--instances", type=int, default=3,
                        help="PostgreSQL instances (default 3)")
    parser.add_argument("--targets-are", choices=("databases", "instances"),
                        default="databases",
                        help="databases (default): one target per database watched; "
                             "instances: one target per instance, whose databases: include "
                             "lists its share of the databases watched (a size is still the "
                             "databases watched)")
    parser.add_argument("--warmup-timeout", type=float, default=180.0, metavar="SECONDS",
                        help="longest wait for every (target, collector) first run "
                             "(default 180)")
    parser.add_argument("--scrapes", type=int, default=100,
                        help="timed scrapes per variant and size at most (default 100)")
    parser.add_argument("--latency-budget", type=float, default=60.0, metavar="SECONDS",
                        help="time for the latency runs per size at most (default 60)")
    parser.add_argument("--pgbench-rate", type=float, default=5.0,
                        help="pgbench transactions per second per instance (default 5)")
    parser.add_argument("--setup-timeout", type=float, default=900.0, metavar="SECONDS",
                        help="time to create the instances and databases at most")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="PATH",
                        help="profile the agent in each window with this py-spy executable "
                             f"(record --nonblocking, {PY_SPY_RATE} Hz) and report where its "
                             "CPU went")
    parser.add_argument("--once-costs", action="store_true",
                        help="after each size's agent stopped, run each collector once "
                             "(hiw-monitor once --collector NAME, one process each) and "
                             "measure its CPU, to add the collectors that had no run in the "
                             "window to the CPU per hour")
    parser.add_argument("--code", metavar="REV", default=None,
                        help="run the agent from a git archive of REV's hiw_monitor/ (e.g. "
                             "HEAD) instead of the working tree, which others may be editing")
    parser.add_argument("--label", default=DEFAULT_LABEL,
                        help=f"section title in --out (default {DEFAULT_LABEL!r}); a "
                             "section with the same title is replaced, others are kept")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "fleet.md",
                        help="Markdown file to write (default docs/fleet.md)")
    parser.add_argument("--note", action="append", default=[], metavar="TEXT",
                        help="a line for the section's 'Also seen' list (repeatable; with "
                             "--rerender, added to the section called --label)")
    parser.add_argument("--rerender", action="store_true",
                        help="measure nothing: rebuild every section of --out from the data "
                             "embedded in it, with this script's report code")
    args = parser.parse_args()
    if args.rerender:
        print(f"rebuilt {rerender(args.out, args.label, args.note)} section(s) of {args.out}")
        return 0
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error("--sizes takes integers, e.g. 1,10,50,200")
    if not args.sizes or args.sizes[0] < 1:
        parser.error("--sizes must be positive")
    if args.instances < 1 or args.window < SAMPLE_EVERY * 2:
        parser.error(f"--instances >= 1 and --window >= {SAMPLE_EVERY * 2:g}")
    if args.offset is None:
        args.offset = max(60.0, 330.0 - args.window)
    if "-->" in args.label or "\n" in args.label:
        parser.error("--label may not contain '-->' or a newline")
    try:
        results, meta = run(args)
    except BenchError as exc:
        print(f"bench/fleet.py: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    put_section(args.out, args.label, section(args.label, results, meta))
    for r in results:
        print(f"{r.dbs:>4} databases, {r.targets:>3} targets: CPU {r.cpu_h:8,.0f} s/h "
              f"({r.cpu_h_per_db:6,.1f} per database, {r.cpu_h_per_target:6,.1f} per target), "
              f"RSS peak {r.rss_peak:7,.1f} MiB, conns max {r.conns_max} (bound {r.bound}), "
              f"after stop {r.conns_after_stop}, series {r.series:,}, /metrics OM+gzip p99 "
              f"{r.latency['openmetrics+gzip']['p99']:,.1f} ms, probe: {r.probe}")
    print(f"wrote {args.out} (section {args.label!r}) in {meta['elapsed_min']:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
