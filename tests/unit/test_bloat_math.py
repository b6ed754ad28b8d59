"""Bloat and autovacuum math (property tests), and the bloat / vacuum / indexes transforms
fed fake rows shaped like their SQL."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from hiw_monitor.analysis import bloat
from hiw_monitor.analysis import vacuum as av
from hiw_monitor.collectors import bloat as bloat_collector
from hiw_monitor.collectors import indexes as indexes_collector
from hiw_monitor.collectors import vacuum as vacuum_collector
from hiw_monitor.collectors.base import Context, ServerInfo, Step
from hiw_monitor.config import Overrides, load
from hiw_monitor.errors import ConfigError, ReasonedError

TARGET = "t1"
ALIGNS = st.sampled_from(["c", "s", "i", "d"])
FIXED = st.builds(bloat.Column, width=st.sampled_from([1, 2, 4, 8, 16, 64]).map(float),
                  align=ALIGNS, varlena=st.just(False),
                  null_frac=st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0]))
ANY_COLUMN = st.one_of(FIXED, st.builds(
    bloat.Column, width=st.floats(min_value=1, max_value=2000), align=st.sampled_from(["i", "d"]),
    varlena=st.just(True), null_frac=st.floats(min_value=0, max_value=1)))


# --- the estimator --------------------------------------------------------------------------


def brute_force_tuple_bytes(columns: list[bloat.Column]) -> float:
    """Expected heap tuple size by enumerating every NULL pattern (fixed widths only)."""
    natts = len(columns)
    expected = 0.0
    for pattern in itertools.product((True, False), repeat=natts):
        probability = 1.0
        for present, column in zip(pattern, columns, strict=True):
            probability *= (1 - column.null_frac) if present else column.null_frac
        if probability == 0:
            continue
        offset = 0
        for present, column in zip(pattern, columns, strict=True):
            if present:
                a = bloat.ALIGNMENT[column.align]
                offset = -(-offset // a) * a + int(column.width)
        header = 23 + (math.ceil(natts / 8) if not all(pattern) else 0)
        header = -(-header // 8) * 8
        expected += probability * (-(-(header + offset) // 8) * 8 + 4)
    return expected


@given(st.lists(FIXED, min_size=1, max_size=7))
def test_tuple_size_equals_the_layout_of_every_null_pattern(columns):
    assert bloat.heap_tuple_bytes(columns) == pytest.approx(brute_force_tuple_bytes(columns))


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_ratio_is_a_share_and_bytes_are_whole_pages(actual, expected):
    result = bloat.estimate(actual, expected)
    assert 0.0 <= result.ratio <= 1.0
    assert result.wasted_bytes == max(0, actual - expected) * bloat.BLOCK_SIZE
    assert result.wasted_bytes <= actual * bloat.BLOCK_SIZE


@given(st.lists(ANY_COLUMN, min_size=1, max_size=12), st.floats(min_value=0, max_value=1e8),
       st.integers(min_value=10, max_value=100))
def test_a_table_at_its_expected_size_has_no_bloat(columns, tuples, fillfactor):
    pages = bloat.expected_heap_pages(tuples, columns, fillfactor)
    assert bloat.estimate(pages, pages).ratio == 0.0
    assert bloat.estimate(pages, bloat.expected_heap_pages(tuples, columns, fillfactor)
                          ).wasted_bytes == 0


@given(st.lists(ANY_COLUMN, min_size=1, max_size=12), st.floats(min_value=0, max_value=1e8),
       st.floats(min_value=0, max_value=1e8))
def test_expected_pages_grow_with_tuples(columns, a, b):
    low, high = sorted((a, b))
    assert bloat.expected_heap_pages(low, columns) <= bloat.expected_heap_pages(high, columns)
    assert bloat.expected_btree_pages(low, columns[:3]) <= bloat.expected_btree_pages(
        high, columns[:3])


@given(st.lists(ANY_COLUMN, min_size=1, max_size=12), st.floats(min_value=1, max_value=1e7),
       st.integers(min_value=10, max_value=99))
def test_a_lower_fillfactor_needs_at_least_as_many_pages(columns, tuples, fillfactor):
    assert bloat.expected_heap_pages(tuples, columns, fillfactor) >= \
        bloat.expected_heap_pages(tuples, columns, 100)


@given(st.lists(ANY_COLUMN, min_size=1, max_size=20))
def test_tuples_per_page_stay_within_what_a_page_can_hold(columns):
    per_page = bloat.heap_tuples_per_page(columns)
    assert 1.0 <= per_page <= 291  # MaxHeapTuplesPerPage for 8 kB pages


@given(st.lists(ANY_COLUMN, min_size=1, max_size=8), st.integers(min_value=0, max_value=7),
       st.integers(min_value=1, max_value=500))
def test_a_wider_column_never_makes_tuples_smaller(columns, index, extra):
    """Fixed widths are whole bytes; a varlena's average may be fractional."""
    index %= len(columns)
    wider = list(columns)
    old = wider[index]
    wider[index] = bloat.Column(old.width + extra, old.align, old.varlena, old.null_frac)
    assert bloat.heap_tuple_bytes(wider) >= bloat.heap_tuple_bytes(columns) - 1e-9


