"""Load on the HTTP side: many concurrent scrapers, and slow or stalled clients.

The agent runs in-process with every collector at a 1 s interval, so collections write
the snapshot while the scrapes read it. Loopback only. Each test is bounded by what it
does (a fixed number of requests, slow clients that trickle until told to stop), never by
how fast the machine does it: the verdict is the errors of the requests made, and the
time limits are hang guards far above what a slow machine needs (docs/testing.md).
Latencies are printed (``pytest -s``), never asserted: scrape speed is measured by
bench/scrape.py (sequential, docs/performance.md) and bench/peer.py (concurrent,
docs/peer-benchmark.md).
"""

from __future__ import annotations

import http.client
import itertools
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from urllib.parse import urlsplit

import pytest
from conftest import HIW_DB, MONITOR_PASSWORD
from helpers import http_get, running_agent, sample, wait_for
from prometheus_client.parser import text_string_to_metric_families

from hiw_monitor.collectors import BY_NAME
from hiw_monitor.config import Overrides, load

pytestmark = pytest.mark.integration

SCRAPERS = 50
REQUESTS = 10_000
PARSE_EVERY = 100
SLOW_CLIENTS = 20
TRICKLE_EVERY = 0.5  # seconds between two bytes of a slow client
NORMAL_REQUESTS = 50
# Hang guards, not verdicts. A request unanswered after a minute is hung, not slow (a
# blocked server never answers: the slow clients below never finish their requests).
CLIENT_TIMEOUT = 60.0
# The 10,000 requests take ~1 min on a quiet 2-core machine and many times that beside a
# CPU hog (docs/testing.md). Hang guards only: no request finishing for this long (each
# one gives up after CLIENT_TIMEOUT) ...
STALL_GUARD = 300.0
# ... and, as the last resort, the whole test (pytest-timeout)
LOAD_LAST_RESORT = 3600


def every_collector_at_1s(tmp_path, server):
    """All collectors the agent knows (statements, backups, wal_archiving...) every 1 s."""
    path = tmp_path / "load.yaml"
    path.write_text("connection:\n  connect_timeout: 2s\ncollectors:\n"
                    + "".join(f"  {name}: {{interval: 1s}}\n" for name in BY_NAME))
    dsn = server.cluster.dsn(HIW_DB, user="hiw_monitor", password=MONITOR_PASSWORD)
    return load(Overrides(config=str(path), dsn=dsn, target_name=server.version), environ={})


