"""The body of one collection: plan (once per connection), query, transform, store, and
one canonical log line. With ``Target``, the only place that runs SQL.

Every failure ends here as a recorded :class:`Reason`; nothing escapes to the scheduler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import structlog
from prometheus_client.core import GaugeMetricFamily, Metric

from hiw_monitor import memory
from hiw_monitor.collectors.base import (
    Collector,
    Context,
    Probe,
    Query,
    Result,
    Rows,
    SQLText,
    Step,
    families_series,
    merge_databases,
    with_datname,
)
from hiw_monitor.config import CollectorSettings
from hiw_monitor.errors import Reason, ReasonedError, TargetUnavailable, classify
from hiw_monitor.snapshot import Sample, SnapshotStore
from hiw_monitor.target import Target

log = structlog.get_logger("hiw_monitor.collect")


# A collector whose plan said it cannot run here looks again after this long (the app may
# create its table, an administrator the extension), besides at every reconnect.
REPLAN_SKIPPED_AFTER = 60.0
# Run failures that may mean the plan is out of date (a table dropped, a grant revoked,
# an extension removed): the next run plans again.
REPLAN_ON = frozenset({"undefined_table", "undefined_column", "undefined_function",
                       "undefined_object", "permission_denied", "extension_missing",
                       "not_preloaded", "extension_outdated", "invalid_schema"})


class Skipped(ReasonedError):  # noqa: N818 - a state, not a bug
    """The collector's plan says it cannot run on this server (until the next plan)."""


@dataclass(frozen=True, slots=True)
class Planned:
    """A collector's plan for one connection of one target (kept in ``Target.plans``)."""

    generation: int  # Target.generation it was made on
    options: Mapping[str, Any]  # the options it was made with (a reload plans again)
    made_at: float  # time.monotonic()
    plan: Any = None
    skip: Reason | None = None  # why the collector cannot run here, if it cannot
    recheck: bool = False  # made again like a skip (PlanStep.recheck)

    def valid(self, target: Target, options: Mapping[str, Any], now: float) -> bool:
        if self.generation != target.generation or self.options is not options:
            return False
        lasting = self.skip is None and not self.recheck
        return lasting or now - self.made_at < REPLAN_SKIPPED_AFTER


def _execute(cur: Any, text: SQLText, params: Any = None) -> Rows:
    if isinstance(text, str) and params is None:
        text = text.encode()  # no parameters: a literal % stays a %
    cur.execute(text, params)
    if cur.description is None:  # a statement without a result set
        return Result()
    return Result(cur.fetchall(), [column.name for column in cur.description])


def _probe(cur: Any, text: SQLText, probe: Probe, step: Step) -> Rows:
    """Each parameter set in its own savepoint and timeout, within the probe's budget."""
    options = step.options
    budget, timeout = probe.budget(options), probe.timeout(options)
    cur.execute("SELECT pg_catalog.current_setting('statement_timeout') AS timeout")
    restore = cur.fetchone()["timeout"]
    started = time.monotonic()
    out: list[dict[str, Any]] = []
    try:
        for params in probe.each(step):
            remaining = budget - (time.monotonic() - started)
            if remaining <= 0.05:
                break
            outcome, row = Target.probe(cur, text, params, min(timeout, remaining))
            out.append({**params, **(row or {}), "outcome": outcome})
    finally:  # SET LOCAL in a released savepoint lasts to the end of the transaction
        cur.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)", [restore])
    return out


def run_queries(cur: Any, queries: Mapping[str, Query], step: Step) -> dict[str, Rows]:
    """Run declared queries in order; each sees the rows of those before it."""
    rows: dict[str, Rows] = {}
    for name, query in queries.items():
        here = replace(step, rows=rows)
        text = query.text(here) if query.applies(step.server) else None
        if text is None:
            rows[name] = []
        elif query.probe is not None:
            rows[name] = _probe(cur, text, query.probe, here)
        elif query.params is None:
            rows[name] = _execute(cur, text)
        else:
            params = query.params(here)
            rows[name] = [] if params is None else _execute(cur, text, params)
    return rows


def _plan(target: Target, collector: Collector, settings: CollectorSettings, cur: Any,
          step: Step) -> Any:
    """The collector's plan for this connection: made once, logged when it changes."""
    if collector.plan is None:
        return None
    options = settings.options
    now = time.monotonic()
    known: Planned | None = target.plans.get(collector.name)
    if known is None or not known.valid(target, options, now):
        rows = run_queries(cur, collector.plan.queries, step)
        try:
            plan = collector.plan.decide(rows, step)
            recheck = collector.plan.recheck is not None and collector.plan.recheck(plan)
            planned = Planned(target.generation, options, now, plan=plan, recheck=recheck)
        except ReasonedError as exc:
            planned = Planned(target.generation, options, now, skip=exc.reason)
        if known is None or known.skip != planned.skip:
            if planned.skip is None:
                log.info("collector_planned", target=target.name, collector=collector.name,
                         outcome="installed")
            else:
                log.warning("collector_planned", target=target.name, collector=collector.name,
                            outcome="skipped", reason=planned.skip.code,
                            error=planned.skip.text)
        target.plans[collector.name] = known = planned
    if known.skip is not None:
        raise Skipped(known.skip)
    return known.plan