def test_a_column_that_is_always_null_takes_no_data_space():
    assert bloat.data_width([bloat.Column(8, "d", null_frac=1.0)]) == 0.0


def test_known_layouts():
    # int4 + int8: 4 bytes, 4 padding, 8 bytes; 24-byte header; 4-byte line pointer
    assert bloat.heap_tuple_bytes([bloat.Column(4, "i"), bloat.Column(8, "d")]) == 44.0
    # pgbench_accounts: int4, int4, int4, char(84) (85 bytes stored, 1-byte header); every
    # value has the same width, so each tuple is exactly MAXALIGN(24 + 97) + 4 = 132 bytes;
    # the estimate, not knowing the widths are equal, takes half of that padding and half
    # of the uniform case's 3.5 bytes
    row = [bloat.Column(4, "i"), bloat.Column(4, "i"), bloat.Column(4, "i"),
           bloat.Column(85, "i", varlena=True)]
    assert bloat.heap_tuple_bytes(row) == pytest.approx((132 + (24 + 97 + 3.5 + 4)) / 2)


# --- autovacuum decision --------------------------------------------------------------------


@given(st.floats(min_value=0, max_value=1e9), st.floats(min_value=0, max_value=1e9),
       st.floats(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=1))
def test_vacuum_is_due_exactly_above_the_threshold(reltuples, dead, threshold, scale):
    s = av.Settings(vacuum_threshold=threshold, vacuum_scale_factor=scale, insert_threshold=-1)
    table = av.TableCounters(reltuples, dead, 0, 0, 0, 0)
    decision = av.decide(table, s)
    assert decision.vacuum_threshold == pytest.approx(threshold + scale * reltuples)
    assert decision.vacuum_due == (dead > decision.vacuum_threshold)
    assert not av.decide(table, s, autovacuum_on=False).vacuum_due


@given(st.floats(min_value=0, max_value=1e9), st.floats(min_value=0, max_value=1e8))
def test_the_threshold_cap_only_lowers(reltuples, cap):
    capped = av.decide(av.TableCounters(reltuples, 0, 0, 0, 0, 0),
                       av.Settings(vacuum_max_threshold=cap))
    plain = av.decide(av.TableCounters(reltuples, 0, 0, 0, 0, 0), av.Settings())
    assert capped.vacuum_threshold == min(plain.vacuum_threshold, cap)


def test_insert_threshold_scales_with_unfrozen_pages_and_can_be_disabled():
    table = av.TableCounters(reltuples=100_000, dead_tuples=0, inserts_since_vacuum=15_000,
                             modifications_since_analyze=0, xid_age=0, mxid_age=0,
                             relpages=1000, relallfrozen=750)
    decision = av.decide(table, av.Settings())
    assert decision.insert_threshold == 1000 + 0.2 * 100_000 * 0.25
    assert decision.vacuum_due
    assert not av.decide(table, av.Settings(insert_threshold=-1)).vacuum_due


def test_never_vacuumed_tables_count_as_empty_and_wraparound_always_wins():
    fresh = av.TableCounters(-1, dead_tuples=60, inserts_since_vacuum=0,
                             modifications_since_analyze=60, xid_age=0, mxid_age=0)
    decision = av.decide(fresh, av.Settings())
    assert (decision.vacuum_threshold, decision.vacuum_due, decision.analyze_due) == (
        50.0, True, True)
    old = av.TableCounters(10, 0, 0, 0, xid_age=0, mxid_age=500_000_000)
    assert av.decide(old, av.Settings(enabled=False), autovacuum_on=False).wraparound


def test_settings_from_server_and_reloptions():
    server = av.Settings.from_server({"autovacuum_vacuum_scale_factor": "0.05",
                                      "autovacuum_vacuum_max_threshold": "-1",
                                      "autovacuum_freeze_max_age": "150000000"})
    table = server.override(av.parse_reloptions(
        ["autovacuum_vacuum_threshold=10", "autovacuum_vacuum_scale_factor=0.5",
         "autovacuum_freeze_max_age=100000000", "toast.autovacuum_enabled=false",
         "autovacuum_analyze_scale_factor=oops"]))
    assert (table.vacuum_threshold, table.vacuum_scale_factor, table.freeze_max_age,
            table.enabled, table.analyze_scale_factor) == (10.0, 0.5, 100_000_000.0, True, 0.1)


