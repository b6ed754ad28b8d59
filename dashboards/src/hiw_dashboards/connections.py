"""HiW — Connections: Client sessions (pg_stat_activity) against max_connections, long
transactions, lock waits, and transaction activity per database.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from hiw_dashboards.common import (
    CONNECTIONS_HIGH,
    IDLE_IN_TRANSACTION_LONG,
    Row,
    Spec,
    gauge,
    q,
    reference,
    stat,
    steps,
    timeseries,
)

FILENAME = "hiw-connections.json"

ROWS = [
    Row(
        "Now",
        [
            stat(
                "Client connections",
                "Client backends in every state (sum of hiw_connections).",
                [
                    q('sum by (target) (hiw_connections{target=~"$target"})'),
                ],
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
                "max_connections",
                (
                    "max_connections (hiw_connections_max) and the slots reserved for "
                    "superusers and pg_use_reserved_connections (hiw_connections_reserved)."
                ),
                [
                    q('hiw_connections_max{target=~"$target"}', "max {{target}}"),
                    q('hiw_connections_reserved{target=~"$target"}', "reserved {{target}}"),
                ],
                color_mode=cm.BigValueColorMode.VALUE,
            ),
            stat(
                "Oldest transaction",
                (
                    "Age of the oldest open transaction of a client backend, the agent's "
                    "own excluded (hiw_oldest_transaction_age_seconds); 0 when none. Long "
                    "transactions hold back vacuum."
                ),
                [
                    q('hiw_oldest_transaction_age_seconds{target=~"$target"}'),
                ],
                unit="s",
                color_mode=cm.BigValueColorMode.VALUE,
            ),
            stat(
                "Longest idle in transaction",
                (
                    "How long the longest 'idle in transaction' session has been idle "
                    "(hiw_oldest_idle_in_transaction_age_seconds). Orange from 5 min, the "
                    "HiwIdleInTransactionLong alert's threshold."
                ),
                [
                    q('hiw_oldest_idle_in_transaction_age_seconds{target=~"$target"}'),
                ],
                unit="s",
                thresholds=IDLE_IN_TRANSACTION_LONG,
            ),
            stat(
                "Sessions waiting on locks",
                (
                    "Active client sessions waiting on a heavyweight lock "
                    '(hiw_sessions_waiting{wait_event_type="Lock"}). Orange above 5, the '
                    "HiwLockWaitsPilingUp alert's threshold."
                ),
                [
                    q('hiw_sessions_waiting{target=~"$target",wait_event_type="Lock"}'),
                ],
                thresholds=steps("green", (1, "yellow"), (6, "orange")),
            ),
        ],
    ),
    Row(
        "Sessions",
        [
            timeseries(
                "Connections by state",
                ("Client backends by state (hiw_connections summed over databases), stacked."),
                [
                    q(
                        'sum by (target, state) (hiw_connections{target=~"$target"})',
                        "{{target}} {{state}}",
                    ),
                ],
                stacked=True,
            ),
            timeseries(
                "Connections by application",
                (
                    "Client backends per application_name "
                    "(hiw_connections_by_application): the top N applications, the rest "
                    "under 'other', empty names as '(none)'. Stacked."
                ),
                [
                    q(
                        'hiw_connections_by_application{target=~"$target"}',
                        "{{target}} {{application_name}}",
                    ),
                ],
                stacked=True,
            ),
            timeseries(
                "Connections vs max_connections",
                (
                    "All client backends (sum of hiw_connections) against max_connections "
                    "(hiw_connections_max, dashed red) and max_connections minus the "
                    "reserved slots (hiw_connections_reserved, dashed orange): what "
                    "ordinary roles can open."
                ),
                [
                    q(
                        'sum by (target) (hiw_connections{target=~"$target"})',
                        "{{target}} connections",
                    ),
                    q('hiw_connections_max{target=~"$target"}', "{{target}} max_connections"),
                    q(
                        (
                            'hiw_connections_max{target=~"$target"} - '
                            'hiw_connections_reserved{target=~"$target"}'
                        ),
                        "{{target}} available to ordinary roles",
                    ),
                ],
                overrides=[
                    reference("B"),
                    reference("C", "orange"),
                ],
            ),
            timeseries(
                "Waiting sessions by wait event type",
                (
                    "Active client sessions waiting, by wait_event_type "
                    "(hiw_sessions_waiting): Lock (heavyweight lock waits), LWLock, IO, "
                    "BufferPin and others as seen. Stacked."
                ),
                [
                    q('hiw_sessions_waiting{target=~"$target"}', "{{target}} {{wait_event_type}}"),
                ],
                stacked=True,
            ),
            timeseries(
                "Oldest transaction and idle-in-transaction age",
                (
                    "hiw_oldest_transaction_age_seconds (oldest open transaction) and "
                    "hiw_oldest_idle_in_transaction_age_seconds (longest idle in "
                    "transaction); the dashed line is 5 min, the HiwIdleInTransactionLong "
                    "alert's threshold."
                ),
                [
                    q(
                        'hiw_oldest_transaction_age_seconds{target=~"$target"}',
                        "{{target}} oldest transaction",
                    ),
                    q(
                        'hiw_oldest_idle_in_transaction_age_seconds{target=~"$target"}',
                        "{{target}} idle in transaction",
                    ),
                ],
                unit="s",
                thresholds=IDLE_IN_TRANSACTION_LONG,
                dashed_thresholds=True,
            ),
            timeseries(
                "Connections by database",
                "Client backends per database (hiw_connections summed over states).",
                [
                    q(
                        'sum by (target, datname) (hiw_connections{target=~"$target"})',
                        "{{target}} {{datname}}",
                    ),
                ],
            ),
        ],
    ),
    Row(
        "Database activity",
        [
            timeseries(
                "Commits and rollbacks",
                (
                    "Transactions committed and rolled back per second, per database (rate "
                    "of hiw_database_commits_total and hiw_database_rollbacks_total)."
                ),
                [
                    q(
                        ('rate(hiw_database_commits_total{target=~"$target"}[$__rate_interval])'),
                        "{{datname}} commits ({{target}})",
                    ),
                    q(
                        ('rate(hiw_database_rollbacks_total{target=~"$target"}[$__rate_interval])'),
                        "{{datname}} rollbacks ({{target}})",
                    ),
                ],
                unit="ops",
                w=6,
            ),
            timeseries(
                "Cache hit ratio",
                (
                    "Share of block requests served from shared buffers: recent, from the "
                    "rates of hiw_database_blocks_hit_total and "
                    "hiw_database_blocks_read_total over 5 min, and since the last "
                    "statistics reset (hiw_database_cache_hit_ratio)."
                ),
                [
                    q(
                        (
                            'rate(hiw_database_blocks_hit_total{target=~"$target"}[5m]) / '
                            '(rate(hiw_database_blocks_hit_total{target=~"$target"}[5m]) + '
                            'rate(hiw_database_blocks_read_total{target=~"$target"}[5m]) > 0)'
                        ),
                        "{{datname}} last 5m ({{target}})",
                    ),
                    q(
                        'hiw_database_cache_hit_ratio{target=~"$target"}',
                        "{{datname}} since reset ({{target}})",
                    ),
                ],
                unit="percentunit",
                min=None,
                max=1,
                w=6,
            ),
            timeseries(
                "Sessions ended abnormally",
                (
                    "Sessions per second that were abandoned by the client, ended by a "
                    "fatal error or killed by an operator "
                    "(hiw_database_sessions_abandoned_total, "
                    "hiw_database_sessions_fatal_total, "
                    "hiw_database_sessions_killed_total; PostgreSQL 14+)."
                ),
                [
                    q(
                        (
                            'rate(hiw_database_sessions_abandoned_total{target=~"$target"}[$__rate_interval])'
                        ),
                        "{{datname}} abandoned ({{target}})",
                    ),
                    q(
                        (
                            'rate(hiw_database_sessions_fatal_total{target=~"$target"}[$__rate_interval])'
                        ),
                        "{{datname}} fatal ({{target}})",
                    ),
                    q(
                        (
                            'rate(hiw_database_sessions_killed_total{target=~"$target"}[$__rate_interval])'
                        ),
                        "{{datname}} killed ({{target}})",
                    ),
                ],
                unit="ops",
                w=6,
            ),
            timeseries(
                "Deadlocks",
                (
                    "Deadlocks detected per database in the last hour "
                    "(increase(hiw_database_deadlocks_total[1h]))."
                ),
                [
                    q(
                        'increase(hiw_database_deadlocks_total{target=~"$target"}[1h])',
                        "{{datname}} ({{target}})",
                    ),
                ],
                w=6,
            ),
        ],
    ),
]


def spec() -> Spec:
    return Spec(
        uid="hiw-connections",
        title="HiW — Connections",
        description=(
            "Client sessions (pg_stat_activity) against max_connections, long "
            "transactions, lock waits, and transaction activity per database."
        ),
        rows=ROWS,
    )
