"""A streaming-replication topology for the integration tests: a primary started like the
other fixtures' servers (the HiW database, the hiw_monitor role) and a hot standby made
from it with ``pg_basebackup -R``, both on 127.0.0.1 with free ports, run as the service
user (or a chroot root's own postgres user) exactly like :class:`Cluster` runs a server.

    with Topology.start("pg15") as topo:
        topo.primary, topo.standby  # conftest.Server, both with the monitoring role
        topo.pgbench("-t", "100")   # a bounded load on the primary
        topo.promote()              # pg_ctl promote -w on the standby

and a real Prometheus scraping an agent (:func:`prometheus`, :func:`promql`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from conftest import HIW_DB, Server, start_server

from hiw_monitor.demo.cluster import Cluster

# Replication feedback every second instead of 10: the primary sees the standby's write,
# flush and replay positions (and pg_stat_replication's lag columns) move sooner.
STANDBY_SETTINGS = {"wal_receiver_status_interval": "1s", "hot_standby": "on",
                    "hot_standby_feedback": "off"}
PGBENCH_DB = "pgbench"


def _own(cluster: Cluster) -> None:
    """Give the cluster's base directory to the user its programs run as (as init() does)."""
    if cluster.owner:
        os.chown(cluster.base, *cluster.owner)
    elif cluster.user:
        shutil.chown(cluster.base, cluster.user, cluster.user)
    cluster.base.chmod(0o700)


def make_standby(primary: Cluster, settings: dict[str, str] | None = None) -> Cluster:
    """A hot standby of ``primary`` from ``pg_basebackup -R`` (streaming, WAL streamed
    during the copy), on its own free port and socket directory; started."""
    standby = Cluster(primary.binaries, settings={**STANDBY_SETTINGS, **(settings or {})})
    try:
        _own(standby)
        standby._run(["pg_basebackup", "-D", str(standby.datadir), "-R", "-X", "stream",
                      "-c", "fast", "-h", "127.0.0.1", "-p", str(primary.port),
                      "-U", "postgres", "--no-sync"], timeout=600)
        # the copied postgresql.conf carries the primary's port and socket directory: the
        # lines appended here come later, so they win
        with (standby.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\n# hiw-monitor standby\n")
            for key, value in standby.settings.items():
                conf.write(f"{key} = {value}\n")
        standby.start()
    except BaseException:
        standby.destroy()
        raise
    return standby


def allow_replication(primary: Cluster) -> None:
    """Let the postgres role open replication connections over 127.0.0.1 (trust, as the
    fixtures' superuser lines are) and reload."""
    with (primary.datadir / "pg_hba.conf").open("a") as hba:
        hba.write("host replication postgres 127.0.0.1/32 trust\n")
    primary.execute("SELECT pg_catalog.pg_reload_conf()")


@dataclass
class Topology:
    primary: Server
    standby: Server

    @classmethod
    @contextlib.contextmanager
    def start(cls, version: str, primary_settings: dict[str, str] | None = None
              ) -> Iterator[Topology]:
        primary = start_server(version, settings={"wal_level": "replica",
                                                  **(primary_settings or {})})
        standby: Cluster | None = None
        try:
            allow_replication(primary.cluster)
            standby = make_standby(primary.cluster)
            standby.wait_ready()
            yield cls(primary, Server(version, standby))
        finally:
            if standby is not None:
                standby.destroy()
            primary.cluster.destroy()

    def pgbench(self, *args: str, init: bool = False) -> str:
        """pgbench against the primary's own pgbench database (made on first use), as the
        server's OS user; bounded by a transaction count (``-t``), never by time."""
        cluster = self.primary.cluster
        conn = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"]
        if init:
            cluster.execute(f"CREATE DATABASE {PGBENCH_DB}")
            return cluster._run(["pgbench", "-i", "-q", "-s", "1", *conn, PGBENCH_DB],
                                timeout=600)
        return cluster._run(["pgbench", "-n", *conn, *args, PGBENCH_DB], timeout=600)

    def promote(self) -> None:
        """pg_ctl promote on the standby, waiting until it accepts writes."""
        cluster = self.standby.cluster
        cluster._run(["pg_ctl", "promote", "-D", str(cluster.datadir), "-w", "-t", "120"])

    def on_standby(self, statement: str, dbname: str = HIW_DB) -> list[tuple[Any, ...]]:
        with self.standby.admin(dbname) as conn:
            return list(conn.execute(statement.encode()).fetchall())

    def on_primary(self, statement: str, dbname: str = HIW_DB) -> list[tuple[Any, ...]]:
        with self.primary.admin(dbname) as conn:
            cur = conn.execute(statement.encode())
            return list(cur.fetchall()) if cur.description else []
