"""The health of each target: the review checks evaluated from the other collectors'
results, the review collector's own findings, the score, and the measured SLAs.

Read only from the :class:`SnapshotStore` (what ``/metrics`` serves, with the same
staleness rules), never from the database: ``/health``, the status page, ``/metrics``
(``hiw_health_*`` and the metric checks' ``hiw_review_check_status``) and
``hiw-monitor review`` all call :meth:`Health.report`.

Besides the store it keeps two small windows per target, fed as collections land: the
connection utilisation (for the peak over ``peak_window``) and the p50/p95/p99 of the
statements collector over the last hour (the status page's chart).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from hiw_monitor import __version__
from hiw_monitor.collectors import review
from hiw_monitor.review.checks import BY_ID, CHECKS, SQL_CHECKS
from hiw_monitor.review.model import Finding, Score, Status, finding, score
from hiw_monitor.snapshot import Sample, SnapshotStore, TargetState
from hiw_monitor.units import format_duration

HISTORY_SECONDS = 3600.0
DEFAULT_OPTIONS: Mapping[str, Any] = {name: o.default for name, o in review.OPTIONS.items()}


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    at: float  # Unix time of the statements collection
    p50: float
    p95: float
    p99: float


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """Everything a person or a script reads about one target's health."""

    target: str
    up: bool
    server_version: str
    findings: tuple[Finding, ...]
    score: Score
    slas: Mapping[str, Mapping[str, Any]]
    backups: tuple[Mapping[str, Any], ...]
    latency: tuple[LatencyPoint, ...]  # the last hour, oldest first

    def failing(self) -> list[Finding]:
        return [f for f in self.findings if f.status in ("fail", "warn")]

    def critical_failures(self) -> list[Finding]:
        return [f for f in self.findings
                if f.status == "fail" and f.check.severity == "critical"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "up": self.up, "server_version": self.server_version,
            "score": self.score.value,
            "components": [{"name": c.name, "score": c.score, "weight": c.weight,
                            "checks": list(c.checks)} for c in self.score.components
                           if c.checks],
            "checks": [{**f.as_dict(), "points_lost": self.score.lost(f.check.id)}
                       for f in self.findings],
            "slas": {name: dict(value) for name, value in self.slas.items()},
            "backups": [dict(b) for b in self.backups],
            "latency_history": [{"at": p.at, "p50": _num(p.p50), "p95": _num(p.p95),
                                 "p99": _num(p.p99)} for p in self.latency],
        }


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


