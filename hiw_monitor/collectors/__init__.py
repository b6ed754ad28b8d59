"""Every collector the agent knows, listed explicitly (no plugin discovery)."""

from hiw_monitor.collectors import connections, database, statements
from hiw_monitor.collectors.base import Collector

ALL: tuple[Collector, ...] = (connections.COLLECTOR, database.COLLECTOR, statements.COLLECTOR)
BY_NAME: dict[str, Collector] = {c.name: c for c in ALL}