# --- transforms on fake rows ----------------------------------------------------------------


NOW = 1_700_000_000.0


def ctx(state=None, version_num: int = 150000, **options) -> Context:
    return Context(target=TARGET, server=ServerInfo(version_num, "15.x", in_recovery=False),
                   options=options, now=NOW, state=state)


def defaults(collector, **overrides):
    return {**{k: o.default for k, o in collector.options.items()}, **overrides}


def samples(families, name):
    return {tuple(v for k, v in sorted(s.labels.items()) if k != "target"): s.value
            for f in families for s in f.samples if s.name == name}


def value(families, name, **labels):
    for family in families:
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no {name}{labels}")


def table_row(oid, name, size_pages, live, locked=False, **extra):
    row = {"oid": oid, "schema": "public", "table": name, "natts": 2, "reltuples": float(live),
           "reloptions": None, "live_tuples": live, "dead_tuples": 0, "locked": locked,
           "size_bytes": None if locked else size_pages * 8192}
    row.update(extra)
    return row


def column_rows(relid, varlena_width=None):
    rows = [{"relid": relid, "attnum": 1, "typlen": 8, "typalign": "d", "avg_width": None,
             "null_frac": None}]
    rows.append({"relid": relid, "attnum": 2, "typlen": -1, "typalign": "i",
                 "avg_width": varlena_width, "null_frac": 0.0 if varlena_width else None})
    return rows


def bloat_rows(tables, columns, indexes=(), index_columns=(), exact=()):
    """Rows in the shape of the collector's declared queries (``exact``: probe attempts)."""
    return {"tables": list(tables), "indexes": list(indexes), "columns": list(columns),
            "index_columns": list(index_columns), "exact": list(exact)}


def bloat_ctx(state=None, exact_status="disabled", now=NOW, **options) -> Context:
    plan = bloat_collector.Plan(8192, exact_status, None if exact_status == "disabled"
                                else "public")
    return replace(ctx(state, **defaults(bloat_collector.COLLECTOR, **options)), plan=plan,
                   now=now)


def test_bloat_transform_ranks_counts_and_caps():
    live = 100_000
    cols = [bloat.Column(8, "d"), bloat.Column(40, "i", varlena=True)]
    fresh_pages = bloat.expected_heap_pages(live, cols)
    tables = [table_row(i, f"t{i}", fresh_pages * (1 + i), live) for i in range(1, 6)]
    tables.append(table_row(9, "hidden", 5000, live))  # varlena without statistics
    tables.append(table_row(10, "busy", 0, live, locked=True))
    columns = [c for i in range(1, 6) for c in column_rows(i, 40.0)] + column_rows(9)
    families = list(bloat_collector.transform(bloat_rows(tables, columns), bloat_ctx(top_n=3)))
    ratios = samples(families, "hiw_table_bloat_ratio")
    assert set(ratios) == {("public", "t5"), ("public", "t4"), ("public", "t3")}  # top 3
    assert ratios[("public", "t5")] == pytest.approx(5 / 6, abs=0.01)
    assert value(families, "hiw_bloat_estimated_relations", kind="table") == 5
    assert value(families, "hiw_bloat_unestimated_relations", kind="table") == 1
    assert value(families, "hiw_bloat_locked_relations_skipped") == 1
    total = value(families, "hiw_bloat_wasted_bytes", kind="table")
    assert total == pytest.approx(sum(fresh_pages * i * 8192 for i in range(1, 6)), rel=0.01)
    status = samples(families, "hiw_bloat_exact_status")
    assert status == {("disabled",): 1.0, ("ok",): 0.0, ("extension_missing",): 0.0,
                      ("permission_denied",): 0.0}


def btree_row(oid, name, table_oid, size_pages, live, locked=False, **extra):
    row = {"oid": oid, "schema": "public", "table": f"t{table_oid}", "index": name,
           "table_oid": table_oid, "index_reltuples": float(live),
           "table_reltuples": float(live), "partial": False, "reloptions": None,
           "live_tuples": live, "dead_tuples": 0, "locked": locked,
           "size_bytes": None if locked else size_pages * 8192}
    row.update(extra)
    return row


