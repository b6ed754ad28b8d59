"""End to end with the real tools: PostgreSQL with the HiW schema and one backup 50 hours
old -> the agent -> Prometheus (bundled rules, `for:` shortened) -> Alertmanager (the
example config, pointed at a local webhook). The page for exactly that backup arrives;
the healthy backups raise nothing; every dashboard query returns data."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import MONITOR_PASSWORD, start_server
from helpers import http_get, running_agent, wait_for
from tools import require

from hiw_monitor.config import Overrides, load
from hiw_monitor.demo.cluster import free_port

# timeouts here are hang guards, generous for a busy machine (docs/testing.md); the
# module's stack (PostgreSQL, agent, Prometheus, Alertmanager) starts in the first test
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
ROOT = Path(__file__).parents[2]
E2E_DB = "hiw_e2e"
HEALTHY = ("nightly_full", "hourly_incremental")
STALE = "stale_weekly_full"


@dataclass
class Webhook:
    """A local Alertmanager webhook receiver that remembers every notification."""

    received: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self) -> list[dict]:
        with self.lock:
            return [alert for body in self.received for alert in body["alerts"]]

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body["path"] = self.path
                with hook.lock:
                    hook.received.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_port}"


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def prepare_database(server) -> None:
    server.cluster.create_hiw_database(E2E_DB, monitor_password=MONITOR_PASSWORD)
    with server.admin(E2E_DB) as conn:
        conn.execute("DELETE FROM backup_execution_log")
        conn.execute("DELETE FROM backup_configurations")
        for name, kind, hours in (("nightly_full", "full", 6), ("hourly_incremental",
                                  "incremental", 0.5), (STALE, "full", 50)):
            config_id = conn.execute(
                "INSERT INTO backup_configurations (backup_name, backup_type, schedule, "
                "retention_days) VALUES (%s, %s, 'daily', 7) RETURNING id",
                [name, kind]).fetchone()[0]
            conn.execute(
                "INSERT INTO backup_execution_log (backup_config_id, status, start_time, "
                "end_time, backup_size_bytes, verified_restore, restore_duration_seconds) "
                "VALUES (%s, 'completed', now() - make_interval(secs => %s * 3600 + 600), "
                "now() - make_interval(secs => %s * 3600), 123456789, true, 1800)",
                [config_id, hours, hours])
        # statistics that were reset once and tables that were vacuumed, as in production
        conn.execute("SELECT pg_stat_reset()")
        conn.execute("VACUUM ANALYZE")


def fast_rules(tmp: Path) -> Path:
    text = (ROOT / "alerts" / "hiw_monitor.rules.yml").read_text()
    text = re.sub(r"^(\s+)for: \S+$", r"\1for: 1s", text, flags=re.M)
    text = text.replace("interval: 30s", "interval: 1s")
    path = tmp / "rules.yml"
    path.write_text(text)
    return path


def alertmanager_config(tmp: Path, webhook: str) -> Path:
    config = yaml.safe_load((ROOT / "alerts" / "alertmanager.example.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = webhook + urllib.parse.urlparse(hook["url"]).path
    config["route"].update(group_wait="1s", group_interval="1s")
    for route in config["route"]["routes"]:
        route.update(group_wait="1s")
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Stack:
    prometheus: str
    webhook: Webhook

    def query(self, expr: str) -> list[dict]:
        url = f"{self.prometheus}/api/v1/query?query={urllib.parse.quote(expr)}"
        body = json.loads(http_get(url).body)
        assert body["status"] == "success", body
        return body["data"]["result"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    prometheus_bin = require("prometheus")
    alertmanager_bin = require("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("e2e")
    server = start_server("pg15")
    webhook = Webhook()
    hook_server, hook_url = webhook.serve()
    processes: list[subprocess.Popen] = []
    try:
        prepare_database(server)
        agent_config = tmp / "agent.yaml"
        agent_config.write_text(
            "collectors:\n" + "".join(f"  {name}: {{interval: 1s}}\n" for name in
                                      ("connections", "database", "backups", "wal_archiving",
                                       "statements")))
        dsn = server.cluster.dsn(E2E_DB, user="hiw_monitor", password=MONITOR_PASSWORD)
        config = load(Overrides(config=str(agent_config), dsn=dsn, target_name="hiw"),
                      environ={})
        with running_agent(config) as agent:
            am_port, prom_port = free_port(), free_port()
            processes.append(start([
                alertmanager_bin, f"--config.file={alertmanager_config(tmp, hook_url)}",
                f"--storage.path={tmp / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=", "--log.level=warn"], tmp / "alertmanager.log"))
            prometheus_config = tmp / "prometheus.yml"
            prometheus_config.write_text(yaml.safe_dump({
                # a scrape that times out marks every series stale, and a busy machine
                # answers slowly: the scrape timeout is a hang guard, not 1 s
                "global": {"scrape_interval": "5s", "scrape_timeout": "5s",
                           "evaluation_interval": "1s"},
                "rule_files": [str(fast_rules(tmp))],
                "alerting": {"alertmanagers": [
                    {"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                "scrape_configs": [{"job_name": "hiw-monitor", "static_configs": [
                    {"targets": [agent.url.removeprefix("http://")]}]}],
            }))
            processes.append(start([
                prometheus_bin, f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                tmp / "prometheus.log"))
            stack = Stack(f"http://127.0.0.1:{prom_port}", webhook)

            def scraped() -> bool:
                try:
                    return bool(stack.query('hiw_backup_status{status="critical"} == 1'))
                except (OSError, ValueError):  # not listening yet, or 503 while starting
                    return False

            wait_for(scraped, timeout=180, what="Prometheus scraping the agent")
            yield stack
    finally:
        for process in processes:
            stop(process)
        hook_server.shutdown()
        server.cluster.destroy()


def test_the_stale_backup_pages_and_the_healthy_ones_do_not(stack):
    def paged() -> bool:
        return any(a["labels"].get("alertname") == "HiwBackupStaleCritical"
                   for a in stack.webhook.alerts())

    wait_for(paged, timeout=180, what="the critical backup page at the webhook")
    time.sleep(3)  # let any wrong alert arrive too
    alerts = stack.webhook.alerts()
    critical = [a for a in alerts if a["labels"]["alertname"] == "HiwBackupStaleCritical"]
    assert {a["labels"]["backup_name"] for a in critical} == {STALE}
    page = critical[0]
    assert page["labels"]["severity"] == "page"
    assert page["labels"]["target"] == "hiw"
    assert "runbooks.md#hiwbackupstalecritical" in page["annotations"]["runbook_url"]
    assert "2d 2h" in page["annotations"]["description"]  # the age, humanized
    pager_posts = [b for b in stack.webhook.received
                   if any(a["labels"]["alertname"] == "HiwBackupStaleCritical"
                          for a in b["alerts"])]
    assert all(b["path"] == "/pager" for b in pager_posts)
    for alert in alerts:
        assert alert["labels"].get("backup_name") not in HEALTHY, alert["labels"]
    # warning is not raised for a backup that is critical (status is one-hot)
    assert not [a for a in alerts if a["labels"]["alertname"] == "HiwBackupStaleWarning"]


def test_recording_rules_produce_series(stack):
    wait_for(lambda: bool(stack.query("hiw:connections_utilization:ratio"))
             and bool(stack.query('hiw:target_availability:ratio_1h{target="hiw"}')),
             timeout=120, what="recording rules")
    assert stack.query('hiw:target_availability:ratio_1h{target="hiw"}')[0]["value"][1] == "1"


# Panels whose condition does not exist in the end-to-end database, and why.
NO_DATA_EXPECTED = {
    "WAL archiving": "archive_mode is off in the test cluster",
    "archiv": "archive_mode is off: nothing is archived or failing",
    "Failing collectors": "no collector fails",
    "VACUUM": "no VACUUM runs during the test",
    "vacuum in progress": "no VACUUM runs during the test",
    "Running VACUUM": "no VACUUM runs during the test",
    "bloat": "no relation reaches the 10 MB minimum of the bloat estimate",
    "Bloat": "no relation reaches the 10 MB minimum of the bloat estimate",
    "Invalid": "no invalid index",
    "invalid": "no invalid index",
    "Duplicate": "no duplicate index",
    "duplicate": "no duplicate index",
    "Sequential scans": "no large table is scanned sequentially",
    "Runs in progress": "no backup is running",
    "running": "no backup is running",
    "Failures": "no backup failed",
    "failures": "no backup failed",
    "Slow statements": "no statement is slower than 100 ms",
    "slowest": "no statement is slower than 100 ms",
    "Exact": "exact (pgstattuple) mode is off by default",
    "exact": "exact (pgstattuple) mode is off by default",
    "deallocations": "pg_stat_statements never evicted anything",
    "Deallocations": "pg_stat_statements never evicted anything",
    "stats reset": "statistics were never reset",
    "Database growth": "needs 6 h of history (deriv over 6h)",
    "Sessions ended abnormally": "no session was killed or abandoned",
    "Deadlocks": "no deadlock",
    "Lock waits": "no lock wait",
    "Waiting sessions": "no session waits",
    "idle in transaction": "no session idles in a transaction",
    "Not healthy": "every collector is healthy",
}


# Dashboards whose source this stack does not run, and where their queries are checked.
NO_DATA_DASHBOARDS = {
    "HiW — PgBouncer": "no PgBouncer here: tests/integration/test_pgbouncer.py runs its "
                       "queries against a real Prometheus during a classroom burst",
    "HiW — Replication": "no standby here: tests/integration/test_replication.py runs its "
                         "queries against a real Prometheus watching a primary and its "
                         "standby",
}


def test_every_dashboard_query_returns_data(stack):
    from dashboards_lib import panel_queries

    # let rates and the latency histogram get two samples and some traffic
    wait_for(lambda: bool(stack.query("rate(hiw_statement_calls_total[1m]) > 0")),
             timeout=180, what="statement rates")
    empty, checked = [], 0
    for dashboard, panel, expr in panel_queries():
        checked += 1
        if not stack.query(expr):
            empty.append((dashboard, panel, expr))
    unexplained = [(d, p, e) for d, p, e in empty if d not in NO_DATA_DASHBOARDS
                   and not any(key in p for key in NO_DATA_EXPECTED)]
    # a panel may come back empty only because the latest scrape failed (Prometheus then
    # marks the target's series stale): ask again until the next scrape has answered
    def refilled() -> bool:
        unexplained[:] = [(d, p, e) for d, p, e in unexplained if not stack.query(e)]
        return not unexplained

    with contextlib.suppress(AssertionError):  # the assertion below names what is left
        wait_for(refilled, timeout=120, every=2, what="the empty panels to be asked again")
    empty = [x for x in empty if x in unexplained or x[0] in NO_DATA_DASHBOARDS
             or any(key in x[1] for key in NO_DATA_EXPECTED)]
    assert checked > 50
    assert unexplained == [], "\n".join(f"{d} | {p} | {e}" for d, p, e in unexplained)
    # and the explained ones are not everything: most panels do show data
    assert len(empty) < checked / 2
