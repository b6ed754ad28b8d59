"""Databases (pg_stat_database and friends), wraparound, server facts, and checkpoint /
background-writer counters under one metric name on every version.

PostgreSQL 17 moved the checkpoint counters from pg_stat_bgwriter to
pg_stat_checkpointer; the SQL per version renames the columns so the transform and
every dashboard see the same metric names on 13 to 18.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import Metric

from hiw_monitor.collectors.base import (
    Collector,
    Context,
    Rows,
    VersionedSQL,
    counter,
    gauge,
)

WRAPAROUND_LIMIT = 2**31  # transaction IDs are 32-bit, compared modulo 2^31

_DATABASES = """
SELECT d.datname,
       s.xact_commit, s.xact_rollback, s.blks_read, s.blks_hit,
       s.tup_returned, s.tup_fetched, s.tup_inserted, s.tup_updated, s.tup_deleted,
       s.conflicts, s.temp_files, s.temp_bytes, s.deadlocks,
       s.blk_read_time, s.blk_write_time,
       CASE WHEN pg_catalog.has_database_privilege(d.oid, 'CONNECT')
            THEN pg_catalog.pg_database_size(d.oid) END AS size_bytes,
       pg_catalog.age(d.datfrozenxid) AS xid_age,
       pg_catalog.mxid_age(d.datminmxid) AS mxid_age
FROM pg_catalog.pg_database d
LEFT JOIN pg_catalog.pg_stat_database s ON s.datid = d.oid
WHERE d.datallowconn AND NOT d.datistemplate
"""

# PostgreSQL 14 added session statistics.
_DATABASES_14 = _DATABASES.replace(
    "s.blk_read_time, s.blk_write_time,",
    "s.blk_read_time, s.blk_write_time, s.sessions, s.sessions_abandoned, s.sessions_fatal,"
    " s.sessions_killed, s.session_time, s.active_time, s.idle_in_transaction_time,")

_CONFLICTS = """
SELECT * FROM pg_catalog.pg_stat_database_conflicts
WHERE datname IN (SELECT datname FROM pg_catalog.pg_database
                  WHERE datallowconn AND NOT datistemplate)
"""

_SERVER = """
SELECT extract(epoch FROM pg_catalog.pg_postmaster_start_time())::float8 AS start_time,
       extract(epoch FROM pg_catalog.pg_conf_load_time())::float8 AS conf_load_time,
       pg_catalog.pg_is_in_recovery() AS in_recovery,
       current_setting('autovacuum_freeze_max_age')::bigint AS freeze_max_age
"""

_CHECKPOINTS = """
SELECT checkpoints_timed AS timed, checkpoints_req AS requested,
       checkpoint_write_time AS write_ms, checkpoint_sync_time AS sync_ms,
       buffers_checkpoint AS buffers_written,
       buffers_clean, maxwritten_clean, buffers_alloc
FROM pg_catalog.pg_stat_bgwriter
"""

_CHECKPOINTS_17 = """
SELECT c.num_timed AS timed, c.num_requested AS requested,
       c.write_time AS write_ms, c.sync_time AS sync_ms,
       c.buffers_written,
       b.buffers_clean, b.maxwritten_clean, b.buffers_alloc
