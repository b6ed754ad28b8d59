"""The first collectors against real PostgreSQL 15 and 18."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import value, wait_for

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.config import load
from hiw_monitor.exposition import Exposition
from hiw_monitor.snapshot import SnapshotStore

pytestmark = pytest.mark.integration
SETTINGS = load(environ={}, require_targets=False).collectors


def collect(server, collector: str):
    store = SnapshotStore()
    target = server.target()
    store.register(target.name, target.redacted, collector, 15, 45)
    sample = run_collection(target, BY_NAME[collector], SETTINGS[collector], store)
    target.close()
    return sample



def test_connections_counts_and_limits(pg):
    with pg.admin() as conn:
        max_conn = int(conn.execute("SHOW max_connections").fetchone()[0])
    sample = collect(pg, "connections")
    assert sample.error is None
    assert value(sample, "hiw_connections_max") == max_conn
    # the agent's own session is active in the HiW database
    assert value(sample, "hiw_connections", datname="heroes_in_waiting", state="active") >= 1
    ratio = value(sample, "hiw_connections_utilization_ratio")
    assert 0 < ratio < 1


def lock_waiters(server, pid: int) -> int:
    """Lock requests of backend ``pid`` not granted yet."""
    with server.admin() as conn:
        return int(conn.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                                [pid]).fetchone()[0])


def test_lock_waits_and_idle_in_transaction_are_seen(pg):
    holder = pg.admin()
    waiter = pg.admin()
    try:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE job_queue IN ACCESS EXCLUSIVE MODE")
        locked_at = time.monotonic()
        waiter_pid = waiter.info.backend_pid
        blocked = threading.Thread(
            target=lambda: waiter.execute("SELECT count(*) FROM job_queue"), daemon=True)
        blocked.start()
        # the waiter has queued up (polled: its thread may start late on a busy machine) ...
        wait_for(lambda: lock_waiters(pg, waiter_pid) == 1,
                 what="the waiter queued behind the lock")
        # ... and the holder has idled in transaction for over a second
        time.sleep(max(0.0, locked_at + 1.2 - time.monotonic()))
        sample = collect(pg, "connections")
        assert value(sample, "hiw_sessions_waiting", wait_event_type="Lock") >= 1
        assert value(sample, "hiw_oldest_idle_in_transaction_age_seconds") >= 1.0
        assert value(sample, "hiw_oldest_transaction_age_seconds") >= 1.0
    finally:
        holder.execute("ROLLBACK")
        blocked.join(timeout=60)
        holder.close()
        waiter.close()
    after = collect(pg, "connections")
    assert value(after, "hiw_sessions_waiting", wait_event_type="Lock") == 0


def test_application_names_top_n_sums_the_rest(pg):
    conns = [pg.cluster.connect("heroes_in_waiting", application_name=f"app{i}")
             for i in range(4)]
    try:
        store = SnapshotStore()
        target = pg.target()
        store.register(target.name, target.redacted, "connections", 15, 45)
        settings = load(environ={}, require_targets=False).collectors["connections"]
        narrow = type(settings)(**{**{f: getattr(settings, f) for f in settings.__slots__},
                                   "options": {"top_applications": 2}})
        sample = run_collection(target, BY_NAME["connections"], narrow, store)
        target.close()
        apps = [s for f in sample.families if f.name == "hiw_connections_by_application"
                for s in f.samples]
        assert len(apps) == 3  # two named plus "other"
        assert {s.labels["application_name"] for s in apps} >= {"other"}
        total = value(sample, "hiw_connections", datname="heroes_in_waiting", state="idle") + \
            value(sample, "hiw_connections", datname="heroes_in_waiting", state="active")
        assert sum(s.value for s in apps) >= total
    finally:
        for conn in conns:
            conn.close()


def collect_until(server, collector: str, check):
    """Collect until ``check(sample)`` holds (polled, generous deadline): a session's
    statistics reach the shared counters a moment after it commits or exits, and a
    background process's after it has reported, not at once."""
    latest = {}

    def attempt() -> bool:
        latest["sample"] = collect(server, collector)
        return bool(check(latest["sample"]))

    wait_for(attempt, every=0.3, what=f"the {collector} statistics to arrive")
    return latest["sample"]


def test_database_stats_sizes_and_wraparound(pg):
    before = collect(pg, "database")
    commits_before = value(before, "hiw_database_commits_total", datname="heroes_in_waiting")
    with pg.admin() as conn:
        for _ in range(5):
            conn.execute("SELECT 1")
    after = collect_until(pg, "database", lambda s: value(
        s, "hiw_database_commits_total", datname="heroes_in_waiting") > commits_before)
    assert after.error is None
    commits = value(after, "hiw_database_commits_total", datname="heroes_in_waiting")
    assert commits > commits_before
    assert value(after, "hiw_database_size_bytes", datname="heroes_in_waiting") > 5_000_000
    assert 0 < value(after, "hiw_database_xid_wraparound_ratio", datname="heroes_in_waiting") < 0.1
    assert 0 < value(after, "hiw_database_cache_hit_ratio", datname="heroes_in_waiting") <= 1
    assert value(after, "hiw_server_in_recovery") == 0
    assert value(after, "hiw_server_start_timestamp_seconds") < time.time()


def test_checkpoints_have_one_name_on_every_version(pg):
    """PostgreSQL 17 moved these counters to pg_stat_checkpointer: same names on 15 and 18."""
    before = collect(pg, "database")
    requested_before = value(before, "hiw_checkpoints_total", kind="requested")
    with pg.admin() as conn:
        conn.execute("CHECKPOINT")
    # the checkpointer reports its counters after it has woken the CHECKPOINT up: poll
    after = collect_until(pg, "database", lambda s: value(
        s, "hiw_checkpoints_total", kind="requested") != requested_before)
    requested = value(after, "hiw_checkpoints_total", kind="requested")
    assert requested == requested_before + 1
    assert value(after, "hiw_buffers_allocated_total") > 0


def test_exposition_of_both_collectors_is_valid_text(pg):
    from prometheus_client.parser import text_string_to_metric_families

    store = SnapshotStore()
    target = pg.target()
    for name in ("connections", "database"):
        store.register(target.name, target.redacted, name, 15, 45)
        run_collection(target, BY_NAME[name], SETTINGS[name], store)
    target.close()
    text = Exposition(store).get().body.decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"hiw_up", "hiw_connections", "hiw_database_commits", "hiw_checkpoints"} <= names
    assert f'hiw_up{{target="{pg.version}"}} 1.0' in text
