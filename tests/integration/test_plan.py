"""The plan step on real servers: made once per connection, logged once, re-made after a
reconnect, and a collector that cannot run says why in hiw_collector_up."""

from __future__ import annotations

import pytest
from conftest import start_server
from structlog.testing import capture_logs
from test_statements import settings

from hiw_monitor.collect import plan_of, run_collection
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.collectors.statements import Plan, new_state
from hiw_monitor.exposition import self_metrics
from hiw_monitor.snapshot import SnapshotStore

pytestmark = pytest.mark.integration
FACTS_QUERY = "%pg_proc p%unnest(p.proargnames, p.proargmodes)%"


def facts_calls(server) -> int:
    with server.admin() as admin:
        row = admin.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                            "WHERE query LIKE %s", [FACTS_QUERY]).fetchone()
    return int(row[0])


def test_the_plan_is_made_once_per_connection(pg):
    store = SnapshotStore()
    target = pg.target("db")
    store.register("db", target.redacted, "statements", 60, 180)
    state = new_state()
    chosen = settings()
    before = facts_calls(pg)
    try:
        with capture_logs() as logs:
            for _ in range(3):
                sample = run_collection(target, BY_NAME["statements"], chosen, store, state)
                assert sample.error is None, sample.error
            assert facts_calls(pg) == before + 1  # three polls, one plan
            planned = plan_of(target, BY_NAME["statements"])
            assert planned is not None
            assert isinstance(planned.plan, Plan)
            assert "total" in planned.plan.columns
            target.close()  # a reconnect plans again
            sample = run_collection(target, BY_NAME["statements"], chosen, store, state)
            assert sample.error is None, sample.error
            assert facts_calls(pg) == before + 2
    finally:
        target.close()
    events = [e for e in logs if e["event"] == "collector_planned"]
    assert [e["outcome"] for e in events] == ["installed"]  # logged once, not per poll


def test_a_collector_that_cannot_run_here_says_why_once():
    server = start_server("pg15", settings={"shared_preload_libraries": "''"})
    store = SnapshotStore()
    target = server.target("db")
    store.register("db", target.redacted, "statements", 60, 180)
    try:
        with capture_logs() as logs:
            samples = [run_collection(target, BY_NAME["statements"], settings(), store,
                                      new_state()) for _ in range(3)]
    finally:
        target.close()
        server.cluster.destroy()
    assert {s.error.code for s in samples} == {"not_preloaded"}
    skipped = [e for e in logs if e["event"] == "collector_planned"]
    assert len(skipped) == 1
    assert skipped[0]["outcome"] == "skipped"
    assert skipped[0]["reason"] == "not_preloaded"
    _, targets, recorded = store.view()
    families = {f.name: f for f in self_metrics(targets, recorded, 0.0)}
    assert families["hiw_collector_up"].samples[0].value == 0
    reasons = {s.labels["reason"] for s in families["hiw_collector_last_error_info"].samples}
    assert reasons == {"not_preloaded"}