def test_bloat_transform_indexes_use_the_table_columns_and_partial_selectivity():
    live = 200_000
    key = [bloat.Column(8, "d")]
    full_pages = bloat.expected_btree_pages(live, key)
    idx = btree_row(50, "t1_id", 1, 2 * full_pages, live)
    partial = {**idx, "oid": 51, "index": "t1_id_part", "partial": True,
               "index_reltuples": live / 10, "size_bytes": 2 * full_pages * 8192}
    keys = [{"index_oid": 50, "position": 1, "typlen": 8, "typalign": "d", "table_attnum": 1},
            {"index_oid": 51, "position": 1, "typlen": 8, "typalign": "d", "table_attnum": 1}]
    rows = bloat_rows([], column_rows(1, 30.0), [idx, partial], keys)
    families = list(bloat_collector.transform(rows, bloat_ctx()))
    ratios = samples(families, "hiw_index_bloat_ratio")
    assert ratios[("t1_id", "public", "t1")] == pytest.approx(0.5, abs=0.01)
    assert ratios[("t1_id_part", "public", "t1")] > 0.9  # a tenth of the entries


TABLE_MEASURED = {"table_len": 8192 * 100, "dead_tuple_len": 8192 * 20,
                  "approx_free_space": 8192 * 10}
INDEX_MEASURED = {"index_size": 8192 * 11, "leaf_pages": 9, "internal_pages": 1,
                  "empty_pages": 0, "deleted_pages": 0, "avg_leaf_density": 45.0}


def attempt(kind, oid, outcome="ok"):
    """One probe row as collect._probe makes it: the parameters, the columns, outcome."""
    nulls = dict.fromkeys((*bloat_collector.TABLE_MEASURES, *bloat_collector.INDEX_MEASURES))
    measured = {**nulls, **(TABLE_MEASURED if kind == "table" else INDEX_MEASURED)}
    return {"kind": kind, "oid": oid, **(measured if outcome == "ok" else {}),
            "outcome": outcome}


def exact_step(state, rows, exact_status="ok", now=NOW, **options):
    return Step(options=defaults(bloat_collector.COLLECTOR, exact=True, **options),
                server=ServerInfo(150000, "15.x", in_recovery=False),
                plan=bloat_collector.Plan(8192, exact_status, "public"), state=state,
                rows=rows, now=now)


def probe(state, rows, exact_status="ok", now=NOW, budget=None, **options):
    """What collect.run_queries does with the exact query: the probe's parameter sets in
    order (``budget``: how many fit), each measured; the rows then include the attempts."""
    step = exact_step(state, rows, exact_status, now, **options)
    query = bloat_collector.QUERIES["exact"]
    assert query.probe is not None
    each = query.probe.each(step)
    assert (query.text(step) is None) == (not each)  # no statement when nothing to measure
    chosen = each if budget is None else each[:budget]
    return each, {**rows, "exact": [attempt(p["kind"], p["oid"]) for p in chosen]}


def test_bloat_exact_rows_become_exact_families():
    state = bloat_collector.new_state()
    rows = bloat_rows([table_row(1, "t1", 100, 1000)], [],
                      [btree_row(2, "i1", 1, 11, 1000)])
    each, rows = probe(state, rows)
    assert each == [{"kind": "table", "oid": 1}, {"kind": "index", "oid": 2}]
    rows["exact"][0]["outcome"] = "ok"
    families = list(bloat_collector.transform(rows, bloat_ctx(state, "ok", exact=True)))
    assert value(families, "hiw_table_bloat_exact_ratio", table="t1") == pytest.approx(0.3)
    # 9 leaf pages at 45 % of a 90 % fillfactor pack into 5, + 1 internal + 1 meta = 7 of 11
    assert value(families, "hiw_index_bloat_exact_ratio", index="i1") == pytest.approx(4 / 11)
    assert value(families, "hiw_index_bloat_exact_bytes", index="i1") == 4 * 8192
    assert value(families, "hiw_bloat_exact_status", status="ok") == 1.0
    assert value(families, "hiw_bloat_exact_timeouts_total") == 0
    assert value(families, "hiw_bloat_exact_pending_relations") == 0
    assert value(families, "hiw_bloat_exact_round_start_timestamp_seconds") == NOW


