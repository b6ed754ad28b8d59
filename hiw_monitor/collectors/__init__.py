"""Every collector the agent knows, listed explicitly (no plugin discovery)."""

from hiw_monitor.collectors import (
    backups,
    bloat,
    connections,
    database,
    indexes,
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
)
BY_NAME: dict[str, Collector] = {c.name: c for c in ALL}
