"""Replication lag, slots and roles as pure functions, plus the little the agent remembers
between polls (the last role seen, when it first saw a slot inactive).

Lag in seconds that stays right on an idle primary. pg_stat_replication's ``*_lag``
columns go NULL a moment after a standby catches up and there is no more WAL, and
"now() - pg_last_xact_replay_timestamp()" on a standby grows for as long as the primary
writes nothing. Both are read here against positions: a standby whose position has
reached the primary's current WAL position (or, on the standby itself, whose replay has
reached what it received) is 0 seconds behind, whatever the clocks say; otherwise the
server's own measurement is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ROLES = ("primary", "standby")
LAG_KINDS = ("sent", "write", "flush", "replay")  # positions behind the primary, in bytes
LAG_TIME_KINDS = ("write", "flush", "replay")  # pg_stat_replication's *_lag columns
# pg_stat_wal_receiver.status, and "stopped" when there is no WAL receiver at all
RECEIVER_STATUSES = ("stopped", "starting", "streaming", "waiting", "restarting", "stopping")
PAUSE_STATES = ("not_paused", "pause_requested", "paused")
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")  # pg_replication_slots (13+)
CONFLICTS = ("tablespace", "lock", "snapshot", "bufferpin", "deadlock", "active_logicalslot")

StandbyKey = tuple[str, str, str, str]  # application_name, client_addr, state, sync_state


def lag_seconds(behind_bytes: float | None, reported: float | None) -> float | None:
    """Seconds a standby is behind at one stage (write, flush or replay).

    0 when its position has reached the primary's current WAL position, whatever
    pg_stat_replication reports (its lag columns freeze or go NULL on an idle primary);
    otherwise the reported lag; None when there is nothing to tell (no position, or
    behind without a measurement yet: a standby that just connected).

    >>> lag_seconds(0.0, None), lag_seconds(0.0, 12.5), lag_seconds(8192.0, 1.5)
    (0.0, 0.0, 1.5)
    >>> lag_seconds(8192.0, None) is None, lag_seconds(None, 3.0) is None
    (True, True)
    """
    if behind_bytes is None:
        return None
    if behind_bytes <= 0:
        return 0.0
    if reported is None:
        return None
    return max(0.0, reported)


def standby_replay_lag(received: float | None, replayed: float | None,
                       since_replay: float | None) -> float | None:
    """Seconds a standby's replay is behind, as the standby itself can tell.

    0 when it has replayed everything it received; otherwise the time since the last
    replayed transaction committed on the primary (an upper bound: the first record not
    replayed yet is at least that recent). None when nothing was ever replayed.

    >>> standby_replay_lag(100.0, 100.0, 3600.0), standby_replay_lag(200.0, 100.0, 42.0)
    (0.0, 42.0)
    >>> standby_replay_lag(None, 100.0, 7.0), standby_replay_lag(200.0, 100.0, None) is None
    (7.0, True)
    """
    if received is not None and replayed is not None and replayed >= received:
        return 0.0
    if since_replay is None:
        return None
    return max(0.0, since_replay)


def bytes_behind(value: Any) -> float | None:
    """A distance in bytes from pg_wal_lsn_diff (numeric), never negative; None if unknown.

    >>> bytes_behind(600), bytes_behind(-8), bytes_behind(None) is None
    (600.0, 0.0, True)
    """
    if value is None:
        return None
    return max(0.0, float(value))


@dataclass(frozen=True, slots=True)
class StandbyLag:
    """The worst lag of the walsenders that share one label set."""

    bytes: Mapping[str, float]  # kind -> bytes behind
    seconds: Mapping[str, float]  # kind -> seconds behind
    senders: int


def standby_key(row: Mapping[str, Any]) -> StandbyKey:
    """The labels of a pg_stat_replication row: no pid or port, so a reconnecting standby
    keeps its series. An empty application_name shows as ``(none)``, a Unix-socket client
    (NULL client_addr) as ``(local)``.

    >>> standby_key({"application_name": "", "client_addr": None, "state": "streaming",
    ...              "sync_state": "async"})
    ('(none)', '(local)', 'streaming', 'async')
    """
    return (row["application_name"] or "(none)", row["client_addr"] or "(local)",
            row["state"] or "(unknown)", row["sync_state"] or "(unknown)")


def standby_lags(rows: Iterable[Mapping[str, Any]]) -> dict[StandbyKey, StandbyLag]:
    """Per label set, the largest lag of its walsenders (two standbys with one
    application_name on one host would otherwise be one series twice).

    Each row holds ``<kind>_bytes``, pg_wal_lsn_diff(pg_current_wal_lsn(), <kind>_lsn),
    and the ``<kind>_lag`` seconds pg_stat_replication reports. A stage without a position
    (a base backup's walsender) has no value.
    """
    out: dict[StandbyKey, StandbyLag] = {}
    for row in rows:
        key = standby_key(row)
        nbytes: dict[str, float] = {}
        seconds: dict[str, float] = {}
        for kind in LAG_KINDS:
            distance = bytes_behind(row[f"{kind}_bytes"])
            if distance is None:
                continue
            nbytes[kind] = distance
            if kind in LAG_TIME_KINDS:
                lag = lag_seconds(distance, row[f"{kind}_lag"])
                if lag is not None:
                    seconds[kind] = lag
        known = out.get(key)
        if known is not None:
            nbytes = _worst(known.bytes, nbytes)
            seconds = _worst(known.seconds, seconds)
        out[key] = StandbyLag(nbytes, seconds, (known.senders if known else 0) + 1)
    return out


def _worst(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    return {k: max(v for v in (a.get(k), b.get(k)) if v is not None) for k in {*a, *b}}


def pause_state(state: str | None, paused: bool | None) -> str:
    """One of :data:`PAUSE_STATES` from pg_get_wal_replay_pause_state() (14+) or, on 13,
    pg_is_wal_replay_paused().

    >>> pause_state("pause requested", None), pause_state(None, True), pause_state(None, False)
    ('pause_requested', 'paused', 'not_paused')
    """
    if state:
        return state.replace(" ", "_")
    return "paused" if paused else "not_paused"


@dataclass
class ReplicationState:
    """What the agent remembers per target between polls."""

    role: str | None = None  # the role seen at the last successful poll
    role_changes: int = 0
    inactive_since: dict[str, float] = field(default_factory=dict)  # slot -> first seen

    def observe_role(self, role: str) -> None:
        """Count a change of role (a failover or switchover seen from this target). The
        first role seen after the agent starts is the baseline, not a change."""
        if self.role is not None and role != self.role:
            self.role_changes += 1
        self.role = role

    def inactive_for(self, slots: Iterable[Mapping[str, Any]], now: float) -> dict[str, float]:
        """Seconds each slot has been inactive (0 while active).

        The server's ``inactive_since`` (17+) when it has one; otherwise since the agent
        first saw the slot inactive (so at most the agent's uptime: a restart of the agent
        starts the count again). Slots that are gone or active again are forgotten.

        >>> state = ReplicationState()
        >>> state.inactive_for([{"slot_name": "a", "active": False, "inactive_since": None}],
        ...                    100.0)
        {'a': 0.0}
        >>> state.inactive_for([{"slot_name": "a", "active": False, "inactive_since": None},
        ...                     {"slot_name": "b", "active": False, "inactive_since": 40.0}],
        ...                    160.0)
        {'a': 60.0, 'b': 120.0}
        >>> state.inactive_for([{"slot_name": "a", "active": True, "inactive_since": None}],
        ...                    170.0), state.inactive_since
        ({'a': 0.0}, {})
        """
        ages: dict[str, float] = {}
        seen: dict[str, float] = {}
        for slot in slots:
            name = slot["slot_name"]
            if slot["active"]:
                ages[name] = 0.0
                continue
            since = slot.get("inactive_since")
            if since is None:
                since = seen[name] = self.inactive_since.get(name, now)
            ages[name] = max(0.0, now - float(since))
        self.inactive_since = seen
        return ages