def test_exact_probe_measures_the_largest_unlocked_in_order_within_the_round():
    state = bloat_collector.new_state()
    tables = [table_row(i, f"t{i}", 100 * i, 1000) for i in range(1, 5)]
    tables.append(table_row(9, "busy", 0, 1000, locked=True))
    indexes = [btree_row(20 + i, f"i{i}", i, 10 * i, 1000) for i in range(1, 4)]
    rows = bloat_rows(tables, [], indexes)
    each, first = probe(state, rows, exact_top_n=2, budget=1)
    # the 2 largest tables, then the 2 largest indexes; the locked table is never offered
    assert each == [{"kind": "table", "oid": 4}, {"kind": "table", "oid": 3},
                    {"kind": "index", "oid": 23}, {"kind": "index", "oid": 22}]
    families = list(bloat_collector.transform(
        first, bloat_ctx(state, "ok", exact=True, exact_top_n=2)))
    assert value(families, "hiw_bloat_exact_pending_relations") == 3  # budget: one call
    assert set(samples(families, "hiw_table_bloat_exact_ratio")) == {("public", "t4")}
    # the next run continues the round where the budget stopped
    later = NOW + 900
    each, second = probe(state, rows, now=later, exact_top_n=2)
    assert each == [{"kind": "table", "oid": 3}, {"kind": "index", "oid": 23},
                    {"kind": "index", "oid": 22}]
    second["exact"][0]["outcome"] = "timeout"
    second["exact"][1] = {**second["exact"][1], "outcome": "error"}
    second["exact"][2] = {"kind": "index", "oid": 22, "outcome": "locked"}
    families = list(bloat_collector.transform(
        second, bloat_ctx(state, "ok", now=later, exact=True, exact_top_n=2)))
    assert value(families, "hiw_bloat_exact_timeouts_total") == 1
    assert value(families, "hiw_bloat_exact_errors_total") == 1  # locked: not an error
    assert value(families, "hiw_bloat_exact_pending_relations") == 0
    assert value(families, "hiw_bloat_exact_round_start_timestamp_seconds") == NOW
    assert set(samples(families, "hiw_table_bloat_exact_ratio")) == {("public", "t4")}
    # the round is over: nothing until exact_interval after its start
    assert probe(state, rows, now=later + 900, exact_top_n=2)[0] == []
    due = NOW + bloat_collector.OPTIONS["exact_interval"].default
    assert len(probe(state, rows, now=due, exact_top_n=2)[0]) == 4


def test_exact_round_forgets_relations_that_went_away_and_passes_locked_ones():
    state = bloat_collector.new_state()
    rows = bloat_rows([table_row(1, "t1", 300, 1000), table_row(2, "t2", 200, 1000),
                       table_row(3, "t3", 100, 1000)], [])
    _, measured = probe(state, rows, budget=1)
    list(bloat_collector.transform(measured, bloat_ctx(state, "ok", exact=True)))
    assert state.queue == [("table", 2), ("table", 3)]
    # t1 dropped, t2 locked now: t3 is measured, t2 passed by until the next round
    rows = bloat_rows([table_row(2, "t2", 200, 1000, locked=True),
                       table_row(3, "t3", 100, 1000)], [])
    each, measured = probe(state, rows)
    assert each == [{"kind": "table", "oid": 3}]
    families = list(bloat_collector.transform(measured, bloat_ctx(state, "ok", exact=True)))
    assert set(samples(families, "hiw_table_bloat_exact_ratio")) == {("public", "t3")}
    assert value(families, "hiw_bloat_exact_pending_relations") == 0
    assert value(families, "hiw_bloat_locked_relations_skipped") == 1


@pytest.mark.parametrize("status", ["extension_missing", "permission_denied"])
def test_exact_mode_unavailable_is_a_status_and_runs_nothing(status):
    state = bloat_collector.new_state()
    rows = bloat_rows([table_row(1, "t1", 300, 1000)], column_rows(1, 40.0))
    each, rows = probe(state, rows, exact_status=status)
    assert each == []
    families = list(bloat_collector.transform(rows, bloat_ctx(state, status, exact=True)))
    assert value(families, "hiw_bloat_exact_status", status=status) == 1.0
    assert samples(families, "hiw_table_bloat_exact_ratio") == {}
    assert value(families, "hiw_table_bloat_bytes", table="t1") >= 0  # estimates go on


def test_exact_mode_switched_off_forgets_its_round():
    state = bloat_collector.new_state()
    rows = bloat_rows([table_row(1, "t1", 300, 1000)], [])
    _, measured = probe(state, rows)
    list(bloat_collector.transform(measured, bloat_ctx(state, "ok", exact=True)))
    assert state.results
    assert state.round_started == NOW
    assert probe(state, rows, exact_status="disabled")[0] == []
    families = list(bloat_collector.transform(rows, bloat_ctx(state)))
    assert state.results == {}
    assert state.round_started is None
    assert samples(families, "hiw_bloat_exact_round_start_timestamp_seconds") == {}


def test_exact_probe_is_bounded_by_its_own_timeout_and_budget():
    query = bloat_collector.QUERIES["exact"]
    assert query.probe is not None
    options = defaults(bloat_collector.COLLECTOR, exact=True, exact_timeout=3.0,
                       exact_budget=7.0)
    assert query.probe.timeout(options) == 3.0
    assert query.probe.budget(options) == 7.0
    state = bloat_collector.new_state()
    step = exact_step(state, bloat_rows([table_row(1, "t1", 300, 1000)], []))
    text = query.text(step)
    assert isinstance(text, sql.Composed)
    rendered = text.as_string(None)
    assert '"public".pgstattuple_approx(%(oid)s::oid::regclass)' in rendered
    assert '"public".pgstatindex(%(oid)s::oid::regclass)' in rendered
    assert rendered.count("%(kind)s::text = ") == 2  # each function behind its kind


