"""Scheduling: one APScheduler job per (target, collector), each at its own interval,
whose runs go to a :class:`~hiw_monitor.pool.FairPool` (one run per target at a time,
targets served round-robin: a stalled target holds one worker, never the others).

``coalesce=True`` (a backlog runs once), ``misfire_grace_time`` sized to the interval
(APScheduler 3's default of 1 s silently skips runs on a busy machine), a small jitter,
and a first run for every job in the first seconds after start. A run still waiting in
its target's queue when it comes due again is not queued twice (counted as skipped,
``still_running``).

The fleet can change while the agent runs (``file_sd`` discovery, re-read when its files
change and on SIGHUP: :meth:`Agent.reload`): an added target gets its jobs, a removed one
loses its jobs, its waiting runs, its records and its connection, and a changed one
(other connection parameters) is removed and added again; every other target keeps its
connection, collector states, records and health windows as they are. A removed or
replaced target is closed by its own queue in the pool, after its run in flight (cancelled)
has ended, so the run never races the close, and a replacing target's records are
registered only then, so a late result of the old connection never lands on the new one.
With a ``shard``, the agent watches only the targets its shard owns (hiw_monitor/shard.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.core import GaugeMetricFamily, Metric

from hiw_monitor import discovery
from hiw_monitor.collect import DatabaseStates, run_collection
from hiw_monitor.collectors import PGBOUNCER_NAMES, with_custom
from hiw_monitor.config import PGBOUNCER, CollectorSettings, Config, TargetConfig
from hiw_monitor.health import Health
from hiw_monitor.pool import FairPool
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

log = structlog.get_logger("hiw_monitor.scheduler")
MAX_WORKERS = 16
# The pool item that closes a target's retired connections (after its run in flight):
# not a collector name (those are identifiers).
_RETIRE = "<retire>"


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload changed: target names added, changed (replaced) and removed."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


class Agent:
    """Targets + scheduler + store: everything ``run`` and ``demo`` start and stop."""

    def __init__(self, config: Config, store: SnapshotStore | None = None) -> None:
        self.config = config
        self.store = store or SnapshotStore()
        # the built-in collectors and the user-defined ones, by name
        self.collectors = with_custom(config.custom)
        self._job_keys: dict[str, tuple[str, str]] = {}  # job id -> (target, collector)
        # per-(target, collector) memory of the collectors that keep some (deltas, windows)
        self.states: dict[tuple[str, str], Any] = {}
        self.heartbeat = time.monotonic()
        self._scheduler: BackgroundScheduler | None = None
        self._pool: FairPool | None = None
        # the review's checks on other collectors' results and the health score, fed by
        # every recorded run (before the exposition renders it)
        review = config.collectors.get("review")
        self.health = Health(self.store, review.options if review is not None else None)
        self.store.subscribe(self.health.observe)
        # reconfiguration (reload) against start and stop; never held while waiting on
        # the pool's workers, which take it to close retired targets
        self._lock = threading.RLock()
        self._stopped = False
        self._wake = threading.Event()  # a reload was asked for (SIGHUP)
        self._watcher: threading.Thread | None = None
        self._retiring: dict[str, list[Target]] = {}  # name -> removed, not yet closed
        self._pending: dict[str, Target] = {}  # name -> replacing target, not registered
        self._labels: dict[str, tuple[tuple[str, str], ...]] = {}  # hiw_target_info's
        self._owned: int | None = None  # targets owned, as last logged
        self.discovery = discovery.from_config(config)
        self.targets: list[Target] = []
        self._by_name: dict[str, Target] = {}
        self._apply(self._wanted(force=True))

    def collectors_of(self, target: Target) -> tuple[CollectorSettings, ...]:
        """The enabled collectors that run on ``target``: the PgBouncer ones on a
        pgbouncer target, every other one (built-in or user-defined) on a PostgreSQL one."""
        console = target.kind == PGBOUNCER
        return tuple(c for c in self.config.enabled_collectors
                     if (c.name in PGBOUNCER_NAMES) == console)

    def jobs(self) -> Sequence[tuple[Target, str]]:
        return [(t, c.name) for t in self.targets for c in self.collectors_of(t)]

    # --- the fleet: which targets, and changing them ----------------------------------

    def _wanted(self, force: bool) -> list[TargetConfig]:
        """The config file's targets, then the discovered ones (``force``: every file
        read again), those this agent's shard owns."""
        found = [*self.config.targets,
                 *(self.discovery.scan(force) if self.discovery is not None else ())]
        default = self.config.databases  # the top-level databases: of those without one
        if default is not None:
            found = [t if t.databases is not None or t.kind == PGBOUNCER
                     else dataclasses.replace(t, databases=default) for t in found]
        shard = self.config.shard
        owned = found if shard is None else [t for t in found if shard.owns(t.name)]
        if shard is not None and len(owned) != self._owned:
            log.info("shard_targets", shard=str(shard), owned=len(owned), known=len(found))
        self._owned = len(owned)
        return owned

    def reload(self, force: bool = True) -> Changes:
        """Look at the discovery files again (``force``: read every one, as on SIGHUP;
        else only the new and changed ones) and apply what changed."""
        with self._lock:
            if self._stopped or self.discovery is None:
                return Changes()
            return self._apply(self._wanted(force))

    def request_reload(self) -> None:
        """Ask for a reload (what SIGHUP does): the discovery thread does it now. Safe in
        a signal handler: it only sets an event."""
        self._wake.set()

    def _apply(self, wanted: Sequence[TargetConfig]) -> Changes:
        current = self._by_name
        by_name = {t.name: t for t in wanted}
        removed = tuple(name for name in current if name not in by_name)
        changed = tuple(t.name for t in wanted if t.name in current and
                        current[t.name].config.connection() != t.connection())
        added = tuple(t.name for t in wanted if t.name not in current)
        for name in (*removed, *changed):
            self._retire(current[name])
        targets: list[Target] = []
        fresh: list[Target] = []
        for config in wanted:
            known = current.get(config.name)
            if known is not None and config.name not in changed:
                targets.append(known)
                continue
            target = Target(config, self.config.connection)
            for settings in self.collectors_of(target):
                collector = self.collectors[settings.name]
                if collector.per_database:  # one state per database, made when collected
                    self.states[(target.name, settings.name)] = DatabaseStates(
                        collector.new_state)
                elif collector.new_state is not None:
                    self.states[(target.name, settings.name)] = collector.new_state()
            if target.name in self._retiring:
                self._pending[target.name] = target  # registered once the old one is closed
            else:
                self._register(target)
            targets.append(target)
            fresh.append(target)
        self.targets, self._by_name = targets, {t.name: t for t in targets}
        self._labels = {t.name: t.labels for t in wanted}
        self.health.pgbouncer_targets = frozenset(t.name for t in targets if t.kind == PGBOUNCER)
        self.health.has_pgbouncer = bool(self.health.pgbouncer_targets)
        self._schedule(fresh)
        self._publish()
        changes = Changes(added, changed, removed)
        if changes and self._scheduler is not None:
            log.info("targets_changed", added=list(added), changed=list(changed),
                     removed=list(removed), targets=len(targets))
        return changes

    def _register(self, target: Target) -> None:
        """Declare the target's records (it shows as pending until its first runs)."""
        self.health.forget(target.name)
        for settings in self.collectors_of(target):
            self.store.register(target.name, target.redacted, settings.name,
                                settings.interval, settings.stale_after)

    def _retire(self, target: Target) -> None:
        """Take a removed (or replaced) target out: its jobs, waiting runs, states,
        records and health window now; its connection once its run in flight is over."""
        name = target.name
        for settings in self.collectors_of(target):
            job = f"{name}/{settings.name}"
            self._job_keys.pop(job, None)
            self.states.pop((name, settings.name), None)
            if self._scheduler is not None:
                with contextlib.suppress(JobLookupError):  # not scheduled yet
                    self._scheduler.remove_job(job)
        self._pending.pop(name, None)
        self.store.remove_target(name)
        self.health.forget(name)
        self._retiring.setdefault(name, []).append(target)
        pool = self._pool
        if pool is None:
            self._close_retired(name)
            return
        pool.forget(name)
        if name in pool.busy():  # end its run in flight soon (cancel waits up to 2 s)
            threading.Thread(target=target.cancel, name=f"hiw-cancel-{name}"[:40],
                             daemon=True).start()
        # behind the run in flight, if any (a target's items never overlap); False when
        # one is already queued (it closes every retired one) or the pool is stopping
        # (stop() closes them)
        pool.submit(name, _RETIRE)

    def _close_retired(self, name: str) -> None:
        """Close the retired targets of ``name``; then register the one replacing them."""
        with self._lock:
            retired = self._retiring.pop(name, [])
            pending = self._pending.pop(name, None)
            if pending is not None and self._by_name.get(name) is pending:
                self._register(pending)
        for target in retired:
            target.close()

    def _schedule(self, targets: Iterable[Target]) -> None:
        """Add the jobs of ``targets`` (once started), first runs spread over up to 2 s."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        pairs = [(t, c) for t in targets for c in self.collectors_of(t)]
        start = datetime.now(UTC)
        for index, (target, settings) in enumerate(pairs):
            # spread first runs over up to 2 s so start-up is not one burst
            first = start + timedelta(seconds=min(2.0, settings.interval) * index / len(pairs))
            job = f"{target.name}/{settings.name}"
            self._job_keys[job] = (target.name, settings.name)
            scheduler.add_job(
                self._due, IntervalTrigger(seconds=settings.interval,
                                           jitter=min(1.0, settings.interval * 0.05)),
                args=(target.name, settings.name), id=job, name=job, replace_existing=True,
                next_run_time=first, misfire_grace_time=max(1, int(settings.interval)),
            )

    def _publish(self) -> None:
        """The agent's own families: hiw_target_info, discovery's, the shard's."""
        # one family, each target with its own label names (Metric, not a *MetricFamily,
        # whose label names are fixed)
        info = Metric("hiw_target_info", "Always 1: a watched target, with its labels "
                      "from the config file or its discovery file (those that are not "
                      "connection settings).", "gauge")
        for target in self.targets:
            info.add_sample("hiw_target_info", {
                "target": target.name, **dict(self._labels.get(target.name, ()))}, 1.0)
        self.store.set_agent_families("targets", [info])
        if self.discovery is not None:
            self.store.set_agent_families("discovery", self.discovery.families())
        shard = self.config.shard
        if shard is not None:
            owned = GaugeMetricFamily("hiw_shard_targets", "Targets this agent's shard "
                                      "(INDEX/COUNT) owns and watches.", labels=["shard"])
            owned.add_metric([str(shard)], float(len(self.targets)))
            self.store.set_agent_families("shard", [owned])

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            # the collections' workers: one per target at most (a target's runs never
            # overlap); a fleet that can grow (discovery) gets every worker from the start
            workers = MAX_WORKERS if self.discovery is not None else \
                max(1, min(MAX_WORKERS, len(self.targets)))
            self._pool = FairPool(workers, self._run_queued)
            # the scheduler's own threads only hand runs to the pool (and beat the heartbeat)
            scheduler = BackgroundScheduler(
                timezone=UTC,
                executors={"default": ThreadPoolExecutor(max_workers=2)},
                job_defaults={"max_instances": 1, "coalesce": True},
            )
            scheduler.add_listener(self._on_skip, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
            self._scheduler = scheduler
            self._schedule(self.targets)
            # the heartbeat job proves the scheduler loop is alive (for /healthz)
            scheduler.add_job(self._beat, IntervalTrigger(seconds=5), id="heartbeat",
                              next_run_time=datetime.now(UTC))
            scheduler.start()
            if self.discovery is not None:
                self._watcher = threading.Thread(target=self._watch, name="hiw-discovery",
                                                 daemon=True)
                self._watcher.start()
        log.info("scheduler_started", jobs=len(self._job_keys),
                 targets=[t.name for t in self.targets],
                 collectors=[c.name for c in self.config.enabled_collectors],
                 file_sd=list(self.config.file_sd.files) if self.config.file_sd else None,
                 shard=str(self.config.shard) if self.config.shard else None)

    def _watch(self) -> None:
        """The discovery thread: a look at the files every refresh_interval (the changed
        ones are read), and a full re-read when asked (SIGHUP)."""
        assert self.config.file_sd is not None
        every = self.config.file_sd.refresh_interval
        while not self._stopped:
            asked = self._wake.wait(every)
            self._wake.clear()
            if self._stopped:
                return
            if asked:
                log.info("reload", why="SIGHUP or asked", files=len(self.discovery.paths())
                         if self.discovery is not None else 0)
            try:
                self.reload(force=asked)
            except Exception:  # a bug here must not end discovery for good
                log.exception("discovery_bug")

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
        if name == _RETIRE:
            self._close_retired(target_name)
            return
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
        with self._lock:  # a reload in progress ends first; none starts after
            self._stopped = True
        self._wake.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.pause()
            if self._pool is not None:
                self._pool.stop(timeout=0)  # no more runs start
            for target in self._all_targets():
                target.cancel()
            self._scheduler.shutdown(wait=True)
            if self._pool is not None:
                self._pool.stop()  # join the workers once their runs were cancelled
        for target in self._all_targets():
            target.close()

    def _all_targets(self) -> list[Target]:
        """The watched targets and the retired ones not closed yet."""
        with self._lock:
            return [*self.targets, *(t for ts in self._retiring.values() for t in ts)]

