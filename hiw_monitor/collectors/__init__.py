"""Every collector the agent knows, listed explicitly (no plugin discovery)."""

from collections.abc import Mapping

from hiw_monitor.collectors import (
    backups,
    bloat,
    connections,
    database,
    indexes,
    pgbouncer,
    replication,
    review,
    statements,
    vacuum,
    wal_archiving,
)
from hiw_monitor.collectors.base import Collector

ALL: tuple[Collector, ...] = (
    connections.COLLECTOR,
    database.COLLECTOR,
    statements.COLLECTOR,
    backups.COLLECTOR,
    wal_archiving.COLLECTOR,
    vacuum.COLLECTOR,
    indexes.COLLECTOR,
    bloat.COLLECTOR,
    replication.COLLECTOR,
    review.COLLECTOR,
)
# PgBouncer's admin console: these run on targets with type: pgbouncer, which run nothing
# else (ALL above, and user-defined collectors, read PostgreSQL).
PGBOUNCER: tuple[Collector, ...] = (pgbouncer.COLLECTOR,)
PGBOUNCER_NAMES = frozenset(c.name for c in PGBOUNCER)
BY_NAME: dict[str, Collector] = {c.name: c for c in (*ALL, *PGBOUNCER)}


def with_custom(custom: Mapping[str, Collector]) -> dict[str, Collector]:
    """Every collector the agent runs by name: the built-ins above, then the user-defined
    SQL collectors of the config (``Config.custom``, built by ``collectors.custom``), whose
    names the config keeps apart from the built-ins'."""
    return {**BY_NAME, **custom}
