"""HiW — Query performance: Statement latency against the p95 < 100 ms SLA, and which
statements cost the most (pg_stat_statements via the statements collector).
"""

from __future__ import annotations

from hiw_dashboards.common import (
    ANY_IS_A_WARNING,
    DOTTED,
    LATENCY_SLA,
    MET_BREACHED,
    ONE_IS_GOOD,
    TABLE_LEGEND,
    Row,
    Spec,
    q,
    reference,
    stat,
    state_timeline,
    steps,
    timeseries,
)

FILENAME = "hiw-query-performance.json"

ROWS = [
    Row(
        "SLA",
        [
            stat(
                "Latency quantiles",
                (
                    "p50, p95 and p99 of statement execution time over the agent's rolling "
                    "window (default 5 min), estimated from pg_stat_statements "
                    "(hiw_query_latency_seconds). Red from 100 ms, the review's SLA."
                ),
                [
                    q('hiw_query_latency_seconds{target=~"$target"}', "q{{quantile}} {{target}}"),
                ],
                unit="s",
                thresholds=LATENCY_SLA,
                w=8,
            ),
            stat(
                "Mean latency",
                (
                    "Mean execution time per call over the agent's window "
                    "(hiw_query_latency_mean_seconds; exact, not estimated)."
                ),
                [
                    q('hiw_query_latency_mean_seconds{target=~"$target"}'),
                ],
                unit="s",
                thresholds=LATENCY_SLA,
            ),
            stat(
                "SLA met",
                (
                    "hiw_sla_query_latency_met: 1 (met) when the agent's windowed latency "
                    "at the SLA quantile (default p95) is within the SLA target (default "
                    "100 ms), also when there were no calls; 0 (breached) otherwise."
                ),
                [
                    q('hiw_sla_query_latency_met{target=~"$target"}'),
                ],
                thresholds=ONE_IS_GOOD,
                mappings=MET_BREACHED,
            ),
            stat(
                "Slow statements",
                (
                    "Statements in the SLA scope whose mean time in the last collector "
                    "interval exceeded the slow threshold (hiw_slow_statements; default "
                    "100 ms, the review's slow_queries view)."
                ),
                [
                    q('hiw_slow_statements{target=~"$target"}'),
                ],
                thresholds=ANY_IS_A_WARNING,
            ),
            stat(
                "Calls in window",
                (
                    "Calls behind the quantiles (hiw_query_latency_window_calls): few "
                    "calls make the quantiles less meaningful."
                ),
                [
                    q('hiw_query_latency_window_calls{target=~"$target"}'),
                ],
            ),
            timeseries(
                "Latency quantiles (agent window)",
                (
                    "The agent's windowed p50/p95/p99 (hiw_query_latency_seconds) against "
                    "the configured SLA target (hiw_sla_query_latency_target_seconds, "
                    "dashed), with the uncertainty band of the SLA quantile "
                    "(hiw_sla_query_latency_band_seconds, dotted: the quantile 1 point "
                    "either side; a wide band means the estimate is uncertain)."
                ),
                [
                    q('hiw_query_latency_seconds{target=~"$target"}', "{{target}} q{{quantile}}"),
                    q(
                        'hiw_sla_query_latency_target_seconds{target=~"$target"}',
                        "{{target}} SLA target",
                    ),
                    q(
                        'hiw_sla_query_latency_band_seconds{target=~"$target"}',
                        "{{target}} SLA quantile band ({{bound}})",
                    ),
                ],
                unit="s",
                overrides=[
                    reference("B"),
                    reference("C", "gray", style=DOTTED),
                ],
            ),
            timeseries(
                "Latency quantiles (histogram)",
                (
                    "histogram_quantile() over "
                    "rate(hiw_query_duration_seconds_bucket[5m]): the Prometheus-side "
                    "estimate, comparable across targets and time ranges. The dashed line "
                    "is the configured SLA target."
                ),
                [
                    q(
                        (
                            "histogram_quantile(0.5, sum by (target, le) "
                            '(rate(hiw_query_duration_seconds_bucket{target=~"$target"}[5m])))'
                        ),
                        "{{target}} p50",
                    ),
                    q(
                        (
                            "histogram_quantile(0.95, sum by (target, le) "
                            '(rate(hiw_query_duration_seconds_bucket{target=~"$target"}[5m])))'
                        ),
                        "{{target}} p95",
                    ),
                    q(
                        (
                            "histogram_quantile(0.99, sum by (target, le) "
                            '(rate(hiw_query_duration_seconds_bucket{target=~"$target"}[5m])))'
                        ),
                        "{{target}} p99",
                    ),
                    q(
                        'hiw_sla_query_latency_target_seconds{target=~"$target"}',
                        "{{target}} SLA target",
                    ),
                ],
                unit="s",
                overrides=[
                    reference("D"),
                ],
            ),
            timeseries(
                "Mean latency over time",
                (
                    "Mean execution time per call: the agent's window "
                    "(hiw_query_latency_mean_seconds) and the histogram's rate(_sum) / "
                    "rate(_count) over 5 min."
                ),
                [
                    q(
                        'hiw_query_latency_mean_seconds{target=~"$target"}',
                        "{{target}} agent window",
                    ),
                    q(
                        (
                            "sum by (target) "
                            '(rate(hiw_query_duration_seconds_sum{target=~"$target"}[5m])) / sum '
                            "by (target) "
                            '(rate(hiw_query_duration_seconds_count{target=~"$target"}[5m]))'
                        ),
                        "{{target}} 5m rate",
                    ),
                ],
                unit="s",
                w=8,
            ),
            timeseries(
                "Query throughput",
                (
                    "Calls per second of the statements in the SLA scope "
                    "(rate(hiw_query_duration_seconds_count[5m]))."
                ),
                [
                    q(
                        "sum by (target) "
                        '(rate(hiw_query_duration_seconds_count{target=~"$target"}[5m]))'
                    ),
                ],
                unit="ops",
                w=8,
            ),
            state_timeline(
                "SLA met over time",
                (
                    "hiw_sla_query_latency_met over time: green while the windowed latency "
                    "at the SLA quantile is within the target, red while it is breached."
                ),
                [
                    q('hiw_sla_query_latency_met{target=~"$target"}'),
                ],
                mappings=MET_BREACHED,
            ),
        ],
    ),
    Row(
        "Statements",
        [
            timeseries(
                "Top statements by execution time",
                (
                    "The 10 statements with the most execution time per second (topk over "
                    "rate(hiw_statement_exec_seconds_total[5m])), by queryid, database and "
                    "user. The 'other' series (statements outside the agent's top N) is "
                    "left out. 1 s/s = one backend busy full time."
                ),
                [
                    q(
                        (
                            "topk(10, sum by (target, datname, user, queryid) "
                            "(rate(hiw_statement_exec_seconds_total{"
                            'target=~"$target",queryid!="other"}[5m])))'
                        ),
                        "{{queryid}} {{datname}}/{{user}} ({{target}})",
                    ),
                ],
                unit="s",
                legend=TABLE_LEGEND,
                h=9,
            ),
            timeseries(
                "Top statements by calls",
                (
                    "The 10 statements with the most calls per second (topk over "
                    "rate(hiw_statement_calls_total[5m])), 'other' left out."
                ),
                [
                    q(
                        (
                            "topk(10, sum by (target, datname, user, queryid) "
                            "(rate(hiw_statement_calls_total{"
                            'target=~"$target",queryid!="other"}[5m])))'
                        ),
                        "{{queryid}} {{datname}}/{{user}} ({{target}})",
                    ),
                ],
                unit="ops",
                legend=TABLE_LEGEND,
                h=9,
            ),
            timeseries(
                "Mean time per call, slowest statements",
                (
                    "The 10 statements with the highest mean execution time per call over "
                    "5 min (rate of hiw_statement_exec_seconds_total / rate of "
                    "hiw_statement_calls_total). The dashed line is the slow threshold "
                    "(hiw_slow_statement_threshold_seconds)."
                ),
                [
                    q(
                        (
                            "topk(10, sum by (target, datname, user, queryid) "
                            "(rate(hiw_statement_exec_seconds_total{"
                            'target=~"$target",queryid!="other"}[5m])) '
                            "/ (sum by (target, datname, user, queryid) "
                            "(rate(hiw_statement_calls_total{"
                            'target=~"$target",queryid!="other"}[5m])) '
                            "> 0))"
                        ),
                        "{{queryid}} {{datname}}/{{user}} ({{target}})",
                    ),
                    q(
                        'hiw_slow_statement_threshold_seconds{target=~"$target"}',
                        "{{target}} slow threshold",
                    ),
                ],
                unit="s",
                overrides=[
                    reference("B", "orange"),
                ],
                w=8,
            ),
            timeseries(
                "Slow statements over time",
                (
                    "hiw_slow_statements: statements whose mean time in the last interval "
                    "exceeded the slow threshold (default 100 ms)."
                ),
                [
                    q('hiw_slow_statements{target=~"$target"}'),
                ],
                w=8,
            ),
            timeseries(
                "Execution and planning time",
                (
                    "Time per second spent executing (hiw_statement_exec_seconds_total) "
                    "and planning (hiw_statement_plan_seconds_total, only with "
                    "pg_stat_statements.track_planning) all top-level statements, 'other' "
                    "included."
                ),
                [
                    q(
                        (
                            "sum by (target) "
                            '(rate(hiw_statement_exec_seconds_total{target=~"$target"}[5m]))'
                        ),
                        "{{target}} execution",
                    ),
                    q(
                        (
                            "sum by (target) "
                            '(rate(hiw_statement_plan_seconds_total{target=~"$target"}[5m]))'
                        ),
                        "{{target}} planning",
                    ),
                ],
                unit="s",
                w=8,
            ),
            timeseries(
                "pg_stat_statements fill ratio",
                (
                    "Entries in pg_stat_statements / pg_stat_statements.max "
                    "(hiw_statements_fill_ratio). Near 100 % entries are evicted and their "
                    "statistics lost; orange from 90 %."
                ),
                [
                    q('hiw_statements_fill_ratio{target=~"$target"}'),
                ],
                unit="percentunit",
                thresholds=steps("green", (0.9, "orange")),
                dashed_thresholds=True,
                max=1,
                w=8,
            ),
            timeseries(
                "pg_stat_statements deallocations",
                (
                    "Entries evicted from pg_stat_statements in the last hour "
                    "(increase(hiw_statements_deallocations_total[1h]); PostgreSQL 14+). "
                    "Non-zero means pg_stat_statements.max is too small for the workload."
                ),
                [
                    q('increase(hiw_statements_deallocations_total{target=~"$target"}[1h])'),
                ],
                w=8,
            ),
            timeseries(
                "Shared blocks (all statements)",
                (
                    "Shared buffer hits, reads, dirtied and written blocks per second over "
                    "all statements (hiw_statement_shared_blocks_*_total). Blocks are 8 "
                    "KiB by default."
                ),
                [
                    q(
                        (
                            "sum by (target) "
                            '(rate(hiw_statement_shared_blocks_hit_total{target=~"$target"}[5m]))'
                        ),
                        "{{target}} hit",
                    ),
                    q(
                        (
                            "sum by (target) "
                            '(rate(hiw_statement_shared_blocks_read_total{target=~"$target"}[5m]))'
                        ),
                        "{{target}} read",
                    ),
                    q(
                        (
                            "sum by (target) "
                            "(rate(hiw_statement_shared_blocks_dirtied_total{"
                            'target=~"$target"}[5m]))'
                        ),
                        "{{target}} dirtied",
                    ),
                    q(
                        (
                            "sum by (target) "
                            "(rate(hiw_statement_shared_blocks_written_total{"
                            'target=~"$target"}[5m]))'
                        ),
                        "{{target}} written",
                    ),
                ],
                w=8,
            ),
        ],
    ),
]


def spec() -> Spec:
    return Spec(
        uid="hiw-query-performance",
        title="HiW — Query performance",
        description=(
            "Statement latency against the p95 < 100 ms SLA, and which statements "
            "cost the most (pg_stat_statements via the statements collector)."
        ),
        rows=ROWS,
    )
