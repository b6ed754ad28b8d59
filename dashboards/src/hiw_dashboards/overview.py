"""HiW — Overview: Is the Heroes in Waiting database up, fast enough, backed up and fully
monitored?
"""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from hiw_dashboards.common import (
    ANY_IS_BAD,
    BACKUP_AGE,
    CONNECTIONS_HIGH,
    GREEN,
    HEALTH_SCORE,
    LATENCY_SLA,
    MET_BREACHED,
    ONE_IS_GOOD,
    REVIEW_STATUS_COLORS,
    STALE_NO,
    STATUS,
    STATUS_COLORS,
    UP_DOWN,
    Spec,
    bargauge,
    by_name,
    by_regexp,
    cell,
    columns_table,
    fixed_color,
    gauge,
    labels_table,
    mappings,
    q,
    reference,
    stat,
    status_map,
    steps,
    table,
    timeseries,
    unit,
)

FILENAME = "hiw-overview.json"

PANELS = [
    stat(
        "Target up",
        (
            "hiw_up: UP while the agent's connection to the database works; DOWN "
            "when it is down, refuses connections or the agent is waiting out a "
            "reconnect backoff."
        ),
        [
            q('hiw_up{target=~"$target"}'),
        ],
        thresholds=ONE_IS_GOOD,
        mappings=UP_DOWN,
    ),
    stat(
        "Availability (30 d)",
        (
            "Share of the last 30 days during which hiw_up was 1 (recording rule "
            "hiw:target_availability:ratio_30d from alerts/hiw_monitor.rules.yml; "
            "needs those rules loaded in Prometheus). Green from 99.95 %, the "
            "review's availability SLA."
        ),
        [
            q('hiw:target_availability:ratio_30d{target=~"$target"}'),
        ],
        unit="percentunit",
        thresholds=steps("red", (0.9995, "green")),
        decimals=3,
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
        "p95 query latency",
        (
            "The agent's p95 of statement execution time over its rolling window "
            '(hiw_query_latency_seconds{quantile="0.95"}). Red from 100 ms, the '
            "review's SLA (p95 < 100 ms); the configured target is "
            "hiw_sla_query_latency_target_seconds."
        ),
        [
            q('hiw_query_latency_seconds{target=~"$target",quantile="0.95"}'),
        ],
        unit="s",
        thresholds=LATENCY_SLA,
    ),
    gauge(
        "Connection utilisation",
        (
            "Client backends / max_connections "
            "(hiw_connections_utilization_ratio). Red from 80 %, the "
            "HiwConnectionsHigh alert's threshold."
        ),
        [
            q('hiw_connections_utilization_ratio{target=~"$target"}'),
        ],
        thresholds=CONNECTIONS_HIGH,
    ),
    stat(
        "Backups not healthy",
        (
            "Backups whose status is warning, critical or unknown "
            "(hiw_backup_status one-hot, status != healthy), per target. 0 means "
            "every configured backup is healthy."
        ),
        [
            q('sum by (target) (hiw_backup_status{target=~"$target",status!="healthy"})'),
        ],
        thresholds=ANY_IS_BAD,
    ),
    timeseries(
        "p95 query latency vs SLA target",
        (
            "The agent's windowed p95 execution time "
            '(hiw_query_latency_seconds{quantile="0.95"}) against the configured '
            "SLA target (hiw_sla_query_latency_target_seconds, dashed). Gaps: no "
            "calls in the window."
        ),
        [
            q('hiw_query_latency_seconds{target=~"$target",quantile="0.95"}', "{{target}} p95"),
            q('hiw_sla_query_latency_target_seconds{target=~"$target"}', "{{target}} SLA target"),
        ],
        unit="s",
        overrides=[
            reference("B"),
        ],
    ),
    table(
        "Backup status",
        (
            "Current status of each configured backup (hiw_backup_status == 1): "
            "healthy (newer than its warning threshold, default 24 h), warning "
            "(older; newer than its critical threshold, default 48 h), critical "
            "(older, or never succeeded), unknown (the backup tables could not be "
            "read)."
        ),
        [
            q('hiw_backup_status{target=~"$target"} == 1'),
        ],
        labels_table(rename={"backup_name": "backup"}),
        overrides=[
            by_name("status", mappings(STATUS), cell("color-background")),
        ],
    ),
    timeseries(
        "Connection utilisation over time",
        (
            "Client backends / max_connections "
            "(hiw_connections_utilization_ratio); the dashed line is 80 %, the "
            "HiwConnectionsHigh alert's threshold."
        ),
        [
            q('hiw_connections_utilization_ratio{target=~"$target"}'),
        ],
        unit="percentunit",
        thresholds=CONNECTIONS_HIGH,
        dashed_thresholds=True,
        max=1,
        w=8,
    ),
    table(
        "Collector health",
        (
            "Per collector: Up (hiw_collector_up, latest run succeeded), Stale "
            "(hiw_collector_stale, series withheld because the last success is "
            "older than stale_after), time since the last success (time() - "
            "hiw_collector_last_success_timestamp_seconds) and the latest run's "
            "duration (hiw_collector_duration_seconds)."
        ),
        [
            q('hiw_collector_up{target=~"$target"}'),
            q('hiw_collector_stale{target=~"$target"}'),
            q('time() - hiw_collector_last_success_timestamp_seconds{target=~"$target"}'),
            q('hiw_collector_duration_seconds{target=~"$target"}'),
        ],
        columns_table(["Up", "Stale", "Since last success", "Duration"]),
        overrides=[
            by_name("Up", unit("short"), mappings(UP_DOWN), cell("color-background")),
            by_name("Stale", unit("short"), mappings(STALE_NO), cell("color-background")),
            by_name("Since last success", unit("s")),
            by_name("Duration", unit("s")),
        ],
        w=10,
    ),
    stat(
        "WAL archiving status",
        (
            "hiw_wal_archiving_status (one-hot): healthy; failing (the newest "
            "archive failure is more recent than the newest success: the archiver "
            "is stuck on a segment); disabled (archive_mode off, or no "
            "archive_command / archive_library)."
        ),
        [
            q('hiw_wal_archiving_status{target=~"$target"} == 1', "{{target}}: {{status}}"),
        ],
        thresholds=GREEN,
        text_mode=cm.BigValueTextMode.NAME,
        overrides=[
            by_regexp(".*: healthy", fixed_color("green")),
            by_regexp(".*: failing", fixed_color("red")),
            by_regexp(".*: disabled", fixed_color("orange")),
        ],
        w=6,
        h=8,
    ),
    table(
        "Failing collectors",
        (
            "Collectors whose latest run failed (hiw_collector_last_error_info == "
            "1) and the reason code (connection, timeout, permission_denied, "
            "undefined_table, ...). Empty when every collector works."
        ),
        [
            q('hiw_collector_last_error_info{target=~"$target"} == 1'),
        ],
        labels_table(),
        overrides=[
            by_name("reason", cell("color-text"), fixed_color("red")),
        ],
        h=7,
    ),
    bargauge(
        "Backup age",
        (
            "Time since the newest successful run of each backup "
            "(hiw_backup_age_seconds; absent for a backup that never succeeded). "
            "Colours use the review's default thresholds (24 h warning, 48 h "
            "critical); per-backup thresholds are on the Backups dashboard."
        ),
        [
            q('hiw_backup_age_seconds{target=~"$target"}', "{{backup_name}} ({{target}})"),
        ],
        unit="s",
        thresholds=BACKUP_AGE,
        w=12,
        h=7,
    ),
    stat(
        "Health score",
        (
            "The DBA review's score, 0 to 10 (hiw_health_score): each check weighs "
            "by severity, each component by its weight (docs/review.md). Orange "
            "below 8.5 (the review's own score), red below 7 (the "
            "HiwHealthScoreLow alert's threshold); the points each check loses are "
            "in Review findings."
        ),
        [
            q('hiw_health_score{target=~"$target"}'),
        ],
        unit="none",
        thresholds=HEALTH_SCORE,
        decimals=1,
        min=0,
        max=10,
        h=8,
    ),
    bargauge(
        "Health by component",
        (
            "hiw_health_component_score, 0 to 10 per component (backups, "
            "availability, latency, connections, maintenance, security and "
            "compliance, replication where there is some). Same colours as the "
            "score."
        ),
        [
            q('hiw_health_component_score{target=~"$target"}', "{{component}} ({{target}})"),
        ],
        unit="none",
        thresholds=HEALTH_SCORE,
        decimals=1,
        max=10,
        w=8,
    ),
    table(
        "Review findings",
        (
            "The review's checks that fail or warn (hiw_review_check_status == 1, "
            "status fail or warn), with their category and severity; the points "
            "each costs the score are hiw_health_check_points_lost. Reasons and "
            "remediations are on the agent's status page and /health."
        ),
        [
            q('hiw_review_check_status{target=~"$target",status=~"fail|warn"} == 1'),
        ],
        labels_table(rename={"backup_name": "backup"}),
        overrides=[
            by_name(
                "status",
                mappings(status_map({**STATUS_COLORS, **REVIEW_STATUS_COLORS})),
                cell("color-background"),
            ),
        ],
    ),
]


def spec() -> Spec:
    return Spec(
        uid="hiw-overview",
        title="HiW — Overview",
        description=(
            "Is the Heroes in Waiting database up, fast enough, backed up and fully monitored?"
        ),
        panels=PANELS,
    )