FACTS = {"block_size": 8192, "db": "app", "pgstattuple_schema": "ext",
         "pgstattuple_complete": True, "pgstattuple_allowed": True}


@pytest.mark.parametrize(("facts", "exact", "status"), [
    ({}, False, "disabled"),
    ({}, True, "ok"),
    ({"pgstattuple_schema": None, "pgstattuple_complete": False,
      "pgstattuple_allowed": False}, True, "extension_missing"),
    ({"pgstattuple_complete": False, "pgstattuple_allowed": False}, True,
     "extension_missing"),  # an old version without pgstattuple_approx: update it
    ({"pgstattuple_allowed": False}, True, "permission_denied"),
])
def test_plan_decides_the_exact_status(facts, exact, status):
    step = Step(options=defaults(bloat_collector.COLLECTOR, exact=exact),
                server=ServerInfo(150000, "15.x", in_recovery=False))
    plan = bloat_collector.decide({"facts": [{**FACTS, **facts}], "statistics_function": []},
                                  step)
    assert plan == bloat_collector.Plan(8192, status, {**FACTS, **facts}["pgstattuple_schema"])
    recheck = bloat_collector.PLAN.recheck
    assert recheck is not None
    assert recheck(plan) == exact  # made again while exact mode depends on the server


def test_plan_skips_the_collector_without_its_statistics_function():
    options = defaults(bloat_collector.COLLECTOR, statistics_function="mon.widths")
    step = Step(options=options, server=ServerInfo(150000, "15.x", in_recovery=False))
    query = bloat_collector.PLAN.queries["statistics_function"]
    assert query.text(step) is not None
    assert query.params is not None
    assert query.params(step) == ["mon.widths()"]
    with pytest.raises(ReasonedError) as caught:
        bloat_collector.decide({"facts": [FACTS], "statistics_function": [{"found": False}]},
                               step)
    assert caught.value.reason.code == "statistics_function_missing"
    assert "mon.widths()" in caught.value.reason.text
    assert "'app'" in caught.value.reason.text
    found = bloat_collector.decide({"facts": [FACTS], "statistics_function": [{"found": True}]},
                                   step)
    assert found.block_size == 8192
    no_function = replace(step, options=defaults(bloat_collector.COLLECTOR))
    assert query.text(no_function) is None  # not configured: not looked for


def test_dependent_queries_take_their_parameters_from_earlier_rows():
    queries = bloat_collector.QUERIES
    tables = [table_row(1, "t1", 300, 1000), table_row(2, "busy", 0, 1000, locked=True)]
    indexes = [btree_row(10, "i10", 3, 30, 1000), btree_row(11, "i11", 4, 0, 1000,
                                                            locked=True)]
    step = Step(options=defaults(bloat_collector.COLLECTOR),
                server=ServerInfo(150000, "15.x", in_recovery=False),
                rows={"tables": tables, "indexes": indexes})
    assert queries["index_columns"].params is not None
    assert queries["index_columns"].params(step) == {"oids": [10]}  # never a locked one
    keys = [{"index_oid": 10, "position": 1, "table_attnum": 0}]  # an expression
    step = replace(step, rows={**step.rows, "index_columns": keys})
    assert queries["columns"].params is not None
    assert queries["columns"].params(step) == {"relids": [1, 3, 10]}
    empty = replace(step, rows={"tables": [tables[1]], "indexes": [indexes[1]],
                                "index_columns": []})
    assert queries["index_columns"].params(empty) is None  # nothing unlocked: not run
    assert queries["columns"].params(empty) is None


QUEUES = st.lists(st.tuples(st.sampled_from(["table", "index"]), st.integers(1, 30)),
                  unique=True, max_size=12)


@given(QUEUES, st.data())
def test_a_run_takes_a_prefix_of_the_round_and_leaves_the_rest(queue, data):
    locked = set(data.draw(st.lists(st.sampled_from(queue)) if queue else st.just([])))
    order = bloat.measurable(queue, locked)
    attempted = data.draw(st.integers(0, len(order)))
    left = bloat.remaining(queue, locked, attempted)
    assert left == queue[len(queue) - len(left):]  # a suffix, in order
    assert not set(left) & set(order[:attempted])  # nothing measured twice in a round
    if attempted < len(order):
        assert set(order[attempted:]) <= set(left)  # nothing unmeasured is lost
    else:
        assert left == []


