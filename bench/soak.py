"""Soak test: the agent's RSS, file descriptors, threads and connections over a long run.

Starts a throwaway PostgreSQL 15 (system binaries) with the HiW demo schema and the demo
workload, runs ``hiw-monitor run`` as a subprocess with every collector at a 1 s interval
(password in PGPASSWORD, never on the command line), scrapes /metrics every second, and
every ``--sample-seconds`` records the agent's VmRSS, open file descriptors and threads
(from /proc), its server-side connections (pg_stat_activity, application_name
hiw_monitor) and its collector errors. Writes the samples, the growth after warm-up and
a verdict against "flat" (RSS growth <= 5 MB) to a Markdown file.

    /tmp/v/bin/python bench/soak.py [--minutes 15] [--warmup-minutes 2] [--out docs/soak.md]

Everything binds 127.0.0.1 only, every wait is bounded (total run time is about
``--minutes`` + 1), and every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hiw_monitor.analysis import latency
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.demo.cluster import Cluster, free_port, system_binaries
from hiw_monitor.demo.workload import Workload
from hiw_monitor.scheduler import MAX_WORKERS

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "heroes_in_waiting"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 5.0
SCRAPE_EVERY = 1.0
RSS_LIMIT_MB = 5.0


class SoakError(RuntimeError):
    """The soak could not complete; the message says which step failed."""


@dataclass(frozen=True, slots=True)
class Sample:
    elapsed: float  # seconds since the agent started
    rss_kb: int
    fds: int
    threads: int
    connections: int
    collector_errors: float
    collector_runs: float
    collector_skipped: float
    scrapes: int
    scrape_errors: int


@dataclass
class Scraper:
    """GET /metrics every second in a thread; keeps the latest body and counts errors."""

    url: str
    scrapes: int = 0
    errors: int = 0
    last_body: str = ""
    last_error: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Scraper:
        self._thread = threading.Thread(target=self._loop, name="soak-scraper", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=HTTP_TIMEOUT) as response:
                    self.last_body = response.read().decode()  # non-200 raises HTTPError
            except OSError as exc:
                self.errors += 1
                self.last_error = repr(exc)
            self.scrapes += 1
            self._stop.wait(max(0.0, SCRAPE_EVERY - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HTTP_TIMEOUT + 2)


def config_yaml(enabled: list[str]) -> str:
    """The ``enabled`` collectors at a 1 s interval, every other one disabled."""
    lines = ["collectors:"]
    lines += [f"  {name}: {{interval: 1s}}" if name in enabled else
              f"  {name}: {{enabled: false}}" for name in BY_NAME]
    return "\n".join(lines) + "\n"


def agent_env(password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIW_MONITOR_")}
    env["PGPASSWORD"] = password
    return env


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def metric_sum(text: str, family: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            total += sum(s.value for s in fam.samples if s.name == family + "_total")
    return total


def agent_connections(cluster: Cluster) -> int:
    with cluster.connect(connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                           "WHERE application_name = 'hiw_monitor'").fetchone()
    return int(row[0]) if row else -1


def take_sample(pid: int, started: float, cluster: Cluster, scraper: Scraper) -> Sample:
    status = proc_status(pid)
    text = scraper.last_body
    return Sample(
        elapsed=time.monotonic() - started,
        rss_kb=int(status["VmRSS"].split()[0]),
        fds=sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()),
        threads=int(status["Threads"]),
        connections=agent_connections(cluster),
        collector_errors=metric_sum(text, "hiw_collector_errors") if text else float("nan"),
        collector_runs=metric_sum(text, "hiw_collector_runs") if text else float("nan"),
        collector_skipped=metric_sum(text, "hiw_collector_skipped") if text else float("nan"),
        scrapes=scraper.scrapes,
        scrape_errors=scraper.errors,
    )


def stop_process(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM by PID, then SIGKILL after STOP_TIMEOUT. The exit code (None if killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
        return None


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise SoakError(f"agent exited {proc.returncode} before /ready")
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SoakError(f"/ready not 200 within {READY_TIMEOUT:g}s")
        time.sleep(0.2)


@dataclass
class Results:
    samples: list[Sample]
    server_version: str
    exit_code: int | None
    workload_statements: int
    workload_errors: int
    last_scrape_error: str
    agent_log_tail: str


def run_soak(minutes: float, sample_seconds: float, enabled: list[str]) -> Results:
    binaries = system_binaries(15)
    if binaries is None:
        raise SoakError("no system PostgreSQL 15: apt-get install postgresql-15")
    password = secrets.token_urlsafe(18)
    workload: Workload | None = None
    proc: subprocess.Popen[bytes] | None = None
    scraper: Scraper | None = None
    exit_code: int | None = None
    samples: list[Sample] = []
    cluster = Cluster(binaries)
    with tempfile.TemporaryDirectory(prefix="hiw-soak-") as tmpdir:
        log_path = Path(tmpdir) / "agent.log"
        try:
            cluster.init().start()
            cluster.create_hiw_database(monitor_password=password)
            with cluster.connect(DBNAME) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            server_version = str(row[0]) if row else "unknown"
            workload = Workload(cluster.dsn(DBNAME)).start()
            config = Path(tmpdir) / "soak.yaml"
            config.write_text(config_yaml(enabled), encoding="utf-8")
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "hiw_monitor", "run", "--dsn",
                     cluster.dsn(DBNAME, user="hiw_monitor"), "--listen", f"127.0.0.1:{port}",
                     "--config", str(config), "--log-format", "json"],
                    stdout=log, stderr=subprocess.STDOUT, env=agent_env(password), cwd=ROOT)
            started = time.monotonic()
            wait_ready(f"{base}/ready", proc)
            scraper = Scraper(f"{base}/metrics").start()
            print(f"agent pid {proc.pid} ready on {base}; soaking {minutes:g} min, "
                  f"PostgreSQL {server_version}", flush=True)
            end = started + minutes * 60
            next_sample = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise SoakError(f"agent exited {proc.returncode} during the soak")
                sample = take_sample(proc.pid, started, cluster, scraper)
                samples.append(sample)
                print(f"  {sample.elapsed:6.0f}s rss {sample.rss_kb / 1024:7.2f} MB  fds "
                      f"{sample.fds:3d}  threads {sample.threads:3d}  conns "
                      f"{sample.connections}  errors {sample.collector_errors:g}  scrapes "
                      f"{sample.scrapes} ({sample.scrape_errors} failed)", flush=True)
                next_sample += sample_seconds
                if next_sample > end:
                    break
                time.sleep(max(0.0, next_sample - time.monotonic()))
        finally:
            if scraper is not None:
                scraper.stop()
            if proc is not None:
                exit_code = stop_process(proc)
            if workload is not None:
                workload.stop()
            cluster.destroy()
        lines = log_path.read_text(errors="replace").splitlines()
    warnings = [line for line in lines if '"level": "warning"' in line
                or '"level": "error"' in line]
    return Results(samples, server_version, exit_code,
                   workload.statements if workload else 0, workload.errors if workload else 0,
                   scraper.last_error if scraper else "", "\n".join(warnings[-10:]))


def pick(samples: list[Sample], at: float) -> Sample:
    """The first sample at or after ``at`` seconds (the last one if none)."""
    return next((s for s in samples if s.elapsed >= at), samples[-1])


def slope_per_hour(samples: list[Sample], value: str) -> float:
    """Least-squares slope of ``value`` per hour over ``samples``."""
    xs = [s.elapsed / 3600 for s in samples]
    ys = [float(getattr(s, value)) for s in samples]
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def render_doc(results: Results, minutes: float, warmup_minutes: float,
               sample_seconds: float, command: str, enabled: list[str]) -> str:
    samples = results.samples
    warm = pick(samples, warmup_minutes * 60)
    last = samples[-1]
    after = [s for s in samples if s.elapsed >= warm.elapsed]
    rss_growth = (last.rss_kb - warm.rss_kb) / 1024
    rss_peak_growth = (max(s.rss_kb for s in after) - warm.rss_kb) / 1024
    growth = {
        "RSS (MB)": (warm.rss_kb / 1024, last.rss_kb / 1024, rss_growth,
                     max(s.rss_kb for s in after) / 1024, slope_per_hour(after, "rss_kb") / 1024),
        "open fds": (warm.fds, last.fds, last.fds - warm.fds, max(s.fds for s in after),
                     slope_per_hour(after, "fds")),
        "threads": (warm.threads, last.threads, last.threads - warm.threads,
                    max(s.threads for s in after), slope_per_hour(after, "threads")),
        "server-side connections": (warm.connections, last.connections,
                                    last.connections - warm.connections,
                                    max(s.connections for s in after),
                                    slope_per_hour(after, "connections")),
    }
    # main + HTTP server + scheduler, the scheduler's two threads, the collections'
    # pool (one worker per target, at most MAX_WORKERS) and the one scrape in flight
    pool = min(MAX_WORKERS, 1) + 2
    thread_ceiling = 3 + pool + 1
    flat_rss = rss_growth <= RSS_LIMIT_MB and rss_peak_growth <= RSS_LIMIT_MB
    flat_rest = all(growth[k][2] <= 0 for k in ("open fds", "server-side connections")) \
        and growth["threads"][3] <= thread_ceiling
    verdict = "FLAT" if flat_rss and flat_rest else "NOT FLAT"
    statements = BY_NAME["statements"].options
    window = float(statements["window"].default)
    points = len(latency.log_grid(extra=statements["buckets"].default))
    steady = pick(samples, window + 60)
    steady_text = ""
    if last.elapsed - steady.elapsed >= 120:
        steady_text = (
            f" From {steady.elapsed:.0f} s, when the statements collector's rolling latency "
            f"window ({window:g} s by default: one {points}-point array of doubles per run, "
            f"{points * 8 / 1000:.1f} kB, so {window * points * 8 / 1e6:.1f} MB at 1 s runs) "
            "is full, to the end, RSS grew "
            f"{(last.rss_kb - steady.rss_kb) / 1024:+.2f} MB.")
    errors_after = last.collector_errors - warm.collector_errors
    runs_after = last.collector_runs - warm.collector_runs
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    collectors = ", ".join(enabled)
    disabled = [name for name in BY_NAME if name not in enabled]
    lines = [
        "# Soak test",
        "",
        f"**Verdict: {verdict}.** Over {minutes:g} minutes with "
        f"{'every collector' if not disabled else collectors} at a 1 s interval, the "
        f"agent's RSS grew {rss_growth:+.2f} MB from the end of the "
        f"{warmup_minutes:g}-minute warm-up to the end (peak {rss_peak_growth:+.2f} MB; limit "
        f"{RSS_LIMIT_MB:g} MB); open fds {growth['open fds'][2]:+d}, threads "
        f"{growth['threads'][2]:+d}, server-side connections "
        f"{growth['server-side connections'][2]:+d}.",
        "",
        "Generated by `bench/soak.py`; rerun it to refresh this file.",
        "",
        "## Warm-up vs end",
        "",
        f"| Figure | At warm-up end ({warm.elapsed:.0f} s) | At end ({last.elapsed:.0f} s) "
        "| Growth | Max after warm-up | Trend after warm-up (per hour) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (w, e, g, m, slope) in growth.items():
        if name.startswith("RSS"):
            lines.append(f"| {name} | {w:.2f} | {e:.2f} | {g:+.2f} | {m:.2f} | {slope:+.2f} |")
        else:
            lines.append(f"| {name} | {w} | {e} | {g:+d} | {m} | {slope:+.2f} |")
    lines += [
        "",
        "Flat means: RSS growth after warm-up (end and peak) at most "
        f"{RSS_LIMIT_MB:g} MB, no growth in open fds or server-side connections, and "
        f"threads never above {thread_ceiling} (main, HTTP server, scheduler, the "
        f"scheduler's pool of {pool} workers, which starts them lazily as runs overlap, "
        "and the scrape in flight)." + steady_text + " The trend column is a least-squares "
        "slope over the samples after "
        "warm-up, extrapolated to an hour; with small noisy samples it is an indication, "
        "not a verdict.",
        "",
        f"Collector runs after warm-up: {runs_after:.0f}; collector errors after warm-up: "
        f"{errors_after:.0f} ({last.collector_errors:.0f} in the whole run); runs skipped "
        f"by the scheduler (whole run): {last.collector_skipped:.0f}. Scrapes: "
        f"{last.scrapes}, failed: {last.scrape_errors}"
        + (f" (last: `{results.last_scrape_error}`)" if last.scrape_errors else "")
        + f". Demo workload: {results.workload_statements} statements, "
        f"{results.workload_errors} errors. Agent exit code after SIGTERM: "
        f"{results.exit_code if results.exit_code is not None else 'killed'}.",
        "",
        "## How it was measured",
        "",
        f"- Machine: {os.cpu_count()} cores as reported by `os.cpu_count()`, "
        f"{platform.machine()}, {platform.system()} {platform.release()}, "
        f"{_mem_total_gb():.1f} GB RAM",
        f"- Python {platform.python_version()}",
        f"- PostgreSQL {results.server_version} (system binaries), a throwaway cluster on "
        "127.0.0.1 with the HiW demo schema and seed data",
        f"- Date: {now}",
        f"- Command: `{command}`",
        "",
        "The demo workload (`hiw_monitor.demo.workload.Workload`, 2 clients, ~20 "
        "statements/s) ran throughout. The agent ran as a subprocess: `python -m hiw_monitor "
        "run --dsn ... --listen 127.0.0.1:<free port> --config <file> --log-format json` "
        f"(password in `PGPASSWORD`), the file setting the collectors {collectors} to "
        "`interval: 1s`" + (f" and disabling {', '.join(disabled)}" if disabled else "")
        + ". A scraper thread in the bench process made one GET /metrics per "
        f"second (new connection each). Every {sample_seconds:g} s the bench read VmRSS and "
        "Threads from `/proc/PID/status`, counted `/proc/PID/fd`, counted "
        "`pg_stat_activity` rows with `application_name = 'hiw_monitor'` over a superuser "
        "connection, and summed `hiw_collector_errors_total`, `hiw_collector_runs_total` "
        "and `hiw_collector_skipped_total` from the latest scrape. Elapsed times count from "
        "the agent's start.",
        "",
        "## Samples (one a minute, plus the last)",
        "",
        "| Elapsed (s) | RSS (MB) | Open fds | Threads | Connections | Collector runs "
        "| Collector errors | Scrapes (failed) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shown: list[Sample] = []
    for s in samples:
        if not shown or s.elapsed - shown[-1].elapsed >= 60 - sample_seconds / 2:
            shown.append(s)
    if shown[-1] is not last:
        shown.append(last)
    lines += [f"| {s.elapsed:.0f} | {s.rss_kb / 1024:.2f} | {s.fds} | {s.threads} | "
              f"{s.connections} | {_count(s.collector_runs)} | {_count(s.collector_errors)} | "
              f"{s.scrapes} ({s.scrape_errors}) |" for s in shown]
    if results.agent_log_tail and errors_after:
        lines += ["", "## Last warnings in the agent's log", "", "```",
                  results.agent_log_tail, "```"]
    lines.append("")
    return "\n".join(lines)


def _count(value: float) -> str:
    """A counter read from a scrape; a dash before the first scrape."""
    return "-" if math.isnan(value) else f"{value:.0f}"


def _mem_total_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="soak length (default 15)")
    parser.add_argument("--warmup-minutes", type=float, default=2.0,
                        help="growth is measured from this point (default 2)")
    parser.add_argument("--sample-seconds", type=float, default=10.0,
                        help="seconds between samples (default 10)")
    parser.add_argument("--collectors", type=lambda v: v.split(","), default=list(BY_NAME),
                        help="comma-separated collectors to run at 1 s, the rest disabled "
                        "(default: all, to bisect a growth)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "soak.md",
                        help="Markdown file to write (default docs/soak.md)")
    args = parser.parse_args()
    unknown = sorted(set(args.collectors) - set(BY_NAME))
    if unknown:
        parser.error(f"unknown collectors {unknown}; known: {', '.join(BY_NAME)}")
    if args.minutes <= args.warmup_minutes:
        parser.error("--minutes must be longer than --warmup-minutes")
    try:
        results = run_soak(args.minutes, args.sample_seconds, args.collectors)
    except SoakError as exc:
        print(f"bench/soak.py: {exc}", file=sys.stderr)
        return 1
    command = shlex.join([sys.executable, *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_doc(results, args.minutes, args.warmup_minutes,
                                   args.sample_seconds, command, args.collectors),
                        encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
