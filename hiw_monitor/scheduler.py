"""Scheduling: one APScheduler job per (target, collector), each at its own interval,
whose runs go to a :class:`~hiw_monitor.pool.FairPool` (one run per target at a time,
targets served round-robin: a stalled target holds one worker, never the others).

``coalesce=True`` (a backlog runs once), ``misfire_grace_time`` sized to the interval
(APScheduler 3's default of 1 s silently skips runs on a busy machine), a small jitter,
and a first run for every job in the first seconds after start. A run still waiting in
its target's queue when it comes due again is not queued twice (counted as skipped,
``still_running``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import PGBOUNCER_NAMES, with_custom
from hiw_monitor.config import PGBOUNCER, CollectorSettings, Config
from hiw_monitor.health import Health
from hiw_monitor.pool import FairPool
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

log = structlog.get_logger("hiw_monitor.scheduler")
MAX_WORKERS = 16


class Agent:
    """Targets + scheduler + store: everything ``run`` and ``demo`` start and stop."""

    def __init__(self, config: Config, store: SnapshotStore | None = None) -> None:
        self.config = config
        self.store = store or SnapshotStore()
        self.targets = [Target(t, config.connection) for t in config.targets]
        # the built-in collectors and the user-defined ones, by name
        self.collectors = with_custom(config.custom)
        self._job_keys: dict[str, tuple[str, str]] = {}  # job id -> (target, collector)
        # per-(target, collector) memory of the collectors that keep some (deltas, windows)
        self.states: dict[tuple[str, str], Any] = {}
        for target in self.targets:
            for settings in self.collectors_of(target):
                new_state = self.collectors[settings.name].new_state
                if new_state is not None:
                    self.states[(target.name, settings.name)] = new_state()
        self.heartbeat = time.monotonic()
        self._scheduler: BackgroundScheduler | None = None
        self._pool: FairPool | None = None
        self._by_name = {t.name: t for t in self.targets}
        # the review's checks on other collectors' results and the health score, fed by
        # every recorded run (before the exposition renders it)
        review = config.collectors.get("review")
        self.health = Health(self.store, review.options if review is not None else None,
                             pgbouncer_targets=[t.name for t in self.targets
                                                if t.kind == PGBOUNCER])
        self.store.subscribe(self.health.observe)
        for target in self.targets:
            for settings in self.collectors_of(target):
                self.store.register(target.name, target.redacted, settings.name,
                                    settings.interval, settings.stale_after)

    def collectors_of(self, target: Target) -> tuple[CollectorSettings, ...]:
        """The enabled collectors that run on ``target``: the PgBouncer ones on a
        pgbouncer target, every other one (built-in or user-defined) on a PostgreSQL one."""
        console = target.kind == PGBOUNCER
        return tuple(c for c in self.config.enabled_collectors
                     if (c.name in PGBOUNCER_NAMES) == console)

    def jobs(self) -> Sequence[tuple[Target, str]]:
        return [(t, c.name) for t in self.targets for c in self.collectors_of(t)]

    def start(self) -> None:
        pairs = self.jobs()
        # the collections' workers: one per target at most (a target's runs never overlap)
        self._pool = FairPool(max(1, min(MAX_WORKERS, len(self.targets))), self._run_queued)
        # the scheduler's own threads only hand runs to the pool (and beat the heartbeat)
        scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=2)},
            job_defaults={"max_instances": 1, "coalesce": True},
        )
        scheduler.add_listener(self._on_skip, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        start = datetime.now(UTC)
        for index, (target, name) in enumerate(pairs):
            settings = self.config.collectors[name]
            # spread first runs over up to 2 s so start-up is not one burst
            first = start + timedelta(seconds=min(2.0, settings.interval) * index / len(pairs))
            self._job_keys[f"{target.name}/{name}"] = (target.name, name)
            scheduler.add_job(
                self._due, IntervalTrigger(seconds=settings.interval,
                                           jitter=min(1.0, settings.interval * 0.05)),
                args=(target.name, name), id=f"{target.name}/{name}",
                name=f"{target.name}/{name}",
                next_run_time=first, misfire_grace_time=max(1, int(settings.interval)),
            )
        # the heartbeat job proves the scheduler loop is alive (for /healthz)
        scheduler.add_job(self._beat, IntervalTrigger(seconds=5), id="heartbeat",
                          next_run_time=start)
        scheduler.start()
        self._scheduler = scheduler
        log.info("scheduler_started", jobs=len(pairs),
                 targets=[t.name for t in self.targets],
                 collectors=[c.name for c in self.config.enabled_collectors])

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    def alive(self) -> str | None:
        """Liveness: None while the scheduler is running and its heartbeat is fresh."""
        if self._scheduler is None or not self._scheduler.running:
            return "scheduler not running"
        age = time.monotonic() - self.heartbeat
        if age > 60:
            return f"scheduler heartbeat is {age:.0f}s old"
        return None

    def _due(self, target: str, name: str) -> None:
        """A job came due: queue its run (never twice while it still waits)."""
        pool = self._pool
        if pool is not None and not pool.submit(target, name):
            self.store.record_skip(target, name, "still_running")
            log.warning("collection_skipped", job=f"{target}/{name}", reason="still_running")

    def _run_queued(self, target_name: str, name: str) -> None:
        target = self._by_name.get(target_name)
        if target is not None:  # else removed while its run waited
            self.run_one(target, name)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """After :meth:`pause`: wait until no run is in flight or waiting."""
        return self._pool is None or self._pool.wait_idle(timeout)

    def pause(self) -> None:
        """No new runs come due (tests and tools); runs already queued still finish."""
        if self._scheduler is not None:
            self._scheduler.pause()

    def run_one(self, target: Target, name: str) -> None:
        run_collection(target, self.collectors[name], self.config.collectors[name], self.store,
                       self.states.get((target.name, name)))

    def collect_all_once(self) -> None:
        """One run of every enabled collector on every target, sequentially (``once``)."""
        for target, name in self.jobs():
            self.run_one(target, name)

    def _on_skip(self, event: JobExecutionEvent) -> None:
        reason = "missed" if event.code == EVENT_JOB_MISSED else "still_running"
        key = self._job_keys.get(event.job_id)
        if key is not None:
            self.store.record_skip(*key, reason)
        log.warning("collection_skipped", job=event.job_id, reason=reason)

    def stop(self) -> None:
        """Cancel queries in flight, wait for running jobs, close every connection."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()
            if self._pool is not None:
                self._pool.stop(timeout=0)  # no more runs start
            for target in self.targets:
                target.cancel()
            self._scheduler.shutdown(wait=True)
            if self._pool is not None:
                self._pool.stop()  # join the workers once their runs were cancelled
        for target in self.targets:
            target.close()