def runs_total(url: str) -> float:
    text = http_get(url + "/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "hiw_collector_runs_total")


def scrape(host: str, port: int, timeout: float) -> tuple[int, bytes, float]:
    """One GET /metrics on a fresh connection: (status, body, seconds)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, body, time.perf_counter() - started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@pytest.mark.timeout(LOAD_LAST_RESORT)
def test_concurrent_scrapers_while_collectors_run(pg, tmp_path):
    """50 concurrent scrapers, 10,000 /metrics requests in all: no error, every body whole.

    The load is bounded by its count: every one of the 10,000 requests is made, however
    long a slow machine takes, and the verdict is on their errors. Nothing bounds the
    total time but hang guards: no request finishing for STALL_GUARD seconds, and
    LOAD_LAST_RESORT for the whole test. Once SCRAPERS requests have failed the verdict is
    in, and the rest are not sent. Throughput is printed, never asserted (bench/scrape.py
    and bench/peer.py measure it)."""
    with running_agent(every_collector_at_1s(tmp_path, pg)) as run:
        wait_for(lambda: http_get(run.url + "/ready").status == 200, what="/ready")
        host, port = urlsplit(run.url).hostname, urlsplit(run.url).port
        runs_before = runs_total(run.url)
        abandoned = threading.Event()  # the verdict is in, or the load hangs: stop sending
        progress = {"finished": 0, "failed": 0, "last": time.monotonic()}
        progress_lock = threading.Lock()

        def request(index: int) -> tuple[int, str | None, bytes | None, float]:
            try:
                status, body, seconds = scrape(host, port, timeout=CLIENT_TIMEOUT)
            except (OSError, http.client.HTTPException) as exc:
                return index, repr(exc), None, 0.0
            if status != 200:
                return index, f"HTTP {status}", None, seconds
            if b"\nhiw_up{" not in body:
                return index, "no hiw_up in the body", None, seconds
            return index, None, body if index % PARSE_EVERY == 0 else None, seconds

        def one(index: int) -> tuple[int, str | None, bytes | None, float] | None:
            if abandoned.is_set():
                return None  # not sent
            result = request(index)
            with progress_lock:
                progress["finished"] += 1
                progress["failed"] += result[1] is not None
                progress["last"] = time.monotonic()
            return result

        started = time.perf_counter()
        pool = ThreadPoolExecutor(SCRAPERS)
        try:
            futures = [pool.submit(one, index) for index in range(REQUESTS)]
            while wait(futures, timeout=5)[1]:
                with progress_lock:
                    failed, idle = progress["failed"], time.monotonic() - progress["last"]
                if failed >= SCRAPERS:
                    break  # the verdict is in: fail on the requests made, not 10,000
                if idle > STALL_GUARD:
                    pytest.fail(f"hang guard: no request finished in {idle:.0f} s "
                                f"({progress['finished']} of {REQUESTS} done)")
        finally:
            abandoned.set()
            pool.shutdown(wait=True, cancel_futures=True)
        made = [r for f in futures if not f.cancelled() and (r := f.result()) is not None]
        wall = time.perf_counter() - started
        runs_after = runs_total(run.url)

    errors = [(i, e) for i, e, _, _ in made if e is not None]
    latencies = [s for _, e, _, s in made if e is None]
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if latencies else [0] * 99
    print(f"\n[{pg.version}] {len(made)} GET /metrics from {SCRAPERS} threads in {wall:.1f} s "
          f"({len(made) / wall:.0f}/s, not asserted): p50 {ms(cuts[49])}, p99 {ms(cuts[98])}, "
          f"max {ms(max(latencies, default=0))}; {len(errors)} errors; "
          f"{runs_after - runs_before:.0f} collector runs during the load")
    assert errors == [], f"{len(errors)} failed requests, first: {errors[:5]}"
    assert len(made) == REQUESTS
    parsed = 0
    for _, _, body, _ in made:
        if body is None:
            continue
        text = body.decode()
        names = {s.name for family in text_string_to_metric_families(text)
                 for s in family.samples}
        assert "hiw_up" in names
        assert sample(text, "hiw_up", target=pg.version) == 1
        parsed += 1
    assert parsed == REQUESTS // PARSE_EVERY
    assert runs_after > runs_before, "collectors did not run during the load"


class Trickler:
    """Slow clients: each sends one byte every TRICKLE_EVERY seconds of a request that never
    ends (the request line and headers, then one endless header value), so they are
    mid-request for as long as the test runs, however slow the machine."""

    PREFIX = (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"User-Agent: a-very-slow-scraper/1.0\r\nAccept: */*\r\nX-Trickle: ")

    def __init__(self, host: str, port: int, count: int) -> None:
        self.sockets = [socket.create_connection((host, port), timeout=5) for _ in range(count)]
        self.sent = 0  # bytes sent so far on each socket
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trickler", daemon=True)

    def start(self) -> Trickler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        stream = itertools.chain(self.PREFIX, itertools.repeat(ord("a")))
        while not self._stop.wait(TRICKLE_EVERY):
            byte = bytes([next(stream)])
            for sock in self.sockets:
                try:
                    sock.sendall(byte)
                except OSError as exc:
                    self.failures.append(repr(exc))
            self.sent += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=TRICKLE_EVERY + 30)
        for sock in self.sockets:
            sock.close()


def handler_threads(clients: set[tuple[str, int]]) -> int:
    """Live server threads (socketserver's process_request_thread) serving ``clients``."""
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name
               and tuple(getattr(t, "_args", ((), ()))[1]) in clients)


def test_slow_and_stalled_clients_do_not_block_scrapes(pg, tmp_path):
    """20 clients trickling a request that never ends and 1 sending nothing; 50 normal
    scrapes all succeed while the slow clients still hold their connections."""
    with running_agent(every_collector_at_1s(tmp_path, pg)) as run:
        wait_for(lambda: http_get(run.url + "/ready").status == 200, what="/ready")
        host, port = urlsplit(run.url).hostname, urlsplit(run.url).port
        silent = socket.create_connection((host, port), timeout=5)
        trickler = Trickler(host, port, SLOW_CLIENTS).start()
        slow = {s.getsockname()[:2] for s in trickler.sockets}
        try:
            # every slow connection has been accepted and holds a handler thread
            wait_for(lambda: handler_threads(slow | {silent.getsockname()[:2]})
                     == SLOW_CLIENTS + 1, what="the slow connections to be accepted")
            statuses, latencies = [], []
            for _ in range(NORMAL_REQUESTS):
                try:
                    status, body, seconds = scrape(host, port, timeout=CLIENT_TIMEOUT)
                except (OSError, http.client.HTTPException) as exc:
                    statuses.append(repr(exc))
                    break  # blocked: one timeout is proof enough, and keeps the test short
                statuses.append(status if b"\nhiw_up{" in body else f"{status}, no hiw_up")
                latencies.append(seconds)
                time.sleep(0.05)
            # the slow clients were mid-request all along (their requests never end) and
            # still hold their handler threads: the scrapes ran beside them, not after
            slow_handlers = handler_threads(slow)
            sent = trickler.sent
        finally:
            trickler.close()
            silent.close()
        print(f"\n[{pg.version}] {NORMAL_REQUESTS} scrapes beside {SLOW_CLIENTS} slow clients "
              f"({sent} bytes of an endless request sent) and 1 silent one: "
              f"p50 {ms(statistics.median(latencies or [0]))}, "
              f"max {ms(max(latencies, default=0))}")
        assert statuses == [200] * NORMAL_REQUESTS
        assert trickler.failures == []
        assert slow_handlers == SLOW_CLIENTS, "the slow clients were dropped during the scrapes"
        # and once they are gone, scrapes still work
        assert scrape(host, port, timeout=CLIENT_TIMEOUT)[0] == 200