def plan_of(target: Target, collector: Collector) -> Planned | None:
    """The plan the collector has on this target now (for the dry run and the pages)."""
    known: Planned | None = target.plans.get(collector.name)
    return known if known is not None and known.generation == target.generation else None


def _explain(target: Target, collector: Collector, settings: CollectorSettings, state: Any
             ) -> Reason | None:
    """After a failure that may mean the plan is out of date: the reason a new plan gives
    (with its fix) when it says the collector cannot run here, else None. Not kept: the
    next run plans again, as after any such failure."""
    if collector.plan is None or target.server is None:
        return None
    step = Step(options=settings.options, server=target.server, state=state)
    try:
        with target.transaction(settings.timeout) as cur:
            rows = run_queries(cur, collector.plan.queries, step)
        collector.plan.decide(rows, step)
    except ReasonedError as exc:
        return None if isinstance(exc, TargetUnavailable) else exc.reason
    except (psycopg.Error, OSError):  # the failure being explained stands
        return None
    except Exception:
        log.exception("collector_bug", target=target.name, collector=collector.name,
                      step="explain")
    return None


def _query(target: Target, collector: Collector, settings: CollectorSettings, state: Any
           ) -> tuple[Mapping[str, Rows], Context]:
    with target.transaction(settings.timeout) as cur:
        server = target.server
        assert server is not None  # set by a successful connect
        if server.version_num < collector.min_version:
            raise TargetUnavailable(Reason(
                "unsupported_version",
                f"{collector.name} needs PostgreSQL {collector.min_version // 10000} or newer"))
        options = settings.options
        if collector.session is not None:
            for name, value in collector.session(options).items():
                cur.execute("SELECT pg_catalog.set_config(%s, %s, true)", [name, value])
        now = target.clock(cur)
        step = Step(options=options, server=server, state=state, now=now)
        plan = _plan(target, collector, settings, cur, step)
        ctx = Context(target=target.name, server=server, options=options,
                      now=now, state=state, plan=plan)
        if collector.fetch is not None:
            return collector.fetch(cur, ctx), ctx
        rows = run_queries(cur, collector.declared(), replace(step, plan=plan))
    return rows, ctx


def _attempt(target: Target, collector: Collector, settings: CollectorSettings, state: Any
             ) -> tuple[list[Any], Reason | None]:
    """One collection on one connection: the families, or why there are none. The caller
    holds the target's lock."""
    try:
        rows, ctx = _query(target, collector, settings, state)
        return list(collector.transform(rows, ctx)), None
    except (psycopg.Error, ReasonedError, OSError) as exc:
        error = classify(exc)
        if error.code in REPLAN_ON and not isinstance(exc, Skipped):
            target.plans.pop(collector.name, None)  # out of date? plan again
            error = _explain(target, collector, settings, state) or error
        return [], error
    except Exception as exc:
        log.exception("collector_bug", target=target.name, collector=collector.name)
        return [], classify(exc)


class DatabaseStates:
    """The state of a per-database collector on one target: one per database, made by
    the collector's ``new_state`` when a database is first collected, dropped with the
    database. The DSN's own database is ``""`` (its name is known once connected)."""

    def __init__(self, factory: Callable[[], Any] | None, main: Any = None) -> None:
        self._factory = factory
        self._by_db: dict[str, Any] = {"": main} if main is not None else {}

    def get(self, datname: str) -> Any:
        if datname not in self._by_db:
            self._by_db[datname] = self._factory() if self._factory is not None else None
        return self._by_db[datname]

    def keep(self, datnames: Iterable[str]) -> None:
        wanted = {"", *datnames}
        for datname in [d for d in self._by_db if d not in wanted]:
            del self._by_db[datname]

    def __len__(self) -> int:
        return len(self._by_db)


# The databases a per-database collector may run in: templates and databases that refuse
# connections are never walked.
LIST_DATABASES = ("SELECT d.datname FROM pg_catalog.pg_database d "
                  "WHERE d.datallowconn AND NOT d.datistemplate ORDER BY d.datname")
_database_errors: dict[tuple[str, str, str], str] = {}  # (target, collector, db) -> code


