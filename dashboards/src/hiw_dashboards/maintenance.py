"""HiW — Bloat and maintenance: Table and index bloat, dead rows and autovacuum, transaction ID
wraparound, unused, invalid, duplicate and expected indexes, checkpoints and growth.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from hiw_dashboards.common import (
    ANY_IS_A_WARNING,
    ANY_IS_BAD,
    DUE_NO,
    GREEN,
    ON_OFF,
    ONE_IS_GOOD,
    YES_NO,
    Row,
    Spec,
    bargauge,
    by_name,
    by_query,
    by_regexp,
    cell,
    color_scheme,
    columns_table,
    fixed_color,
    labels_table,
    mappings,
    maximum,
    minimum,
    q,
    stat,
    steps,
    table,
    thresholds,
    timeseries,
    unit,
    value_table,
)

FILENAME = "hiw-maintenance.json"

ROWS = [
    Row(
        "Transaction ID wraparound",
        [
            timeseries(
                "Wraparound progress",
                (
                    "age(datfrozenxid) / 2^31 per database "
                    "(hiw_database_xid_wraparound_ratio): the server stops accepting "
                    "writes shortly before 100 %. The dashed line is 50 %, the "
                    "HiwXidWraparoundRisk alert's threshold."
                ),
                [
                    q(
                        'hiw_database_xid_wraparound_ratio{target=~"$target"}',
                        "{{datname}} ({{target}})",
                    ),
                ],
                unit="percentunit",
                thresholds=steps("green", (0.5, "red")),
                dashed_thresholds=True,
                max=1,
                w=6,
            ),
            timeseries(
                "Freeze progress",
                (
                    "age(datfrozenxid) / autovacuum_freeze_max_age per database "
                    "(hiw_database_xid_freeze_ratio): at 100 % anti-wraparound autovacuums "
                    "are forced (dashed line)."
                ),
                [
                    q(
                        'hiw_database_xid_freeze_ratio{target=~"$target"}',
                        "{{datname}} ({{target}})",
                    ),
                ],
                unit="percentunit",
                thresholds=ANY_IS_A_WARNING,
                dashed_thresholds=True,
                w=6,
            ),
            bargauge(
                "Tables closest to a forced freeze",
                (
                    "The 10 tables with the highest age(relfrozenxid) / their effective "
                    "autovacuum_freeze_max_age (hiw_table_xid_freeze_ratio); at 100 % "
                    "(orange) an anti-wraparound autovacuum is forced on the table."
                ),
                [
                    q(
                        'topk(10, hiw_table_xid_freeze_ratio{target=~"$target"})',
                        "{{schema}}.{{table}} ({{target}})",
                    ),
                ],
                unit="percentunit",
                thresholds=ANY_IS_A_WARNING,
                max=1,
            ),
            timeseries(
                "Transaction ID and multixact age",
                (
                    "age(datfrozenxid) (hiw_database_xid_age) and mxid_age(datminmxid) "
                    "(hiw_database_mxid_age) per database, in transactions."
                ),
                [
                    q('hiw_database_xid_age{target=~"$target"}', "{{datname}} xid ({{target}})"),
                    q('hiw_database_mxid_age{target=~"$target"}', "{{datname}} mxid ({{target}})"),
                ],
                w=6,
            ),
        ],
    ),
    Row(
        "Vacuum",
        [
            stat(
                "Dead tuples",
                (
                    "Dead rows not yet vacuumed, summed over every user table "
                    "(hiw_vacuum_dead_tuples)."
                ),
                [
                    q('hiw_vacuum_dead_tuples{target=~"$target"}'),
                ],
                color_mode=cm.BigValueColorMode.VALUE,
            ),
            stat(
                "Tables due for autovacuum",
                (
                    "Tables autovacuum would process now, over every user table "
                    "(hiw_vacuum_tables_due): vacuum, analyze, and wraparound "
                    "(anti-wraparound vacuum)."
                ),
                [
                    q('hiw_vacuum_tables_due{target=~"$target"}', "{{kind}} ({{target}})"),
                ],
                thresholds=ANY_IS_A_WARNING,
                color_mode=cm.BigValueColorMode.VALUE,
                w=6,
            ),
            stat(
                "Autovacuum",
                ("hiw_autovacuum_enabled: on when autovacuum and track_counts are both on."),
                [
                    q('hiw_autovacuum_enabled{target=~"$target"}'),
                ],
                thresholds=ONE_IS_GOOD,
                mappings=ON_OFF,
            ),
            stat(
                "Tables with autovacuum disabled",
                (
                    "User tables with the storage parameter autovacuum_enabled = false "
                    "(hiw_vacuum_tables_autovacuum_disabled)."
                ),
                [
                    q('hiw_vacuum_tables_autovacuum_disabled{target=~"$target"}'),
                ],
                thresholds=ANY_IS_A_WARNING,
                w=5,
            ),
            stat(
                "VACUUMs running",
                (
                    "VACUUMs running now (hiw_vacuums_in_progress), by kind: manual, "
                    "autovacuum, wraparound (an anti-wraparound autovacuum)."
                ),
                [
                    q('hiw_vacuums_in_progress{target=~"$target"}', "{{kind}} ({{target}})"),
                ],
                color_mode=cm.BigValueColorMode.VALUE,
                w=5,
            ),
            table(
                "Tables: dead rows and autovacuum",
                (
                    "Per table with per-table series (top N by 'autovacuum due', then dead "
                    "rows): live and dead rows (hiw_table_live_tuples, "
                    "hiw_table_dead_tuples, hiw_table_dead_tuples_ratio), the dead-row "
                    "count above which autovacuum vacuums it "
                    "(hiw_table_autovacuum_vacuum_threshold), whether a vacuum or analyze "
                    "is due now (hiw_table_autovacuum_vacuum_due, "
                    "hiw_table_autovacuum_analyze_due), rows modified since the last "
                    "analyze (hiw_table_modifications_since_analyze), and the time since "
                    "the last vacuum and analyze of either kind "
                    "(hiw_table_last_vacuum_age_seconds, "
                    "hiw_table_last_analyze_age_seconds; empty when never)."
                ),
                [
                    q('hiw_table_live_tuples{target=~"$target"}'),
                    q('hiw_table_dead_tuples{target=~"$target"}'),
                    q('hiw_table_dead_tuples_ratio{target=~"$target"}'),
                    q('hiw_table_autovacuum_vacuum_threshold{target=~"$target"}'),
                    q('hiw_table_autovacuum_vacuum_due{target=~"$target"}'),
                    q('min without (kind) (hiw_table_last_vacuum_age_seconds{target=~"$target"})'),
                    q('hiw_table_modifications_since_analyze{target=~"$target"}'),
                    q('hiw_table_autovacuum_analyze_due{target=~"$target"}'),
                    q('min without (kind) (hiw_table_last_analyze_age_seconds{target=~"$target"})'),
                ],
                columns_table(
                    [
                        "Live rows",
                        "Dead rows",
                        "Dead share",
                        "Vacuum threshold",
                        "Vacuum due",
                        "Since last vacuum",
                        "Modified since analyze",
                        "Analyze due",
                        "Since last analyze",
                    ]
                ),
                sort_by="Dead rows",
                overrides=[
                    by_name("Live rows", unit("short")),
                    by_name("Dead rows", unit("short")),
                    by_name("Vacuum threshold", unit("short")),
                    by_name("Since last vacuum", unit("s")),
                    by_name("Modified since analyze", unit("short")),
                    by_name("Since last analyze", unit("s")),
                    by_name(
                        "Dead share",
                        unit("percentunit"),
                        minimum(0),
                        maximum(1),
                        color_scheme(dm.FieldColorModeId.CONTINUOUS_GR_YL_RD),
                        cell("gauge", mode="basic"),
                    ),
                    by_name(
                        "Vacuum due", unit("short"), mappings(DUE_NO), cell("color-background")
                    ),
                    by_name(
                        "Analyze due", unit("short"), mappings(DUE_NO), cell("color-background")
                    ),
                ],
                w=24,
                h=9,
            ),
            timeseries(
                "Dead tuples, top 10 tables",
                (
                    "Dead rows not yet vacuumed of the 10 tables with the most (topk over "
                    "hiw_table_dead_tuples)."
                ),
                [
                    q(
                        'topk(10, hiw_table_dead_tuples{target=~"$target"})',
                        "{{schema}}.{{table}} ({{target}})",
                    ),
                ],
                w=8,
            ),
            timeseries(
                "Time since last vacuum, top 10 tables",
                (
                    "The 10 tables with the longest time since their last vacuum, manual "
                    "or auto (hiw_table_last_vacuum_age_seconds, the more recent of the "
                    "two kinds). Tables never vacuumed have no series."
                ),
                [
                    q(
                        (
                            "topk(10, min without (kind) "
                            '(hiw_table_last_vacuum_age_seconds{target=~"$target"}))'
                        ),
                        "{{schema}}.{{table}} ({{target}})",
                    ),
                ],
                unit="s",
                w=8,
            ),
            timeseries(
                "Vacuums and analyzes per hour",
                (
                    "Vacuums and analyzes in the last hour by kind (manual, auto), summed "
                    "over the tables with per-table series (increase of "
                    "hiw_table_vacuums_total and hiw_table_analyzes_total)."
                ),
                [
                    q(
                        (
                            "sum by (target, kind) "
                            '(increase(hiw_table_vacuums_total{target=~"$target"}[1h]))'
                        ),
                        "vacuum {{kind}} ({{target}})",
                    ),
                    q(
                        (
                            "sum by (target, kind) "
                            '(increase(hiw_table_analyzes_total{target=~"$target"}[1h]))'
                        ),
                        "analyze {{kind}} ({{target}})",
                    ),
                ],
                w=8,
            ),
            timeseries(
                "VACUUMs in progress",
                "VACUUMs running, by kind (hiw_vacuums_in_progress), stacked.",
                [
                    q('hiw_vacuums_in_progress{target=~"$target"}', "{{kind}} ({{target}})"),
                ],
                stacked=True,
                w=8,
            ),
            table(
                "Running VACUUMs",
                (
                    "Each running VACUUM: share of the heap scanned "
                    "(hiw_vacuum_progress_ratio), time at its current table "
                    "(hiw_vacuum_elapsed_seconds) and index vacuuming passes "
                    "(hiw_vacuum_index_passes; more than 1 means maintenance_work_mem is "
                    "too small for the dead tuples). Empty when none runs."
                ),
                [
                    q('hiw_vacuum_progress_ratio{target=~"$target"}'),
                    q('hiw_vacuum_elapsed_seconds{target=~"$target"}'),
                    q('hiw_vacuum_index_passes{target=~"$target"}'),
                ],
                columns_table(["Heap scanned", "Elapsed", "Index passes"]),
                overrides=[
                    by_name(
                        "Heap scanned",
                        unit("percentunit"),
                        minimum(0),
                        maximum(1),
                        color_scheme(dm.FieldColorModeId.CONTINUOUS_GR_YL_RD),
                        cell("gauge", mode="basic"),
                    ),
                    by_name("Elapsed", unit("s")),
                    by_name(
                        "Index passes",
                        unit("short"),
                        thresholds(steps("green", (2, "orange"))),
                        color_scheme(dm.FieldColorModeId.THRESHOLDS),
                        cell("color-background"),
                    ),
                ],
                w=8,
            ),
            table(
                "VACUUM phase",
                (
                    "The current phase of each running VACUUM (hiw_vacuum_phase == 1): "
                    "initializing, scanning heap, vacuuming indexes, vacuuming heap, "
                    "cleaning up indexes, truncating heap, performing final cleanup."
                ),
                [
                    q('hiw_vacuum_phase{target=~"$target"} == 1'),
                ],
                labels_table(),
                w=8,
            ),
        ],
    ),
    Row(
        "Bloat (estimate)",
        [
            stat(
                "Estimated wasted space",
                (
                    "Estimated dead or free bytes summed over every estimated table and "
                    "B-tree index (hiw_bloat_wasted_bytes, by kind). A statistics-based "
                    "estimate without table scans; see docs/bloat.md."
                ),
                [
                    q('hiw_bloat_wasted_bytes{target=~"$target"}', "{{kind}} ({{target}})"),
                ],
                unit="bytes",
                color_mode=cm.BigValueColorMode.VALUE,
                w=6,
            ),
            stat(
                "Relations without an estimate",
                (
                    "Relations at or above min_size_bytes that could not be estimated "
                    "(hiw_bloat_unestimated_relations: a variable-width column without "
                    "visible statistics, or never analyzed), by kind."
                ),
                [
                    q(
                        'hiw_bloat_unestimated_relations{target=~"$target"}',
                        "{{kind}} ({{target}})",
                    ),
                ],
                thresholds=ANY_IS_A_WARNING,
                color_mode=cm.BigValueColorMode.VALUE,
                w=6,
            ),
            stat(
                "Exact bloat mode",
                (
                    "State of the optional pgstattuple measurements "
                    "(hiw_bloat_exact_status == 1): disabled (the default), ok, "
                    "extension_missing (CREATE EXTENSION pgstattuple), permission_denied "
                    "(grant pg_stat_scan_tables). The estimates continue in every state."
                ),
                [
                    q('hiw_bloat_exact_status{target=~"$target"} == 1', "{{target}}: {{status}}"),
                ],
                thresholds=GREEN,
                text_mode=cm.BigValueTextMode.NAME,
                overrides=[
                    by_regexp(".*: ok", fixed_color("green")),
                    by_regexp(".*: disabled", fixed_color("blue")),
                    by_regexp(".*: extension_missing", fixed_color("orange")),
                    by_regexp(".*: permission_denied", fixed_color("orange")),
                ],
                w=6,
            ),
            stat(
                "Relations skipped (locked)",
                (
                    "Relations skipped in the latest run because an ACCESS EXCLUSIVE lock "
                    "was held or awaited on them: by the bloat collector "
                    "(hiw_bloat_locked_relations_skipped) and the indexes collector "
                    "(hiw_indexes_locked_relations_skipped)."
                ),
                [
                    q(
                        'hiw_bloat_locked_relations_skipped{target=~"$target"}',
                        "bloat ({{target}})",
                    ),
                    q(
                        'hiw_indexes_locked_relations_skipped{target=~"$target"}',
                        "indexes ({{target}})",
                    ),
                ],
                thresholds=ANY_IS_A_WARNING,
                color_mode=cm.BigValueColorMode.VALUE,
                w=6,
            ),
            table(
                "Table bloat",
                (
                    "The tables with the most estimated wasted bytes "
                    "(hiw_table_bloat_bytes) and the wasted share of their main fork "
                    "(hiw_table_bloat_ratio); the collector exports the top N (default 50)."
                ),
                [
                    q('hiw_table_bloat_bytes{target=~"$target"}'),
                    q('hiw_table_bloat_ratio{target=~"$target"}'),
                ],
                columns_table(["Wasted", "Wasted share"]),
                sort_by="Wasted",
                overrides=[
                    by_name("Wasted", unit("bytes")),
                    by_name(
                        "Wasted share",
                        unit("percentunit"),
                        minimum(0),
                        maximum(1),
                        color_scheme(dm.FieldColorModeId.CONTINUOUS_GR_YL_RD),
                        cell("gauge", mode="basic"),
                    ),
                ],
                h=9,
            ),
            table(
                "Index bloat",
                (
                    "The B-tree indexes with the most estimated bytes beyond their freshly "
                    "built size (hiw_index_bloat_bytes) and that share of the index "
                    "(hiw_index_bloat_ratio); top N (default 50)."
                ),
                [
                    q('hiw_index_bloat_bytes{target=~"$target"}'),
                    q('hiw_index_bloat_ratio{target=~"$target"}'),
                ],
                columns_table(["Wasted", "Wasted share"]),
                sort_by="Wasted",
                overrides=[
                    by_name("Wasted", unit("bytes")),
                    by_name(
                        "Wasted share",
                        unit("percentunit"),
                        minimum(0),
                        maximum(1),
                        color_scheme(dm.FieldColorModeId.CONTINUOUS_GR_YL_RD),
                        cell("gauge", mode="basic"),
                    ),
                ],
                h=9,
            ),
        ],
    ),
    Row(
        "Indexes",
        [
            stat(
                "Unused indexes",
                (
                    "Valid indexes never scanned since the statistics reset that enforce "
                    "no constraint (hiw_unused_indexes) and their total size "
                    "(hiw_unused_indexes_size_bytes). Scans are counted per server: check "
                    "the standbys before dropping one."
                ),
                [
                    q('hiw_unused_indexes{target=~"$target"}', "count ({{target}})"),
                    q('hiw_unused_indexes_size_bytes{target=~"$target"}', "size ({{target}})"),
                ],
                color_mode=cm.BigValueColorMode.VALUE,
                overrides=[
                    by_query("B", unit("bytes")),
                ],
            ),
            stat(
                "Invalid indexes",
                (
                    "Indexes with indisvalid or indisready false (hiw_invalid_indexes): a "
                    "failed CREATE INDEX CONCURRENTLY / REINDEX CONCURRENTLY, or one still "
                    "running."
                ),
                [
                    q('hiw_invalid_indexes{target=~"$target"}'),
                ],
                thresholds=ANY_IS_BAD,
            ),
            stat(
                "Duplicate indexes",
                (
                    "Indexes identical to another index of the same table "
                    "(hiw_duplicate_indexes) and their total size "
                    "(hiw_duplicate_indexes_size_bytes)."
                ),
                [
                    q('hiw_duplicate_indexes{target=~"$target"}', "count ({{target}})"),
                    q('hiw_duplicate_indexes_size_bytes{target=~"$target"}', "size ({{target}})"),
                ],
                thresholds=ANY_IS_A_WARNING,
                color_mode=cm.BigValueColorMode.VALUE,
                overrides=[
                    by_query("B", unit("bytes")),
                ],
            ),
            stat(
                "Expected indexes missing or invalid",
                (
                    "Expected indexes (default: the DBA review's partial and composite "
                    "indexes) that are absent or not valid: the count of "
                    "hiw_expected_index_valid == 0."
                ),
                [
                    q('sum by (target) (1 - hiw_expected_index_valid{target=~"$target"})'),
                ],
                thresholds=ANY_IS_BAD,
            ),
            stat(
                "Seq-scan-heavy tables",
                (
                    "Tables with at least seq_scan_min_rows (10000) live rows and "
                    "seq_scan_min_scans (100) sequential scans "
                    "(hiw_seq_scan_heavy_tables): candidates for a missing index."
                ),
                [
                    q('hiw_seq_scan_heavy_tables{target=~"$target"}'),
                ],
                thresholds=ANY_IS_A_WARNING,
            ),
            stat(
                "Index statistics age",
                (
                    "Time since this database's statistics were last reset (time() - "
                    "hiw_index_stats_reset_timestamp_seconds): 'unused' means unused since "
                    "then. No data when they were never reset."
                ),
                [
                    q('time() - hiw_index_stats_reset_timestamp_seconds{target=~"$target"}'),
                ],
                unit="s",
                color_mode=cm.BigValueColorMode.VALUE,
            ),
            table(
                "Expected indexes",
                (
                    "Each expected index: present on its table, matched by name "
                    "(hiw_expected_index_present), and valid and ready "
                    "(hiw_expected_index_valid)."
                ),
                [
                    q('hiw_expected_index_present{target=~"$target"}'),
                    q('hiw_expected_index_valid{target=~"$target"}'),
                ],
                columns_table(["Present", "Valid"]),
                overrides=[
                    by_name("Present", unit("short"), mappings(YES_NO), cell("color-background")),
                    by_name("Valid", unit("short"), mappings(YES_NO), cell("color-background")),
                ],
                w=8,
            ),
            table(
                "Unused indexes by size",
                (
                    "Unused indexes with their size (hiw_index_unused_size_bytes), largest "
                    "first; top N (default 50)."
                ),
                [
                    q('hiw_index_unused_size_bytes{target=~"$target"}'),
                ],
                value_table({"Value": "Size"}),
                sort_by="Size",
                overrides=[
                    by_name("Size", unit("bytes")),
                ],
                w=8,
            ),
            table(
                "Invalid indexes list",
                (
                    "The invalid indexes by name (hiw_index_invalid == 1). The planner "
                    "never uses an invalid index, but one that is ready is still updated "
                    "on every write: drop and re-create it, or REINDEX it."
                ),
                [
                    q('hiw_index_invalid{target=~"$target"} == 1'),
                ],
                labels_table(),
                w=8,
            ),
            table(
                "Duplicate indexes list",
                (
                    "Each duplicate index, the index it duplicates (duplicate_of, the one "
                    "to keep) and its size (hiw_index_duplicate_size_bytes); top N by size."
                ),
                [
                    q('hiw_index_duplicate_size_bytes{target=~"$target"}'),
                ],
                value_table({"Value": "Size"}),
                sort_by="Size",
                overrides=[
                    by_name("Size", unit("bytes")),
                ],
            ),
            timeseries(
                "Sequential scans on large tables",
                (
                    "Rows read per second by sequential scans (rate of "
                    "hiw_table_seq_scan_rows_read_total) of the 10 seq-scan-heavy tables "
                    "reading the most."
                ),
                [
                    q(
                        (
                            "topk(10, "
                            'rate(hiw_table_seq_scan_rows_read_total{target=~"$target"}[5m]))'
                        ),
                        "{{schema}}.{{table}} ({{target}})",
                    ),
                ],
            ),
        ],
    ),
    Row(
        "Checkpoints and background writer",
        [
            timeseries(
                "Checkpoints",
                (
                    "Checkpoints per minute by kind (hiw_checkpoints_total): timed "
                    "(checkpoint_timeout) and requested (max_wal_size reached, or an "
                    "explicit CHECKPOINT). Mostly requested checkpoints suggest "
                    "max_wal_size is too small."
                ),
                [
                    q(
                        (
                            "sum by (target, kind) "
                            '(rate(hiw_checkpoints_total{target=~"$target"}[5m])) * 60'
                        ),
                        "{{target}} {{kind}}",
                    ),
                ],
                w=8,
            ),
            timeseries(
                "Checkpoint write and sync time",
                (
                    "Seconds per second spent writing and syncing checkpoint files (rate "
                    "of hiw_checkpoint_write_seconds_total and "
                    "hiw_checkpoint_sync_seconds_total)."
                ),
                [
                    q(
                        'rate(hiw_checkpoint_write_seconds_total{target=~"$target"}[5m])',
                        "{{target}} write",
                    ),
                    q(
                        'rate(hiw_checkpoint_sync_seconds_total{target=~"$target"}[5m])',
                        "{{target}} sync",
                    ),
                ],
                unit="s",
                w=8,
            ),
            timeseries(
                "Buffers written and allocated",
                (
                    "Buffers per second written by checkpoints "
                    "(hiw_checkpoint_buffers_written_total) and the background writer "
                    "(hiw_bgwriter_buffers_written_total), allocated "
                    "(hiw_buffers_allocated_total), and background writer stops at "
                    "bgwriter_lru_maxpages (hiw_bgwriter_maxwritten_clean_total)."
                ),
                [
                    q(
                        'rate(hiw_checkpoint_buffers_written_total{target=~"$target"}[5m])',
                        "{{target}} checkpoint writes",
                    ),
                    q(
                        'rate(hiw_bgwriter_buffers_written_total{target=~"$target"}[5m])',
                        "{{target}} bgwriter writes",
                    ),
                    q(
                        'rate(hiw_buffers_allocated_total{target=~"$target"}[5m])',
                        "{{target}} allocated",
                    ),
                    q(
                        'rate(hiw_bgwriter_maxwritten_clean_total{target=~"$target"}[5m])',
                        "{{target}} bgwriter maxwritten stops",
                    ),
                ],
                w=8,
            ),
        ],
    ),
    Row(
        "Size",
        [
            timeseries(
                "Database size",
                "pg_database_size() per database (hiw_database_size_bytes).",
                [
                    q('hiw_database_size_bytes{target=~"$target"}', "{{datname}} ({{target}})"),
                ],
                unit="bytes",
                min=None,
            ),
            timeseries(
                "Database growth per day",
                (
                    "Growth rate per database over the last 6 h, extrapolated to a day "
                    "(recording rule hiw:database_growth_bytes:per_day, "
                    "deriv(hiw_database_size_bytes[6h]) * 86400; needs "
                    "alerts/hiw_monitor.rules.yml loaded). The review's baseline is about "
                    "500 MB a month."
                ),
                [
                    q(
                        'hiw:database_growth_bytes:per_day{target=~"$target"}',
                        "{{datname}} ({{target}})",
                    ),
                ],
                unit="bytes",
                min=None,
            ),
        ],
    ),
    Row(
        "Exact bloat (pgstattuple)",
        [
            table(
                "Table bloat (pgstattuple)",
                (
                    "Exact mode only: (dead_tuple_len + approx_free_space) from "
                    "pgstattuple_approx (hiw_table_bloat_exact_bytes) and its share of the "
                    "table (hiw_table_bloat_exact_ratio), for the exact_top_n (default 10) "
                    "largest tables."
                ),
                [
                    q('hiw_table_bloat_exact_bytes{target=~"$target"}'),
                    q('hiw_table_bloat_exact_ratio{target=~"$target"}'),
                ],
                columns_table(["Wasted", "Wasted share"]),
                sort_by="Wasted",
                overrides=[
                    by_name("Wasted", unit("bytes")),
                    by_name(
                        "Wasted share",
                        unit("percentunit"),
                        minimum(0),
                        maximum(1),
                        color_scheme(dm.FieldColorModeId.CONTINUOUS_GR_YL_RD),
                        cell("gauge", mode="basic"),
                    ),
                ],
                w=8,
            ),
            table(
                "Index bloat (pgstattuple)",
                (
                    "Exact mode only: bytes of the index beyond its leaf pages packed to "
                    "the fillfactor, from pgstatindex (hiw_index_bloat_exact_bytes), and "
                    "that share (hiw_index_bloat_exact_ratio), for the exact_top_n largest "
                    "B-tree indexes."
                ),
                [
                    q('hiw_index_bloat_exact_bytes{target=~"$target"}'),
                    q('hiw_index_bloat_exact_ratio{target=~"$target"}'),
                ],
                columns_table(["Wasted", "Wasted share"]),
                sort_by="Wasted",
                overrides=[
                    by_name("Wasted", unit("bytes")),
                    by_name(
                        "Wasted share",
                        unit("percentunit"),
                        minimum(0),
                        maximum(1),
                        color_scheme(dm.FieldColorModeId.CONTINUOUS_GR_YL_RD),
                        cell("gauge", mode="basic"),
                    ),
                ],
                w=8,
            ),
            timeseries(
                "Exact round progress",
                (
                    "Relations of the current exact round not measured yet "
                    "(hiw_bloat_exact_pending_relations), and pgstattuple calls per hour "
                    "stopped by exact_timeout (hiw_bloat_exact_timeouts_total) or failed "
                    "otherwise (hiw_bloat_exact_errors_total)."
                ),
                [
                    q(
                        'hiw_bloat_exact_pending_relations{target=~"$target"}',
                        "pending ({{target}})",
                    ),
                    q(
                        'increase(hiw_bloat_exact_timeouts_total{target=~"$target"}[1h])',
                        "timeouts/h ({{target}})",
                    ),
                    q(
                        'increase(hiw_bloat_exact_errors_total{target=~"$target"}[1h])',
                        "errors/h ({{target}})",
                    ),
                ],
                w=8,
            ),
        ],
        collapsed=True,
    ),
]


def spec() -> Spec:
    return Spec(
        uid="hiw-maintenance",
        title="HiW — Bloat and maintenance",
        description=(
            "Table and index bloat, dead rows and autovacuum, transaction ID "
            "wraparound, unused, invalid, duplicate and expected indexes, "
            "checkpoints and growth."
        ),
        rows=ROWS,
    )