class _Families:
    """The served families of one target's collectors, by collector and metric name."""

    def __init__(self, samples: Sequence[Sample], now: float) -> None:
        self.samples = {s.collector: s for s in samples}
        self._by: dict[tuple[str, str], list[Any]] = {}
        for s in samples:
            for family in s.served(now):
                self._by.setdefault((s.collector, family.name), []).extend(family.samples)
        self.families = {s.collector: s.served(now) for s in samples}

    def values(self, collector: str, name: str, **labels: str) -> list[tuple[dict[str, str],
                                                                             float]]:
        return [(dict(s.labels), float(s.value)) for s in self._by.get((collector, name), ())
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def one(self, collector: str, name: str, **labels: str) -> float | None:
        found = self.values(collector, name, **labels)
        return found[0][1] if found else None

    def failing(self, collector: str) -> str | None:
        """The collector's latest error, if its latest run failed."""
        sample = self.samples.get(collector)
        if sample is None or sample.error is None:
            return None
        return f"the {collector} collector fails: {sample.error.code}: {sample.error.text}"

    def blind(self, collector: str) -> str | None:
        """Why ``collector``'s results are not there, or None when they are."""
        sample = self.samples.get(collector)
        if sample is None:
            return f"the {collector} collector is not enabled"
        if self.families.get(collector):
            return None
        if sample.error is not None:
            return f"the {collector} collector fails: {sample.error.code}: {sample.error.text}"
        if sample.finished_at is None:
            return f"the {collector} collector has not run yet"
        return f"the {collector} collector has no results"


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{format_duration(max(0.0, seconds))} ago"


# --- the checks evaluated from other collectors' results ------------------------------

def _backup_freshness(f: _Families) -> Finding:
    check = BY_ID["backup_freshness"]
    why = f.blind("backups")
    if why:
        return finding(check, "unknown", why)
    statuses = {labels["backup_name"]: labels["status"]
                for labels, value in f.values("backups", "hiw_backup_status") if value == 1}
    if not statuses:  # a collector failing from the start has seen no backup at all
        failing = f.failing("backups")
        if failing:
            return finding(check, "unknown", failing)
        return finding(check, "fail", "no backup is configured (or every configuration is "
                       "disabled)")
    bad = {name: s for name, s in statuses.items() if s != "healthy"}
    text = ", ".join(f"{name}: {s}" for name, s in sorted(bad.items()))
    if any(s in ("critical", "future", "unknown") for s in bad.values()):
        return finding(check, "fail", f"{len(bad)} of {len(statuses)} backups not healthy "
                       f"({text})", backups=len(statuses), unhealthy=len(bad))
    if bad:
        return finding(check, "warn", f"{len(bad)} of {len(statuses)} backups past the "
                       f"warning threshold ({text})", backups=len(statuses),
                       unhealthy=len(bad))
    return finding(check, "pass", f"all {len(statuses)} backups healthy",
                   backups=len(statuses), unhealthy=0)


def _backup_verification(f: _Families, options: Mapping[str, Any]) -> Finding:
    check = BY_ID["backup_verification"]
    why = f.blind("backups")
    if why:
        return finding(check, "unknown", why)
    verification = f.one("backups", "hiw_backup_restore_verification_configured")
    if verification is None:
        return finding(check, "unknown", f.failing("backups") or "no verification known yet")
    if verification == 0:
        return finding(check, "fail", "the backup log records no restore verification "
                       "(no verification column): restores are never tested")
    ages = {labels["backup_name"]: value
            for labels, value in f.values("backups", "hiw_backup_restore_test_age_seconds")}
    results = {labels["backup_name"]: value
               for labels, value in f.values("backups", "hiw_backup_restore_test_success")}
    failed = sorted(name for name, ok in results.items() if ok == 0)
    if failed:
        return finding(check, "fail", "the newest restore test failed for "
                       + ", ".join(failed) + ": that backup cannot be restored",
                       failed=len(failed))
    period = float(options["restore_test_period"])
    recent = sorted((age, name) for name, age in ages.items()
                    if results.get(name) == 1 and age <= period)
    if recent:
        age, name = recent[0]
        return finding(check, "pass", f"{name} restored successfully {_ago(age)}",
                       age_seconds=age)
    newest = min(ages.values()) if ages else None
    return finding(check, "fail", "no successful restore test in the last "
                   f"{format_duration(period)} (newest: {_ago(newest)})",
                   age_seconds=newest)


def _backup_rto(f: _Families) -> Finding:
    check = BY_ID["backup_rto"]
    why = f.blind("backups")
    if why:
        return finding(check, "unknown", why)
    met = {labels["backup_name"]: value for labels, value in
           f.values("backups", "hiw_backup_rto_met")}
    durations = {labels["backup_name"]: value for labels, value in
                 f.values("backups", "hiw_backup_restore_test_duration_seconds")}
    target = f.one("backups", "hiw_backup_rto_target_seconds")
    if not met:
        return finding(check, "unknown", f.failing("backups")
                       or "no verified restore with a duration recorded")
    verified = {labels["backup_name"]: value for labels, value in
                f.values("backups", "hiw_backup_restore_test_success")}
    # a failed restore is backup_verification's finding, not a slow one
    met = {name: ok for name, ok in met.items() if verified.get(name) != 0}
    if not met:
        return finding(check, "unknown", "no successful verified restore with a duration")
    slow = sorted(name for name, ok in met.items() if ok == 0)
    limit = format_duration(target) if target else "the RTO"
    if slow:
        shown = ", ".join(f"{n} ({format_duration(durations[n])})" if n in durations else n
                          for n in slow)
        return finding(check, "fail", f"restores slower than {limit}: {shown}")
    longest = max(durations.values()) if durations else None
    return finding(check, "pass", f"every verified restore within {limit}"
                   + (f" (longest {format_duration(longest)})" if longest else ""),
                   longest_seconds=longest)


def _wal_archiving(f: _Families) -> Finding:
    check = BY_ID["wal_archiving_enabled"]
    why = f.blind("wal_archiving")
    if why:
        return finding(check, "unknown", why)
    status = next((labels["status"] for labels, value in
                   f.values("wal_archiving", "hiw_wal_archiving_status") if value == 1), None)
    if status == "healthy":
        age = f.one("wal_archiving", "hiw_wal_last_archived_age_seconds")
        return finding(check, "pass", f"archiving; last WAL archived {_ago(age)}")
    if status == "failing":
        return finding(check, "fail", "archive_command is failing (newest failure after the "
                       "newest success): point-in-time recovery has a gap")
    return finding(check, "fail", "WAL archiving is off (archive_mode or archive_command "
                   "not set): no point-in-time recovery")


def _latency(f: _Families) -> Finding:
    check = BY_ID["latency_sla"]
    why = f.blind("statements")
    if why:
        return finding(check, "unknown", why)
    quantile = f.one("statements", "hiw_sla_query_latency_quantile") or 0.95
    target = f.one("statements", "hiw_sla_query_latency_target_seconds") or 0.1
    value = f.one("statements", "hiw_query_latency_seconds", quantile=f"{quantile:g}")
    label = f"p{quantile * 100:g}"
    if value is None or not math.isfinite(value):
        return finding(check, "unknown", "no calls in the latency window yet (it needs two "
                       "polls of pg_stat_statements with traffic between them)")
    shown = f"{label} {value * 1000:.1f} ms (SLA < {target * 1000:g} ms)"
    if value > target:
        return finding(check, "fail", shown, seconds=value)
    return finding(check, "pass", shown, seconds=value)


def _statements_loaded(f: _Families) -> Finding:
    check = BY_ID["pg_stat_statements_loaded"]
    sample = f.samples.get("statements")
    if sample is None:
        return finding(check, "unknown", "the statements collector is not enabled")
    if sample.error is not None and sample.error.code in (
            "not_preloaded", "extension_missing", "extension_outdated", "undefined_table",
            "undefined_function", "object_not_in_prerequisite_state"):
        return finding(check, "fail", sample.error.text)
    if f.families.get("statements"):
        return finding(check, "pass", "pg_stat_statements is preloaded and installed")
    return finding(check, "unknown", f.blind("statements") or "not run yet")


def _expected_indexes(f: _Families) -> Finding:
    check = BY_ID["expected_indexes"]
    why = f.blind("indexes")
    if why:
        return finding(check, "unknown", why)
    present = f.values("indexes", "hiw_expected_index_present")
    valid = {labels["index"]: value for labels, value in
             f.values("indexes", "hiw_expected_index_valid")}
    if not present:
        return finding(check, "pass", "no expected index configured", missing=0)
    missing = sorted(labels["index"] for labels, value in present if value == 0)
    invalid = sorted(labels["index"] for labels, value in present
                     if value == 1 and valid.get(labels["index"]) == 0)
    problems = []
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if invalid:
        problems.append(f"invalid (a failed CREATE INDEX CONCURRENTLY; drop and create "
                        f"again): {', '.join(invalid)}")
    if problems:
        return finding(check, "fail", f"{len(missing) + len(invalid)} of {len(present)} "
                       f"expected indexes: " + "; ".join(problems),
                       missing=len(missing), invalid=len(invalid))
    return finding(check, "pass", f"all {len(present)} expected indexes present and valid",
                   missing=0)


def _headroom(f: _Families, peak: float | None, options: Mapping[str, Any],
              window: float) -> Finding:
    check = BY_ID["connection_headroom"]
    why = f.blind("connections")
    if why or peak is None:
        return finding(check, "unknown", why or "no utilisation measured yet")
    baseline, limit = float(options["connection_baseline"]), float(options["connection_limit"])
    maximum = f.one("connections", "hiw_connections_max")
    now = f.one("connections", "hiw_connections_utilization_ratio")
    text = (f"peak {peak:.0%} of max_connections"
            + (f" ({maximum:g})" if maximum else "")
            + f" over the agent's last {format_duration(window)}"
            + (f", now {now:.0%}" if now is not None else "")
            + f"; baseline {baseline:.0%}")
    status: Status = "pass" if peak <= baseline else "warn" if peak <= limit else "fail"
    return finding(check, status, text, peak_ratio=peak)


def _pooling(has_pgbouncer: bool) -> Finding:
    check = BY_ID["connection_pooling"]
    if has_pgbouncer:
        return finding(check, "pass", "a PgBouncer target is watched by this agent")
    return finding(check, "warn", "no PgBouncer target in this agent's config: classroom "
                   "bursts reach PostgreSQL directly (the review's first high-priority item)")


def _autovacuum(f: _Families) -> Finding:
    check = BY_ID["autovacuum_enabled"]
    why = f.blind("vacuum")
    if why:
        return finding(check, "unknown", why)
    if f.one("vacuum", "hiw_autovacuum_enabled") == 0:
        return finding(check, "fail", "autovacuum (or track_counts) is off")
    off = int(f.one("vacuum", "hiw_vacuum_tables_autovacuum_disabled") or 0)
    if off:
        return finding(check, "warn", f"{off} table(s) with autovacuum_enabled = false",
                       tables=off)
    return finding(check, "pass", "autovacuum on, for every table", tables=0)


def _wraparound(f: _Families, options: Mapping[str, Any]) -> Finding:
    check = BY_ID["xid_wraparound"]
    why = f.blind("database")
    if why:
        return finding(check, "unknown", why)
    ratios = f.values("database", "hiw_database_xid_wraparound_ratio")
    if not ratios:
        return finding(check, "unknown", "no database visible")
    labels, worst = max(ratios, key=lambda item: item[1])
    text = f"oldest unfrozen XID at {worst:.1%} of the way to wraparound " \
        f"(database {labels.get('datname', '?')})"
    status: Status = "fail" if worst > options["xid_fail"] else \
        "warn" if worst > options["xid_warn"] else "pass"
    return finding(check, status, text, ratio=worst)


def _bloat(f: _Families, options: Mapping[str, Any]) -> Finding:
    check = BY_ID["table_bloat"]
    why = f.blind("bloat")
    if why:
        return finding(check, "unknown", why)
    wasted = {(labels["schema"], labels["table"]): value for labels, value in
              f.values("bloat", "hiw_table_bloat_bytes")}
    worst: list[tuple[float, str]] = []
    for labels, ratio in f.values("bloat", "hiw_table_bloat_ratio"):
        key = (labels["schema"], labels["table"])
        size = wasted.get(key, 0.0) / ratio if ratio > 0 else 0.0
        if size >= float(options["bloat_min_bytes"]):
            worst.append((ratio, f"{key[0]}.{key[1]}"))
    worst.sort(reverse=True)
    if not worst or worst[0][0] <= options["bloat_warn"]:
        big = float(options["bloat_min_bytes"]) / 1024 / 1024
        return finding(check, "pass", f"no table over {big:g} MB bloated beyond "
                       f"{options['bloat_warn']:.0%}")
    ratio, name = worst[0]
    status: Status = "fail" if ratio > options["bloat_fail"] else "warn"
    return finding(check, status, f"{name} is {ratio:.0%} bloat", ratio=ratio)


def _replication(f: _Families, options: Mapping[str, Any]) -> Finding | None:
    """None where there is no replication to judge (a lone primary expecting none)."""
    check = BY_ID["replication_healthy"]
    if f.blind("replication"):
        failing = f.failing("replication")
        # absent while off or not run yet; unknown while it cannot read
        return finding(check, "unknown", failing) if failing else None
    role = next((labels["role"] for labels, value in
                 f.values("replication", "hiw_server_role") if value == 1), None)
    limit = float(options["replication_lag_limit"])
    if role == "standby":
        streaming = f.one("replication", "hiw_standby_streaming")
        lag = f.one("replication", "hiw_standby_replay_lag_seconds")
        if streaming == 0:
            return finding(check, "fail", "this standby is not streaming from its primary")
        if lag is not None and lag > limit:
            return finding(check, "fail", f"replay lag {format_duration(lag)}", lag_seconds=lag)
        return finding(check, "pass", "standby streaming, replay lag "
                       + (format_duration(lag) if lag is not None else "unknown"),
                       lag_seconds=lag)
    expected = int(f.one("replication", "hiw_replication_standbys_expected") or 0)
    connected = int(f.one("replication", "hiw_replication_standbys_connected") or 0)
    if expected == 0 and connected == 0:
        return None
    lags = [value for labels, value in f.values("replication", "hiw_replication_lag_seconds",
                                                 kind="replay")]
    worst = max(lags) if lags else 0.0
    if connected < expected:
        return finding(check, "fail", f"{connected} of {expected} expected standbys streaming")
    if worst > limit:
        return finding(check, "fail", f"a standby's replay lag is {format_duration(worst)}",
                       lag_seconds=worst)
    return finding(check, "pass", f"{connected} standby(s) streaming, replay lag at most "
                   f"{format_duration(worst)}", lag_seconds=worst)


def _availability(state: TargetState, up_ratio: float | None, observed: float,
                  options: Mapping[str, Any]) -> Finding:
    check = BY_ID["availability"]
    target = float(options["availability_target"])
    if not state.checked:
        return finding(check, "unknown", "no connection attempted yet")
    if not state.up:
        why = f": {state.error.text}" if state.error else ""
        return finding(check, "fail", f"the database is down for the agent{why}",
                       ratio=up_ratio)
    if up_ratio is None or observed <= 0:
        return finding(check, "pass", "up", ratio=None)
    text = f"up {up_ratio:.3%} of the agent's last {format_duration(observed)} " \
        f"(SLA {target:.2%})"
    return finding(check, "pass" if up_ratio >= target else "warn", text, ratio=up_ratio)


# --- the health of every target ---------------------------------------------------------


@dataclass
class _Window:
    utilization: deque[tuple[float, float]] = field(default_factory=deque)
    latency: deque[LatencyPoint] = field(default_factory=deque)
    seen: dict[str, float] = field(default_factory=dict)  # collector -> last finished_at
    up_seconds: float = 0.0
    observed_seconds: float = 0.0
    last_at: float | None = None
    last_up: bool = False


class Health:
    """Evaluates every PostgreSQL target's health from the store (see the module doc)."""

    def __init__(self, store: SnapshotStore, options: Mapping[str, Any] | None = None, *,
                 pgbouncer_targets: Iterable[str] = (), has_pgbouncer: bool | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.pgbouncer_targets = frozenset(pgbouncer_targets)
        self.has_pgbouncer = bool(self.pgbouncer_targets) if has_pgbouncer is None \
            else has_pgbouncer
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._disabled = frozenset(self.options["disabled_checks"])
        # target -> (what its health rested on, its health, its families): see families()
        self._cache: dict[str, tuple[Any, TargetHealth, list[Metric]]] = {}

    # fed by the store after every recorded run (SnapshotStore.subscribe)
    def observe(self) -> None:
        now = self.clock()
        _, targets, samples = self.store.view()
        with self._lock:
            for t in targets:
                if not t.checked:  # before its first connection attempt: not yet known
                    continue
                window = self._windows.setdefault(t.name, _Window())
                if window.last_at is not None and now > window.last_at:
                    elapsed = now - window.last_at
                    window.observed_seconds += elapsed
                    window.up_seconds += elapsed if window.last_up else 0.0
                window.last_at, window.last_up = now, t.up
            for s in samples:
                if s.last_success_at is None or s.collector not in ("connections",
                                                                    "statements"):
                    continue
                window = self._windows.setdefault(s.target, _Window())
                if window.seen.get(s.collector) == s.last_success_at:
                    continue
                window.seen[s.collector] = s.last_success_at
                self._record(window, s, now)

    def forget(self, target: str) -> None:
        """Drop a target's windows (removed from the fleet, or replaced: a new connection
        starts a new availability and latency history)."""
        with self._lock:
            self._windows.pop(target, None)
            self._cache.pop(target, None)

    def _record(self, window: _Window, sample: Sample, now: float) -> None:
        values = {(f.name, tuple(sorted(x.labels.items()))): x.value
                  for f in sample.families for x in f.samples}
        if sample.collector == "connections":
            ratio = next((v for (name, _), v in values.items()
                          if name == "hiw_connections_utilization_ratio"), None)
            if ratio is not None:
                window.utilization.append((now, float(ratio)))
            horizon = now - float(self.options["peak_window"])
            while window.utilization and window.utilization[0][0] < horizon:
                window.utilization.popleft()
            return
        q = {dict(labels).get("quantile"): v for (name, labels), v in values.items()
             if name == "hiw_query_latency_seconds" and dict(labels).get("quantile")}
        if {"0.5", "0.95", "0.99"} <= set(q):
            window.latency.append(LatencyPoint(now, q["0.5"], q["0.95"], q["0.99"]))
        while window.latency and window.latency[0].at < now - HISTORY_SECONDS:
            window.latency.popleft()

    def report(self, now: float | None = None) -> list[TargetHealth]:
        """The health of every PostgreSQL target, in the store's order (each evaluated
        again only when what it rests on changed, as in :meth:`families`)."""
        return [health for health, _ in self._evaluate(now)]

    def _evaluate(self, now: float | None) -> list[tuple[TargetHealth, list[Metric]]]:
        """Every PostgreSQL target's health and families, from the cache where its inputs
        did not change; targets gone are forgotten."""
        now = self.clock() if now is None else now
        _, targets, samples = self.store.view()
        by_target: dict[str, list[Sample]] = {}
        for s in samples:
            by_target.setdefault(s.target, []).append(s)
        out: list[tuple[TargetHealth, list[Metric]]] = []
        kept: dict[str, tuple[Any, TargetHealth, list[Metric]]] = {}
        for state in targets:
            if state.name in self.pgbouncer_targets:
                continue
            mine = by_target.get(state.name, [])
            key = self._inputs(state, mine, now)
            cached = self._cache.get(state.name)
            if cached is None or cached[0] != key:
                health = self._target(state, mine, now)
                cached = (key, health, self._target_families(health, mine, now))
            kept[state.name] = cached
            out.append((cached[1], cached[2]))
        with self._lock:
            self._cache = kept
        return out

    def _target(self, state: TargetState, samples: Sequence[Sample], now: float
                ) -> TargetHealth:
        f = _Families(samples, now)
        o = self.options
        with self._lock:
            window = self._windows.get(state.name, _Window())
            peak = max((r for _, r in window.utilization), default=None)
            latency = tuple(window.latency)
            observed, up_seconds = window.observed_seconds, window.up_seconds
        up_ratio = up_seconds / observed if observed > 0 else None
        derived: list[Finding | None] = [
            _backup_freshness(f), _backup_verification(f, o), _backup_rto(f), _wal_archiving(f),
            _availability(state, up_ratio, observed, o), _latency(f), _statements_loaded(f),
            _expected_indexes(f), _headroom(f, peak, o, float(o["peak_window"])),
            _pooling(self.has_pgbouncer), _autovacuum(f), _wraparound(f, o), _bloat(f, o),
            _replication(f, o)]
        found = [x for x in derived if x is not None]
        found.extend(self._sql_findings(f))
        found = [x for x in found if x.check.id not in self._disabled]
        order = {c.id: i for i, c in enumerate(CHECKS)}
        found.sort(key=lambda x: order[x.check.id])
        return TargetHealth(
            target=state.name, up=state.up, server_version=state.server_version,
            findings=tuple(found), score=score(found),
            slas=self._slas(f, found, up_ratio, observed),
            backups=self._backups(f), latency=latency)

    def _sql_findings(self, f: _Families) -> list[Finding]:
        for family in f.families.get("review", ()):
            if isinstance(family, review.FindingsFamily):
                return list(family.findings)
        why = f.blind("review") or "no results"
        return [finding(c, "unknown", why) for c in SQL_CHECKS]

    def _slas(self, f: _Families, found: Sequence[Finding], up_ratio: float | None,
              observed: float) -> dict[str, dict[str, Any]]:
        latency = next((x for x in found if x.check.id == "latency_sla"), None)
        p95 = latency.measured.get("seconds") if latency else None
        rpo_age = f.one("backups", "hiw_backup_newest_success_age_seconds")
        rpo = f.one("backups", "hiw_backup_rpo_target_seconds") or 86400.0
        rto = f.one("backups", "hiw_backup_rto_target_seconds") or 7200.0
        restores = [v for _, v in f.values("backups", "hiw_backup_restore_test_duration_seconds")]
        target = float(self.options["availability_target"])
        return {
            "availability": {"recommended": target, "measured": up_ratio,
                             "window_seconds": observed,
                             "met": None if up_ratio is None else up_ratio >= target},
            "latency_p95": {"recommended_seconds": f.one(
                "statements", "hiw_sla_query_latency_target_seconds") or 0.1,
                "measured_seconds": p95,
                "met": None if latency is None or latency.status == "unknown"
                else latency.status == "pass"},
            "rpo": {"recommended_seconds": rpo, "measured_seconds": rpo_age,
                    "met": None if rpo_age is None else rpo_age < rpo},
            "rto": {"recommended_seconds": rto,
                    "measured_seconds": max(restores) if restores else None,
                    "met": None if not restores else max(restores) <= rto},
        }

    @staticmethod
    def _backups(f: _Families) -> tuple[dict[str, Any], ...]:
        ages = {labels["backup_name"]: value
                for labels, value in f.values("backups", "hiw_backup_age_seconds")}
        warn = {labels["backup_name"]: value for labels, value in
                f.values("backups", "hiw_backup_warning_threshold_seconds")}
        crit = {labels["backup_name"]: value for labels, value in
                f.values("backups", "hiw_backup_critical_threshold_seconds")}
        out = []
        for labels, value in f.values("backups", "hiw_backup_status"):
            if value != 1:
                continue
            name = labels["backup_name"]
            out.append({"name": name, "type": labels.get("type", ""),
                        "status": labels["status"], "age_seconds": ages.get(name),
                        "warning_after_seconds": warn.get(name),
                        "critical_after_seconds": crit.get(name)})
        return tuple(sorted(out, key=lambda b: b["name"]))

    # --- as metrics ---
    def families(self, now: float | None = None) -> list[Metric]:
        """``hiw_health_*`` and the metric checks' ``hiw_review_check_status`` (the SQL
        checks' come with the review collector's own results, or here as ``unknown``
        while it has none), one set of families per target.

        A target is evaluated again only when what its health rests on changed (one of
        its stored results, or their freshness, its state, its windows), so a fleet's
        cost per collection is one target's evaluation, not every target's."""
        return [family for _, families in self._evaluate(now) for family in families]

    def _inputs(self, state: TargetState, samples: Sequence[Sample], now: float) -> Any:
        """What one target's health rests on (see :meth:`families`)."""
        with self._lock:
            window = self._windows.get(state.name)
            windows = None if window is None else (
                len(window.latency), window.latency[-1] if window.latency else None,
                max((r for _, r in window.utilization), default=None),
                round(window.up_seconds / window.observed_seconds, 6)
                if window.observed_seconds > 0 else None,
                int(window.observed_seconds // 60))  # the window's length, per minute
        return (state, self.has_pgbouncer, windows,
                tuple((s.collector, id(s), s.fresh(now)) for s in samples))

    @staticmethod
    def _target_families(health: TargetHealth, samples: Sequence[Sample], now: float
                         ) -> list[Metric]:
        t = health.target
        score_f = GaugeMetricFamily("hiw_health_score", "Health score, 0 to 10 "
                                    "(docs/review.md).", labels=["target"])
        component_f = GaugeMetricFamily("hiw_health_component_score",
                                        "Health score per component, 0 to 10.",
                                        labels=["target", "component"])
        lost_f = GaugeMetricFamily("hiw_health_check_points_lost",
                                   "Points of the health score lost to the check.",
                                   labels=["target", "check"])
        if health.score.value is not None:
            score_f.add_metric([t], health.score.value)
        for c in health.score.components:
            if c.score is not None:
                component_f.add_metric([t, c.name], c.score)
        for loss in health.score.losses:
            lost_f.add_metric([t, loss.check], loss.points)
        review_sample = next((s for s in samples if s.collector == "review"), None)
        served = review_sample.served(now) if review_sample is not None else ()
        review_fresh = any(isinstance(x, review.FindingsFamily) for x in served)
        exported = [x for x in health.findings
                    if x.check.source == "metrics" or not review_fresh]
        return [score_f, component_f, lost_f, review.status_family(t, exported)]


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def document(reports: Sequence[TargetHealth], now: float) -> dict[str, Any]:
    """``/health``'s JSON: every target, and the worst score first for a quick look."""
    scores = [r.score.value for r in reports if r.score.value is not None]
    safe: dict[str, Any] = _json_safe({"version": __version__, "generated_at": now,
                       "score": min(scores) if scores else None,
                       "critical_failures": sum(len(r.critical_failures()) for r in reports),
                       "targets": [r.as_dict() for r in reports]})
    return safe
