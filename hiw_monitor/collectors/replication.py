"""Streaming replication and failover: the server's role and timeline, on a primary its
standbys (lag in bytes and seconds) and whether it has the standbys it should, its
replication slots, and on a standby its WAL receiver, replay position, lag, pause state
and recovery conflicts.

The role is read live at every run (``pg_is_in_recovery()``), not taken from what the
agent learned when it connected: a standby promoted while the agent stays connected is a
primary from the next run on, and the primary-only and standby-only queries follow it
(the ``PRIMARY_ONLY``/``STANDBY_ONLY`` predicates test the role seen at connect time,
which a promotion does not change). Every family is exported on both roles; those of the
other role are empty (no samples), so the catalog is one list whatever the server is.

Lag in seconds is read against positions (see :mod:`hiw_monitor.analysis.replication`):
0 when a standby has reached the primary's current WAL position, or on the standby when
replay has reached what it received, instead of pg_stat_replication's lag columns that go
NULL on an idle primary or "now() - pg_last_xact_replay_timestamp()" that grows while
nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import Metric

from hiw_monitor.analysis.replication import (
    CONFLICTS,
    LAG_KINDS,
    LAG_TIME_KINDS,
    PAUSE_STATES,
    RECEIVER_STATUSES,
    ROLES,
    WAL_STATUSES,
    ReplicationState,
    bytes_behind,
    pause_state,
    standby_lags,
    standby_replay_lag,
)
from hiw_monitor.collectors.base import (
    Builder,
    Collector,
    Context,
    Option,
    PlanStep,
    Query,
    Rows,
    Step,
    VersionedSQL,
    counter,
    gauge,
    number,
    state_set,
)
from hiw_monitor.errors import Reason, ReasonedError

PRIMARY, STANDBY = ROLES

# The live role, the primary's current WAL position and timeline. The timeline of a
# primary is that of the WAL it writes now (the first 8 hex digits of its current WAL
# file's name): pg_control_checkpoint() only shows a new timeline after the first
# checkpoint that follows a promotion. (pg_control_* may be revoked: then NULL.) A server
# leaves recovery but never enters it while running, so the CASEs cannot call a
# primary-only function on a standby.
_ROLE = """
SELECT pg_catalog.pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_catalog.pg_is_in_recovery()
            THEN ('x' || pg_catalog.substr(
                      pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8)
                 )::bit(32)::int4 END AS wal_timeline,
       CASE WHEN pg_catalog.has_function_privilege('pg_catalog.pg_control_checkpoint()',
                                                   'EXECUTE')
            THEN (SELECT c.timeline_id FROM pg_catalog.pg_control_checkpoint() c) END
           AS checkpoint_timeline
"""

# Per walsender: how far behind the primary's current WAL position each stage is, the
# lag pg_stat_replication measured, and whether it serves a physical standby (a logical
# walsender always holds a logical slot). LSN columns need pg_read_all_stats (pg_monitor).
_STANDBYS = """
SELECT r.application_name, pg_catalog.host(r.client_addr) AS client_addr, r.state,
       r.sync_state,
       pg_catalog.pg_wal_lsn_diff(c.lsn, r.sent_lsn)::float8 AS sent_bytes,
       pg_catalog.pg_wal_lsn_diff(c.lsn, r.write_lsn)::float8 AS write_bytes,
       pg_catalog.pg_wal_lsn_diff(c.lsn, r.flush_lsn)::float8 AS flush_bytes,
       pg_catalog.pg_wal_lsn_diff(c.lsn, r.replay_lsn)::float8 AS replay_bytes,
       extract(epoch FROM r.write_lag)::float8 AS write_lag,
       extract(epoch FROM r.flush_lag)::float8 AS flush_lag,
       extract(epoch FROM r.replay_lag)::float8 AS replay_lag,
       NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s
                   WHERE s.active_pid = r.pid AND s.slot_type = 'logical') AS physical
FROM pg_catalog.pg_stat_replication r,
     (SELECT pg_catalog.pg_current_wal_lsn() AS lsn) c
"""

# Every slot but the temporary ones (a base backup's, gone with its session): retained WAL
# from restart_lsn up to the primary's current position (a standby's replay position for
# a slot on a standby), wal_status and safe_wal_size (13+), inactive_since (17+).
_SLOTS = """
SELECT s.slot_name, s.slot_type, s.active, s.wal_status,
       pg_catalog.pg_wal_lsn_diff(ref.lsn, s.restart_lsn)::float8 AS retained_bytes,
       s.safe_wal_size::float8 AS safe_wal_size,
       {inactive_since} AS inactive_since