@given(QUEUES, st.integers(1, 5))
def test_every_relation_of_a_round_is_attempted_once_whatever_the_budget(queue, per_run):
    state = {"queue": list(queue), "attempted": []}
    while state["queue"]:
        order = bloat.measurable(state["queue"], set())
        state["attempted"] += order[:per_run]
        state["queue"] = bloat.remaining(state["queue"], set(), min(per_run, len(order)))
    assert state["attempted"] == list(queue)


def vacuum_row(i, dead, xid_age=1000, **extra):
    row = {"relid": i, "schema": "public", "table": f"t{i:03d}", "live_tuples": 1000,
           "dead_tuples": dead, "mod_since_analyze": 0, "ins_since_vacuum": 0,
           "last_vacuum_age": None, "last_autovacuum_age": 30.0, "last_analyze_age": None,
           "last_autoanalyze_age": None, "vacuum_count": 0, "autovacuum_count": 2,
           "analyze_count": 0, "autoanalyze_count": 1, "reltuples": 1000.0, "relpages": 10,
           "relallfrozen": 0, "reloptions": None, "xid_age": xid_age, "mxid_age": 0}
    row.update(extra)
    return row


def vacuum_transform(tables, progress=(), **options):
    settings = [{"name": "autovacuum", "setting": "on"}, {"name": "track_counts", "setting": "on"},
                {"name": "autovacuum_freeze_max_age", "setting": "200000000"}]
    rows = {"settings": settings, "tables": tables, "progress": list(progress)}
    return list(vacuum_collector.transform(
        rows, ctx(**defaults(vacuum_collector.COLLECTOR, **options))))


def test_vacuum_top_n_by_dead_tuples_plus_the_oldest():
    tables = [vacuum_row(i, dead=i) for i in range(1, 41)]
    tables.append(vacuum_row(99, dead=0, xid_age=190_000_000))
    families = vacuum_transform(tables, top_n=5, top_n_by_age=1)
    exported = {labels[1] for labels in samples(families, "hiw_table_dead_tuples")}
    # t040 is due (dead 40 > 50 + 0.2 x 1000? no: 250): ranked by dead tuples
    assert exported == {"t040", "t039", "t038", "t037", "t036", "t099"}
    assert value(families, "hiw_vacuum_tables", set="all") == 41
    assert value(families, "hiw_vacuum_tables", set="exported") == 6
    assert value(families, "hiw_vacuum_dead_tuples") == sum(range(1, 41))
    assert value(families, "hiw_table_xid_freeze_ratio", table="t099") == pytest.approx(0.95)
    assert value(families, "hiw_vacuum_oldest_xid_age") == 190_000_000


def test_vacuum_due_tables_rank_first_and_reloptions_apply():
    tables = [vacuum_row(i, dead=200) for i in range(1, 10)]
    tables.append(vacuum_row(50, dead=20, reloptions=["autovacuum_vacuum_threshold=5",
                                                      "autovacuum_vacuum_scale_factor=0"]))
    tables.append(vacuum_row(60, dead=900, reloptions=["autovacuum_enabled=false"]))
    families = vacuum_transform(tables, top_n=1, top_n_by_age=0)
    assert set(samples(families, "hiw_table_autovacuum_vacuum_due")) == {("public", "t050")}
    assert value(families, "hiw_table_autovacuum_vacuum_threshold", table="t050") == 5
    assert value(families, "hiw_vacuum_tables_due", kind="vacuum") == 1
    assert value(families, "hiw_vacuum_tables_autovacuum_disabled") == 1


def test_vacuum_progress_is_one_hot_and_kinds_are_always_present():
    progress = [{"pid": 7, "schema": "public", "table": "t001", "phase": "vacuuming indexes",
                 "heap_blks_total": 100, "heap_blks_scanned": 100, "heap_blks_vacuumed": 40,
                 "index_vacuum_count": 1, "elapsed": 12.5, "autovacuum": True,
                 "wraparound": False}]
    families = vacuum_transform([vacuum_row(1, 0)], progress)
    phases = samples(families, "hiw_vacuum_phase")
    assert len(phases) == len(vacuum_collector.PHASES)
    assert [k[0] for k, v in phases.items() if v == 1.0] == ["vacuuming indexes"]
    assert samples(families, "hiw_vacuums_in_progress") == {
        ("manual",): 0.0, ("autovacuum",): 1.0, ("wraparound",): 0.0}
    assert value(families, "hiw_vacuum_progress_ratio") == 1.0
    assert value(families, "hiw_vacuum_heap_blocks", state="vacuumed") == 40
    idle = vacuum_transform([vacuum_row(1, 0)])
    assert samples(idle, "hiw_vacuums_in_progress")[("manual",)] == 0.0
    assert samples(idle, "hiw_vacuum_phase") == {}


