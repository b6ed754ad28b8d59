"""The command line as a user runs it: exit codes, one-line errors, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HIW_DB, MONITOR_PASSWORD
from helpers import agent_connections, http_get, sample, wait_for, wait_for_agent_connections

from hiw_monitor.collectors import ALL
from hiw_monitor.demo.cluster import free_port

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).parents[2] / "config" / "hiw_monitor.yaml"


def hiw(*args: str, env: dict[str, str] | None = None, timeout: float = 180):
    """Run the CLI to completion; ``timeout`` is a hang guard, generous for a busy machine."""
    return subprocess.run([sys.executable, "-m", "hiw_monitor", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          check=False)


def assert_one_line_error(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("hiw-monitor: configuration error")
    for needle in needles:
        assert needle in result.stderr


def test_validate_config_accepts_the_documented_example():
    result = hiw("validate-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "hiw-primary" in result.stdout


def test_validate_config_rejects_bad_files(tmp_path):
    assert_one_line_error(hiw("validate-config", str(tmp_path / "missing.yaml")),
                          "not found")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("targets: [\n  - name: a\n")
    assert_one_line_error(hiw("validate-config", str(bad_yaml)), "invalid YAML", "line")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("targets:\n  - name: a\n    dsn: postgresql://u@h/db\n"
                     "collectors:\n  connections:\n    interval: often\n")
    assert_one_line_error(hiw("validate-config", str(wrong)),
                          "collectors.connections.interval", "15s")
    unreadable = tmp_path / "dir.yaml"
    unreadable.mkdir()
    assert_one_line_error(hiw("validate-config", str(unreadable)), "directory")


def test_run_without_any_target_is_a_usage_error():
    result = hiw("run", env={"HIW_MONITOR_DSN": "", "HIW_MONITOR_CONFIG": ""})
    assert_one_line_error(result, "targets", "--dsn")


def test_busy_port_is_a_clear_usage_error(pg):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = hiw("run", "--dsn", pg.monitor_dsn(), "--listen", f"127.0.0.1:{port}",
                     env={"PGPASSWORD": MONITOR_PASSWORD})
    assert_one_line_error(result, "address already in use", str(port))


def test_once_prints_the_exposition_and_exits_zero(pg):
    result = hiw("once", "--dsn", pg.monitor_dsn(), "--target-name", "hiw",
                 env={"PGPASSWORD": MONITOR_PASSWORD})
    assert result.returncode == 0, result.stderr
    assert sample(result.stdout, "hiw_up", target="hiw") == 1
    assert sample(result.stdout, "hiw_collector_up", collector="database") == 1
    # logs go to stderr as JSON (not a TTY): one canonical event per collection
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    collections = [e for e in events if e["event"] == "collection"]
    assert {e["collector"] for e in collections} == {c.name for c in ALL}
    for event in collections:
        assert {"target", "collector", "duration_ms", "series", "error"} <= event.keys()
        assert event["error"] is None
        assert event["series"] > 0


def test_once_against_an_unreachable_target_exits_one():
    port = free_port()
    result = hiw("once", "--dsn", f"postgresql://hiw_monitor:hunter2secret@127.0.0.1:{port}/x")
    assert result.returncode == 1
    assert sample(result.stdout, "hiw_up", target=f"127.0.0.1:{port}/x") == 0
    assert "unreachable" in result.stderr
    assert "hunter2secret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_run_stops_cleanly_on_sigterm(pg):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiw_monitor", "run", "--dsn", pg.monitor_dsn(),
         "--listen", f"127.0.0.1:{port}"],
        env={**os.environ, "PGPASSWORD": MONITOR_PASSWORD},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return http_get(url + "/ready", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ready, what="/ready")
        with pg.admin(HIW_DB) as admin:
            assert agent_connections(admin) == 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0  # a hang guard: it stops, however slowly
            wait_for_agent_connections(admin, 0)  # the backend exits a moment after
        _, stderr = proc.communicate(timeout=30)
        assert "Traceback" not in stderr
        assert '"stopped"' in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
