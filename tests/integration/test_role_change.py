"""A standby promoted while the agent stays connected: the role is re-read with every
collection, so role-dependent plans (standby_only / primary_only) are made again."""

from __future__ import annotations

import pytest
from conftest import MONITOR_PASSWORD
from replication import Topology

from hiw_monitor.collect import plan_of, run_collection
from hiw_monitor.collectors import BY_NAME
from hiw_monitor.collectors.base import PRIMARY_ONLY
from hiw_monitor.collectors.statements import new_state
from hiw_monitor.config import CollectorSettings, ConnectionSettings, TargetConfig, load
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

pytestmark = pytest.mark.integration



def test_a_promotion_on_the_same_connection_changes_the_role_and_the_plans():
    with Topology.start("pg15") as topo:
        target = Target(TargetConfig(name="standby", conninfo=topo.standby.monitor_dsn(),
                                     password=MONITOR_PASSWORD), ConnectionSettings())
        store = SnapshotStore()
        store.register("standby", target.redacted, "statements", 15, 45)
        state = new_state()
        try:
            first = run_collection(target, BY_NAME["statements"],
                                   _defaults("statements"), store, state)
            assert first.error is None, first.error
            assert target.server is not None
            assert target.server.in_recovery
            generation = target.generation
            assert plan_of(target, BY_NAME["statements"]) is not None
            topo.promote()
            after = run_collection(target, BY_NAME["statements"], _defaults("statements"),
                                   store, state)
            assert after.error is None, after.error
            assert not target.server.in_recovery  # same connection, new role
            assert target.generation == generation + 1  # plans for the old role are gone
            assert PRIMARY_ONLY(target.server)
        finally:
            target.close()


def _defaults(name: str) -> CollectorSettings:
    return load(environ={}, require_targets=False).collectors[name]
