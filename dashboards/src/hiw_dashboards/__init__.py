"""The hiw-monitor Grafana dashboards as code (grafana-foundation-sdk).

``DASHBOARDS`` maps each file of dashboards/ to the module that generates it; ``generate``
writes them (``python dashboards/generate.py``, or ``python -m hiw_dashboards`` with
dashboards/src on the path), ``--check`` only compares.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from hiw_dashboards import (
    backups,
    connections,
    maintenance,
    overview,
    pgbouncer,
    query_performance,
    replication,
)
from hiw_dashboards.common import Spec, render

MODULES: tuple[ModuleType, ...] = (
    overview,
    query_performance,
    backups,
    connections,
    maintenance,
    replication,
    pgbouncer,
)
# file name in dashboards/ -> the function that builds its Spec
DASHBOARDS: dict[str, Callable[[], Spec]] = {module.FILENAME: module.spec for module in MODULES}


def rendered() -> dict[str, str]:
    """File name -> the JSON text the generator writes."""
    return {name: render(build()) for name, build in sorted(DASHBOARDS.items())}


__all__ = ["DASHBOARDS", "rendered"]
