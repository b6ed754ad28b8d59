"""What a collector is: a declaration (name, schedule, SQL per server version, options)
plus a pure transform from rows to metric families.

Collectors never touch connections or the clock: ``collect.py`` runs their queries and
hands the rows and a :class:`Context` to ``transform``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

Rows = Sequence[Mapping[str, Any]]
OptionKind = Literal["int", "float", "bool", "str", "duration", "str_list", "float_list",
                     "mapping"]


@dataclass(frozen=True, slots=True)
class Option:
    """One collector-specific setting, as written under ``collectors.<name>`` in the config.

    ``check`` returns a problem text for a value of the right type that is still wrong
    (e.g. a regular expression that does not compile), or None. A ``mapping`` option is
    turned into its value by ``parse``, which raises ValueError naming the problem.
    """

    kind: OptionKind
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any], str | None] | None = None
    parse: Callable[[Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the agent learned about a server when it connected."""

    version_num: int  # server_version_num, e.g. 150007
    version: str  # human form, e.g. "15.7"
    in_recovery: bool
    extensions: Mapping[str, str] = field(default_factory=dict)  # name -> installed version

    @property
    def major(self) -> int:
        return self.version_num // 10000


class VersionedSQL:
    """SQL text per half-open range of ``server_version_num``.

    ``VersionedSQL({130000: A, 170000: B})`` uses A on 13.x-16.x and B from 17 on.

    >>> sql = VersionedSQL({130000: "A", 170000: "B"})
    >>> sql.pick(150004), sql.pick(170000), sql.pick(180001)
    ('A', 'B', 'B')
    >>> sql.pick(120000) is None
    True
    """

    def __init__(self, by_min_version: Mapping[int, str]) -> None:
        self._versions = sorted(by_min_version)
        self._sql = [by_min_version[v] for v in self._versions]

    def pick(self, version_num: int) -> str | None:
        index = bisect.bisect_right(self._versions, version_num) - 1
        return self._sql[index] if index >= 0 else None

    @property
    def variants(self) -> Sequence[str]:
        return tuple(self._sql)


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a transform may look at besides its rows."""

    target: str
    server: ServerInfo
    options: Mapping[str, Any]
    now: float  # database clock, seconds since the epoch, when the collection ran
    state: Any = None  # the collector's own per-target state (see Collector.new_state)


Transform = Callable[[Mapping[str, Rows], Context], Iterable[Metric]]
# What a collector still reports when a run fails: (target, state, options, reason code).
OnFailure = Callable[[str, Any, Mapping[str, Any], str], Iterable[Metric]]
# A custom query step: (cursor, context) -> rows per query name. For collectors whose SQL
# depends on what the server has (discovered columns, extension schema); it may raise
# ReasonedError with a reason that tells the user what to run.
Fetch = Callable[[Any, Context], Mapping[str, Rows]]


@dataclass(frozen=True, slots=True)
class Collector:
    """A collector's declaration. ``queries`` maps a query name to its SQL per version;
    the rows of each arrive in ``transform`` under the same name."""

    name: str
    help: str
    interval: float
    timeout: float
    queries: Mapping[str, VersionedSQL]
    transform: Transform
    options: Mapping[str, Option] = field(default_factory=dict)
    min_version: int = 130000
    fetch: Fetch | None = None  # replaces running ``queries`` when set
    new_state: Callable[[], Any] | None = None  # per-(target, collector) memory, if any
    # Families served instead of the last good ones once those are stale while runs fail: how
    # the backups collector keeps reporting known backups as "unknown" when it goes blind.
    on_failure: OnFailure | None = None


# A CTE naming the relations of this database that hold or wait for an ACCESS EXCLUSIVE
# lock: per-relation collectors never pass them to a function that opens them (sizes,
# pgstattuple, pg_get_expr), so they never queue behind a lock. Used as "WITH {LOCKED}".
LOCKED_RELATIONS_CTE = """
locked AS MATERIALIZED (
    SELECT DISTINCT l.relation AS oid
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                        WHERE d.datname = pg_catalog.current_database())
)"""


# --- helpers to build families; every family carries the target label first -----------


def gauge(name: str, doc: str, labels: Sequence[str] = (), unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=["target", *labels], unit=unit)


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    """A counter family; ``name`` is given without the ``_total`` suffix."""
    return CounterMetricFamily(name, doc, labels=["target", *labels])


def state_set(
    name: str, doc: str, states: Sequence[str], current: str, target: str,
    labels: Mapping[str, str] | None = None, state_label: str = "state",
) -> GaugeMetricFamily:
    """A one-hot state set: one series per state, 1 for ``current`` and 0 for the others."""
    extra = dict(labels or {})
    family = gauge(name, doc, [*extra, state_label])
    for state in states:
        family.add_metric([target, *extra.values(), state], 1.0 if state == current else 0.0)
    return family


def number(value: Any) -> float:
    """A database value as a float sample (NULL becomes NaN, never an exception)."""
    if value is None:
        return float("nan")
    return float(value)


def families_series(families: Iterable[Metric]) -> int:
    return sum(len(family.samples) for family in families)

