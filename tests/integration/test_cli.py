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


# --- the dry run: once --collector -------------------------------------------------------------


def dry_run(pg, tmp_path, *collectors: str, declarations: str = "", dsn: str | None = None):
    from test_custom_collectors import grant_reader, write_config

    config = write_config(tmp_path, declarations)
    return hiw("once", "--config", config, "--dsn", dsn or grant_reader(pg), "--target-name",
               "hiw", *(arg for name in collectors for arg in ("--collector", name)))


def test_dry_run_of_a_custom_collector_prints_its_exposition_and_plan(pg, tmp_path):
    result = dry_run(pg, tmp_path, "custom:job_queue")
    assert result.returncode == 0, result.stderr
    assert sample(result.stdout, "hiw_collector_up", collector="job_queue") == 1
    assert sample(result.stdout, "hiw_collector_up", collector="connections") is None
    assert sample(result.stdout, "hiw_custom_job_queue_pending",
                  job_type="refresh_analytics_summary") > 0
    assert "hiw-monitor: collector custom:job_queue on target hiw\n" \
        "  plan: installed: sql for every version; table public.job_queue readable\n" \
        "  run: ok: " in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_of_a_failing_or_skipped_collector_exits_3_with_the_reason(pg, tmp_path):
    broken = "  - {name: broken, sql: SELECT 'x'::text AS n, columns: {n: gauge}}\n"
    result = dry_run(pg, tmp_path, "custom:broken", declarations=broken)
    assert result.returncode == 3, result.stderr
    assert "  plan: installed: sql for every version; no predicates\n" in result.stderr
    assert "  run: failed: not_numeric: column n returned text, not a number" in result.stderr
    assert sample(result.stdout, "hiw_collector_up", collector="broken") == 0

    # hiw_monitor as the demo schema creates it may not read the facilitators: skipped
    private = ("  - {name: facilitators, table: public.facilitators,\n"
               "     sql: SELECT count(*) AS n FROM public.facilitators, columns: {n: gauge}}\n")
    skipped = dry_run(pg, tmp_path, "custom:facilitators", declarations=private,
                      dsn=pg.cluster.dsn(HIW_DB, user="hiw_monitor",
                                         password=MONITOR_PASSWORD))
    assert skipped.returncode == 3, skipped.stderr
    assert "  plan: skipped: permission_denied: role 'hiw_monitor' may not SELECT from " \
        "public.facilitators; run: GRANT SELECT ON public.facilitators TO hiw_monitor;\n" \
        "  run: not run (skipped by its plan)" in skipped.stderr


def test_dry_run_of_built_in_collectors_shows_their_plan(pg, tmp_path):
    result = dry_run(pg, tmp_path, "statements", "connections")
    assert result.returncode == 0, result.stderr
    assert "hiw-monitor: collector statements on target hiw\n  plan: installed: schema=" \
        in result.stderr
    assert "hiw-monitor: collector connections on target hiw\n" \
        "  plan: none (no plan step: its queries run on every server)" in result.stderr
    assert sample(result.stdout, "hiw_collector_up", collector="statements") == 1
    assert sample(result.stdout, "hiw_collector_up", collector="job_queue") is None


def test_dry_run_of_an_unknown_collector_is_a_usage_error(pg, tmp_path):
    assert_one_line_error(dry_run(pg, tmp_path, "custom:nope"),
                          "--collector: no user-defined collector 'nope'",
                          "custom:analytics_summary, custom:job_queue")
    assert_one_line_error(dry_run(pg, tmp_path, "custom:connections"),
                          "no user-defined collector 'connections'")
    assert_one_line_error(dry_run(pg, tmp_path, "nope"), "unknown collector 'nope'",
                          "custom:NAME")
