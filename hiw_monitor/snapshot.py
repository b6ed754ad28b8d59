"""The snapshot store: the latest result of every (target, collector), and nothing else.

Collections write here; scrapes read from here. ``put`` replaces one record under a
lock and bumps a version; rendering (``exposition.py``) is cached per version.

A target removed from the fleet (discovery) takes its records with it
(:meth:`SnapshotStore.remove_target`); a run of it still in flight then records nothing.
Families that belong to the agent rather than to a (target, collector) record (the
targets' ``hiw_target_info``, the discovery and shard self-metrics) are kept by key
(:meth:`SnapshotStore.set_agent_families`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from prometheus_client.core import Metric

from hiw_monitor.errors import Reason


@dataclass(frozen=True, slots=True)
class Sample:
    """The outcome of the latest run of one collector on one target.

    ``families`` are those of the last *successful* run: a failed run keeps them (until
    they go stale) and records its error, so one timeout does not blank a dashboard.
    ``fallback`` is what a failing collector still reports once they are stale (see
    :meth:`served`).
    """

    target: str
    collector: str
    interval: float
    stale_after: float
    families: tuple[Metric, ...] = ()
    finished_at: float | None = None  # wall clock of the latest run's end
    duration: float = 0.0
    error: Reason | None = None
    last_success_at: float | None = None
    errors_total: int = 0
    runs_total: int = 0
    skipped: tuple[tuple[str, int], ...] = ()  # (reason, count): runs the scheduler skipped
    fallback: tuple[Metric, ...] = ()  # served instead of stale ``families`` while runs fail

    @property
    def ok(self) -> bool:
        return self.finished_at is not None and self.error is None

    def fresh(self, now: float) -> bool:
        """True while the last success is recent enough for its series to be served."""
        return self.last_success_at is not None and now - self.last_success_at <= self.stale_after

    def served(self, now: float) -> tuple[Metric, ...]:
        """The families a scrape shows at ``now``.

        The last good families while they are fresh, even when the latest runs failed:
        one failed poll (busy, timeout, lock timeout, a target briefly down) changes
        nothing but the self-metrics. Once they are stale, a failing collector's
        ``fallback`` (e.g. backups reported ``unknown``), else nothing.
        """
        if self.fresh(now):
            return self.families
        return self.fallback if self.error is not None else ()


@dataclass(frozen=True, slots=True)
class TargetState:
    name: str
    dsn: str  # redacted
    up: bool = False
    server_version: str = ""
    error: Reason | None = None
    checked: bool = False  # a connection was tried: before that, up is not known


class SnapshotStore:
    """Thread-safe map of (target, collector) -> :class:`Sample`, plus per-target state
    and the agent's own families."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, str], Sample] = {}
        self._targets: dict[str, TargetState] = {}
        self._agent: dict[str, tuple[Metric, ...]] = {}  # key -> families (see set_agent_...)
        self._listeners: list[Callable[[], None]] = []
        self.version = 0

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (in the collecting thread) after every recorded run."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def register(self, target: str, dsn: str, collector: str, interval: float,
                 stale_after: float) -> None:
        """Declare a (target, collector) pair before its first run, so it shows as pending."""
        with self._lock:
            self._targets.setdefault(target, TargetState(target, dsn))
            self._samples.setdefault((target, collector),
                                     Sample(target, collector, interval, stale_after))
            self.version += 1

    def remove_target(self, name: str) -> None:
        """Forget a target removed from the fleet: its state and every record of it. A
        run of it still in flight records nothing afterwards (see :meth:`record_success`)."""
        with self._lock:
            removed = self._targets.pop(name, None) is not None
            for key in [key for key in self._samples if key[0] == name]:
                del self._samples[key]
                removed = True
            if removed:
                self.version += 1

    def record_success(self, target: str, collector: str, families: Sequence[Metric],
                       finished_at: float, duration: float) -> Sample:
        """Record a successful run; returns the new record (of a pair not registered,
        i.e. a target removed while it ran: returned, not stored)."""
        with self._lock:
            old = self._samples.get((target, collector))
            new = replace(old or Sample(target, collector, 0.0, 0.0), families=tuple(families),
                          finished_at=finished_at, duration=duration, error=None,
                          last_success_at=finished_at,
                          runs_total=(old.runs_total if old else 0) + 1, fallback=())
            if old is None:
                return new
            self._samples[(target, collector)] = new
            self.version += 1
        self._notify()
        return new

    def record_failure(self, target: str, collector: str, error: Reason, finished_at: float,
                       duration: float, fallback: Sequence[Metric] = ()) -> Sample:
        """Record a failed run (of a pair not registered: returned, not stored)."""
        with self._lock:
            old = self._samples.get((target, collector))
            new = replace(old or Sample(target, collector, 0.0, 0.0), finished_at=finished_at,
                          duration=duration, error=error,
                          errors_total=(old.errors_total if old else 0) + 1,
                          runs_total=(old.runs_total if old else 0) + 1,
                          fallback=tuple(fallback))
            if old is None:
                return new
            self._samples[(target, collector)] = new
            self.version += 1
        self._notify()
        return new

    def record_skip(self, target: str, collector: str, reason: str) -> None:
        """The scheduler skipped a run (previous one still running, or missed its slot)."""
        with self._lock:
            old = self._samples.get((target, collector))
            if old is None:  # removed meanwhile
                return
            counts = dict(old.skipped)
            counts[reason] = counts.get(reason, 0) + 1
            self._samples[(target, collector)] = replace(old, skipped=tuple(sorted(counts.items())))
            self.version += 1

    def set_target(self, name: str, *, up: bool, server_version: str = "",
                   error: Reason | None = None) -> None:
        with self._lock:
            old = self._targets.get(name)
            if old is None:  # removed while its run was in flight
                return
            new = replace(old, up=up, server_version=server_version or old.server_version,
                          error=error, checked=True)
            if new != old:
                self._targets[name] = new
                self.version += 1

    def view(self) -> tuple[int, tuple[TargetState, ...], tuple[Sample, ...]]:
        """A consistent copy: (version, targets, samples)."""
        with self._lock:
            return (self.version, tuple(self._targets.values()),
                    tuple(self._samples.values()))

    def set_agent_families(self, key: str, families: Sequence[Metric]) -> None:
        """Replace the agent's own families under ``key`` (e.g. ``targets``:
        hiw_target_info; ``discovery``: the discovery self-metrics); none removes them."""
        with self._lock:
            if self._agent.get(key, ()) == tuple(families):
                return
            if families:
                self._agent[key] = tuple(families)
            elif self._agent.pop(key, None) is None:
                return
            self.version += 1

    def agent_families(self) -> tuple[Metric, ...]:
        """The agent's own families, every key's, in the order the keys were first set."""
        with self._lock:
            return tuple(family for families in self._agent.values() for family in families)
