"""Index health: unused indexes (no scans since the statistics were reset) with their
size, invalid indexes, duplicate indexes (same table, same key), tables read by heavy
sequential scans, and the "expected indexes" check: the DBA review's recommended indexes
(configurable), each reported present / absent and valid.

Cardinality: every per-index or per-table list is capped at ``top_n`` (the largest
first); the ``hiw_*_indexes`` totals count everything.

Locks: only the statistics views and the catalog are read, except for relation sizes and
deparsed index expressions, which open the relation. Those are computed only for indexes
whose index and table hold no ACCESS EXCLUSIVE lock (granted or awaited); the others are
skipped and counted in ``hiw_indexes_locked_relations_skipped``.

The queries are declarations run in order: the sizes query asks only for the unused and
duplicate candidates found in the indexes rows (and is not run when there are none), the
expected-indexes query only when expected indexes are configured.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric

from hiw_monitor.collectors.base import (
    LOCKED_RELATIONS_CTE,
    Collector,
    Context,
    Option,
    Query,
    Rows,
    Step,
    VersionedSQL,
    counter,
    gauge,
)

# Every user index with its usage; the duplicate signature (access method, key columns,
# operator classes, collations, options, expressions, predicate) only when the relation
# may be opened (pg_get_expr opens it).
_INDEXES = f"""
WITH {LOCKED_RELATIONS_CTE}
SELECT ic.oid, s.schemaname AS schema, s.relname AS table, s.indexrelname AS index,
       s.idx_scan, i.indisunique, i.indisprimary, i.indisvalid, i.indisready,
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = ic.oid)
           AS constraint_backed,
       (ki.oid IS NOT NULL OR kt.oid IS NOT NULL) AS locked,
       CASE WHEN ki.oid IS NULL AND kt.oid IS NULL THEN
           pg_catalog.concat_ws(' | ', ic.relam::text, i.indkey::text, i.indclass::text,
                                i.indcollation::text, i.indoption::text,
                                pg_catalog.pg_get_expr(i.indexprs, i.indrelid),
                                pg_catalog.pg_get_expr(i.indpred, i.indrelid))
       END AS signature
FROM pg_catalog.pg_stat_user_indexes s
JOIN pg_catalog.pg_index i ON i.indexrelid = s.indexrelid
JOIN pg_catalog.pg_class ic ON ic.oid = s.indexrelid
LEFT JOIN locked ki ON ki.oid = s.indexrelid
LEFT JOIN locked kt ON kt.oid = s.relid
WHERE ic.relkind = 'i'
"""

# Sizes of the indexes that will be exported, measured only if still unlocked.
_SIZES = f"""
WITH {LOCKED_RELATIONS_CTE}
SELECT c.oid, CASE WHEN k.oid IS NULL AND kt.oid IS NULL
                   THEN pg_catalog.pg_relation_size(c.oid) END AS size_bytes
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
LEFT JOIN locked k ON k.oid = c.oid
LEFT JOIN locked kt ON kt.oid = i.indrelid
WHERE c.oid = ANY(%(oids)s)
"""

_SEQ_SCANS = """
SELECT s.schemaname AS schema, s.relname AS table, s.seq_scan, s.seq_tup_read,
       coalesce(s.idx_scan, 0) AS idx_scan, s.n_live_tup AS live_tuples
FROM pg_catalog.pg_stat_user_tables s
WHERE s.n_live_tup >= %(min_rows)s AND s.seq_scan >= %(min_scans)s
ORDER BY s.seq_tup_read DESC, s.schemaname, s.relname
LIMIT %(limit)s
"""

_SEQ_SCAN_COUNT = """
SELECT count(*) AS n FROM pg_catalog.pg_stat_user_tables s
WHERE s.n_live_tup >= %(min_rows)s AND s.seq_scan >= %(min_scans)s
"""

# An expected index is present when an index of that name exists on that table.
_EXPECTED = """
SELECT e.name, e.schema_name AS schema, e.table_name AS table,
       (i.indexrelid IS NOT NULL) AS present,
       coalesce(i.indisvalid AND i.indisready, false) AS valid
FROM unnest(%(names)s::text[], %(schemas)s::text[], %(tables)s::text[])
     AS e(name, schema_name, table_name)
LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = e.schema_name
LEFT JOIN pg_catalog.pg_class tc ON tc.relnamespace = n.oid AND tc.relname = e.table_name
LEFT JOIN pg_catalog.pg_class ic ON ic.relnamespace = n.oid AND ic.relname = e.name
                                AND ic.relkind IN ('i', 'I')
LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = ic.oid AND i.indrelid = tc.oid
"""

_STATS_RESET = """
SELECT extract(epoch FROM d.stats_reset)::float8 AS stats_reset
FROM pg_catalog.pg_stat_database d
WHERE d.datname = pg_catalog.current_database()
"""


@dataclass(frozen=True, slots=True)
class ExpectedIndex:
    name: str
    table: str
    schema: str = "public"


# The DBA review's four recommended indexes (the demo schema creates only the first).
DEFAULT_EXPECTED = (
    ExpectedIndex("idx_classrooms_active_facilitator", "classrooms"),
    ExpectedIndex("idx_student_sessions_active", "student_sessions"),
    ExpectedIndex("idx_student_progress_analytics", "student_progress"),
    ExpectedIndex("idx_job_queue_pending", "job_queue"),
)


def parse_expected(raw: Mapping[str, Any]) -> tuple[ExpectedIndex, ...]:
    """``{index_name: {table: t, schema: s}}`` -> ExpectedIndex per name (schema: public).

    >>> parse_expected({"idx_a": {"table": "t"}, "idx_b": {"table": "u", "schema": "app"}})
    (ExpectedIndex(name='idx_a', table='t', schema='public'), \
ExpectedIndex(name='idx_b', table='u', schema='app'))
    >>> parse_expected({"idx_a": {"schema": "app"}})
    Traceback (most recent call last):
    ValueError: 'idx_a': expected {table: <name>} and optionally schema: <name>
    """
    result = []
    for name, entry in raw.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("table"), str)
                or not set(entry) <= {"table", "schema"}
                or not isinstance(entry.get("schema", "public"), str)):
            raise ValueError(f"{name!r}: expected {{table: <name>}} and optionally "
                             "schema: <name>")
        result.append(ExpectedIndex(str(name), entry["table"], entry.get("schema", "public")))
    return tuple(result)


OPTIONS: dict[str, Option] = {
    "top_n": Option("int", 50, "entries exported per list (unused, invalid, duplicate, "
                    "sequentially scanned tables), the largest first", minimum=1),
    "unused_min_size_bytes": Option("int", 0, "unused indexes smaller than this are not "
                                    "listed (bytes)", minimum=0),
    "seq_scan_min_rows": Option("int", 10_000, "tables with fewer live rows are not listed "
                                "for sequential scans", minimum=0),
    "seq_scan_min_scans": Option("int", 100, "tables with fewer sequential scans since the "
                                 "statistics reset are not listed", minimum=0),
    "expected": Option("mapping", DEFAULT_EXPECTED, "indexes that must exist, "
                       "{index_name: {table: <name>, schema: <name, default public>}}; "
                       "default: the DBA review's four recommended indexes",
                       parse=parse_expected),
}


# --- pure parts ---------------------------------------------------------------------------


def unused_candidates(indexes: Rows) -> tuple[list[Mapping[str, Any]], int]:
    """Valid indexes never scanned that enforce nothing (no primary key, unique or
    exclusion constraint, not unique), and how many were skipped because locked."""
    out, locked = [], 0
    for row in indexes:
        if (row["idx_scan"] == 0 and row["indisvalid"] and not row["indisunique"]
                and not row["indisprimary"] and not row["constraint_backed"]):
            if row["locked"]:
                locked += 1
            else:
                out.append(row)
    return out, locked


@dataclass(frozen=True, slots=True)
class Duplicate:
    row: Mapping[str, Any]
    kept: str  # the index it duplicates


def find_duplicates(indexes: Rows) -> tuple[list[Duplicate], int]:
    """Indexes with the same table and signature as another: the one kept is the primary
    key, else a unique one, else a constraint's, else the first by name. Returns the
    others, and how many indexes could not be compared because locked.

    >>> rows = [dict(oid=1, schema="s", table="t", index="a_pkey", indisprimary=True,
    ...              indisunique=True, constraint_backed=True, signature="k1", locked=False),
    ...         dict(oid=2, schema="s", table="t", index="a_copy", indisprimary=False,
    ...              indisunique=False, constraint_backed=False, signature="k1", locked=False)]
    >>> [(d.row["index"], d.kept) for d in find_duplicates(rows)[0]]
    [('a_copy', 'a_pkey')]
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    locked = 0
    for row in indexes:
        if row["locked"] or row["signature"] is None:
            locked += int(bool(row["locked"]))
            continue
        groups.setdefault((str(row["schema"]), str(row["table"]), str(row["signature"])),
                          []).append(row)
    out: list[Duplicate] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda r: (not r["indisprimary"], not r["indisunique"],
                                                not r["constraint_backed"], str(r["index"])))
        out.extend(Duplicate(row, str(ranked[0]["index"])) for row in ranked[1:])
    return out, locked


