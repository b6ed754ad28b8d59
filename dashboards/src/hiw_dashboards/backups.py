"""HiW — Backups and DR: Backup freshness against the review's 24 h / 48 h rules, RPO/RTO,
restore verification and WAL archiving.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from hiw_dashboards.common import (
    ANY_IS_BAD,
    BACKUP_AGE,
    GREEN,
    MET_BREACHED,
    ONE_IS_GOOD,
    STATUS,
    YES_NO,
    Row,
    Spec,
    bargauge,
    by_name,
    by_regexp,
    cell,
    color_scheme,
    columns_table,
    fixed_color,
    labels_table,
    mappings,
    q,
    reference,
    stat,
    steps,
    table,
    thresholds,
    timeseries,
    unit,
)

FILENAME = "hiw-backups.json"

ROWS = [
    Row(
        "Backup health",
        [
            stat(
                "Backups configured",
                "Configured and enabled backups (hiw_backups_configured).",
                [
                    q('hiw_backups_configured{target=~"$target"}'),
                ],
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
            stat(
                "Never succeeded",
                (
                    "Configured backups without any successful run (sum of "
                    "hiw_backup_never_succeeded)."
                ),
                [
                    q('sum by (target) (hiw_backup_never_succeeded{target=~"$target"})'),
                ],
                thresholds=ANY_IS_BAD,
            ),
            stat(
                "Failed runs (24 h)",
                (
                    "Failed runs that started in the last 24 hours, all backups (sum of "
                    "hiw_backup_failures_24h). Red from 3, the HiwBackupFailingRepeatedly "
                    "alert's threshold for one backup."
                ),
                [
                    q('sum by (target) (hiw_backup_failures_24h{target=~"$target"})'),
                ],
                thresholds=steps("green", (1, "orange"), (3, "red")),
            ),
            stat(
                "Running now",
                "Backups with a run in progress (sum of hiw_backup_running).",
                [
                    q('sum by (target) (hiw_backup_running{target=~"$target"})'),
                ],
            ),
            stat(
                "Newest backup age",
                (
                    "Age of the newest successful backup of any configuration "
                    "(hiw_backup_newest_success_age_seconds). Red from 24 h, the review's "
                    "RPO."
                ),
                [
                    q('hiw_backup_newest_success_age_seconds{target=~"$target"}'),
                ],
                unit="s",
                thresholds=steps("green", (86400, "red")),
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
                w=6,
            ),
            table(
                "Last run outcome",
                (
                    "Outcome of each backup's newest run (hiw_backup_last_run_status == "
                    "1): success, failure or running."
                ),
                [
                    q('hiw_backup_last_run_status{target=~"$target"} == 1'),
                ],
                labels_table(rename={"backup_name": "backup"}),
                overrides=[
                    by_name("status", mappings(STATUS), cell("color-background")),
                ],
                w=6,
            ),
            timeseries(
                "Backup age",
                (
                    "Time since the newest successful run of each backup "
                    "(hiw_backup_age_seconds). Dashed lines: the review's default "
                    "thresholds, 24 h (warning) and 48 h (critical); per-backup thresholds "
                    "are in 'Backup details'."
                ),
                [
                    q('hiw_backup_age_seconds{target=~"$target"}', "{{backup_name}} ({{target}})"),
                ],
                unit="s",
                thresholds=BACKUP_AGE,
                dashed_thresholds=True,
                w=6,
            ),
            bargauge(
                "Backup age / critical threshold",
                (
                    "hiw_backup_age_seconds / hiw_backup_critical_threshold_seconds per "
                    "backup: 100 % is the backup's own critical threshold (red). With the "
                    "default thresholds the warning threshold is at 50 %."
                ),
                [
                    q(
                        (
                            'hiw_backup_age_seconds{target=~"$target"} / on (target, '
                            "backup_name, type) "
                            'hiw_backup_critical_threshold_seconds{target=~"$target"}'
                        ),
                        "{{backup_name}} ({{target}})",
                    ),
                ],
                unit="percentunit",
                thresholds=ANY_IS_BAD,
                max=1.5,
            ),
            table(
                "Backup details",
                (
                    "One row per backup: age of the newest success and the backup's own "
                    "warning and critical thresholds, size and duration of the newest "
                    "success, mean size of the last successful runs (default 10), failed "
                    "runs in the last 24 h, and how long a run in progress has run (0 when "
                    "none)."
                ),
                [
                    q('hiw_backup_age_seconds{target=~"$target"}'),
                    q('hiw_backup_warning_threshold_seconds{target=~"$target"}'),
                    q('hiw_backup_critical_threshold_seconds{target=~"$target"}'),
                    q('hiw_backup_last_size_bytes{target=~"$target"}'),
                    q('hiw_backup_average_size_bytes{target=~"$target"}'),
                    q('hiw_backup_last_duration_seconds{target=~"$target"}'),
                    q('hiw_backup_failures_24h{target=~"$target"}'),
                    q('hiw_backup_running_seconds{target=~"$target"}'),
                ],
                columns_table(
                    [
                        "Age",
                        "Warning after",
                        "Critical after",
                        "Last size",
                        "Average size",
                        "Last duration",
                        "Failures (24 h)",
                        "Running for",
                    ],
                    labels={"backup_name": "backup"},
                ),
                overrides=[
                    by_name("Age", unit("s")),
                    by_name("Warning after", unit("s")),
                    by_name("Critical after", unit("s")),
                    by_name("Last size", unit("bytes")),
                    by_name("Average size", unit("bytes")),
                    by_name("Last duration", unit("s")),
                    by_name("Failures (24 h)", unit("short")),
                    by_name("Running for", unit("s")),
                    by_name(
                        "Failures (24 h)",
                        unit("short"),
                        thresholds(steps("green", (1, "orange"), (3, "red"))),
                        color_scheme(dm.FieldColorModeId.THRESHOLDS),
                        cell("color-background"),
                    ),
                ],
                w=24,
            ),
        ],
    ),
    Row(
        "Size, duration and runs",
        [
            timeseries(
                "Last backup size",
                ("Size of each backup's newest successful run (hiw_backup_last_size_bytes)."),
                [
                    q(
                        'hiw_backup_last_size_bytes{target=~"$target"}',
                        "{{backup_name}} ({{target}})",
                    ),
                ],
                unit="bytes",
                w=6,
            ),
            timeseries(
                "Last backup duration",
                (
                    "end - start of each backup's newest successful run "
                    "(hiw_backup_last_duration_seconds)."
                ),
                [
                    q(
                        'hiw_backup_last_duration_seconds{target=~"$target"}',
                        "{{backup_name}} ({{target}})",
                    ),
                ],
                unit="s",
                w=6,
            ),
            timeseries(
                "Runs in progress",
                (
                    "How long the oldest run in progress of each backup has been running "
                    "(hiw_backup_running_seconds; 0 when none)."
                ),
                [
                    q(
                        'hiw_backup_running_seconds{target=~"$target"}',
                        "{{backup_name}} ({{target}})",
                    ),
                ],
                unit="s",
                w=6,
            ),
            timeseries(
                "Failed runs in the last 24 h",
                (
                    "Failed runs that started in the last 24 hours, per backup "
                    "(hiw_backup_failures_24h)."
                ),
                [
                    q('hiw_backup_failures_24h{target=~"$target"}', "{{backup_name}} ({{target}})"),
                ],
                bars=True,
                w=6,
            ),
        ],
    ),
    Row(
        "RPO, RTO and restore verification",
        [
            stat(
                "RPO met",
                (
                    "hiw_backup_rpo_met: 1 when the newest successful backup of any "
                    "configuration is younger than the RPO target."
                ),
                [
                    q('hiw_backup_rpo_met{target=~"$target"}'),
                ],
                thresholds=ONE_IS_GOOD,
                mappings=MET_BREACHED,
                w=6,
            ),
            stat(
                "RPO and RTO targets",
                (
                    "The configured targets: hiw_backup_rpo_target_seconds (default 24 h) "
                    "and hiw_backup_rto_target_seconds (default 2 h), the review's RPO and "
                    "RTO."
                ),
                [
                    q('hiw_backup_rpo_target_seconds{target=~"$target"}', "RPO {{target}}"),
                    q('hiw_backup_rto_target_seconds{target=~"$target"}', "RTO {{target}}"),
                ],
                unit="s",
                color_mode=cm.BigValueColorMode.VALUE,
                w=6,
            ),
            stat(
                "Restore verification configured",
                (
                    "hiw_backup_restore_verification_configured: 'yes' when the backup log "
                    "records restore verification; 'no' means restores are not verified at "
                    "all (the review asks for automated restore testing)."
                ),
                [
                    q('hiw_backup_restore_verification_configured{target=~"$target"}'),
                ],
                thresholds=ONE_IS_GOOD,
                mappings=YES_NO,
                w=6,
            ),
            stat(
                "RTO met",
                (
                    "hiw_backup_rto_met per backup: 1 when its newest verified restore "
                    "succeeded within the RTO target. Only backups with a verification "
                    "result appear."
                ),
                [
                    q('hiw_backup_rto_met{target=~"$target"}', "{{backup_name}} ({{target}})"),
                ],
                thresholds=ONE_IS_GOOD,
                mappings=MET_BREACHED,
                w=6,
            ),
            timeseries(
                "Newest backup age vs RPO target",
                (
                    "Age of the newest successful backup of any configuration "
                    "(hiw_backup_newest_success_age_seconds) against the RPO target "
                    "(hiw_backup_rpo_target_seconds, dashed)."
                ),
                [
                    q(
                        'hiw_backup_newest_success_age_seconds{target=~"$target"}',
                        "{{target}} newest backup age",
                    ),
                    q('hiw_backup_rpo_target_seconds{target=~"$target"}', "{{target}} RPO target"),
                ],
                unit="s",
                overrides=[
                    reference("B"),
                ],
            ),
            table(
                "Restore verification",
                (
                    "Per backup with a recorded verification: whether the newest "
                    "verification succeeded (hiw_backup_restore_test_success), its age "
                    "(hiw_backup_restore_test_age_seconds), the restore duration "
                    "(hiw_backup_restore_test_duration_seconds) and whether it met the RTO "
                    "(hiw_backup_rto_met). Empty when restore verification is not "
                    "configured."
                ),
                [
                    q('hiw_backup_restore_test_success{target=~"$target"}'),
                    q('hiw_backup_restore_test_age_seconds{target=~"$target"}'),
                    q('hiw_backup_restore_test_duration_seconds{target=~"$target"}'),
                    q('hiw_backup_rto_met{target=~"$target"}'),
                ],
                columns_table(
                    ["Succeeded", "Verified ago", "Restore duration", "RTO met"],
                    labels={"backup_name": "backup"},
                ),
                overrides=[
                    by_name("Verified ago", unit("s")),
                    by_name("Restore duration", unit("s")),
                    by_name("Succeeded", unit("short"), mappings(YES_NO), cell("color-background")),
                    by_name(
                        "RTO met", unit("short"), mappings(MET_BREACHED), cell("color-background")
                    ),
                ],
            ),
        ],
    ),
    Row(
        "WAL archiving",
        [
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
                w=8,
            ),
            stat(
                "Archive mode",
                "archive_mode (hiw_wal_archive_mode == 1): off, on or always.",
                [
                    q('hiw_wal_archive_mode{target=~"$target"} == 1', "{{target}}: {{mode}}"),
                ],
                thresholds=GREEN,
                text_mode=cm.BigValueTextMode.NAME,
                overrides=[
                    by_regexp(".*: on", fixed_color("green")),
                    by_regexp(".*: always", fixed_color("green")),
                    by_regexp(".*: off", fixed_color("orange")),
                ],
                w=8,
            ),
            stat(
                "Archiver configured",
                (
                    "hiw_wal_archive_configured: 'yes' when archive_command or "
                    "archive_library (15+) is set."
                ),
                [
                    q('hiw_wal_archive_configured{target=~"$target"}'),
                ],
                thresholds=ONE_IS_GOOD,
                mappings=YES_NO,
                w=8,
            ),
            timeseries(
                "WAL segments archived and failed",
                (
                    "WAL segments archived and archive attempts failed per second (rate of "
                    "hiw_wal_archived_total and hiw_wal_archive_failed_total, 5 min)."
                ),
                [
                    q('rate(hiw_wal_archived_total{target=~"$target"}[5m])', "{{target}} archived"),
                    q(
                        'rate(hiw_wal_archive_failed_total{target=~"$target"}[5m])',
                        "{{target}} failed",
                    ),
                ],
                unit="ops",
                overrides=[
                    by_regexp(".*failed", fixed_color("red")),
                ],
            ),
            timeseries(
                "Time since last archived / failed",
                (
                    "Time since the archiver last archived a segment "
                    "(hiw_wal_last_archived_age_seconds) and since its last failure "
                    "(hiw_wal_last_failed_age_seconds). A growing 'archived' age on a busy "
                    "primary means WAL is not being archived."
                ),
                [
                    q(
                        'hiw_wal_last_archived_age_seconds{target=~"$target"}',
                        "{{target}} since last archived",
                    ),
                    q(
                        'hiw_wal_last_failed_age_seconds{target=~"$target"}',
                        "{{target}} since last failure",
                    ),
                ],
                unit="s",
            ),
        ],
    ),
]


def spec() -> Spec:
    return Spec(
        uid="hiw-backups",
        title="HiW — Backups and DR",
        description=(
            "Backup freshness against the review's 24 h / 48 h rules, RPO/RTO, "
            "restore verification and WAL archiving."
        ),
        rows=ROWS,
    )