FROM pg_catalog.pg_stat_checkpointer c CROSS JOIN pg_catalog.pg_stat_bgwriter b
"""

# (column, metric name without _total, help, scale)
_DB_COUNTERS = (
    ("xact_commit", "hiw_database_commits", "Transactions committed.", 1.0),
    ("xact_rollback", "hiw_database_rollbacks", "Transactions rolled back.", 1.0),
    ("blks_read", "hiw_database_blocks_read", "Blocks read from disk (or OS cache).", 1.0),
    ("blks_hit", "hiw_database_blocks_hit", "Blocks found in shared buffers.", 1.0),
    ("tup_returned", "hiw_database_tuples_returned", "Rows returned by scans.", 1.0),
    ("tup_fetched", "hiw_database_tuples_fetched", "Rows fetched by index scans.", 1.0),
    ("tup_inserted", "hiw_database_tuples_inserted", "Rows inserted.", 1.0),
    ("tup_updated", "hiw_database_tuples_updated", "Rows updated.", 1.0),
    ("tup_deleted", "hiw_database_tuples_deleted", "Rows deleted.", 1.0),
    ("temp_files", "hiw_database_temp_files", "Temporary files created by queries.", 1.0),
    ("temp_bytes", "hiw_database_temp_bytes", "Bytes written to temporary files.", 1.0),
    ("deadlocks", "hiw_database_deadlocks", "Deadlocks detected.", 1.0),
    ("blk_read_time", "hiw_database_block_read_seconds",
     "Time spent reading blocks (needs track_io_timing).", 0.001),
    ("blk_write_time", "hiw_database_block_write_seconds",
     "Time spent writing blocks (needs track_io_timing).", 0.001),
    ("sessions", "hiw_database_sessions", "Sessions established (14+).", 1.0),
    ("sessions_abandoned", "hiw_database_sessions_abandoned",
     "Sessions ended by the client going away (14+).", 1.0),
    ("sessions_fatal", "hiw_database_sessions_fatal", "Sessions ended by fatal errors (14+).",
     1.0),
    ("sessions_killed", "hiw_database_sessions_killed",
     "Sessions terminated by an operator (14+).", 1.0),
    ("session_time", "hiw_database_session_seconds", "Time spent in sessions (14+).", 0.001),
    ("active_time", "hiw_database_active_seconds", "Time spent executing statements (14+).",
     0.001),
    ("idle_in_transaction_time", "hiw_database_idle_in_transaction_seconds",
     "Time spent idle in transaction (14+).", 0.001),
)

_CHECKPOINT_COUNTERS = (
    ("write_ms", "hiw_checkpoint_write_seconds", "Time checkpoints spent writing files.", 0.001),
    ("sync_ms", "hiw_checkpoint_sync_seconds", "Time checkpoints spent syncing files.", 0.001),
    ("buffers_written", "hiw_checkpoint_buffers_written", "Buffers written by checkpoints.", 1.0),
    ("buffers_clean", "hiw_bgwriter_buffers_written",
     "Buffers written by the background writer.", 1.0),
    ("maxwritten_clean", "hiw_bgwriter_maxwritten_clean",
     "Background writer rounds stopped for writing too many buffers.", 1.0),
    ("buffers_alloc", "hiw_buffers_allocated", "Shared buffers allocated.", 1.0),
)


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    t = ctx.target
    databases = rows["databases"]
    present = set(databases[0]) if databases else set()
    for column, name, doc, scale in _DB_COUNTERS:
        if column not in present:
            continue  # e.g. session statistics before PostgreSQL 14
        family = counter(name, doc, ["datname"])
        for row in databases:
            if row[column] is not None:
                family.add_metric([t, row["datname"]], float(row[column]) * scale)
        yield family

    ratio = gauge("hiw_database_cache_hit_ratio",
                  "blks_hit / (blks_hit + blks_read) since the statistics reset (0..1).",
                  ["datname"])
    size = gauge("hiw_database_size_bytes", "Size of the database on disk.", ["datname"])
    xid_age = gauge("hiw_database_xid_age", "Age of datfrozenxid in transactions.", ["datname"])
    mxid_age = gauge("hiw_database_mxid_age", "Age of datminmxid in multixacts.", ["datname"])
    wrap = gauge("hiw_database_xid_wraparound_ratio",
                 "xid age as a fraction of the 2^31 wraparound limit (0..1).", ["datname"])
    freeze = gauge("hiw_database_xid_freeze_ratio",
                   "xid age as a fraction of autovacuum_freeze_max_age (1 = forced "
                   "anti-wraparound vacuum).", ["datname"])
    freeze_max = float(rows["server"][0]["freeze_max_age"])
    for row in databases:
        labels = [t, row["datname"]]
        hit, read = row["blks_hit"], row["blks_read"]
        if hit is not None and read is not None and hit + read > 0:
            ratio.add_metric(labels, float(hit) / float(hit + read))
        if row["size_bytes"] is not None:
            size.add_metric(labels, float(row["size_bytes"]))
        if row["xid_age"] is not None:
            xid_age.add_metric(labels, float(row["xid_age"]))
            wrap.add_metric(labels, float(row["xid_age"]) / WRAPAROUND_LIMIT)
            freeze.add_metric(labels, float(row["xid_age"]) / freeze_max)
        if row["mxid_age"] is not None:
            mxid_age.add_metric(labels, float(row["mxid_age"]))
    yield from (ratio, size, xid_age, mxid_age, wrap, freeze)

    conflicts = counter("hiw_database_conflicts",
                        "Queries canceled by recovery conflicts (standbys), by reason.",
                        ["datname", "reason"])
    for row in rows["conflicts"]:
        for column, value in row.items():
            if column.startswith("confl_") and value is not None:
                conflicts.add_metric([t, row["datname"], column.removeprefix("confl_")],
                                     float(value))
    yield conflicts

    server = rows["server"][0]
    start = gauge("hiw_server_start_timestamp_seconds", "When the postmaster started.")
    start.add_metric([t], float(server["start_time"]))
    conf = gauge("hiw_server_config_load_timestamp_seconds",
                 "When the server last loaded its configuration files.")
    conf.add_metric([t], float(server["conf_load_time"]))
    recovery = gauge("hiw_server_in_recovery", "1 on a standby (in recovery), 0 on a primary.")
    recovery.add_metric([t], 1.0 if server["in_recovery"] else 0.0)
    yield from (start, conf, recovery)

    cp = rows["checkpoints"][0]
    checkpoints = counter("hiw_checkpoints", "Checkpoints performed, by what started them.",
                          ["kind"])
    checkpoints.add_metric([t, "timed"], float(cp["timed"]))
    checkpoints.add_metric([t, "requested"], float(cp["requested"]))
    yield checkpoints
    for column, name, doc, scale in _CHECKPOINT_COUNTERS:
        family = counter(name, doc)
        family.add_metric([t], float(cp[column]) * scale)
        yield family


COLLECTOR = Collector(
    name="database",
    help="pg_stat_database, conflicts, sizes, wraparound, server facts, checkpoints",
    interval=30.0,
    timeout=10.0,
    queries={
        "databases": VersionedSQL({130000: _DATABASES, 140000: _DATABASES_14}),
        "conflicts": VersionedSQL({130000: _CONFLICTS}),
        "server": VersionedSQL({130000: _SERVER}),
        "checkpoints": VersionedSQL({130000: _CHECKPOINTS, 170000: _CHECKPOINTS_17}),
    },
    transform=transform,
)