# --- declared queries ----------------------------------------------------------------------


def _size_params(step: Step) -> dict[str, list[int]] | None:
    """Sizes only of the indexes that may be exported (unused or duplicate), if any."""
    indexes = step.rows["indexes"]
    unused, _ = unused_candidates(indexes)
    duplicates, _ = find_duplicates(indexes)
    wanted = {int(r["oid"]) for r in unused} | {int(d.row["oid"]) for d in duplicates}
    return {"oids": sorted(wanted)} if wanted else None


def _seq_scan_params(step: Step) -> dict[str, int]:
    o = step.options
    return {"min_rows": int(o["seq_scan_min_rows"]), "min_scans": int(o["seq_scan_min_scans"]),
            "limit": int(o["top_n"])}


def _expected_params(step: Step) -> dict[str, list[str]] | None:
    """The expected indexes as three arrays, or None (not run) when none are configured."""
    expected: tuple[ExpectedIndex, ...] = tuple(step.options["expected"])
    if not expected:
        return None
    return {"names": [e.name for e in expected], "schemas": [e.schema for e in expected],
            "tables": [e.table for e in expected]}


QUERIES: dict[str, Query] = {
    "indexes": Query(VersionedSQL({130000: _INDEXES})),
    "sizes": Query(VersionedSQL({130000: _SIZES}), params=_size_params),
    "seq_scans": Query(VersionedSQL({130000: _SEQ_SCANS}), params=_seq_scan_params),
    "seq_scan_count": Query(VersionedSQL({130000: _SEQ_SCAN_COUNT}), params=_seq_scan_params),
    "expected": Query(VersionedSQL({130000: _EXPECTED}), params=_expected_params),
    "stats_reset": Query(VersionedSQL({130000: _STATS_RESET})),
}


def _size_map(rows: Rows) -> dict[int, float | None]:
    return {int(r["oid"]): (float(r["size_bytes"]) if r["size_bytes"] is not None else None)
            for r in rows}