def _per_database(target: Target, collector: Collector, settings: CollectorSettings,
                  states: DatabaseStates) -> tuple[list[Any], Reason | None]:
    """A per-database collector's run: in the target's own database only (no
    ``databases:``), or in each database of the instance its selection matches, one at a
    time, each on a connection of its own opened for it and closed after it (the
    target's own database on the target's connection). Every family gets ``datname``."""
    selection = target.config.databases
    if selection is None:
        families, error = _attempt(target, collector, settings, states.get(""))
        if error is not None or target.server is None:
            return [], error
        datname = target.server.database
        return with_datname([*families, _success(target, collector, {datname: None})],
                            datname), None
    try:
        with target.transaction(settings.timeout) as cur:
            cur.execute(LIST_DATABASES)
            names = [str(row["datname"]) for row in cur.fetchall()]
    except (psycopg.Error, ReasonedError, OSError) as exc:
        return [], classify(exc)
    chosen = [name for name in names if selection.matches(name)]
    if not chosen:
        return [], Reason("no_databases", f"no database of the instance matches databases: "
                          f"include {list(selection.include)}, exclude "
                          f"{list(selection.exclude)} (found {len(names)}: templates and "
                          "databases that refuse connections are never collected); fix the "
                          "patterns")
    main = target.server.database if target.server is not None else ""
    bound = target.config.max_connections or target.settings.max_connections
    results: list[tuple[str, list[Any]]] = []
    errors: dict[str, Reason | None] = {}
    for datname in sorted(chosen, key=lambda name: name != main):  # its own first
        if datname == main:
            families, error = _attempt(target, collector, settings, states.get(""))
        else:
            if bound < 2:  # the target's own connection is closed while this one is open
                target.release()
            other = target.database(datname)
            try:
                families, error = _attempt(other, collector, settings, states.get(datname))
            finally:
                other.release()  # opened only while its database is collected
        errors[datname] = error
        _log_database(target, collector, datname, error)
        if error is None:
            results.append((datname, with_datname(families, datname)))
    target.forget_databases(chosen)
    states.keep(chosen)
    if not results:  # every database failed: the run failed (its own database's reason)
        return [], errors.get(main) or next(e for e in errors.values() if e is not None)
    merge = collector.merge or merge_databases
    return [*merge(results), _success(target, collector, errors)], None


def _success(target: Target, collector: Collector, errors: Mapping[str, Reason | None]
             ) -> Metric:
    family = GaugeMetricFamily(
        "hiw_database_collection_success",
        "1 if the per-database collector's last run succeeded in this database (the "
        "reason of a failure is in the agent's log).",
        labels=["target", "datname", "collector"])
    for datname, error in errors.items():
        family.add_metric([target.name, datname, collector.name], 0.0 if error else 1.0)
    return family


def _log_database(target: Target, collector: Collector, datname: str, error: Reason | None
                  ) -> None:
    """A database's failure when it starts or changes, and its recovery (not every run)."""
    key = (target.name, collector.name, datname)
    before = _database_errors.get(key)
    if error is None:
        if before is not None:
            del _database_errors[key]
            log.info("database_collection", target=target.name, collector=collector.name,
                     datname=datname, error=None)
        return
    if before != error.code:
        _database_errors[key] = error.code
        log.warning("database_collection", target=target.name, collector=collector.name,
                    datname=datname, reason=error.code, error=error.text)


def run_collection(target: Target, collector: Collector, settings: CollectorSettings,
                   store: SnapshotStore, state: Any = None) -> Sample:
    """Run one collector on one target and record the outcome. Never raises.

    A per-database collector's ``state`` is its :class:`DatabaseStates` (a plain state is
    the DSN's database's)."""
    started = time.monotonic()
    error: Reason | None = None
    families: list[Any] = []
    # Collectors of one target share its connection; a run that cannot get it within
    # its timeout gives up rather than queueing behind a stuck one.
    if not target.lock.acquire(timeout=max(settings.timeout, 1.0)):
        error = Reason("busy", "another collection of this target is still running")
    else:
        try:
            if collector.per_database:
                states = state if isinstance(state, DatabaseStates) else \
                    DatabaseStates(collector.new_state, state)
                families, error = _per_database(target, collector, settings, states)
            else:
                families, error = _attempt(target, collector, settings, state)
        finally:
            target.lock.release()
    memory.trim()  # hand the collection's freed memory back (rate-limited, glibc only)
    duration = time.monotonic() - started
    finished = time.time()
    store.set_target(target.name, up=target.up,
                     server_version=target.server.version if target.server else "",
                     error=target.last_error)
    if error is None:
        sample = store.record_success(target.name, collector.name, families, finished, duration)
        log.info("collection", target=target.name, collector=collector.name,
                 duration_ms=round(duration * 1000, 1), series=families_series(families),
                 error=None)
    else:
        # served only once the last good families are stale (Sample.served)
        fallback: list[Any] = []
        if collector.on_failure is not None and state is not None \
                and not collector.per_database:
            try:
                fallback = list(collector.on_failure(target.name, state, settings.options,
                                                     error.code))
            except Exception:
                log.exception("collector_bug", target=target.name, collector=collector.name,
                              step="on_failure")
        sample = store.record_failure(target.name, collector.name, error, finished, duration,
                                      fallback)
        log.warning("collection", target=target.name, collector=collector.name,
                    duration_ms=round(duration * 1000, 1), series=0, error=error.text,
                    reason=error.code)
    return sample


