"""PgBouncer, through its admin console (a target with ``type: pgbouncer``): clients active
and waiting per pool, the longest current wait, server connections by state, pool size
and saturation, traffic counters per database, and the use of ``max_client_conn``.

The console's columns differ across versions (1.18 against 1.24: ``SHOW DATABASES``
renamed ``reserve_pool`` to ``reserve_pool_size``, ``SHOW POOLS`` and ``SHOW LISTS``
gained columns and rows). Nothing here assumes a column: client and server states are
the ``cl_*`` and ``sv_*`` columns the server returned, lists are its rows, and a family
whose source column is missing is left out rather than guessed. The pseudo-database
``pgbouncer`` (the console itself, where the agent's own connection sits) is left out.

Cardinality is bounded: at most ``max_pools`` pools (the busiest: waiting clients first;
the rest summed under ``database="other", user="other"``) and ``max_databases``
databases (the first by name, so that a counter never moves between series; the rest
counted in ``hiw_pgbouncer_databases_omitted``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric

from hiw_monitor.collectors.base import (
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
    state_set,
)
from hiw_monitor.errors import Reason, ReasonedError

CONSOLE = "pgbouncer"  # the admin console's pseudo-database
OTHER = "other"  # where the pools beyond max_pools are summed
MIN_VERSION = (1, 8)  # SHOW STATS' total_* / avg_* layout and maxwait_us
POOL_MODES = ("session", "transaction", "statement")
# SHOW STATS column -> (family without _total, help, scale): microseconds become seconds
STATS: tuple[tuple[str, str, str, float], ...] = (
    ("total_xact_count", "hiw_pgbouncer_transactions",
     "SQL transactions pooled by PgBouncer (total_xact_count).", 1.0),
    ("total_query_count", "hiw_pgbouncer_queries",
     "SQL queries pooled by PgBouncer (total_query_count).", 1.0),
    ("total_received", "hiw_pgbouncer_received_bytes",
     "Bytes received from clients (total_received).", 1.0),
    ("total_sent", "hiw_pgbouncer_sent_bytes", "Bytes sent to clients (total_sent).", 1.0),
    ("total_xact_time", "hiw_pgbouncer_transaction_time_seconds",
     "Time spent in transactions, idle in transaction included (total_xact_time).", 1e-6),
    ("total_query_time", "hiw_pgbouncer_query_time_seconds",
     "Time spent actively running queries (total_query_time).", 1e-6),
    ("total_wait_time", "hiw_pgbouncer_client_wait_seconds",
     "Time clients spent waiting for a server connection (total_wait_time).", 1e-6),
)
# SHOW DATABASES column(s) -> (family, help); the first column present is used
DATABASES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("current_connections",), "hiw_pgbouncer_database_server_connections",
     "Server connections PgBouncer holds to the database (current_connections)."),
    (("max_connections",), "hiw_pgbouncer_database_max_server_connections",
     "max_db_connections of the database (0: no limit)."),
    (("reserve_pool_size", "reserve_pool"), "hiw_pgbouncer_database_reserve_pool_size",
     "Extra server connections a pool may open when clients wait too long."),
    (("paused",), "hiw_pgbouncer_database_paused", "1 while the database is PAUSEd."),
    (("disabled",), "hiw_pgbouncer_database_disabled", "1 while the database is DISABLEd."),
)
# SHOW CONFIG key -> (family, help)
SETTINGS: dict[str, tuple[str, str]] = {
    "max_client_conn": ("hiw_pgbouncer_max_client_connections",
                        "max_client_conn: client connections PgBouncer accepts."),
    "default_pool_size": ("hiw_pgbouncer_default_pool_size",
                          "default_pool_size: server connections per pool unless the "
                          "database sets its own."),
    "reserve_pool_size": ("hiw_pgbouncer_reserve_pool_size", "reserve_pool_size (global)."),
}


# --- the plan: which PgBouncer this is ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    version: str  # e.g. "1.18.0"

    def summary(self) -> str:
        return f"PgBouncer {self.version}"


def _version(text: str) -> tuple[int, ...]:
    """(1, 18, 0) from "PgBouncer 1.18.0".

    >>> _version("PgBouncer 1.24.1"), _version("PgBouncer 1.9"), _version("nonsense")
    ((1, 24, 1), (1, 9), ())
    """
    word = text.split()[-1] if text.split() else ""
    parts = word.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def decide(rows: Mapping[str, Rows], step: Step) -> Plan:
    found = rows["version"]
    text = str(found[0].get("version", "")) if found else ""
    version = _version(text)
    if not version:
        raise ReasonedError(Reason("unsupported_version",
                                   f"SHOW VERSION answered {text[:60]!r}, not PgBouncer's "
                                   "version: is this PgBouncer's admin console?"))
    if version < MIN_VERSION:
        raise ReasonedError(Reason(
            "unsupported_version",
            f"PgBouncer {'.'.join(map(str, version))} is older than "
            f"{'.'.join(map(str, MIN_VERSION))} (its SHOW STATS has another layout); "
            "upgrade PgBouncer"))
    return Plan(".".join(map(str, version)))


# --- pure helpers ----------------------------------------------------------------------------


def columns(rows: Rows) -> tuple[str, ...]:
    """The columns of a result: those the server returned (base.Result), else the keys of
    the first row (plain rows in tests)."""
    found = getattr(rows, "columns", None)
    if found:
        return tuple(found)
    return tuple(rows[0]) if rows else ()


def value(raw: Any) -> float | None:
    """A console value as a float; None for NULL or text that is no number."""
    if raw is None:
        return None
    try:
        result = float(raw)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


@dataclass(slots=True)
class Pool:
    database: str
    user: str
    clients: dict[str, float]  # state (cl_<state>) -> count
    servers: dict[str, float]  # state (sv_<state>) -> count
    max_wait: float | None  # seconds the oldest waiting client has waited
    size: float | None  # the pool's size (its database's pool_size)

    @property
    def rank(self) -> tuple[float, ...]:
        """Busiest first: waiting clients, the longest wait, active clients, servers."""
        return (-self.clients.get("waiting", 0.0), -(self.max_wait or 0.0),
                -self.clients.get("active", 0.0), -self.servers.get("active", 0.0))


def pools(rows: Rows, sizes: Mapping[str, float | None]) -> list[Pool]:
    """The pools of SHOW POOLS (the console's own left out), with their sizes."""
    names = columns(rows)
    client_states = [c for c in names if c.startswith("cl_")]
    server_states = [c for c in names if c.startswith("sv_")]
    found = []
    for row in rows:
        database = str(row.get("database"))
        if database == CONSOLE:
            continue
        clients = {c[3:]: v for c in client_states if (v := value(row.get(c))) is not None}
        servers = {c[3:]: v for c in server_states if (v := value(row.get(c))) is not None}
        max_wait = value(row.get("maxwait")) if "maxwait" in names else None
        if max_wait is not None and "maxwait_us" in names:
            max_wait += (value(row.get("maxwait_us")) or 0.0) / 1e6
        found.append(Pool(database, str(row.get("user")), clients, servers, max_wait,
                          sizes.get(database)))
    return found


def bounded(found: Sequence[Pool], limit: int) -> list[Pool]:
    """At most ``limit`` pools of their own, the busiest; the rest summed into one pool
    ``other/other`` (counts and sizes summed, the longest wait kept).

    >>> p = [Pool(d, "u", {"waiting": float(w)}, {"active": 1.0}, float(w), 2.0)
    ...      for d, w in (("a", 0), ("b", 3), ("c", 1))]
    >>> [(x.database, x.clients, x.max_wait, x.size) for x in bounded(p, 1)]
    [('b', {'waiting': 3.0}, 3.0, 2.0), ('other', {'waiting': 1.0}, 1.0, 4.0)]
    """
    ranked = sorted(found, key=lambda p: (p.rank, p.database, p.user))
    kept, rest = list(ranked[:limit]), ranked[limit:]
    if rest:
        clients: dict[str, float] = {}
        servers: dict[str, float] = {}
        for pool in rest:
            for state, n in pool.clients.items():
                clients[state] = clients.get(state, 0.0) + n
            for state, n in pool.servers.items():
                servers[state] = servers.get(state, 0.0) + n
        waits = [p.max_wait for p in rest if p.max_wait is not None]
        sizes = [p.size for p in rest if p.size is not None]
        kept.append(Pool(OTHER, OTHER, clients, servers, max(waits) if waits else None,
                         sum(sizes) if len(sizes) == len(rest) else None))
    return kept


def saturation(pool: Pool) -> float | None:
    """Server connections busy with a client over the pool's size: 1 when every server
    connection the pool may open is in use (more clients wait); above 1 with a reserve
    pool. None when the size or the active count is unknown, or the size is 0."""
    active = pool.servers.get("active")
    if active is None or not pool.size:
        return None
    return active / pool.size


# --- the transform ---------------------------------------------------------------------------


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    t = ctx.target
    settings = {str(r.get("key")): r.get("value") for r in rows["config"]}
    default_size = value(settings.get("default_pool_size"))
    size_column = "pool_size" in columns(rows["databases"])
    sizes: dict[str, float | None] = {}
    for row in rows["databases"]:
        size = value(row.get("pool_size")) if size_column else None
        sizes[str(row.get("name"))] = default_size if size is None or size < 0 else size

    yield from _pool_families(t, bounded(pools(rows["pools"], sizes),
                                         int(ctx.options["max_pools"])))

    names = sorted({str(r.get("database")) for r in rows["stats"]}
                   | {str(r.get("name")) for r in rows["databases"]} - {CONSOLE})
    kept = set(names[:int(ctx.options["max_databases"])])
    yield from _stats_families(t, [r for r in rows["stats"] if str(r.get("database")) in kept],
                               columns(rows["stats"]))
    yield from _database_families(t, [r for r in rows["databases"] if str(r.get("name")) in kept],
                                  columns(rows["databases"]))
    omitted = gauge("hiw_pgbouncer_databases_omitted",
                    "Databases beyond max_databases, exported in no per-database series.")
    omitted.add_metric([t], float(len(names) - len(kept)))
    yield omitted

    lists = {str(r.get("list")): value(r.get("items")) for r in rows["lists"]}
    items = gauge("hiw_pgbouncer_list_items",
                  "Items of PgBouncer's internal lists (SHOW LISTS: used_clients, "
                  "free_servers, pools, ...).", ["list"])
    for name, n in sorted(lists.items()):
        if n is not None:
            items.add_metric([t, name], n)
    yield items

    for key, (name, doc) in SETTINGS.items():
        setting = value(settings.get(key))
        if setting is not None:
            family = gauge(name, doc)
            family.add_metric([t], setting)
            yield family
    max_clients = value(settings.get("max_client_conn"))
    used = lists.get("used_clients")
    if max_clients and used is not None:
        ratio = gauge("hiw_pgbouncer_client_connections_utilization_ratio",
                      "Client connections (SHOW LISTS used_clients, the agent's included) "
                      "over max_client_conn.")
        ratio.add_metric([t], used / max_clients)
        yield ratio
    mode = settings.get("pool_mode")
    if mode is not None:
        yield state_set("hiw_pgbouncer_pool_mode",
                        "pool_mode (global; a database may set its own): one-hot.",
                        POOL_MODES, str(mode), t, state_label="pool_mode")


def _pool_families(t: str, found: Sequence[Pool]) -> Iterator[Metric]:
    labels = ["database", "user"]
    clients = gauge("hiw_pgbouncer_pool_client_connections",
                    "Client connections of a pool by state (active: linked to a server or "
                    "idle; waiting: queued for a server connection).", [*labels, "state"])
    servers = gauge("hiw_pgbouncer_pool_server_connections",
                    "Server connections of a pool by state (active: linked to a client; "
                    "idle: ready; used: to be checked; tested; login).", [*labels, "state"])
    max_wait = gauge("hiw_pgbouncer_pool_max_wait_seconds",
                     "How long the oldest waiting client of the pool has waited (maxwait "
                     "+ maxwait_us); 0 when none waits.", labels)
    size = gauge("hiw_pgbouncer_pool_size",
                 "Server connections the pool may open (its database's pool_size, else "
                 "default_pool_size).", labels)
    saturated = gauge("hiw_pgbouncer_pool_saturation_ratio",
                      "Active server connections over the pool size: 1 when every server "
                      "connection is busy and new transactions must wait.", labels)
    for pool in found:
        key = [t, pool.database, pool.user]
        for state, n in sorted(pool.clients.items()):
            clients.add_metric([*key, state], n)
        for state, n in sorted(pool.servers.items()):
            servers.add_metric([*key, state], n)
        if pool.max_wait is not None:
            max_wait.add_metric(key, pool.max_wait)
        if pool.size is not None:
            size.add_metric(key, pool.size)
        ratio = saturation(pool)
        if ratio is not None:
            saturated.add_metric(key, ratio)
    yield from (clients, servers, max_wait, size, saturated)


def _stats_families(t: str, rows: Rows, names: Sequence[str]) -> Iterator[Metric]:
    for column, name, doc, scale in STATS:
        if column not in names:
            continue
        family = counter(name, doc, ["database"])
        for row in rows:
            raw = value(row.get(column))
            if raw is not None:
                family.add_metric([t, str(row.get("database"))], raw * scale)
        yield family


def _database_families(t: str, rows: Rows, names: Sequence[str]) -> Iterator[Metric]:
    for candidates, name, doc in DATABASES:
        column = next((c for c in candidates if c in names), None)
        if column is None:
            continue
        family = gauge(name, doc, ["database"])
        for row in rows:
            raw = value(row.get(column))
            if raw is not None:
                family.add_metric([t, str(row.get("name"))], raw)
        yield family


def _show(command: str) -> VersionedSQL:
    return VersionedSQL({0: f"SHOW {command}"})


COLLECTOR = Collector(
    name="pgbouncer",
    help="PgBouncer's admin console: pools, waits, saturation, traffic, client slots "
         "(targets with type: pgbouncer only)",
    interval=15.0,
    timeout=5.0,
    min_version=0,  # the version is PgBouncer's: the plan checks it
    plan=PlanStep(queries={"version": Query(_show("VERSION"))}, decide=decide),
    queries={
        "pools": _show("POOLS"),
        "stats": _show("STATS"),
        "databases": _show("DATABASES"),
        "lists": _show("LISTS"),
        "config": _show("CONFIG"),
    },
    transform=transform,
    options={
        "max_pools": Option("int", 100, "pools exported with series of their own (the "
                            "busiest); the rest are summed under database=\"other\"",
                            minimum=1),
        "max_databases": Option("int", 100, "databases exported with series of their own "
                                "(the first by name)", minimum=1),
    },
)
