"""Connections from pg_stat_activity: counts by database and state, utilisation against
max_connections, waiting sessions, oldest transaction, and top application names."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import Metric

from hiw_monitor.analysis.topn import top_n_with_rest
from hiw_monitor.collectors.base import Collector, Context, Option, Rows, VersionedSQL, gauge

# Only client backends count: autovacuum workers, walsenders and background workers use
# their own slots and would make the utilisation wrong.
_BY_STATE = """
SELECT coalesce(datname, '') AS datname, coalesce(state, 'unknown') AS state,
       count(*) AS n
FROM pg_catalog.pg_stat_activity
WHERE backend_type = 'client backend'
GROUP BY 1, 2
"""

_SUMMARY = """
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS reserved,
       count(*) FILTER (WHERE backend_type = 'client backend') AS client_backends,
       count(*) AS all_backends,
       coalesce(max(extract(epoch FROM now() - xact_start))
                FILTER (WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()),
                0) AS oldest_xact_seconds,
       coalesce(max(extract(epoch FROM now() - state_change))
                FILTER (WHERE state LIKE 'idle in transaction%'), 0) AS oldest_idle_xact_seconds
FROM pg_catalog.pg_stat_activity
"""

# PostgreSQL 16 added reserved_connections (slots kept for pg_use_reserved_connections).
_SUMMARY_16 = _SUMMARY.replace(
    "current_setting('superuser_reserved_connections')::int AS reserved",
    "current_setting('superuser_reserved_connections')::int"
    " + current_setting('reserved_connections')::int AS reserved")

_WAITING = """
SELECT wait_event_type, count(*) AS n
FROM pg_catalog.pg_stat_activity
WHERE backend_type = 'client backend' AND state = 'active' AND wait_event_type IS NOT NULL
GROUP BY 1
"""

_APPLICATIONS = """
SELECT application_name, count(*) AS n
FROM pg_catalog.pg_stat_activity
WHERE backend_type = 'client backend'
GROUP BY 1
"""

# Wait event types always exported (0 when none), so alerts on lock waits have a series.
ALWAYS_WAIT_TYPES = ("Lock", "LWLock", "IO", "BufferPin")
STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)")


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    t = ctx.target
    by_state = gauge("hiw_connections", "Client backends by database and state.",
                     ["datname", "state"])
    seen: dict[str, set[str]] = {}
    for row in rows["by_state"]:
        by_state.add_metric([t, row["datname"], row["state"]], float(row["n"]))
        seen.setdefault(row["datname"], set()).add(row["state"])
    for datname, states in seen.items():  # zero series for the usual states: no gaps
        for state in STATES:
            if state not in states:
                by_state.add_metric([t, datname, state], 0.0)
    yield by_state

    summary = rows["summary"][0]
    max_conn = float(summary["max_connections"])
    clients = float(summary["client_backends"])
    yield _one("hiw_connections_max", "max_connections of the server.", t, max_conn)
    yield _one("hiw_connections_reserved",
               "Slots only superusers (and, 16+, pg_use_reserved_connections) may use.",
               t, float(summary["reserved"]))
    yield _one("hiw_connections_utilization_ratio",
               "Client backends divided by max_connections (0..1).", t,
               clients / max_conn if max_conn else 0.0)
    yield _one("hiw_backends", "All server processes in pg_stat_activity, background "
               "workers included.", t, float(summary["all_backends"]))
    yield _one("hiw_oldest_transaction_age_seconds",
               "Age of the oldest open transaction of a client backend.", t,
               float(summary["oldest_xact_seconds"]))
    yield _one("hiw_oldest_idle_in_transaction_age_seconds",
               "How long the longest idle-in-transaction session has been idle.", t,
               float(summary["oldest_idle_xact_seconds"]))

    waiting = gauge("hiw_sessions_waiting",
                    "Active client sessions waiting, by wait_event_type (Lock = lock waits).",
                    ["wait_event_type"])
    counts = {row["wait_event_type"]: float(row["n"]) for row in rows["waiting"]}
    for kind in ALWAYS_WAIT_TYPES:
        counts.setdefault(kind, 0.0)
    for kind, n in sorted(counts.items()):
        waiting.add_metric([t, kind], n)
    yield waiting

    apps = gauge("hiw_connections_by_application",
                 "Client backends by application_name: the top N, the rest under 'other'.",
                 ["application_name"])
    raw = {str(row["application_name"] or "(none)"): float(row["n"])
           for row in rows["applications"]}
    for name, n in top_n_with_rest(raw, int(ctx.options["top_applications"])).items():
        apps.add_metric([t, name], n)
    yield apps


def _one(name: str, doc: str, target: str, value: float) -> Metric:
    family = gauge(name, doc)
    family.add_metric([target], value)
    return family


COLLECTOR = Collector(
    name="connections",
    help="pg_stat_activity: connections, utilisation, waits, oldest transactions",
    interval=15.0,
    timeout=5.0,
    queries={
        "by_state": VersionedSQL({130000: _BY_STATE}),
        "summary": VersionedSQL({130000: _SUMMARY, 160000: _SUMMARY_16}),
        "waiting": VersionedSQL({130000: _WAITING}),
        "applications": VersionedSQL({130000: _APPLICATIONS}),
    },
    transform=transform,
    options={
        "top_applications": Option("int", 10, "application_name values exported before "
                                   "the rest is summed as 'other'", minimum=1),
    },
)
