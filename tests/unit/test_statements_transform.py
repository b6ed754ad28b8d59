"""The statements transform on fake pg_stat_statements rows: exact totals, monotone
counters through resets and top-N churn, hysteresis, exclusions, query text safety."""

from __future__ import annotations

import math
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from hiw_monitor.collectors.base import Context, ServerInfo
from hiw_monitor.collectors.statements import (
    OPTIONS,
    new_state,
    safe_text,
    select_members,
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


def run(state, fake, now, opts, reset_at=1.0, texts=()):
    rows = {"statements": fake.rows(),
            "summary": [{"max": 5000, "tracked": len(fake.stats), "dealloc": 0,
                         "stats_reset": reset_at, "track_planning": False,
                         "track_io_timing": False}],
            "texts": list(texts)}
    ctx = Context("t", SERVER, opts, now, state)
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
    members = [q for q in calls if q != "other"]
    assert calls["other"] == sum(q * 10 for q in range(1, 6) if str(q) not in members)


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
    quantiles = {s.labels["quantile"]: s.value for s in
                 families["hiw_query_latency_seconds"].samples}
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


def test_hysteresis_keeps_members_until_rank_two_n():
    assert select_members(list("abcdef"), previous=["c", "d"], n=2) == ["c", "d"]
    assert select_members(list("abcdef"), previous=["e"], n=2) == ["a", "b"]
    assert select_members(list("ab"), previous=[], n=5) == ["a", "b"]


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
    quantiles = {s.labels["quantile"]: s.value for s in
                 families["hiw_query_latency_seconds"].samples}
    assert math.isclose(quantiles["0.95"], 0.001, rel_tol=0.03)
    histogram = {s.labels.get("le"): s.value for s in families["hiw_query_duration_seconds"]
                 .samples if s.name.endswith("_bucket")}
    assert histogram["0.3"] == 99  # the outlier sits above 300 ms, alone
    assert histogram["0.5"] == 100
