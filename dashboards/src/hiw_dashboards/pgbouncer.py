"""HiW — PgBouncer: PgBouncer in front of the HiW database: clients waiting for a server
connection during classroom bursts, the longest wait, pool saturation, traffic through the
pools and the use of max_client_conn (targets with type: pgbouncer).
"""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from hiw_dashboards.common import (
    ANY_IS_A_WARNING,
    ANY_IS_BAD,
    DASHED,
    NO_FILL,
    NOT_STACKED,
    ONE_IS_GOOD,
    Row,
    Spec,
    by_regexp,
    fixed_color,
    gauge,
    q,
    stat,
    steps,
    timeseries,
    value_map,
)

FILENAME = "hiw-pgbouncer.json"

ROWS = [
    Row(
        "Now",
        [
            stat(
                "PgBouncer",
                (
                    "Whether the agent reaches the PgBouncer admin console (hiw_up of the "
                    "targets that run the pgbouncer collector). Red when down: the "
                    "HiwPgbouncerDown alert."
                ),
                [
                    q(
                        'hiw_up{target=~"$target"} and on (target) '
                        'hiw_collector_up{target=~"$target", collector="pgbouncer"}'
                    ),
                ],
                thresholds=ONE_IS_GOOD,
                mappings=value_map(("0", "down", None), ("1", "up", None)),
            ),
            stat(
                "Clients waiting",
                (
                    "Client connections queued for a server connection, summed over the "
                    'pools (hiw_pgbouncer_pool_client_connections{state="waiting"}). '
                    "Orange from 1: the classroom burst is larger than the pools."
                ),
                [
                    q(
                        "sum by (target) "
                        '(hiw_pgbouncer_pool_client_connections{target=~"$target", '
                        'state="waiting"})'
                    ),
                ],
                thresholds=ANY_IS_A_WARNING,
            ),
            stat(
                "Longest client wait",
                (
                    "How long the oldest waiting client has waited, over every pool "
                    "(hiw_pgbouncer_pool_max_wait_seconds). Orange from 1 s, the "
                    "HiwPgbouncerClientsWaiting alert's threshold."
                ),
                [
                    q('max by (target) (hiw_pgbouncer_pool_max_wait_seconds{target=~"$target"})'),
                ],
                unit="s",
                thresholds=ANY_IS_A_WARNING,
            ),
            gauge(
                "Busiest pool saturation",
                (
                    "Active server connections over the pool size of the busiest pool "
                    "(hiw_pgbouncer_pool_saturation_ratio). Orange from 90 %, the "
                    "HiwPgbouncerPoolSaturated alert's threshold; at 100 % new "
                    "transactions wait."
                ),
                [
                    q('max by (target) (hiw_pgbouncer_pool_saturation_ratio{target=~"$target"})'),
                ],
                thresholds=steps("green", (0.9, "orange"), (1, "red")),
            ),
            gauge(
                "Client slots used",
                (
                    "Client connections over max_client_conn "
                    "(hiw_pgbouncer_client_connections_utilization_ratio): at 100 % "
                    "PgBouncer refuses new clients. Orange from 80 %."
                ),
                [
                    q('hiw_pgbouncer_client_connections_utilization_ratio{target=~"$target"}'),
                ],
                thresholds=steps("green", (0.8, "orange"), (0.95, "red")),
            ),
            stat(
                "Pool mode",
                (
                    "PgBouncer's global pool_mode (hiw_pgbouncer_pool_mode == 1): "
                    "transaction mode is what the classroom bursts need; a database may "
                    "override it."
                ),
                [
                    q('hiw_pgbouncer_pool_mode{target=~"$target"} == 1', "{{pool_mode}}"),
                ],
                color_mode=cm.BigValueColorMode.VALUE,
                text_mode=cm.BigValueTextMode.NAME,
            ),
        ],
    ),
    Row(
        "Pools",
        [
            timeseries(
                "Clients by state",
                (
                    "Client connections per pool and state "
                    "(hiw_pgbouncer_pool_client_connections): active (linked to a server, "
                    "or idle between transactions) and waiting (queued for a server "
                    "connection), stacked."
                ),
                [
                    q(
                        (
                            "sum by (target, database, user, state) "
                            '(hiw_pgbouncer_pool_client_connections{target=~"$target"})'
                        ),
                        "{{target}} {{database}}/{{user}} {{state}}",
                    ),
                ],
                stacked=True,
            ),
            timeseries(
                "Longest client wait per pool",
                (
                    "How long the oldest waiting client of each pool has waited "
                    "(hiw_pgbouncer_pool_max_wait_seconds); the dashed line is 1 s, the "
                    "HiwPgbouncerClientsWaiting alert's threshold."
                ),
                [
                    q(
                        'hiw_pgbouncer_pool_max_wait_seconds{target=~"$target"}',
                        "{{target}} {{database}}/{{user}}",
                    ),
                ],
                unit="s",
                thresholds=ANY_IS_BAD,
                dashed_thresholds=True,
            ),
            timeseries(
                "Server connections by state",
                (
                    "Server connections per pool and state "
                    "(hiw_pgbouncer_pool_server_connections: active, idle, used, tested, "
                    "login), stacked, against the pool size (hiw_pgbouncer_pool_size, "
                    "dashed)."
                ),
                [
                    q(
                        (
                            "sum by (target, database, user, state) "
                            '(hiw_pgbouncer_pool_server_connections{target=~"$target"})'
                        ),
                        "{{target}} {{database}}/{{user}} {{state}}",
                    ),
                    q(
                        'hiw_pgbouncer_pool_size{target=~"$target"}',
                        "pool size {{target}} {{database}}/{{user}}",
                    ),
                ],
                stacked=True,
                overrides=[
                    by_regexp("^pool size .*", DASHED, fixed_color("red"), NOT_STACKED, NO_FILL),
                ],
            ),
            timeseries(
                "Pool saturation",
                (
                    "Active server connections over the pool size, per pool "
                    "(hiw_pgbouncer_pool_saturation_ratio); the dashed line is 90 %, the "
                    "HiwPgbouncerPoolSaturated alert's threshold. Above 100 % a reserve "
                    "pool is in use."
                ),
                [
                    q(
                        'hiw_pgbouncer_pool_saturation_ratio{target=~"$target"}',
                        "{{target}} {{database}}/{{user}}",
                    ),
                ],
                unit="percentunit",
                thresholds=steps("green", (0.9, "red")),
                dashed_thresholds=True,
            ),
        ],
    ),
    Row(
        "Traffic",
        [
            timeseries(
                "Transactions and queries per second",
                (
                    "Transactions and queries pooled per second, per database (rate of "
                    "hiw_pgbouncer_transactions_total and hiw_pgbouncer_queries_total)."
                ),
                [
                    q(
                        (
                            "rate(hiw_pgbouncer_transactions_total{"
                            'target=~"$target"}[$__rate_interval])'
                        ),
                        "{{target}} {{database}} transactions",
                    ),
                    q(
                        ('rate(hiw_pgbouncer_queries_total{target=~"$target"}[$__rate_interval])'),
                        "{{target}} {{database}} queries",
                    ),
                ],
                unit="ops",
            ),
            timeseries(
                "Client wait per transaction",
                (
                    "Average time a client waited for a server connection per transaction, "
                    "per database (rate of hiw_pgbouncer_client_wait_seconds_total over "
                    "the rate of hiw_pgbouncer_transactions_total). Empty while there is "
                    "no traffic."
                ),
                [
                    q(
                        (
                            "rate(hiw_pgbouncer_client_wait_seconds_total{"
                            'target=~"$target"}[$__rate_interval]) '
                            "/ "
                            "rate(hiw_pgbouncer_transactions_total{"
                            'target=~"$target"}[$__rate_interval])'
                        ),
                        "{{target}} {{database}}",
                    ),
                ],
                unit="s",
            ),
            timeseries(
                "Average transaction and query time",
                (
                    "Average time per transaction (idle in transaction included) and per "
                    "query, per database (rates of "
                    "hiw_pgbouncer_transaction_time_seconds_total and "
                    "hiw_pgbouncer_query_time_seconds_total over the counts)."
                ),
                [
                    q(
                        (
                            "rate(hiw_pgbouncer_transaction_time_seconds_total{"
                            'target=~"$target"}[$__rate_interval]) '
                            "/ "
                            "rate(hiw_pgbouncer_transactions_total{"
                            'target=~"$target"}[$__rate_interval])'
                        ),
                        "{{target}} {{database}} transaction",
                    ),
                    q(
                        (
                            "rate(hiw_pgbouncer_query_time_seconds_total{"
                            'target=~"$target"}[$__rate_interval]) '
                            "/ "
                            'rate(hiw_pgbouncer_queries_total{target=~"$target"}[$__rate_interval])'
                        ),
                        "{{target}} {{database}} query",
                    ),
                ],
                unit="s",
            ),
            timeseries(
                "Bytes in and out",
                (
                    "Bytes per second received from and sent to clients, per database "
                    "(rate of hiw_pgbouncer_received_bytes_total and "
                    "hiw_pgbouncer_sent_bytes_total)."
                ),
                [
                    q(
                        (
                            "rate(hiw_pgbouncer_received_bytes_total{"
                            'target=~"$target"}[$__rate_interval])'
                        ),
                        "{{target}} {{database}} received",
                    ),
                    q(
                        (
                            "rate(hiw_pgbouncer_sent_bytes_total{"
                            'target=~"$target"}[$__rate_interval])'
                        ),
                        "{{target}} {{database}} sent",
                    ),
                ],
                unit="Bps",
            ),
        ],
    ),
    Row(
        "Capacity",
        [
            timeseries(
                "Client connections vs max_client_conn",
                (
                    "Client connections PgBouncer holds "
                    '(hiw_pgbouncer_list_items{list="used_clients"}, the agent\'s '
                    "included) against max_client_conn "
                    "(hiw_pgbouncer_max_client_connections, dashed)."
                ),
                [
                    q(
                        'hiw_pgbouncer_list_items{target=~"$target", list="used_clients"}',
                        "{{target}} clients",
                    ),
                    q(
                        'hiw_pgbouncer_max_client_connections{target=~"$target"}',
                        "max_client_conn {{target}}",
                    ),
                ],
                overrides=[
                    by_regexp(
                        "^max_client_conn .*", DASHED, fixed_color("red"), NOT_STACKED, NO_FILL
                    ),
                ],
            ),
            timeseries(
                "Server connections per database",
                (
                    "Server connections PgBouncer holds to each database "
                    "(hiw_pgbouncer_database_server_connections), stacked: what PostgreSQL "
                    "sees of PgBouncer, to compare with its max_connections."
                ),
                [
                    q(
                        'hiw_pgbouncer_database_server_connections{target=~"$target"}',
                        "{{target}} {{database}}",
                    ),
                ],
                stacked=True,
            ),
        ],
    ),
]


def spec() -> Spec:
    return Spec(
        uid="hiw-pgbouncer",
        title="HiW — PgBouncer",
        description=(
            "PgBouncer in front of the HiW database: clients waiting for a server "
            "connection during classroom bursts, the longest wait, pool "
            "saturation, traffic through the pools and the use of max_client_conn "
            "(targets with type: pgbouncer)."
        ),
        rows=ROWS,
        tags=("hiw-monitor", "pgbouncer"),
    )