def index_row(oid, name, table="t", scans=0, **extra):
    row = {"oid": oid, "schema": "public", "table": table, "index": name, "idx_scan": scans,
           "indisunique": False, "indisprimary": False, "indisvalid": True, "indisready": True,
           "constraint_backed": False, "locked": False, "signature": f"sig-{oid}"}
    row.update(extra)
    return row


def indexes_transform(indexes, sizes, expected=(), seq=(), **options):
    rows = {"indexes": indexes, "sizes": [{"oid": o, "size_bytes": s} for o, s in sizes.items()],
            "seq_scans": list(seq), "seq_scan_count": [{"n": len(seq)}],
            "expected": list(expected), "stats_reset": [{"stats_reset": None}]}
    return list(indexes_collector.transform(
        rows, ctx(**defaults(indexes_collector.COLLECTOR, **options))))


def test_indexes_unused_duplicates_invalid_and_locks():
    indexes = [index_row(i, f"i{i}") for i in range(1, 11)]  # 10 unused
    indexes.append(index_row(20, "pk", scans=0, indisprimary=True, indisunique=True,
                             constraint_backed=True, signature="same"))
    indexes.append(index_row(21, "pk_copy", scans=5, signature="same"))
    indexes.append(index_row(22, "broken", indisvalid=False))
    indexes.append(index_row(23, "busy", locked=True, signature=None))
    sizes = {i: 8192.0 * i for i in range(1, 11)} | {21: 65536.0}
    sizes[10] = None  # locked between the two queries
    families = indexes_transform(indexes, sizes, top_n=3, unused_min_size_bytes=8192 * 2)
    unused = samples(families, "hiw_index_unused_size_bytes")
    assert [k[0] for k in unused] == ["i9", "i8", "i7"]  # the largest first, capped at 3
    assert value(families, "hiw_unused_indexes") == 8  # i2..i9 (i1 too small, i10 locked)
    assert value(families, "hiw_index_duplicate_size_bytes", index="pk_copy",
                 duplicate_of="pk") == 65536
    assert value(families, "hiw_index_invalid", index="broken") == 1
    assert value(families, "hiw_invalid_indexes") == 1
    assert value(families, "hiw_indexes_locked_relations_skipped") == 2  # busy, i10


def test_expected_indexes_present_and_valid():
    expected = [{"name": "a", "schema": "public", "table": "t", "present": True, "valid": True},
                {"name": "b", "schema": "public", "table": "t", "present": True, "valid": False},
                {"name": "c", "schema": "public", "table": "t", "present": False, "valid": False}]
    families = indexes_transform([], {}, expected)
    present = samples(families, "hiw_expected_index_present")
    valid = samples(families, "hiw_expected_index_valid")
    assert {k[0]: v for k, v in present.items()} == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert {k[0]: v for k, v in valid.items()} == {"a": 1.0, "b": 0.0, "c": 0.0}


def test_expected_defaults_are_the_reviews_four_indexes():
    names = [e.name for e in indexes_collector.DEFAULT_EXPECTED]
    assert names == ["idx_classrooms_active_facilitator", "idx_student_sessions_active",
                     "idx_student_progress_analytics", "idx_job_queue_pending"]


def test_expected_and_statistics_function_are_validated(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("collectors:\n"
                    "  indexes:\n    expected: {idx_x: {schema: app}}\n"
                    "  bloat:\n    statistics_function: 'x; DROP TABLE y'\n    top_n: 0\n")
    with pytest.raises(ConfigError) as caught:
        load(Overrides(config=str(path)), environ={}, require_targets=False)
    text = caught.value.message
    assert "collectors.indexes.expected" in text
    assert "collectors.bloat.statistics_function" in text
    assert "collectors.bloat.top_n" in text
    path.write_text("collectors:\n  indexes:\n    expected:\n"
                    "      idx_x: {table: t, schema: app}\n")
    config = load(Overrides(config=str(path)), environ={}, require_targets=False)
    assert config.collectors["indexes"].options["expected"] == (
        indexes_collector.ExpectedIndex("idx_x", "t", "app"),)


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(1, 10**7), st.integers(0, 10**6)), max_size=30),
       st.integers(min_value=1, max_value=10))
def test_bloat_exports_never_exceed_top_n(pairs, n):
    results = [bloat_collector.Result("table", ("s", f"t{i}"), size, bloat.estimate(a, e))
               for i, ((a, e), size) in enumerate(zip(pairs, range(len(pairs)), strict=True))]
    chosen = bloat_collector.top(results, n)
    assert len(chosen) == min(n, len(results))
    if chosen and len(results) > n:
        assert min(r.estimate.wasted_bytes for r in chosen) >= max(
            r.estimate.wasted_bytes for r in results if r not in chosen)
