"""The snapshot store: the latest result of every (target, collector), and nothing else.

Collections write here; scrapes read from here. ``put`` replaces one record under a
lock and bumps a version; rendering (``exposition.py``) is cached per version.
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
    """Thread-safe map of (target, collector) -> :class:`Sample`, plus per-target state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, str], Sample] = {}
        self._targets: dict[str, TargetState] = {}
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

    def record_success(self, target: str, collector: str, families: Sequence[Metric],
                       finished_at: float, duration: float) -> Sample:
        with self._lock:
            old = self._samples[(target, collector)]
            new = replace(old, families=tuple(families), finished_at=finished_at,
                          duration=duration, error=None, last_success_at=finished_at,
                          runs_total=old.runs_total + 1, fallback=())
            self._samples[(target, collector)] = new
            self.version += 1
        self._notify()
        return new

    def record_failure(self, target: str, collector: str, error: Reason, finished_at: float,
                       duration: float, fallback: Sequence[Metric] = ()) -> Sample:
        with self._lock:
            old = self._samples[(target, collector)]
            new = replace(old, finished_at=finished_at, duration=duration, error=error,
                          errors_total=old.errors_total + 1, runs_total=old.runs_total + 1,
                          fallback=tuple(fallback))
            self._samples[(target, collector)] = new
            self.version += 1
        self._notify()
        return new

    def record_skip(self, target: str, collector: str, reason: str) -> None:
        """The scheduler skipped a run (previous one still running, or missed its slot)."""
        with self._lock:
            old = self._samples[(target, collector)]
            counts = dict(old.skipped)
            counts[reason] = counts.get(reason, 0) + 1
            self._samples[(target, collector)] = replace(old, skipped=tuple(sorted(counts.items())))
            self.version += 1

    def set_target(self, name: str, *, up: bool, server_version: str = "",
                   error: Reason | None = None) -> None:
        with self._lock:
            old = self._targets[name]
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
