"""The replication collector's pure parts: lag that is 0 when caught up whatever the
clocks say, one series per label set, slot inactivity remembered by the agent before 17,
role changes counted once, queries chosen by the live role, and every family present on
both roles (empty for the other)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hiw_monitor.analysis.replication import (
    ReplicationState,
    lag_seconds,
    pause_state,
    standby_lags,
    standby_replay_lag,
)
from hiw_monitor.collect import run_queries
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.collectors.base import Context, ServerInfo, Step
from hiw_monitor.collectors.replication import COLLECTOR, QUERIES, decide, new_state, transform
from hiw_monitor.errors import ReasonedError

TARGET = "hiw"
NOW = 1_700_000_000.0
OPTIONS = {"expected_standbys": 2}

positions = st.floats(min_value=0, max_value=2.0**50, allow_nan=False)
seconds = st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False))


@given(seconds)
def test_a_standby_at_the_primarys_position_is_zero_seconds_behind(reported):
    # pg_stat_replication's lag columns freeze or go NULL on an idle primary
    assert lag_seconds(0.0, reported) == 0.0


@given(st.floats(min_value=1, max_value=2.0**50), seconds)
def test_a_standby_behind_reports_the_servers_measurement(distance, reported):
    assert lag_seconds(distance, reported) == reported


@given(positions, seconds)
def test_a_standby_that_replayed_all_it_received_is_zero_seconds_behind(position, since):
    # "now() - pg_last_xact_replay_timestamp()" grows while the primary writes nothing
    assert standby_replay_lag(position, position, since) == 0.0


@given(positions, st.floats(min_value=1, max_value=2.0**40),
       st.floats(min_value=0, max_value=1e6))
def test_a_standby_behind_in_replay_reports_time_since_the_last_replay(replayed, gap, since):
    assert standby_replay_lag(replayed + gap, replayed, since) == since


def walsender(name: str = "replica1", addr: str | None = "10.0.0.2", state: str = "streaming",
              *, replay: float = 0.0, replay_lag: float | None = None,
              physical: bool = True) -> dict[str, Any]:
    return {"application_name": name, "client_addr": addr, "state": state,
            "sync_state": "async", "sent_bytes": 0.0, "write_bytes": 0.0, "flush_bytes": 0.0,
            "replay_bytes": replay, "write_lag": None, "flush_lag": None,
            "replay_lag": replay_lag, "physical": physical}


def test_walsenders_with_the_same_labels_are_one_series_with_the_worst_lag():
    lags = standby_lags([walsender(replay=10.0, replay_lag=1.0),
                         walsender(replay=500.0, replay_lag=4.0),
                         walsender("replica2", replay=0.0, replay_lag=9.0)])
    first = lags[("replica1", "10.0.0.2", "streaming", "async")]
    assert (first.bytes["replay"], first.seconds["replay"], first.senders) == (500.0, 4.0, 2)
    second = lags[("replica2", "10.0.0.2", "streaming", "async")]
    assert second.seconds == {"write": 0.0, "flush": 0.0, "replay": 0.0}  # caught up


def test_a_base_backups_walsender_has_no_positions():
    row = {**walsender(state="backup"), **dict.fromkeys(
        ("sent_bytes", "write_bytes", "flush_bytes", "replay_bytes"), None)}
    (lag,) = standby_lags([row]).values()
    assert (lag.bytes, lag.seconds) == ({}, {})


def test_pause_states_on_13_and_14_plus():
    assert [pause_state(s, None) for s in ("not paused", "pause requested", "paused")] == \
        ["not_paused", "pause_requested", "paused"]
    assert [pause_state(None, p) for p in (False, True)] == ["not_paused", "paused"]


def test_role_changes_are_counted_once_each_and_the_first_role_is_no_change():
    state = ReplicationState()
    for role in ("standby", "standby", "primary", "primary", "standby"):
        state.observe_role(role)
    assert state.role_changes == 2


def test_slot_inactivity_before_17_is_remembered_by_the_agent():
    state = ReplicationState()
    slot = {"slot_name": "s", "active": False, "inactive_since": None}
    assert state.inactive_for([slot], 100.0) == {"s": 0.0}
    assert state.inactive_for([slot], 130.0) == {"s": 30.0}
    assert state.inactive_for([{**slot, "active": True}], 140.0) == {"s": 0.0}
    assert state.inactive_for([slot], 150.0) == {"s": 0.0}  # inactive again: a new start
    assert state.inactive_for([], 160.0) == {}
    assert state.inactive_since == {}  # dropped slots are forgotten


# --- the transform -----------------------------------------------------------------------

def server(version_num: int = 170002, in_recovery: bool = False) -> ServerInfo:
    return ServerInfo(version_num, f"{version_num // 10000}.x", in_recovery=in_recovery)


def ctx(state: ReplicationState, version_num: int = 170002, now: float = NOW) -> Context:
    return Context(TARGET, server(version_num), OPTIONS, now, state=state)


def slot(name: str = "s1", *, active: bool = False, since: float | None = None,
         retained: float = 4096.0) -> dict[str, Any]:
    return {"slot_name": name, "slot_type": "physical", "active": active,
            "wal_status": "reserved", "retained_bytes": retained, "safe_wal_size": None,
            "inactive_since": since}


def primary_rows(standbys=(), slots=()) -> dict[str, list[Mapping[str, Any]]]:
    return {"role": [{"in_recovery": False, "wal_timeline": 3, "checkpoint_timeline": 2}],
            "standbys": list(standbys), "slots": list(slots), "standby": [], "conflicts": []}


def standby_rows(*, received: float = 1000.0, replayed: float = 1000.0,
                 since: float | None = 3600.0, status: str | None = "streaming",
                 pause: str | None = "not paused", paused: bool | None = None
                 ) -> dict[str, list[Mapping[str, Any]]]:
    return {"role": [{"in_recovery": True, "wal_timeline": None, "checkpoint_timeline": 1}],
            "standbys": [], "slots": [],
            "standby": [{"received": received, "replayed": replayed,
                         "replay_bytes": received - replayed, "since_replay": since,
                         "pause_state": pause, "paused": paused, "receiver_status": status,
                         "received_tli": 2 if status else None}],
            "conflicts": [{"tablespace": 0.0, "lock": 1.0, "snapshot": 2.0, "bufferpin": 0.0,
                           "deadlock": 0.0, "active_logicalslot": None}]}


def families(rows, context: Context) -> dict[str, Any]:
    return {f.name: f for f in transform(rows, context)}


def values(family, label: str | None = None) -> dict[Any, float]:
    return {(s.labels[label] if label else s.name): s.value for s in family.samples}


def test_a_primary_reports_its_standbys_slots_role_and_timeline():
    state = new_state()
    out = families(primary_rows(
        [walsender(replay=8192.0, replay_lag=2.5), walsender("sub", physical=False),
         walsender("late", state="catchup", replay=1.0)],
        [slot(), slot("s2", active=True)]), ctx(state))
    assert values(out["hiw_server_role"], "role") == {"primary": 1.0, "standby": 0.0}
    assert values(out["hiw_server_timeline_id"]) == {"hiw_server_timeline_id": 3.0}
    assert values(out["hiw_replication_standbys_expected"]) == {
        "hiw_replication_standbys_expected": 2.0}
    # the logical walsender and the one still catching up are not streaming standbys
    assert values(out["hiw_replication_standbys_connected"]) == {
        "hiw_replication_standbys_connected": 1.0}
    replay = {s.labels["application_name"]: s.value for s in
              out["hiw_replication_lag_seconds"].samples if s.labels["kind"] == "replay"}
    assert replay == {"replica1": 2.5, "sub": 0.0}  # "late": behind, nothing measured yet
    assert values(out["hiw_replication_slot_active"], "slot_name") == {"s1": 0.0, "s2": 1.0}
    assert values(out["hiw_replication_slot_retained_bytes"], "slot_name") == {
        "s1": 4096.0, "s2": 4096.0}
    assert out["hiw_replication_slot_safe_wal_size_bytes"].samples == []
    for name in ("hiw_standby_streaming", "hiw_standby_replay_lag_seconds",
                 "hiw_standby_recovery_conflicts"):
        assert out[name].samples == [], name  # the standby's families: there, empty


def test_a_standby_reports_receiver_positions_lag_pause_and_conflicts():
    out = families(standby_rows(received=5000.0, replayed=1000.0, since=12.0),
                   ctx(new_state()))
    assert values(out["hiw_server_role"], "role") == {"primary": 0.0, "standby": 1.0}
    assert values(out["hiw_server_timeline_id"]) == {"hiw_server_timeline_id": 2.0}
    assert values(out["hiw_standby_streaming"]) == {"hiw_standby_streaming": 1.0}
    assert values(out["hiw_standby_replay_lag_bytes"]) == {"hiw_standby_replay_lag_bytes": 4000.0}
    assert values(out["hiw_standby_replay_lag_seconds"]) == {
        "hiw_standby_replay_lag_seconds": 12.0}
    assert values(out["hiw_standby_last_received_lsn_bytes"]) == {
        "hiw_standby_last_received_lsn_bytes": 5000.0}
    assert values(out["hiw_standby_replay_pause_state"], "state") == {
        "not_paused": 1.0, "pause_requested": 0.0, "paused": 0.0}
    assert values(out["hiw_standby_recovery_conflicts"], "reason") == {
        "tablespace": 0.0, "lock": 1.0, "snapshot": 2.0, "bufferpin": 0.0, "deadlock": 0.0}
    for name in ("hiw_replication_standbys_expected", "hiw_replication_standbys_connected",
                 "hiw_replication_lag_bytes"):
        assert out[name].samples == [], name


def test_a_caught_up_standby_is_zero_seconds_behind_an_hour_after_the_last_write():
    out = families(standby_rows(since=3600.0), ctx(new_state()))
    assert values(out["hiw_standby_replay_lag_seconds"]) == {
        "hiw_standby_replay_lag_seconds": 0.0}


def test_a_standby_without_a_wal_receiver_is_not_streaming():
    out = families(standby_rows(status=None), ctx(new_state()))
    assert values(out["hiw_standby_wal_receiver_status"], "status")["stopped"] == 1.0
    assert values(out["hiw_standby_streaming"]) == {"hiw_standby_streaming": 0.0}
    # no receiver: the timeline of the last restartpoint
    assert values(out["hiw_server_timeline_id"]) == {"hiw_server_timeline_id": 1.0}


def test_13_says_paused_or_not():
    out = families(standby_rows(pause=None, paused=True), ctx(new_state(), 130016))
    assert values(out["hiw_standby_replay_pause_state"], "state")["paused"] == 1.0


def test_both_roles_export_the_same_families():
    primary = families(primary_rows(), ctx(new_state()))
    standby = families(standby_rows(), ctx(new_state()))
    assert set(primary) == set(standby)
    assert [f.name for f in transform(primary_rows(), ctx(new_state()))] == \
        [f.name for f in transform(standby_rows(), ctx(new_state()))]


def test_a_promotion_is_one_role_change_and_the_primary_families_follow_at_once():
    state = new_state()
    before = families(standby_rows(), ctx(state))
    after = families(primary_rows([walsender()]), ctx(state, now=NOW + 15))
    assert values(before["hiw_server_role_changes"]) == {"hiw_server_role_changes_total": 0.0}
    assert values(after["hiw_server_role_changes"]) == {"hiw_server_role_changes_total": 1.0}
    assert values(after["hiw_server_role"], "role")["primary"] == 1.0
    assert after["hiw_standby_streaming"].samples == []


def test_slot_inactive_since_from_the_server_on_17():
    out = families(primary_rows(slots=[slot(since=NOW - 90.0)]), ctx(new_state()))
    assert values(out["hiw_replication_slot_inactive_seconds"], "slot_name") == {"s1": 90.0}


def test_the_collector_is_registered_with_its_option():
    assert BY_NAME["replication"] is COLLECTOR
    assert COLLECTOR.options["expected_standbys"].default == 0


# --- which queries run: the live role, not the role seen at connect time ----------------

class FakeCursor:
    """Answers the role query; records what else would run."""

    def __init__(self, in_recovery: bool) -> None:
        self.in_recovery = in_recovery
        self.executed: list[str] = []
        self.description: list[Any] | None = None
        self._rows: list[dict[str, Any]] = []

    def execute(self, text: Any, params: Any = None) -> None:
        sql = text.decode() if isinstance(text, bytes) else str(text)
        self.executed.append(sql)
        self._rows = [{"in_recovery": self.in_recovery, "wal_timeline": None,
                       "checkpoint_timeline": 1}] if "pg_is_in_recovery() AS" in sql else []
        self.description = [type("C", (), {"name": k}) for k in
                            (self._rows[0] if self._rows else {"x": 0})]

    def fetchall(self) -> list[dict[str, Any]]:
        return self._rows


@pytest.mark.parametrize(("connected_as_standby", "now_in_recovery", "runs", "skipped"), [
    (False, False, "pg_stat_replication", "pg_stat_wal_receiver"),
    (True, True, "pg_stat_wal_receiver", "pg_stat_replication"),
    # promoted while the agent stayed connected: ServerInfo still says standby
    (True, False, "pg_stat_replication", "pg_stat_wal_receiver"),
])
def test_queries_follow_the_live_role(connected_as_standby, now_in_recovery, runs, skipped):
    cur = FakeCursor(now_in_recovery)
    step = Step(options=OPTIONS, server=server(170002, in_recovery=connected_as_standby))
    rows = run_queries(cur, QUERIES, step)
    text = "\n".join(cur.executed)
    assert runs in text
    assert skipped not in text
    assert set(rows) == set(QUERIES)


@pytest.mark.parametrize(("version_num", "present", "absent"), [
    (130016, ["pg_is_wal_replay_paused()"],
     ["pg_get_wal_replay_pause_state", "s.inactive_since", "confl_active_logicalslot"]),
    (140013, ["pg_get_wal_replay_pause_state()"],
     ["s.inactive_since", "confl_active_logicalslot"]),
    (160004, ["confl_active_logicalslot"], ["s.inactive_since"]),
    (170002, ["s.inactive_since", "confl_active_logicalslot"], []),
    (180001, ["s.inactive_since", "confl_active_logicalslot"], []),
])
def test_sql_per_version(version_num, present, absent):
    texts = []
    for in_recovery in (False, True):
        step = Step(options=OPTIONS, server=server(version_num),
                    rows={"role": [{"in_recovery": in_recovery}]})
        texts += [str(q.text(step)) for q in QUERIES.values() if q.text(step) is not None]
    text = "\n".join(texts)
    assert all(p in text for p in present), present
    assert not any(a in text for a in absent), absent


def test_a_role_that_cannot_read_positions_is_told_the_grant():
    step = Step(options=OPTIONS, server=server())
    with pytest.raises(ReasonedError) as caught:
        decide({"facts": [{"me": "watcher", "can_read": False}]}, step)
    assert caught.value.reason.code == "permission_denied"
    assert "GRANT pg_monitor TO watcher;" in caught.value.reason.text
    assert decide({"facts": [{"me": "hiw_monitor", "can_read": True}]}, step) is None
