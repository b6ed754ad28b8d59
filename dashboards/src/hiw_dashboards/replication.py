"""HiW — Replication: Streaming replication and failover: each target's role and timeline, role
changes, standbys streaming against those expected, lag per standby in seconds and bytes (0
when caught up, idle or not), the standby's own WAL receiver, replay and conflicts, and
replication slots retaining WAL.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from hiw_dashboards.common import (
    ACTIVE_YES_NO,
    ANY_IS_A_WARNING,
    ANY_IS_BAD,
    REPLICATION_LAG_SECONDS,
    WAL_RETAINED_HIGH,
    Row,
    Spec,
    by_name,
    cell,
    columns_table,
    labels_table,
    mappings,
    q,
    reference,
    stat,
    table,
    timeseries,
    unit,
)

FILENAME = "hiw-replication.json"

ROWS = [
    Row(
        "Roles and failover",
        [
            stat(
                "Role",
                (
                    "The role of each target now (hiw_server_role == 1): primary or "
                    "standby, read at every run with pg_is_in_recovery(), so a promotion "
                    "shows at the next run."
                ),
                [
                    q('hiw_server_role{target=~"$target"} == 1', "{{target}}: {{role}}"),
                ],
                unit="none",
                text_mode=cm.BigValueTextMode.NAME,
                w=6,
            ),
            stat(
                "Timeline",
                (
                    "Timeline of each target (hiw_server_timeline_id): a promoted standby "
                    "starts a new one; a standby shows the timeline it streams."
                ),
                [
                    q('hiw_server_timeline_id{target=~"$target"}'),
                ],
                unit="none",
                w=6,
            ),
            stat(
                "Role changes (24 h)",
                (
                    "Changes of role the agent saw in the last 24 hours (increase of "
                    "hiw_server_role_changes_total): a failover or switchover. Orange from "
                    "1: the HiwServerRoleChanged alert pages for 15 minutes after each."
                ),
                [
                    q('round(increase(hiw_server_role_changes_total{target=~"$target"}[24h]))'),
                ],
                thresholds=ANY_IS_A_WARNING,
                w=6,
            ),
            stat(
                "Missing standbys",
                (
                    "Physical standbys a primary should have streaming (expected_standbys, "
                    "hiw_replication_standbys_expected) but does not "
                    "(hiw_replication_standbys_connected). Red from 1: the "
                    "HiwReplicationStandbyMissing alert."
                ),
                [
                    q(
                        'clamp_min(hiw_replication_standbys_expected{target=~"$target"} - '
                        'hiw_replication_standbys_connected{target=~"$target"}, 0)'
                    ),
                ],
                thresholds=ANY_IS_BAD,
                w=6,
            ),
            timeseries(
                "Primary role over time",
                (
                    "1 while a target is a primary, 0 while it is a standby "
                    '(hiw_server_role{role="primary"}): a failover is where two lines '
                    "cross."
                ),
                [
                    q('hiw_server_role{target=~"$target", role="primary"}'),
                ],
                unit="none",
                steps_after=True,
                max=1,
            ),
            timeseries(
                "Standbys streaming vs expected",
                (
                    "Physical standbys streaming from each primary "
                    "(hiw_replication_standbys_connected) against the expected_standbys "
                    "option (hiw_replication_standbys_expected, dashed red)."
                ),
                [
                    q(
                        'hiw_replication_standbys_connected{target=~"$target"}',
                        "{{target}} streaming",
                    ),
                    q(
                        'hiw_replication_standbys_expected{target=~"$target"}',
                        "{{target}} expected",
                    ),
                ],
                steps_after=True,
                overrides=[
                    reference("B", fill=True),
                ],
            ),
        ],
    ),
    Row(
        "Seen from the primary",
        [
            timeseries(
                "Replay lag per standby",
                (
                    "How far behind each standby's replay is, in seconds, as its primary "
                    'measures it (hiw_replication_lag_seconds{kind="replay"}): 0 once it '
                    "has replayed up to the primary's current WAL position, however long "
                    "the primary has been idle. The dashed line is 5 minutes, the "
                    "HiwReplicationLagSecondsHigh alert's threshold."
                ),
                [
                    q(
                        (
                            "max by (target, application_name, client_addr) "
                            '(hiw_replication_lag_seconds{target=~"$target", kind="replay"})'
                        ),
                        "{{target}} → {{application_name}} ({{client_addr}})",
                    ),
                ],
                unit="s",
                thresholds=REPLICATION_LAG_SECONDS,
                dashed_thresholds=True,
            ),
            timeseries(
                "WAL behind per standby",
                (
                    "Bytes of WAL each standby has not yet sent, written, flushed or "
                    "replayed, from the primary's current position "
                    "(hiw_replication_lag_bytes by kind). The dashed line is 1 GiB, the "
                    "HiwReplicationLagBytesHigh alert's threshold."
                ),
                [
                    q(
                        (
                            "max by (target, application_name, kind) "
                            '(hiw_replication_lag_bytes{target=~"$target"})'
                        ),
                        "{{target}} → {{application_name}} {{kind}}",
                    ),
                ],
                unit="bytes",
                thresholds=WAL_RETAINED_HIGH,
                dashed_thresholds=True,
            ),
        ],
    ),
    Row(
        "On the standby",
        [
            timeseries(
                "Replay lag on the standby",
                (
                    "The standby's own view (hiw_standby_replay_lag_seconds): 0 when it "
                    "has replayed everything it received, else the time since the last "
                    "replayed transaction committed on the primary. The dashed line is 5 "
                    "minutes, the HiwReplicationLagSecondsHigh alert's threshold."
                ),
                [
                    q('hiw_standby_replay_lag_seconds{target=~"$target"}'),
                ],
                unit="s",
                thresholds=REPLICATION_LAG_SECONDS,
                dashed_thresholds=True,
                w=8,
            ),
            timeseries(
                "WAL received and replayed on the standby",
                (
                    "WAL per second the standby receives (rate of "
                    "hiw_standby_last_received_lsn_bytes) and replays (rate of "
                    "hiw_standby_last_replayed_lsn_bytes): replay below receipt for long "
                    "means the lag grows."
                ),
                [
                    q(
                        'rate(hiw_standby_last_received_lsn_bytes{target=~"$target"}[5m])',
                        "{{target}} received",
                    ),
                    q(
                        'rate(hiw_standby_last_replayed_lsn_bytes{target=~"$target"}[5m])',
                        "{{target}} replayed",
                    ),
                ],
                unit="Bps",
                w=8,
            ),
            timeseries(
                "WAL receiver and replay pause on the standby",
                (
                    "1 while the standby's WAL receiver streams from its primary "
                    "(hiw_standby_streaming; 0 for 5 minutes is the HiwStandbyNotStreaming "
                    "alert), and 1 while replay is paused or a pause is requested "
                    "(hiw_standby_replay_pause_state)."
                ),
                [
                    q('hiw_standby_streaming{target=~"$target"}', "{{target}} streaming"),
                    q(
                        (
                            '1 - hiw_standby_replay_pause_state{target=~"$target", '
                            'state="not_paused"}'
                        ),
                        "{{target}} replay paused",
                    ),
                ],
                unit="none",
                steps_after=True,
                max=1,
                w=8,
            ),
            timeseries(
                "Recovery conflicts on the standby",
                (
                    "Queries cancelled on the standby in the last hour because replay "
                    "needed what they held, by reason (increase of "
                    "hiw_standby_recovery_conflicts_total): snapshot and lock conflicts "
                    "come from long reports against a busy primary."
                ),
                [
                    q(
                        (
                            "sum by (target, reason) "
                            '(increase(hiw_standby_recovery_conflicts_total{target=~"$target"}[1h]))'
                        ),
                        "{{target}} {{reason}}",
                    ),
                ],
            ),
            table(
                "WAL receiver status on the standby",
                (
                    "The state of each standby's WAL receiver "
                    "(hiw_standby_wal_receiver_status == 1): streaming, or stopped (no "
                    "receiver), starting, waiting, restarting, stopping."
                ),
                [
                    q('hiw_standby_wal_receiver_status{target=~"$target"} == 1'),
                ],
                labels_table(order={"target": 0, "status": 1}),
            ),
        ],
    ),
    Row(
        "Replication slots",
        [
            timeseries(
                "WAL retained per slot",
                (
                    "WAL each replication slot keeps from removal "
                    "(hiw_replication_slot_retained_bytes): an inactive slot's line only "
                    "grows, until the disk fills. The dashed line is 1 GiB, the "
                    "HiwReplicationSlotInactive alert's threshold (with 30 minutes "
                    "inactive)."
                ),
                [
                    q(
                        'hiw_replication_slot_retained_bytes{target=~"$target"}',
                        "{{target}} {{slot_name}}",
                    ),
                ],
                unit="bytes",
                thresholds=WAL_RETAINED_HIGH,
                dashed_thresholds=True,
            ),
            table(
                "Replication slots",
                (
                    "Each slot: in use (hiw_replication_slot_active), inactive for how "
                    "long (hiw_replication_slot_inactive_seconds; from inactive_since on "
                    "17+, else since the agent first saw it unused), WAL retained "
                    "(hiw_replication_slot_retained_bytes) and wal_status "
                    "(hiw_replication_slot_wal_status == 1: reserved, extended, "
                    "unreserved, lost)."
                ),
                [
                    q('hiw_replication_slot_active{target=~"$target"}'),
                    q('hiw_replication_slot_inactive_seconds{target=~"$target"}'),
                    q('hiw_replication_slot_retained_bytes{target=~"$target"}'),
                    q('hiw_replication_slot_wal_status{target=~"$target"} == 1'),
                ],
                columns_table(
                    ["active", "inactive", "retained", ""],
                    ["D"],
                    pre_organize=False,
                    order={
                        "target": 0,
                        "slot_name": 1,
                        "slot_type": 2,
                        "Value #A": 3,
                        "Value #B": 4,
                        "Value #C": 5,
                        "wal_status": 6,
                    },
                ),
                overrides=[
                    by_name("inactive", unit("s")),
                    by_name("retained", unit("bytes")),
                    by_name("active", mappings(ACTIVE_YES_NO), cell("color-text")),
                ],
            ),
        ],
    ),
]


def spec() -> Spec:
    return Spec(
        uid="hiw-replication",
        title="HiW — Replication",
        description=(
            "Streaming replication and failover: each target's role and timeline, "
            "role changes, standbys streaming against those expected, lag per "
            "standby in seconds and bytes (0 when caught up, idle or not), the "
            "standby's own WAL receiver, replay and conflicts, and replication "
            "slots retaining WAL."
        ),
        rows=ROWS,
    )
