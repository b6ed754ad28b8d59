"""The running agent end to end: scheduler, snapshot, HTTP, against real PostgreSQL."""

from __future__ import annotations

import gzip

import pytest
from conftest import HIW_DB, MONITOR_PASSWORD
from helpers import (
    agent_connections,
    http_get,
    running_agent,
    sample,
    wait_for,
    wait_for_agent_connections,
)

from hiw_monitor.config import Overrides, load

pytestmark = pytest.mark.integration


def config_for(server, **collector_overrides):
    dsn = server.cluster.dsn(HIW_DB, user="hiw_monitor", password=MONITOR_PASSWORD)
    return load(Overrides(dsn=dsn, target_name=server.version), environ={})


def test_serves_metrics_ready_and_landing_page(pg):
    with running_agent(config_for(pg)) as run:
        wait_for(lambda: http_get(run.url + "/ready").status == 200, what="/ready")
        for collector in ("connections", "database"):
            wait_for(lambda c=collector: run.value("hiw_collector_up", collector=c) == 1,
                     what=f"{collector} up")
        text = run.metrics()
        assert sample(text, "hiw_up", target=pg.version) == 1
        with pg.admin() as admin:
            version = admin.execute("SHOW server_version").fetchone()[0].split()[0]
        assert sample(text, "hiw_build_info", target=pg.version, server_version=version) == 1
        assert sample(text, "hiw_database_size_bytes", datname=HIW_DB) > 0

        om = http_get(run.url + "/metrics",
                      {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["Content-Type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")

        zipped = http_get(run.url + "/metrics", {"Accept-Encoding": "gzip"})
        assert zipped.headers.get("Content-Encoding") == "gzip"
        assert b"hiw_up{" in gzip.decompress(zipped.body)

        assert http_get(run.url + "/healthz").status == 200
        page = http_get(run.url + "/").text
        assert pg.version in page
        assert "connections" in page
        assert "database" in page
        assert MONITOR_PASSWORD not in page
        assert MONITOR_PASSWORD not in text


def quiesce(agent) -> None:
    """Pause collections and wait until none is in flight or queued: pause() stops new
    runs coming due, but a run already handed to the worker pool still finishes, later
    on a slower machine."""
    agent.pause()
    assert agent.wait_idle(timeout=120), "runs still in flight after 120 s"


def test_scrapes_never_query_the_database(pg):
    """With collections paused, 50 scrapes add no statement by the agent's role."""
    with running_agent(config_for(pg)) as run:
        wait_for(lambda: http_get(run.url + "/ready").status == 200, what="/ready")
        quiesce(run.agent)
        calls_sql = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                     "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = 'hiw_monitor'")
        with pg.admin() as admin:
            before = admin.execute(calls_sql).fetchone()[0]
            bodies = {http_get(run.url + "/metrics").body for _ in range(50)}
            after = admin.execute(calls_sql).fetchone()[0]
        assert after == before
        assert len(bodies) == 1  # the same pre-rendered snapshot every time


def test_one_connection_per_target_and_none_left_after_stop(pg):
    config = config_for(pg)
    with pg.admin() as admin:
        with running_agent(config) as run:
            wait_for(lambda: http_get(run.url + "/ready").status == 200, what="/ready")
            assert agent_connections(admin) == 1
        wait_for_agent_connections(admin, 0)  # its backend exits a moment after the close
