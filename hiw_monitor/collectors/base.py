"""What a collector is: a declaration (name, schedule, SQL per server version, options)
plus a pure transform from rows to metric families.

Collectors never touch connections or the clock: ``collect.py`` runs their queries and
hands the rows and a :class:`Context` to ``transform``.
"""

from __future__ import annotations

import bisect
import copy as copy_module
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from psycopg import sql

Rows = Sequence[Mapping[str, Any]]


class Result(list[Mapping[str, Any]]):
    """The rows of one query plus the names of the columns the server returned, in
    order: known when there are no rows too, duplicates included (dict rows hide them).
    What ``collect.py`` hands a transform; fake rows in tests may be plain lists."""

    __slots__ = ("columns",)

    def __init__(self, rows: Iterable[Mapping[str, Any]] = (), columns: Sequence[str] = ()
                 ) -> None:
        super().__init__(rows)
        self.columns = tuple(columns)


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
    database: str = ""  # current_database() of the connection ("" for PgBouncer)

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
    plan: Any = None  # what the collector's plan step decided for this connection


Transform = Callable[[Mapping[str, Rows], Context], Iterable[Metric]]
# What a collector still reports when a run fails: (target, state, options, reason code).
OnFailure = Callable[[str, Any, Mapping[str, Any], str], Iterable[Metric]]
# A custom query step for tests and tools only (no built-in collector uses it): (cursor,
# context) -> rows per query name, replacing the declared queries.
Fetch = Callable[[Any, Context], Mapping[str, Rows]]


# [(datname, families of that database)] -> the run's families
Merge = Callable[[Sequence[tuple[str, Sequence[Metric]]]], list[Metric]]


# --- declared queries ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """What a query's SQL and parameters may depend on: the collector's options, its plan,
    its state, the server, and the rows of the queries declared before it."""

    options: Mapping[str, Any]
    server: ServerInfo
    plan: Any = None
    state: Any = None
    rows: Mapping[str, Rows] = field(default_factory=dict)
    now: float | None = None  # database clock of the collection (Context.now), if known


@dataclass(frozen=True, slots=True)
class Predicate:
    """A condition on the server a query needs, with the reason given when it fails."""

    name: str
    test: Callable[[ServerInfo], bool]

    def __call__(self, server: ServerInfo) -> bool:
        return self.test(server)


PRIMARY_ONLY = Predicate("primary only", lambda server: not server.in_recovery)
STANDBY_ONLY = Predicate("standby only", lambda server: server.in_recovery)


def extension(name: str) -> Predicate:
    """The query needs extension ``name`` installed in the database it connects to."""
    return Predicate(f"extension {name}", lambda server: name in server.extensions)


# SQL text (or a composed statement) built from the step, or None to skip the query.
SQLText = str | bytes | sql.SQL | sql.Composed  # what a cursor executes
Builder = Callable[[Step], SQLText | None]
# Parameters for the query (None: skip it), or one set per probe.
Params = Callable[[Step], Mapping[str, Any] | Sequence[Any] | None]


@dataclass(frozen=True, slots=True)
class Probe:
    """Run the query once per parameter set, each in its own savepoint under its own
    statement timeout, until the time budget is spent (largest first, say). Each attempt
    becomes one row: the parameters, ``outcome`` (ok / timeout / locked / error), and the
    query's columns when it succeeded. For bounded, optional measurements (pgstattuple)."""

    each: Callable[[Step], Sequence[Mapping[str, Any]]]
    timeout: Callable[[Mapping[str, Any]], float]  # seconds, from the options
    budget: Callable[[Mapping[str, Any]], float]  # seconds for all attempts of a run


@dataclass(frozen=True, slots=True)
class Query:
    """One declared query. ``sql`` is text per server version or built from the step
    (the plan's discovered columns, the options); ``params`` come from the same step.
    A query whose predicates fail, whose version range excludes the server, or whose
    builder or params return None yields no rows (an empty list) and is not run."""

    sql: VersionedSQL | Builder
    params: Params | None = None
    when: tuple[Predicate, ...] = ()
    min_version: int = 0  # half-open range [min_version, max_version)
    max_version: int | None = None
    probe: Probe | None = None

    def applies(self, server: ServerInfo) -> bool:
        if server.version_num < self.min_version:
            return False
        if self.max_version is not None and server.version_num >= self.max_version:
            return False
        return all(predicate(server) for predicate in self.when)

    def text(self, step: Step) -> SQLText | None:
        if isinstance(self.sql, VersionedSQL):
            return self.sql.pick(step.server.version_num)
        return self.sql(step)


