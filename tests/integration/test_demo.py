"""`hiw-monitor demo`, the embedded default, as README tells a user to run it."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import binaries_for
from helpers import http_get, sample, wait_for

from hiw_monitor.demo.cluster import free_port

pytestmark = pytest.mark.integration


def _events(proc_stderr: list[str]) -> list[dict]:
    return [json.loads(line) for line in proc_stderr if line.startswith("{")]


def _closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.timeout(900)  # a hang guard: the demo runs initdb and loads its seed data
@pytest.mark.parametrize("postgres", ["system", "embedded"])
def test_demo_serves_hiw_metrics_and_cleans_up(postgres):
    binaries_for("pg15" if postgres == "system" else "pg18")  # fail/skip if absent
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiw_monitor", "demo", "--postgres", postgres,
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HIW_MONITOR_DSN": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            try:
                return http_get(url + "/ready", timeout=2).status == 200
            except OSError:
                return False

        wait_for(lambda: ready() or proc.poll() is not None, timeout=300, what="demo /ready")
        assert proc.poll() is None, proc.stderr.read()
        wait_for(lambda: sample(http_get(url + "/metrics").text, "hiw_collector_up",
                                collector="database") == 1, what="database collected")
        text = http_get(url + "/metrics").text
        assert sample(text, "hiw_up", target="heroes_in_waiting") == 1
        assert sample(text, "hiw_database_size_bytes", datname="heroes_in_waiting") > 1e6
        # the demo's workload shows up as its own application
        wait_for(lambda: sample(http_get(url + "/metrics").text,
                                "hiw_connections_by_application",
                                application_name="hiw_demo_app") is not None,
                 timeout=120, what="demo workload connections")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=180) == 0  # a hang guard: it stops, however slowly
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr
        ready_event = next(e for e in _events(stderr.splitlines()) if e["event"] == "demo_ready")
        pg_port = int(ready_event["postgres"].rsplit(":", 1)[1])
        assert not Path(ready_event["data_dir"]).exists()
        # everything it started is gone: no server on its port, no HTTP server (polled: a
        # port is free a moment after its process ends; one left listening fails)
        for gone in (pg_port, port):
            wait_for(lambda p=gone: _closed(p), what=f"port {gone} closed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _read_until(fd: int, found: Callable[[str], bool], proc: subprocess.Popen,
                output: bytearray, timeout: float) -> bool:
    """Read ``fd`` (a pseudo-terminal's master) into ``output`` until ``found(text)``, the
    end of the output, or ``timeout`` (a hang guard). Keeps the terminal drained, so the
    child never blocks writing to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found(output.decode(errors="replace").replace("\r\n", "\n")):
            return True
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:  # exited, and nothing left to read
                return found(output.decode(errors="replace").replace("\r\n", "\n"))
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer closed the terminal
            chunk = b""
        if not chunk:
            return found(output.decode(errors="replace").replace("\r\n", "\n"))
        output += chunk
    return False


def _never(_text: str) -> bool:
    return False


BANNER = re.compile(r"^\| hiw-monitor demo: .*?^\| +Ctrl-C stops the demo", re.M | re.S)


@pytest.mark.timeout(900)  # a hang guard: the demo runs initdb and loads its seed data
def test_demo_on_a_terminal_prints_a_banner_once_the_review_has_landed():
    binaries_for("pg15")
    port = free_port()
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiw_monitor", "demo", "--postgres", "system", "--no-workload",
         "--listen", f"127.0.0.1:{port}", "--duration", "600"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
        env={**os.environ, "HIW_MONITOR_DSN": "", "COLUMNS": "120"})
    os.close(slave)
    output = bytearray()
    try:
        shown = _read_until(master, lambda text: BANNER.search(text) is not None, proc, output,
                            timeout=600)
        text = output.decode(errors="replace").replace("\r\n", "\n")
        assert shown, text[-3000:]
        banner = BANNER.search(text).group(0)
        assert f"status page    http://127.0.0.1:{port}/" in banner
        assert re.search(r"health score +\d+\.\d/10 +\(target heroes_in_waiting\)", banner)
        # the failing checks the demo plants, each with its reason
        assert re.search(r"^\| +rls_enabled +public\.classrooms", banner, re.M), banner
        assert re.search(r"^\| +retention_overdue +\d+ row", banner, re.M), banner
        proc.send_signal(signal.SIGINT)
        _read_until(master, _never, proc, output, timeout=180)
        assert proc.wait(timeout=180) == 0
        text = output.decode(errors="replace").replace("\r\n", "\n")
        assert len(BANNER.findall(text)) == 1
        assert "Traceback" not in text
        assert '"event"' not in text  # console logs on a terminal, not JSON
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)


@pytest.mark.timeout(900)
def test_demo_off_a_terminal_logs_json_and_no_banner():
    binaries_for("pg15")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiw_monitor", "demo", "--postgres", "system", "--no-workload",
         "--listen", f"127.0.0.1:{port}", "--duration", "600"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HIW_MONITOR_DSN": ""})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        # the same moment as the banner's, as one log event
        wait_for(lambda: any('"demo_health"' in line for line in list(lines))
                 or proc.poll() is not None, timeout=600, what="the demo_health event")
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 0
        reader.join(timeout=30)
        event = next(e for e in _events(lines) if e["event"] == "demo_health")
        assert event["url"] == f"http://127.0.0.1:{port}/"
        assert 0 < event["score"]["heroes_in_waiting"] < 10
        assert {"rls_enabled", "retention_overdue"} <= set(event["failing"])
        stderr = "".join(lines)
        assert "status page" not in stderr
        assert "+---" not in stderr
        assert all(line.startswith("{") for line in lines if line.strip()), stderr[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
