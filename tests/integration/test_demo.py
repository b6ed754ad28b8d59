"""`hiw-monitor demo`, the embedded default, as README tells a user to run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
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