FROM pg_catalog.pg_replication_slots s,
     (SELECT CASE WHEN pg_catalog.pg_is_in_recovery()
                  THEN pg_catalog.pg_last_wal_replay_lsn()
                  ELSE pg_catalog.pg_current_wal_lsn() END AS lsn) ref
WHERE NOT s.temporary
ORDER BY s.slot_name
"""
_SLOTS_13 = _SLOTS.format(inactive_since="NULL::float8")
_SLOTS_17 = _SLOTS.format(inactive_since="extract(epoch FROM s.inactive_since)::float8")

# The standby's own view: what it received and replayed (as byte positions), since when
# nothing was replayed, the pause state (pg_get_wal_replay_pause_state from 14; 13 only
# knows paused or not) and its WAL receiver (pg_stat_wal_receiver: no row without one).
_STANDBY = """
SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), '0/0')::float8
           AS received,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_replay_lsn(), '0/0')::float8
           AS replayed,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(),
                                  pg_catalog.pg_last_wal_replay_lsn())::float8 AS replay_bytes,
       extract(epoch FROM pg_catalog.now() - pg_catalog.pg_last_xact_replay_timestamp())::float8
           AS since_replay,
       {pause},
       w.status AS receiver_status, w.received_tli
FROM (SELECT 1) one
LEFT JOIN pg_catalog.pg_stat_wal_receiver w ON true
"""
_STANDBY_13 = _STANDBY.format(
    pause="NULL::text AS pause_state, pg_catalog.pg_is_wal_replay_paused() AS paused")
_STANDBY_14 = _STANDBY.format(
    pause="pg_catalog.pg_get_wal_replay_pause_state() AS pause_state, NULL::bool AS paused")

# Queries cancelled on the standby because replay needed what they held, over every database.
_CONFLICTS = """
SELECT coalesce(sum(confl_tablespace), 0)::float8 AS tablespace,
       coalesce(sum(confl_lock), 0)::float8 AS lock,
       coalesce(sum(confl_snapshot), 0)::float8 AS snapshot,
       coalesce(sum(confl_bufferpin), 0)::float8 AS bufferpin,
       coalesce(sum(confl_deadlock), 0)::float8 AS deadlock,
       {logical} AS active_logicalslot
FROM pg_catalog.pg_stat_database_conflicts
"""
_CONFLICTS_13 = _CONFLICTS.format(logical="NULL::float8")
_CONFLICTS_16 = _CONFLICTS.format(logical="coalesce(sum(confl_active_logicalslot), 0)::float8")

# Once per connection: pg_stat_replication and pg_stat_wal_receiver show a role without
# pg_read_all_stats (part of pg_monitor) only their pid, every position NULL: rows that
# would read as "no lag known" and "no WAL receiver".
_FACTS = """
SELECT current_user AS me,
       r.rolsuper OR pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')
           AS can_read
FROM pg_catalog.pg_roles r
WHERE r.rolname = current_user
"""


def decide(rows: Mapping[str, Rows], step: Step) -> None:
    """Nothing to choose; the reason (with its fix) when positions would be hidden."""
    facts = rows["facts"][0]
    if not facts["can_read"]:
        raise ReasonedError(Reason(
            "permission_denied",
            f"role {facts['me']!r} cannot read replication positions (pg_stat_replication "
            f"and pg_stat_wal_receiver show it only pids); run: GRANT pg_monitor TO "
            f"{facts['me']};"))


OPTIONS = {
    "expected_standbys": Option(
        "int", 0, "physical standbys each primary target should have streaming "
        "(hiw_replication_standbys_expected; HiwReplicationStandbyMissing fires below it)",
        minimum=0, maximum=1000),
}


def live_role(rows: Mapping[str, Rows]) -> str:
    """The role the server has now (the ``role`` query, run first)."""
    return STANDBY if rows["role"][0]["in_recovery"] else PRIMARY


def _on(role: str, text: VersionedSQL) -> Builder:
    """The query's SQL when the server has ``role`` now, else None (not run)."""
    def build(step: Step) -> str | None:
        return text.pick(step.server.version_num) if live_role(step.rows) == role else None
    return build


