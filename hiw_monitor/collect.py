"""The body of one collection: query, transform, store, and one canonical log line.

Every failure ends here as a recorded :class:`Reason`; nothing escapes to the scheduler.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import psycopg
import structlog

from hiw_monitor import memory
from hiw_monitor.collectors.base import Collector, Context, Rows, families_series
from hiw_monitor.config import CollectorSettings
from hiw_monitor.errors import Reason, ReasonedError, TargetUnavailable, classify
from hiw_monitor.snapshot import Sample, SnapshotStore
from hiw_monitor.target import Target

log = structlog.get_logger("hiw_monitor.collect")


def _query(target: Target, collector: Collector, settings: CollectorSettings, state: Any
           ) -> tuple[Mapping[str, Rows], Context]:
    with target.transaction(settings.timeout) as cur:
        server = target.server
        assert server is not None  # set by a successful connect
        if server.version_num < collector.min_version:
            raise TargetUnavailable(Reason(
                "unsupported_version",
                f"{collector.name} needs PostgreSQL {collector.min_version // 10000} or newer"))
        cur.execute("SELECT extract(epoch FROM pg_catalog.now())::float8 AS now")
        now_row = cur.fetchone()
        assert now_row is not None
        ctx = Context(target=target.name, server=server, options=settings.options,
                      now=float(now_row["now"]), state=state)
        if collector.fetch is not None:
            return collector.fetch(cur, ctx), ctx
        rows: dict[str, Rows] = {}
        for name, versioned in collector.queries.items():
            sql = versioned.pick(server.version_num)
            if sql is None:
                rows[name] = []
                continue
            cur.execute(sql.encode())
            rows[name] = cur.fetchall()
    return rows, ctx


def run_collection(target: Target, collector: Collector, settings: CollectorSettings,
                   store: SnapshotStore, state: Any = None) -> Sample:
    """Run one collector on one target and record the outcome. Never raises."""
    started = time.monotonic()
    error: Reason | None = None
    families: list[Any] = []
    # Collectors of one target share its connection; a run that cannot get it within
    # its timeout gives up rather than queueing behind a stuck one.
    if not target.lock.acquire(timeout=max(settings.timeout, 1.0)):
        error = Reason("busy", "another collection of this target is still running")
    else:
        try:
            rows, ctx = _query(target, collector, settings, state)
            families = list(collector.transform(rows, ctx))
        except (psycopg.Error, ReasonedError, OSError) as exc:
            error = classify(exc)
        except Exception as exc:
            error = classify(exc)
            log.exception("collector_bug", target=target.name, collector=collector.name)
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
        if collector.on_failure is not None and state is not None:
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


