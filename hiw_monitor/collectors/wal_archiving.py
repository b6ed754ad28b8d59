"""WAL archiving (pg_stat_archiver and the archive settings): point-in-time recovery
needs every WAL segment archived, so a stuck archiver is a backup problem."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import Metric

from hiw_monitor.analysis.backups import archiving_status
from hiw_monitor.collectors.base import (
    Collector,
    Context,
    Rows,
    VersionedSQL,
    counter,
    gauge,
    state_set,
)

# archive_library exists from PostgreSQL 15.
_ARCHIVER = """
SELECT a.archived_count, a.failed_count,
       extract(epoch FROM a.last_archived_time)::float8 AS last_archived,
       extract(epoch FROM a.last_failed_time)::float8 AS last_failed,
       extract(epoch FROM now() - a.last_archived_time)::float8 AS archived_age,
       extract(epoch FROM now() - a.last_failed_time)::float8 AS failed_age,
       current_setting('archive_mode') AS mode,
       current_setting('archive_command') NOT IN ('', '(disabled)') AS has_command,
       {library} AS has_library
FROM pg_catalog.pg_stat_archiver a
"""
_ARCHIVER_13 = _ARCHIVER.format(library="false")
_ARCHIVER_15 = _ARCHIVER.format(library="current_setting('archive_library') <> ''")
MODES = ("off", "on", "always")


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    t = ctx.target
    row = rows["archiver"][0]
    configured = bool(row["has_command"] or row["has_library"])
    archived = counter("hiw_wal_archived", "WAL files archived successfully.")
    archived.add_metric([t], float(row["archived_count"]))
    failed = counter("hiw_wal_archive_failed", "Failed attempts to archive a WAL file.")
    failed.add_metric([t], float(row["failed_count"]))
    yield from (archived, failed)
    for name, column, doc in (
        ("hiw_wal_last_archived_age_seconds", "archived_age", "Since the last archived WAL."),
        ("hiw_wal_last_failed_age_seconds", "failed_age", "Since the last archiving failure."),
    ):
        family = gauge(name, doc + " Absent when it never happened.")
        if row[column] is not None:
            family.add_metric([t], max(0.0, row[column]))
        yield family
    yield state_set("hiw_wal_archive_mode", "archive_mode, one-hot.", MODES, row["mode"], t,
                    state_label="mode")
    command = gauge("hiw_wal_archive_configured",
                    "1 when archive_command or archive_library (15+) is set.")
    command.add_metric([t], 1.0 if configured else 0.0)
    yield command
    yield state_set(
        "hiw_wal_archiving_status",
        "healthy / failing (newest failure after newest success) / disabled (archive_mode "
        "off or nothing configured), one-hot.",
        ("healthy", "failing", "disabled"),
        archiving_status(row["mode"], configured, row["last_archived"], row["last_failed"]),
        t, state_label="status")


COLLECTOR = Collector(
    name="wal_archiving",
    help="pg_stat_archiver and archive settings: WAL archiving for point-in-time recovery",
    interval=60.0,
    timeout=5.0,
    queries={"archiver": VersionedSQL({130000: _ARCHIVER_13, 150000: _ARCHIVER_15})},
    transform=transform,
)