QUERIES: dict[str, Query] = {
    "role": Query(VersionedSQL({130000: _ROLE})),
    "standbys": Query(_on(PRIMARY, VersionedSQL({130000: _STANDBYS}))),
    "slots": Query(VersionedSQL({130000: _SLOTS_13, 170000: _SLOTS_17})),
    "standby": Query(_on(STANDBY, VersionedSQL({130000: _STANDBY_13, 140000: _STANDBY_14}))),
    "conflicts": Query(_on(STANDBY, VersionedSQL({130000: _CONFLICTS_13,
                                                  160000: _CONFLICTS_16}))),
}


def new_state() -> ReplicationState:
    return ReplicationState()


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    state: ReplicationState = ctx.state if ctx.state is not None else new_state()
    t = ctx.target
    role = live_role(rows)
    state.observe_role(role)
    standby = rows["standby"][0] if rows["standby"] else None
    yield state_set("hiw_server_role", "The server's role now (pg_is_in_recovery()), one-hot.",
                    ROLES, role, t, state_label="role")
    changes = counter("hiw_server_role_changes",
                      "Changes of role (promotion, or a primary back as a standby) the agent "
                      "has seen on this target since it started.")
    changes.add_metric([t], float(state.role_changes))
    yield changes
    yield _timeline(rows["role"][0], standby, t)
    yield from _primary_families(rows["standbys"], role, ctx)
    yield from _slot_families(rows["slots"], state, ctx)
    yield from _standby_families(standby, rows["conflicts"], ctx)


def _timeline(row: Mapping[str, Any], standby: Mapping[str, Any] | None, t: str) -> Metric:
    family = gauge("hiw_server_timeline_id",
                   "Timeline: of the WAL a primary writes now; on a standby, the one its WAL "
                   "receiver streams (else the last restartpoint's).")
    received = standby["received_tli"] if standby is not None else None
    value = received if standby is not None else row["wal_timeline"]
    if value is None:
        value = row["checkpoint_timeline"]
    if value is not None:
        family.add_metric([t], float(value))
    return family


_STANDBY_LABELS = ("application_name", "client_addr", "state", "sync_state")


def _primary_families(rows: Rows, role: str, ctx: Context) -> Iterator[Metric]:
    t = ctx.target
    expected = gauge("hiw_replication_standbys_expected",
                     "The expected_standbys option: physical standbys this primary should "
                     "have streaming (primaries only).")
    connected = gauge("hiw_replication_standbys_connected",
                      "Physical standbys streaming from this primary now (pg_stat_replication "
                      "state 'streaming', logical walsenders not counted; primaries only).")
    lag_bytes = gauge("hiw_replication_lag_bytes",
                      "Bytes of WAL each standby is behind the primary's current position, "
                      "per stage (kind: sent, write, flush, replay).",
                      [*_STANDBY_LABELS, "kind"])
    lag_seconds = gauge("hiw_replication_lag_seconds",
                        "Seconds each standby is behind, per stage (kind: write, flush, "
                        "replay): 0 once it has reached the primary's current position, "
                        "else pg_stat_replication's measured lag.",
                        [*_STANDBY_LABELS, "kind"])
    if role == PRIMARY:
        expected.add_metric([t], float(ctx.options["expected_standbys"]))
        streaming = sum(1 for r in rows if r["physical"] and r["state"] == "streaming")
        connected.add_metric([t], float(streaming))
        for key, lag in sorted(standby_lags(rows).items()):
            for kind in LAG_KINDS:
                if kind in lag.bytes:
                    lag_bytes.add_metric([t, *key, kind], lag.bytes[kind])
            for kind in LAG_TIME_KINDS:
                if kind in lag.seconds:
                    lag_seconds.add_metric([t, *key, kind], lag.seconds[kind])
    yield from (expected, connected, lag_bytes, lag_seconds)


