"""A failed poll does not make a backup page flap, in a real Prometheus.

PostgreSQL with one backup 50 hours old -> the agent (backups every second, stale_after
10 minutes) -> Prometheus with the bundled rules (`for:` shortened). Once
HiwBackupStaleCritical fires, the app holds ACCESS EXCLUSIVE on the backup log, so every
poll fails with lock_timeout. The agent keeps serving the last good backup series (they
are fresh), so the alert stays firing through the failed polls and after them: same
alert, same activeAt, never resolved and raised again.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import HIW_DB, MONITOR_PASSWORD
from helpers import http_get, running_agent, wait_for
from tools import fast_rules, require

from hiw_monitor.config import Overrides, load
from hiw_monitor.demo.cluster import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]
STALE = "stale_weekly_full"
ALERT = "HiwBackupStaleCritical"
OTHER_COLLECTORS = ("connections", "database", "wal_archiving", "statements", "vacuum",
                    "indexes", "bloat")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str) -> dict:
        body = json.loads(http_get(f"{self.url}/api/v1/{path}").body)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api(f"query?query={urllib.parse.quote(expr)}")["result"]

    def alert(self) -> dict | None:
        """The HiwBackupStaleCritical alert of the stale backup, as Prometheus holds it."""
        for alert in self.api("alerts")["alerts"]:
            if alert["labels"]["alertname"] == ALERT and \
                    alert["labels"].get("backup_name") == STALE:
                return alert
        return None

    def last_backup_rules_evaluation(self) -> float:
        """Unix time of the latest evaluation of the backup alert group."""
        for group in self.api("rules")["groups"]:
            if group["name"] == "hiw-monitor.backups":
                return unix(group["lastEvaluation"])
        raise AssertionError("no hiw-monitor.backups rule group")


def unix(rfc3339: str) -> float:
    """Prometheus' RFC 3339 time (nanoseconds, Z) as Unix seconds."""
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


def prepare(server) -> None:
    with server.admin() as conn:
        conn.execute("DELETE FROM backup_execution_log")
        conn.execute("DELETE FROM backup_configurations")
        config_id = conn.execute(
            "INSERT INTO backup_configurations (backup_name, backup_type, schedule, "
            "retention_days) VALUES (%s, 'full', 'weekly', 7) RETURNING id",
            [STALE]).fetchone()[0]
        conn.execute(
            "INSERT INTO backup_execution_log (backup_config_id, status, start_time, end_time,"
            " backup_size_bytes) VALUES (%s, 'completed', now() - interval '50 hours 10 "
            "minutes', now() - interval '50 hours', 1000)", [config_id])


def test_a_failed_poll_keeps_the_critical_backup_page_firing(pg15_own, tmp_path):
    prometheus_bin = require("prometheus")
    server = pg15_own
    prepare(server)
    agent_config = tmp_path / "agent.yaml"
    agent_config.write_text(
        "collectors:\n  backups: {interval: 1s, stale_after: 10m}\n"
        + "".join(f"  {name}: {{enabled: false}}\n" for name in OTHER_COLLECTORS))
    dsn = server.cluster.dsn(HIW_DB, user="hiw_monitor", password=MONITOR_PASSWORD)
    config = load(Overrides(config=str(agent_config), dsn=dsn, target_name="hiw"), environ={})
    with running_agent(config) as agent:
        port = free_port()
        prometheus_config = tmp_path / "prometheus.yml"
        prometheus_config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(fast_rules(tmp_path))],
            "scrape_configs": [{"job_name": "hiw-monitor", "static_configs": [
                {"targets": [agent.url.removeprefix("http://")]}]}],
        }))
        with (tmp_path / "prometheus.log").open("w") as log:
            process = subprocess.Popen(
                [prometheus_bin, f"--config.file={prometheus_config}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            prometheus = Prometheus(f"http://127.0.0.1:{port}")

            def firing() -> bool:
                try:
                    alert = prometheus.alert()
                except (OSError, ValueError):  # not listening yet, or 503 while starting
                    return False
                return alert is not None and alert["state"] == "firing"

            wait_for(firing, timeout=180, what=f"{ALERT} firing for {STALE}")
            before = prometheus.alert()
            assert before is not None

            holder = server.admin()
            holder.execute("BEGIN")
            holder.execute("LOCK TABLE backup_execution_log IN ACCESS EXCLUSIVE MODE")
            try:
                # Prometheus scraped a failed poll, then evaluated the rules on it twice
                wait_for(lambda: bool(prometheus.query(
                    'hiw_collector_last_error_info{collector="backups",'
                    'reason="lock_timeout"} == 1')), timeout=120,
                    what="a scraped lock_timeout of the backups collector")
                failed_at = float(prometheus.query(
                    'timestamp(hiw_collector_up{collector="backups"} == 0)')[0]["value"][1])
                wait_for(lambda: prometheus.last_backup_rules_evaluation() > failed_at + 1.5,
                         timeout=120, what="rule evaluations after the failed poll")
                during = prometheus.alert()
                still_critical = prometheus.query(
                    f'hiw_backup_status{{backup_name="{STALE}",status="critical"}} == 1')
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            wait_for(lambda: bool(prometheus.query(
                'hiw_collector_up{collector="backups"} == 1')), timeout=120,
                what="the backups collector succeeding again")
            recovered_at = float(prometheus.api("query?query=time()")["result"][0])
            wait_for(lambda: prometheus.last_backup_rules_evaluation() > recovered_at + 1.5,
                     timeout=120, what="rule evaluations after the recovery")
            after = prometheus.alert()
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    for alert in (during, after):
        assert alert is not None, "the page resolved during the failed polls"
        assert alert["state"] == "firing", alert
        assert alert["activeAt"] == before["activeAt"], "the page was resolved and raised again"
    assert still_critical, "the last good status was not served during the failed polls"
