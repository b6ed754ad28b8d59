"""The statements transform on fake pg_stat_statements rows: exact totals, monotone
counters through resets and top-N churn, hysteresis, exclusions, query text safety."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiw_monitor.analysis.querytext import safe_text
from hiw_monitor.collectors.base import Context, ServerInfo
from hiw_monitor.collectors.statements import (
    OPTIONS,
    Plan,
    new_state,
    transform,
)

SERVER = ServerInfo(150000, "15.0", False)


def options(**overrides):
    values = {name: spec.default for name, spec in OPTIONS.items()}
    values.update(overrides)
    return MappingProxyType(values)


class FakeStatements:
    """Cumulative pg_stat_statements as the server would show them (times in ms)."""

    def __init__(self) -> None:
        self.stats: dict[int, dict] = {}

    def call(self, queryid: int, ms: float, times: int = 1, user: str = "app") -> None:
        s = self.stats.setdefault(queryid, {"calls": 0, "sum": 0.0, "sq": 0.0, "min": math.inf,
                                             "max": 0.0, "user": user})
        for _ in range(times):
            s["calls"] += 1
            s["sum"] += ms
            s["sq"] += ms * ms
            s["min"] = min(s["min"], ms)
            s["max"] = max(s["max"], ms)

    def reset(self) -> None:
        self.stats.clear()

    def rows(self) -> list[dict]:
        out = []
        for qid, s in self.stats.items():
            n = s["calls"]
            mean = s["sum"] / n
            out.append({
                "dbid": 1, "userid": 10 if s["user"] == "app" else 11, "queryid": qid,
                "datname": "hiw", "rolname": s["user"], "is_self": s["user"] == "hiw_monitor",
                "calls": n, "total": s["sum"],
                "stddev": math.sqrt(max(0.0, s["sq"] / n - mean * mean)),
                "min": s["min"], "max": s["max"], "plans": 0, "plan_time": 0.0, "rows": n,
                "blks_hit": 2 * n, "blks_read": 0, "blks_dirtied": 0, "blks_written": 0,
                "temp_read": 0, "temp_written": 0, "io_read_time": 0.0, "io_write_time": 0.0,
            })
        return out


PLAN = Plan("public", {}, has_info=True, track_planning=False, track_io_timing=False,
            maximum=5000)


def rows_for(fake, *, server=None, reset=None, texts=()):
    """The per-poll queries' rows: server markers, the reset time read before and after
    the statements (None: no pg_stat_statements_info, as on 13), the statements."""
    before, after = reset if reset is not None else (None, None)
    info = [] if reset is None else [{"dealloc": 0, "stats_reset": after}]
    return {"server": [server or {"system_identifier": 1, "timeline": 1, "started": 0.0}],
            "reset_before": [] if reset is None else [{"dealloc": 0, "stats_reset": before}],
            "statements": fake.rows(), "tracked": [{"tracked": len(fake.stats)}],
            "reset_after": info, "texts": list(texts)}


def run(state, fake, now, opts, reset_at=1.0, texts=()):
    rows = rows_for(fake, reset=(reset_at, reset_at), texts=texts)
    ctx = Context("t", SERVER, opts, now, state, PLAN)
    return {f.name: f for f in transform(rows, ctx)}


def by_queryid(families, name):
    return {s.labels["queryid"]: s.value for s in families[name].samples}


def test_totals_are_exact_with_top_n_and_other():
    fake, state, opts = FakeStatements(), new_state(), options(top_n=2)
    for qid in range(1, 6):
        fake.call(qid, 1.0)
    run(state, fake, 0.0, opts)  # baseline
    for qid in range(1, 6):
        fake.call(qid, float(qid), times=qid * 10)
    families = run(state, fake, 60.0, opts)
    calls = by_queryid(families, "hiw_statement_calls")
    assert len(calls) == 3  # two statements, the rest summed
    assert "5" in calls  # the busiest of the interval is always in
    assert "other" in calls
    assert sum(calls.values()) == sum(q * 10 for q in range(1, 6))  # exact
    # promoted in this poll: their series start at 0, the interval is counted in "other"
    assert calls["5"] == calls["4"] == 0
    for qid in range(1, 6):
        fake.call(qid, float(qid), times=qid * 10)
    calls = by_queryid(run(state, fake, 120.0, opts), "hiw_statement_calls")
    assert calls["5"] == 50
    assert calls["4"] == 40
    assert calls["other"] == 150 + 30 + 20 + 10


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 20),
                                   st.floats(0.1, 500.0)), max_size=12),
                min_size=2, max_size=8),
       st.lists(st.booleans(), min_size=8, max_size=8),
       st.integers(1, 4))
def test_exported_counters_never_decrease_and_sum_exactly(polls, resets, top_n):
    fake, state, opts = FakeStatements(), new_state(), options(top_n=top_n)
    last: dict[str, float] = {}
    expected_total = 0.0
    resets_done = 0
    for index, (calls, reset) in enumerate(zip(polls, resets, strict=False)):
        if reset and index:
            fake.reset()
            resets_done += 1
        for qid, times, ms in calls:
            fake.call(qid, ms, times)
            if index:
                expected_total += times
        families = run(state, fake, 60.0 * index, opts, reset_at=float(resets_done))
        current = by_queryid(families, "hiw_statement_calls")
        for qid, value in current.items():
            assert value >= last.get(qid, 0.0)  # no negative jump, ever
            if qid not in last:  # a new series starts at 0: increase() sees all it counts
                assert value == 0.0
        last.update(current)
        assert len(current) <= top_n + 1
    # every call after the baseline lands in exactly one series, none twice
    assert sum(last.values()) == expected_total


def test_histogram_and_quantiles_from_constant_latency():
    fake, state, opts = FakeStatements(), new_state(), options()
    fake.call(1, 40.0)
    run(state, fake, 0.0, opts)
    fake.call(1, 40.0, times=500)
    families = run(state, fake, 60.0, opts)
    histogram = {s.labels.get("le"): s.value for s in families["hiw_query_duration_seconds"]
                 .samples if s.name.endswith("_bucket")}
    assert histogram["+Inf"] == 500
    assert histogram["0.025"] == 0
    assert histogram["0.05"] == 500
    quantiles = quantiles_of(families)
    assert math.isclose(quantiles["0.95"], 0.040, rel_tol=0.021)
    assert families["hiw_sla_query_latency_met"].samples[0].value == 1
    assert math.isclose(families["hiw_query_latency_mean_seconds"].samples[0].value, 0.040)


def test_sla_breach_and_slow_statements():
    fake, state, opts = FakeStatements(), new_state(), options()
    fake.call(1, 5.0)
    fake.call(2, 300.0)
    run(state, fake, 0.0, opts)
    fake.call(1, 5.0, times=80)
    fake.call(2, 300.0, times=20)  # 20 % of calls at 300 ms: p95 is far above 100 ms
    families = run(state, fake, 60.0, opts)
    assert families["hiw_sla_query_latency_met"].samples[0].value == 0
    assert families["hiw_slow_statements"].samples[0].value == 1


def test_agent_and_excluded_roles_stay_out_of_the_sla():
    fake, state = FakeStatements(), new_state()
    opts = options(sla_exclude_roles=("batch",))
    fake.call(1, 5.0)
    fake.call(2, 900.0, user="hiw_monitor")
    fake.call(3, 900.0, user="batch")
    run(state, fake, 0.0, opts)
    fake.call(1, 5.0, times=100)
    fake.call(2, 900.0, times=100, user="hiw_monitor")
    families = run(state, fake, 60.0, opts)
    assert families["hiw_query_latency_window_calls"].samples[0].value == 100
    assert families["hiw_sla_query_latency_met"].samples[0].value == 1
    # excluded from the SLA, still counted in its own counters
    assert sum(by_queryid(families, "hiw_statement_calls").values()) == 200


def test_pattern_exclusion_uses_the_query_text():
    fake, state = FakeStatements(), new_state()
    opts = options(sla_exclude_queries=("^refresh materialized view",))
    fake.call(1, 5.0)
    fake.call(2, 5000.0)
    texts = [{"dbid": 1, "userid": 10, "queryid": 1, "query": "SELECT 1"},
             {"dbid": 1, "userid": 10, "queryid": 2,
              "query": "REFRESH MATERIALIZED VIEW CONCURRENTLY classroom_analytics_summary"}]
    run(state, fake, 0.0, opts, texts=texts)
    fake.call(1, 5.0, times=10)
    fake.call(2, 5000.0, times=10)
    families = run(state, fake, 60.0, opts)
    assert families["hiw_query_latency_window_calls"].samples[0].value == 10


def test_query_text_is_opt_in_and_never_utility():
    fake, state = FakeStatements(), new_state()
    texts = [{"dbid": 1, "userid": 10, "queryid": 1, "query": "SELECT * FROM t WHERE id = $1"},
             {"dbid": 1, "userid": 10, "queryid": 2, "query": "VACUUM student_sessions"}]
    fake.call(1, 1.0)
    fake.call(2, 1.0)
    off = run(state, fake, 0.0, options(), texts=texts)
    assert "hiw_statement_query_info" not in off
    on = run(new_state(), fake, 0.0, options(query_text=True), texts=texts)
    exported = {s.labels["queryid"]: s.labels["query"]
                for s in on["hiw_statement_query_info"].samples}
    assert exported == {"1": "SELECT * FROM t WHERE id = $1"}


def test_safe_text_refuses_literals_comments_and_utility():
    assert safe_text("select a from t where b = 'x'", 100) is None
    assert safe_text("COPY t FROM stdin", 100) is None
    assert safe_text("-- pupil 7\nSELECT $1", 100) == "SELECT $1"
    assert safe_text("DO $$ BEGIN END $$", 100) is None
    assert len(safe_text("SELECT " + "x, " * 500 + "y", 64)) == 64


def test_deallocated_statement_series_ends_without_a_jump():
    fake, state, opts = FakeStatements(), new_state(), options(top_n=5)
    fake.call(1, 1.0)
    fake.call(2, 1.0)
    run(state, fake, 0.0, opts)
    fake.call(1, 1.0, times=5)
    fake.call(2, 1.0, times=5)
    first = by_queryid(run(state, fake, 60.0, opts), "hiw_statement_calls")
    del fake.stats[2]  # evicted
    fake.call(1, 1.0, times=3)
    second = by_queryid(run(state, fake, 120.0, opts), "hiw_statement_calls")
    assert "2" not in second
    assert second["1"] == first["1"] + 3
    assert second["other"] == first["other"]


def test_a_new_maximum_is_placed_exactly_not_smeared():
    """99 fast calls and one 500 ms outlier that set a new max: p95 stays at 1 ms."""
    fake, state, opts = FakeStatements(), new_state(), options()
    fake.call(1, 1.0, times=10)
    run(state, fake, 0.0, opts)
    fake.call(1, 1.0, times=99)
    fake.call(1, 500.0)
    families = run(state, fake, 60.0, opts)
    quantiles = quantiles_of(families)
    assert math.isclose(quantiles["0.95"], 0.001, rel_tol=0.03)
    histogram = {s.labels.get("le"): s.value for s in families["hiw_query_duration_seconds"]
                 .samples if s.name.endswith("_bucket")}
    assert histogram["0.3"] == 99  # the outlier sits above 300 ms, alone
    assert histogram["0.5"] == 100


def quantiles_of(families):
    return {s.labels["quantile"]: s.value for s in families["hiw_query_latency_seconds"].samples
            if s.name == "hiw_query_latency_seconds"}


def gauge_value(families, name):
    return families[name].samples[0].value


def counter_by(families, name, label):
    return {s.labels[label]: s.value for s in families[name].samples
            if s.name == f"{name}_total"}


UTILITY_TEXTS = [
    {"dbid": 1, "userid": 10, "queryid": 1, "query": "SELECT * FROM lessons WHERE id = $1"},
    {"dbid": 1, "userid": 10, "queryid": 2, "query": "SELECT * FROM progress WHERE s = $1"},
    {"dbid": 1, "userid": 10, "queryid": 3, "query": "BEGIN"},
    {"dbid": 1, "userid": 10, "queryid": 4, "query": "COMMIT"},
]


def transaction_workload(fake: FakeStatements) -> None:
    """900 queries at 5 ms, 100 at 200 ms, each pair in BEGIN ... COMMIT (ORM style)."""
    fake.call(1, 5.0, times=900)
    fake.call(2, 200.0, times=100)
    fake.call(3, 0.002, times=1000)
    fake.call(4, 0.004, times=1000)


def test_utility_statements_stay_out_of_the_sla_by_default():
    fake, state, opts = FakeStatements(), new_state(), options()
    for qid in (1, 2, 3, 4):
        fake.call(qid, 1.0)
    run(state, fake, 0.0, opts, texts=UTILITY_TEXTS)  # baseline; texts read once
    transaction_workload(fake)
    families = run(state, fake, 60.0, opts)  # no texts: the kinds were learned once
    assert quantiles_of(families)["0.95"] >= 0.19  # true p95 is 200 ms
    assert gauge_value(families, "hiw_sla_query_latency_met") == 0
    assert gauge_value(families, "hiw_query_latency_window_calls") == 1000
    assert counter_by(families, "hiw_sla_excluded_calls", "reason")["utility"] == 2000
    # the per-statement counters still count BEGIN and COMMIT
    assert sum(by_queryid(families, "hiw_statement_calls").values()) == 3000
    assert state.texts == {}  # no text kept without query_text


def test_utility_statements_can_be_included():
    fake, state, opts = FakeStatements(), new_state(), options(sla_include_utility=True)
    for qid in (1, 2, 3, 4):
        fake.call(qid, 1.0)
    run(state, fake, 0.0, opts, texts=UTILITY_TEXTS)
    transaction_workload(fake)
    families = run(state, fake, 60.0, opts)
    assert gauge_value(families, "hiw_query_latency_window_calls") == 3000
    assert quantiles_of(families)["0.95"] < 0.01  # what the SLA read before the fix


def test_a_statement_that_becomes_the_heaviest_gets_its_series_within_two_polls():
    fake, state, opts = FakeStatements(), new_state(), options(top_n=2)
    for qid in (1, 2, 3):
        fake.call(qid, 1.0)
    run(state, fake, 0.0, opts)
    last: dict[str, float] = {}  # each series' latest value, as Prometheus keeps it
    for poll in range(1, 4):  # 1 and 2 are the workload; 3 is idle
        fake.call(1, 10.0, times=100)
        fake.call(2, 10.0, times=90)
        last.update(by_queryid(run(state, fake, 60.0 * poll, opts), "hiw_statement_calls"))
    exported = []
    for poll in range(4, 7):  # a deploy: 3 is now the heaviest (not dominant), 3 statements
        fake.call(1, 10.0, times=100)
        fake.call(2, 10.0, times=90)
        fake.call(3, 10.0, times=150)
        exported.append(by_queryid(run(state, fake, 60.0 * poll, opts), "hiw_statement_calls"))
    assert exported[1]["3"] == 0  # its series exists by the second poll, starting at 0
    assert exported[2]["3"] == 150  # and rate() sees every interval after the promotion
    assert set(exported[2]) == {"1", "3", "other"}  # the lightest member made room
    for values in exported:
        last.update(values)
    total = sum(last.values())
    assert total == 6 * 100 + 6 * 90 + 3 * 150  # every call after the baseline, once


def test_a_close_challenger_enters_on_its_second_poll_in_the_top_n():
    fake, state, opts = FakeStatements(), new_state(), options(top_n=1)
    fake.call(1, 1.0)
    fake.call(2, 1.0)
    run(state, fake, 0.0, opts)
    fake.call(1, 10.0, times=100)
    run(state, fake, 60.0, opts)
    fake.call(2, 10.0, times=110)  # heavier, but not dominant: once is not enough
    fake.call(1, 10.0, times=100)
    assert "2" not in by_queryid(run(state, fake, 120.0, opts), "hiw_statement_calls")
    fake.call(2, 10.0, times=110)
    fake.call(1, 10.0, times=100)
    assert "2" in by_queryid(run(state, fake, 180.0, opts), "hiw_statement_calls")


def test_statements_trading_places_at_the_edge_do_not_flap():
    fake, state, opts = FakeStatements(), new_state(), options(top_n=2)
    for qid in (1, 2, 3):
        fake.call(qid, 1.0)
    run(state, fake, 0.0, opts)
    exported = []
    for poll in range(1, 13):
        fake.call(1, 10.0, times=1000)
        heavier, lighter = (2, 3) if poll % 2 else (3, 2)
        fake.call(heavier, 10.0, times=110)
        fake.call(lighter, 10.0, times=100)
        calls = by_queryid(run(state, fake, 60.0 * poll, opts), "hiw_statement_calls")
        exported.append(frozenset(calls))
    assert len(set(exported[2:])) == 1  # settled, no series churn


def test_an_idle_member_leaves_after_the_hold_time():
    fake, state = FakeStatements(), new_state()
    opts = options(top_n=2, top_n_hold=300.0)
    for qid in (1, 2, 3):
        fake.call(qid, 1.0)
    run(state, fake, 0.0, opts)
    fake.call(1, 5.0, times=10)
    fake.call(2, 5.0, times=10)
    run(state, fake, 60.0, opts)
    for poll in range(2, 9):  # 2 goes idle; 3 takes light, steady load
        fake.call(1, 5.0, times=10)
        fake.call(3, 1.0, times=2)
        calls = by_queryid(run(state, fake, 60.0 * poll, opts), "hiw_statement_calls")
    assert "2" not in calls
    assert "3" in calls


def test_a_new_server_behind_the_target_is_a_new_baseline_not_a_spike():
    fake, state, opts = FakeStatements(), new_state(), options()
    fake.call(1, 5.0, times=10)
    summary = {"system_identifier": 1, "timeline": 1, "started": 100.0}
    run_with(state, fake, 0.0, opts, summary)
    fake.call(1, 5.0, times=10)
    before = run_with(state, fake, 60.0, opts, summary)
    # failover: the standby's pg_stat_statements has its own, larger counters
    fake.call(1, 50.0, times=5000)
    for changed in ({"timeline": 2}, {"started": 500.0}, {"system_identifier": 2}):
        summary = {**summary, **changed}
        after = run_with(state, fake, 120.0, opts, summary)
        assert by_queryid(after, "hiw_statement_calls") == by_queryid(before, "hiw_statement_calls")
        assert histogram_samples(after) == histogram_samples(before)
        assert gauge_value(after, "hiw_query_latency_window_calls") == 10
    assert counter_by(after, "hiw_statements_resets_detected", "reason")["server_changed"] == 3


def test_a_reset_between_the_reads_is_a_new_baseline():
    fake, state, opts = FakeStatements(), new_state(), options()
    fake.call(1, 5.0, times=10)
    run_with(state, fake, 0.0, opts, {"stats_reset_before": 1.0, "stats_reset": 1.0})
    fake.call(1, 5.0, times=10)
    before = run_with(state, fake, 60.0, opts, {"stats_reset_before": 1.0, "stats_reset": 1.0})
    fake.call(1, 5.0, times=10)
    # the rows were read before a reset that the second marker read saw
    after = run_with(state, fake, 120.0, opts, {"stats_reset_before": 1.0, "stats_reset": 2.0})
    assert by_queryid(after, "hiw_statement_calls") == by_queryid(before, "hiw_statement_calls")
    fake.reset()
    fake.call(1, 5.0, times=3)
    later = run_with(state, fake, 180.0, opts, {"stats_reset_before": 2.0, "stats_reset": 2.0})
    # the interval of the reset during the read is lost, never counted twice
    assert sum(by_queryid(later, "hiw_statement_calls").values()) == 13


def test_a_per_entry_reset_with_more_calls_is_seen_on_13_without_info():
    """pg_stat_statements_reset(userid, dbid, queryid), then more calls than before: the
    counters grew, but min/max and the moments show the entry started again."""
    fake, state, opts = FakeStatements(), new_state(), options()
    fake.call(1, 1.0, times=50)
    fake.call(1, 100.0, times=50)
    run_with(state, fake, 0.0, opts, {})
    fake.stats.clear()
    fake.call(1, 5.0, times=400)  # after the reset: 400 calls at 5 ms
    families = run_with(state, fake, 60.0, opts, {})
    assert sum(by_queryid(families, "hiw_statement_calls").values()) == 400
    assert math.isclose(quantiles_of(families)["0.99"], 0.005, rel_tol=0.03)
    assert counter_by(families, "hiw_statements_resets_detected", "reason")["entry_reset"] == 1


def test_buckets_below_the_grid_resolution_are_a_config_error(tmp_path):
    from hiw_monitor.config import load
    from hiw_monitor.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("targets: [{name: a, dsn: 'host=127.0.0.1 dbname=x'}]\n"
                    "collectors: {statements: {buckets: [0.0000005, 0.1]}}\n")
    with pytest.raises(ConfigError) as info:
        load(environ={"HIW_MONITOR_CONFIG": str(path)})
    assert "collectors.statements.buckets" in str(info.value)
    assert "1 us" in str(info.value)


def run_with(state, fake, now, opts, summary):
    server = {key: summary.get(key) for key in ("system_identifier", "timeline", "started")}
    reset = None
    if "stats_reset" in summary:
        reset = (summary.get("stats_reset_before", summary["stats_reset"]),
                 summary["stats_reset"])
    rows = rows_for(fake, server=server, reset=reset)
    return {f.name: f for f in transform(rows, Context("t", SERVER, opts, now, state, PLAN))}


def histogram_samples(families):
    return [(s.name, s.labels.get("le"), s.value)
            for s in families["hiw_query_duration_seconds"].samples]


def test_one_statement_with_two_latencies_keeps_its_slow_mode():
    """The same SQL either answers in 2 ms or waits 150 ms (a lock, a cold cache): the
    interval's variance is the largest [min, max] allows, so the calls sit at the ends."""
    fake, state, opts = FakeStatements(), new_state(), options()
    fake.call(1, 2.0, times=5)
    fake.call(1, 150.0)
    run(state, fake, 0.0, opts)
    fake.call(1, 2.0, times=90)
    fake.call(1, 150.0, times=10)
    families = run(state, fake, 60.0, opts)
    assert math.isclose(quantiles_of(families)["0.95"], 0.150, rel_tol=0.03)
    assert math.isclose(quantiles_of(families)["0.5"], 0.002, rel_tol=0.03)
    assert gauge_value(families, "hiw_sla_query_latency_met") == 0


def test_the_sla_band_is_wide_when_p95_sits_between_fast_and_slow_statements():
    fake, state, opts = FakeStatements(), new_state(), options()
    fake.call(1, 0.1)
    fake.call(2, 30.0)
    run(state, fake, 0.0, opts)
    fake.call(1, 0.1, times=950)  # p95 is exactly where the fast calls end
    fake.call(2, 30.0, times=50)
    band = {s.labels["bound"]: s.value for s in
            run(state, fake, 60.0, opts)["hiw_sla_query_latency_band_seconds"].samples}
    assert band["lower"] < 0.0002
    assert band["upper"] > 0.025
    calm = FakeStatements()
    calm.call(3, 20.0)
    calm_state = new_state()
    run(calm_state, calm, 0.0, opts)
    calm.call(3, 20.0, times=1000)
    band = {s.labels["bound"]: s.value for s in
            run(calm_state, calm, 60.0, opts)["hiw_sla_query_latency_band_seconds"].samples}
    assert band["upper"] / band["lower"] < 1.1