def _slot_families(rows: Rows, state: ReplicationState, ctx: Context) -> Iterator[Metric]:
    t = ctx.target
    labels = ("slot_name", "slot_type")
    active = gauge("hiw_replication_slot_active",
                   "1 while a replication slot is in use by a connection.", labels)
    retained = gauge("hiw_replication_slot_retained_bytes",
                     "WAL the slot keeps from removal: its restart_lsn to the current WAL "
                     "position (a standby's replay position for a slot on a standby).", labels)
    wal_status = gauge("hiw_replication_slot_wal_status",
                       "The slot's wal_status, one-hot: reserved, extended (beyond max_wal_size"
                       "), unreserved (at risk), lost (the standby cannot catch up).",
                       [*labels, "wal_status"])
    safe = gauge("hiw_replication_slot_safe_wal_size_bytes",
                 "WAL that can still be written before the slot is lost (safe_wal_size; no "
                 "sample when max_slot_wal_keep_size is -1, unlimited).", labels)
    inactive = gauge("hiw_replication_slot_inactive_seconds",
                     "How long the slot has been inactive, 0 while active: from the server's "
                     "inactive_since (17+), else since the agent first saw it inactive.", labels)
    ages = state.inactive_for(rows, ctx.now)
    for row in rows:
        key = [t, row["slot_name"], row["slot_type"]]
        active.add_metric(key, 1.0 if row["active"] else 0.0)
        if row["retained_bytes"] is not None:
            retained.add_metric(key, max(0.0, float(row["retained_bytes"])))
        for status in WAL_STATUSES:
            wal_status.add_metric([*key, status], 1.0 if row["wal_status"] == status else 0.0)
        if row["safe_wal_size"] is not None:
            safe.add_metric(key, float(row["safe_wal_size"]))
        inactive.add_metric(key, ages[row["slot_name"]])
    yield from (active, retained, wal_status, safe, inactive)


def _standby_families(row: Mapping[str, Any] | None, conflicts: Rows, ctx: Context
                      ) -> Iterator[Metric]:
    t = ctx.target
    status = gauge("hiw_standby_wal_receiver_status",
                   "The WAL receiver's status (pg_stat_wal_receiver), one-hot; 'stopped' "
                   "when there is none (standbys only).", ["status"])
    streaming = gauge("hiw_standby_streaming",
                      "1 while the standby's WAL receiver is streaming from its primary "
                      "(standbys only).")
    received = gauge("hiw_standby_last_received_lsn_bytes",
                     "pg_last_wal_receive_lsn() as bytes: WAL received and flushed.")
    replayed = gauge("hiw_standby_last_replayed_lsn_bytes",
                     "pg_last_wal_replay_lsn() as bytes: WAL replayed.")
    lag_bytes = gauge("hiw_standby_replay_lag_bytes",
                      "WAL received but not replayed yet, in bytes.")
    lag_seconds = gauge("hiw_standby_replay_lag_seconds",
                        "0 when the standby has replayed everything it received, else the "
                        "time since the last replayed transaction committed on the primary.")
    paused = gauge("hiw_standby_replay_pause_state",
                   "Replay pause state, one-hot: not_paused, pause_requested (14+), paused.",
                   ["state"])
    conflict = counter("hiw_standby_recovery_conflicts",
                       "Queries cancelled on the standby because of recovery conflicts, over "
                       "every database, by reason (pg_stat_database_conflicts; "
                       "active_logicalslot 16+).", ["reason"])
    if row is not None:
        current = row["receiver_status"] or "stopped"
        for name in RECEIVER_STATUSES:
            status.add_metric([t, name], 1.0 if name == current else 0.0)
        streaming.add_metric([t], 1.0 if current == "streaming" else 0.0)
        for family, column in ((received, "received"), (replayed, "replayed")):
            if row[column] is not None:
                family.add_metric([t], number(row[column]))
        if row["replay_bytes"] is not None:
            lag_bytes.add_metric([t], bytes_behind(row["replay_bytes"]) or 0.0)
        lag = standby_replay_lag(row["received"], row["replayed"], row["since_replay"])
        if lag is not None:
            lag_seconds.add_metric([t], lag)
        current_pause = pause_state(row["pause_state"], row["paused"])
        for name in PAUSE_STATES:
            paused.add_metric([t, name], 1.0 if name == current_pause else 0.0)
        totals = conflicts[0] if conflicts else {}
        for reason in CONFLICTS:
            if totals.get(reason) is not None:
                conflict.add_metric([t, reason], float(totals[reason]))
    yield from (status, streaming, received, replayed, lag_bytes, lag_seconds, paused, conflict)


COLLECTOR = Collector(
    name="replication",
    help="Role, timeline and failovers; standbys, lag and slots on a primary; WAL receiver, "
         "replay lag, pause and conflicts on a standby",
    interval=15.0,
    timeout=5.0,
    queries=QUERIES,
    transform=transform,
    options=OPTIONS,
    plan=PlanStep({"facts": Query(VersionedSQL({130000: _FACTS}))}, decide),
    new_state=new_state,
)