@dataclass(frozen=True, slots=True)
class PlanStep:
    """What a collector decides once per connection: ``queries`` inspect the server
    (extensions, columns, the app's tables, privileges), and the pure ``decide`` turns
    their rows into the plan the collector's queries and transform use, or raises
    :class:`~hiw_monitor.errors.ReasonedError` with the reason it cannot run here."""

    queries: Mapping[str, Query]
    decide: Callable[[Mapping[str, Rows], Step], Any]
    # True for a plan that rests on what an administrator may change while the agent stays
    # connected (an optional extension, a grant): it is made again as often as a skip is.
    recheck: Callable[[Any], bool] | None = None


@dataclass(frozen=True, slots=True)
class Collector:
    """A collector's declaration. ``queries`` maps a query name to its declaration (or
    plain SQL per version); the rows of each arrive in ``transform`` under the same name,
    in declaration order, so a later query may depend on the rows of an earlier one."""

    name: str
    help: str
    interval: float
    timeout: float
    queries: Mapping[str, Query | VersionedSQL]
    transform: Transform
    options: Mapping[str, Option] = field(default_factory=dict)
    min_version: int = 130000
    plan: PlanStep | None = None  # once per connection; its result is Context.plan
    # settings for the collection's transaction only (set_config(..., true)), e.g. TimeZone
    session: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None
    fetch: Fetch | None = None  # tests and tools only: replaces running ``queries``
    new_state: Callable[[], Any] | None = None  # per-(target, collector) memory, if any
    # Families served instead of the last good ones once those are stale while runs fail: how
    # the backups collector keeps reporting known backups as "unknown" when it goes blind.
    on_failure: OnFailure | None = None
    # True: the collector looks at one database's tables (vacuum, indexes, bloat, the
    # review's catalog checks): it runs in each database of the instance its target
    # selects (``databases:``), and its series carry ``datname``. False: instance-wide,
    # once per target (hiw_monitor/databases.py).
    per_database: bool = False
    # How the families of several databases become the run's result (default:
    # :func:`merge_databases`); the review's also merges its findings.
    merge: Merge | None = None

    def declared(self) -> dict[str, Query]:
        return {name: q if isinstance(q, Query) else Query(q)
                for name, q in self.queries.items()}


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


def with_datname(families: Iterable[Metric], datname: str) -> list[Metric]:
    """Copies of ``families`` whose samples carry ``datname`` (right after ``target``);
    a sample that already has one keeps it. The family's class and attributes stay (the
    review's findings ride on its family).

    >>> f = gauge("hiw_x", "x.", ["table"]); f.add_metric(["t1", "public.a"], 1.0)
    >>> [s.labels for s in with_datname([f], "app")[0].samples]
    [{'target': 't1', 'datname': 'app', 'table': 'public.a'}]
    """
    out: list[Metric] = []
    for family in families:
        copy = copy_module.copy(family)
        copy.samples = [
            s if "datname" in s.labels else s._replace(labels={
                **({"target": s.labels["target"]} if "target" in s.labels else {}),
                "datname": datname,
                **{k: v for k, v in s.labels.items() if k != "target"}})
            for s in family.samples]
        out.append(copy)
    return out


def merge_databases(results: Sequence[tuple[str, Sequence[Metric]]]) -> list[Metric]:
    """The families of several databases as one result: one family per name (the first
    database's, in order), its samples those of every database in turn."""
    merged: dict[str, Metric] = {}
    for _datname, families in results:
        for family in families:
            known = merged.get(family.name)
            if known is None:
                known = merged[family.name] = copy_module.copy(family)
                known.samples = list(family.samples)
            else:
                known.samples.extend(family.samples)
    return list(merged.values())


def families_series(families: Iterable[Metric]) -> int:
    return sum(len(family.samples) for family in families)

