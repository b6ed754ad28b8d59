"""docs/metrics.md lists exactly the metrics the code exports (PostgreSQL 15 and 18)."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import ALL
from hiw_monitor.config import load
from hiw_monitor.exposition import self_metrics
from hiw_monitor.health import Health
from hiw_monitor.snapshot import SnapshotStore

pytestmark = pytest.mark.integration
CATALOG = Path(__file__).parents[2] / "docs" / "metrics.md"


def catalog_names() -> set[str]:
    """The PostgreSQL side of the catalog: the pgbouncer collector's families
    (``hiw_pgbouncer_*``) are checked against real PgBouncers by test_pgbouncer.py, the
    fleet's (:data:`FLEET`) by test_discovery.py."""
    found = re.findall(r"^\| `(hiw_[a-z0-9_]+)` \|", CATALOG.read_text(), re.MULTILINE)
    return {name for name in found if not name.startswith("hiw_pgbouncer_")} - FLEET


# the agent's fleet families: checked by tests/unit/test_discovery.py
FLEET = {"hiw_target_info", "hiw_discovery_file_valid", "hiw_discovery_targets",
         "hiw_discovery_errors_total", "hiw_shard_targets"}


def exposed_name(family) -> str:
    return f"{family.name}_total" if family.type == "counter" else family.name


def exported_names(server) -> set[str]:
    """Every family name (counters with ``_total``) the built-in collectors and the
    self-metrics export from ``server``, opt-in families included."""
    settings = load(environ={}, require_targets=False).collectors
    store = SnapshotStore()
    target = server.target()
    names: set[str] = set()
    try:
        for collector in ALL:
            store.register(target.name, target.redacted, collector.name, 15, 45)
            chosen = settings[collector.name]
            if collector.name == "statements":  # opt-in families too
                chosen = replace(chosen, options=MappingProxyType({**chosen.options,
                                                                   "query_text": True}))
            state = collector.new_state() if collector.new_state else None
            sample = run_collection(target, collector, chosen, store, state)
            assert sample.error is None, (collector.name, sample.error)
            names |= {exposed_name(f) for f in sample.families}
    finally:
        target.close()
    _, targets, samples = store.view()
    derived = Health(store).families(time.time())  # the health score, computed by the agent
    return names | {exposed_name(f) for f in [*self_metrics(targets, samples, 0.0), *derived]}


def test_catalog_matches_the_code(pg):
    names = exported_names(pg)
    documented = catalog_names()
    assert names - documented == set(), "exported but missing from docs/metrics.md"
    assert documented - names == set(), "documented in docs/metrics.md but not exported"