def transform(rows: Mapping[str, Rows], ctx: Context) -> Iterator[Metric]:
    t = ctx.target
    options = ctx.options
    top_n = int(options["top_n"])
    sizes = _size_map(rows["sizes"])
    indexes = rows["indexes"]
    sti = ["schema", "table", "index"]

    unused, _ = unused_candidates(indexes)
    min_size = float(options["unused_min_size_bytes"])
    sized_unused = []
    late_locked = 0
    for row in unused:
        size = sizes.get(int(row["oid"]))
        if size is None:
            late_locked += 1  # locked between the two queries
        elif size >= min_size:
            sized_unused.append((size, row))
    sized_unused.sort(key=lambda p: (-p[0], str(p[1]["schema"]), str(p[1]["table"]),
                                     str(p[1]["index"])))
    per_index = gauge("hiw_index_unused_size_bytes", "Size of an index with no scans since "
                      "the statistics were reset (not backing a constraint, not unique); top "
                      "N by size.", sti)
    for size, row in sized_unused[:top_n]:
        per_index.add_metric([t, row["schema"], row["table"], row["index"]], size)
    count = gauge("hiw_unused_indexes", "Unused indexes at or above unused_min_size_bytes "
                  "(all, not only the exported top N).")
    count.add_metric([t], float(len(sized_unused)))
    total = gauge("hiw_unused_indexes_size_bytes", "Total size of those unused indexes.")
    total.add_metric([t], sum((size for size, _ in sized_unused), 0.0))
    yield from (per_index, count, total)

    invalid_rows = sorted((r for r in indexes if not (r["indisvalid"] and r["indisready"])),
                          key=lambda r: (str(r["schema"]), str(r["table"]), str(r["index"])))
    invalid = gauge("hiw_index_invalid", "1 for an index that is not valid or not ready "
                    "(a failed or running CREATE INDEX CONCURRENTLY / REINDEX); first N by "
                    "name.", sti)
    for row in invalid_rows[:top_n]:
        invalid.add_metric([t, row["schema"], row["table"], row["index"]], 1.0)
    invalid_count = gauge("hiw_invalid_indexes", "Indexes not valid or not ready (all).")
    invalid_count.add_metric([t], float(len(invalid_rows)))
    yield from (invalid, invalid_count)

    duplicates, _ = find_duplicates(indexes)
    sized_dups = []
    for dup in duplicates:
        size = sizes.get(int(dup.row["oid"]))
        if size is None:
            late_locked += 1
        else:
            sized_dups.append((size, dup))
    sized_dups.sort(key=lambda p: (-p[0], str(p[1].row["schema"]), str(p[1].row["table"]),
                                   str(p[1].row["index"])))
    dup_family = gauge("hiw_index_duplicate_size_bytes", "Size of an index with the same "
                       "table, key columns, operator classes, expressions and predicate as "
                       "the index duplicate_of; top N by size.", [*sti, "duplicate_of"])
    for size, dup in sized_dups[:top_n]:
        dup_family.add_metric([t, dup.row["schema"], dup.row["table"], dup.row["index"],
                               dup.kept], size)
    dup_count = gauge("hiw_duplicate_indexes", "Indexes duplicating another (all).")
    dup_count.add_metric([t], float(len(sized_dups)))
    dup_total = gauge("hiw_duplicate_indexes_size_bytes", "Total size of those duplicates.")
    dup_total.add_metric([t], sum((size for size, _ in sized_dups), 0.0))
    yield from (dup_family, dup_count, dup_total)

    locked = gauge("hiw_indexes_locked_relations_skipped", "Indexes not sized or compared in "
                   "this run because an ACCESS EXCLUSIVE lock on them or their table was "
                   "held or awaited.")
    locked.add_metric([t], float(sum(bool(r["locked"]) for r in indexes) + late_locked))
    yield locked

    yield from _seq_scans(t, rows["seq_scans"], rows["seq_scan_count"])
    yield from _expected(t, rows["expected"])

    reset = gauge("hiw_index_stats_reset_timestamp_seconds", "When this database's "
                  "statistics were last reset: index usage counts since then. Absent when "
                  "never reset.")
    for row in rows["stats_reset"]:
        if row["stats_reset"] is not None:
            reset.add_metric([t], float(row["stats_reset"]))
    yield reset


def _seq_scans(t: str, rows: Rows, count_rows: Rows) -> Iterator[Metric]:
    st = ["schema", "table"]
    scans = counter("hiw_table_seq_scans", "Sequential scans of a table with at least "
                    "seq_scan_min_rows live rows and seq_scan_min_scans scans; top N by rows "
                    "read.", st)
    read = counter("hiw_table_seq_scan_rows_read", "Rows read by those sequential scans.", st)
    idx = counter("hiw_table_index_scans", "Index scans of those tables.", st)
    for row in rows:
        labels = [t, row["schema"], row["table"]]
        scans.add_metric(labels, float(row["seq_scan"] or 0))
        read.add_metric(labels, float(row["seq_tup_read"] or 0))
        idx.add_metric(labels, float(row["idx_scan"] or 0))
    heavy = gauge("hiw_seq_scan_heavy_tables", "Tables meeting both sequential-scan "
                  "thresholds (all, not only the exported top N).")
    heavy.add_metric([t], float(count_rows[0]["n"]) if count_rows else 0.0)
    yield from (scans, read, idx, heavy)


def _expected(t: str, rows: Sequence[Mapping[str, Any]]) -> Iterator[Metric]:
    sti = ["schema", "table", "index"]
    present = gauge("hiw_expected_index_present", "1 when the expected index exists on its "
                    "table (matched by name), 0 when it is absent.", sti)
    valid = gauge("hiw_expected_index_valid", "1 when the expected index exists and is valid "
                  "and ready (indisvalid and indisready).", sti)
    for row in rows:
        labels = [t, row["schema"], row["table"], row["name"]]
        present.add_metric(labels, 1.0 if row["present"] else 0.0)
        valid.add_metric(labels, 1.0 if row["present"] and row["valid"] else 0.0)
    yield from (present, valid)


COLLECTOR = Collector(
    name="indexes",
    per_database=True,
    help="unused, invalid and duplicate indexes, heavy sequential scans, expected indexes",
    interval=300.0,
    timeout=15.0,
    queries=QUERIES,
    transform=transform,
    options=OPTIONS,
)
