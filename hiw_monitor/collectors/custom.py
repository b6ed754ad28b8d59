"""User-defined SQL collectors: a declaration from the config (``custom_collectors:`` or
``custom_collectors_dir:``) turned into an ordinary :class:`Collector`.

A declaration is data: name, SQL per half-open server version range, schedule,
predicates, the meaning of every column the query returns (label, counter, gauge or
ignore), a metric prefix and a cap on series. ``config.py`` validates it strictly at load
time (names, collisions, types); :func:`build` gives the collector, which runs through
the same path as the built-ins (``collect.run_collection``: one read-only transaction
under the collector's statement timeout, the plan once per connection, staleness,
self-metrics, failure isolation). What only the server knows is checked at run time and
fails the collector with a reason: the SQL (syntax, writes), the columns it returns, and
values that are not numbers.

Only declared columns leave the database: label columns as label values, value columns
as sample values. Error texts name columns and types, never row values.
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hiw_monitor.collectors.base import (
    Collector,
    Context,
    PlanStep,
    Query,
    Rows,
    Step,
    VersionedSQL,
)
from hiw_monitor.errors import Reason, ReasonedError

log = structlog.get_logger("hiw_monitor.collectors.custom")

Usage = Literal["label", "counter", "gauge", "ignore"]
USAGES: tuple[Usage, ...] = ("label", "counter", "gauge", "ignore")
DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_SERIES = 1000
# Why rows (label sets) were left out: beyond max_series, a label column was NULL, or the
# same label values came twice (a series must be unique).
DROP_REASONS = ("max_series", "null_label", "duplicate")
DROPPED_FAMILY = "hiw_custom_series_dropped"  # exposed as hiw_custom_series_dropped_total

# Prometheus names, without the colon (reserved for recording rules).
METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
COLLECTOR_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,62}")
RESERVED_LABELS = frozenset({"target"})  # every series carries it
# a table as to_regclass reads it: name or schema.name, each plain or double-quoted
_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
TABLE_NAME = re.compile(rf"{_IDENT}(?:\.{_IDENT})?")
EXTENSION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")


# --- the declaration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """One column the query returns and what it means."""

    name: str
    usage: Usage
    help: str = ""
    unit: str = ""

    @property
    def is_value(self) -> bool:
        return self.usage in ("counter", "gauge")


@dataclass(frozen=True, slots=True)
class SQLVariant:
    """The SQL for servers in ``[min_version, max_version)`` (``server_version_num``)."""

    sql: str
    min_version: int = 0
    max_version: int | None = None

    def covers(self, version_num: int) -> bool:
        return self.min_version <= version_num and (
            self.max_version is None or version_num < self.max_version)

    @property
    def label(self) -> str:
        """The range as a reader writes it.

        >>> [SQLVariant("", 130000, 150002).label, SQLVariant("", 150002).label,
        ...  SQLVariant("", 0, 160000).label, SQLVariant("").label]
        ['[13, 15.2)', '15.2 and later', 'before 16', 'every version']
        """
        low, high = self.min_version, self.max_version
        if high is None:
            return "every version" if low == 0 else f"{version_text(low)} and later"
        if low == 0:
            return f"before {version_text(high)}"
        return f"[{version_text(low)}, {version_text(high)})"


@dataclass(frozen=True, slots=True)
class Declaration:
    """A user-defined collector as validated by ``config.py``."""

    name: str
    sql: tuple[SQLVariant, ...]
    columns: tuple[Column, ...]
    help: str = ""
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    stale_after: float | None = None  # default 3 x interval
    enabled: bool = True
    metric_prefix: str | None = None  # default hiw_custom_<name>_
    max_series: int = DEFAULT_MAX_SERIES
    primary_only: bool = False
    standby_only: bool = False
    extensions: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    # run in each database the target selects (databases:), series labelled datname
    per_database: bool = False

    @property
    def prefix(self) -> str:
        return f"hiw_custom_{self.name}_" if self.metric_prefix is None else self.metric_prefix

    @property
    def description(self) -> str:
        return self.help or f"User-defined SQL collector {self.name}."

    @property
    def labels(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.usage == "label")

    @property
    def values(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.is_value)

    def family(self, column: Column) -> GaugeMetricFamily | CounterMetricFamily:
        """An empty family for a value column: its name is prefix + column (+ unit, and
        ``_total`` on the wire for a counter). Raises ValueError for an invalid name."""
        name = self.prefix + column.name
        doc = column.help or f"{self.description} Column {column.name}."
        labels = ["target", *(c.name for c in self.labels)]
        if column.usage == "counter":
            return CounterMetricFamily(name, doc, labels=labels, unit=column.unit)
        return GaugeMetricFamily(name, doc, labels=labels, unit=column.unit)

    def metric_names(self) -> dict[str, tuple[str, str]]:
        """column -> (family name, name on the wire) for every value column."""
        names = {}
        for column in self.values:
            family = self.family(column)
            wire = family.name + "_total" if family.type == "counter" else family.name
            names[column.name] = (family.name, wire)
        return names


def version_num(value: Any) -> int:
    """A server version as ``server_version_num``: ``"13"``, ``13``, ``"15.2"``, ``150002``.

    >>> version_num("13"), version_num(13), version_num("15.2"), version_num(150002)
    (130000, 130000, 150002, 150002)
    >>> version_num("16.10"), version_num("170000")
    (160010, 170000)
    >>> version_num(15.2)
    Traceback (most recent call last):
    ...
    TypeError: 15.2 is a YAML number; quote the version ("15.2") or write 150002
    """
    if isinstance(value, float):
        raise TypeError(f"{value!r} is a YAML number; quote the version "
                        f'("{value}") or write {_num_hint(value)}')
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{value!r} is not a version")
    text = str(value).strip()
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise ValueError(f"{value!r} is not a version")
    major, minor = int(match.group(1)), match.group(2)
    if minor is None and major >= 10000:
        return major  # already server_version_num
    if not 10 <= major < 100 or (minor is not None and int(minor) >= 100):
        raise ValueError(f"{value!r} is not a PostgreSQL version (10 or newer)")
    return major * 10000 + int(minor or 0)


def _num_hint(value: float) -> str:
    text = str(value)
    major, _, minor = text.partition(".")
    return str(int(major) * 10000 + int(minor or 0)) if major.isdigit() else "150002"


def version_text(number: int) -> str:
    """A ``server_version_num`` as a version.

    >>> version_text(130000), version_text(150002)
    ('13', '15.2')
    """
    major, minor = divmod(number, 10000)
    return f"{major}" if minor == 0 else f"{major}.{minor}"


# --- checks config.py runs on the SQL text ---------------------------------------------------

_TOKEN = re.compile(r"""
      --[^\n]*                                       # line comment
    | /\*                                            # block comment (nesting handled below)
    | [eE]'(?:[^'\\]|\\.|'')*'?                      # escape string
    | '(?:[^']|'')*'?                                # string
    | "(?:[^"]|"")*"?                                # quoted identifier
    | [^\W\d][\w$]*                                  # word (may hold $, not start one)
    | \$(?:[^\W\d]\w*)?\$                            # dollar quote opener
    | ;
    | \s+
    | .
""", re.VERBOSE | re.DOTALL)


def statement_count(sql: str) -> int:
    """How many statements ``sql`` holds: semicolons outside strings, quoted names,
    dollar quotes and comments separate them; an empty one (a trailing ``;``) is none.

    >>> statement_count("SELECT 1"), statement_count("SELECT ';' AS a; -- done")
    (1, 1)
    >>> statement_count("SELECT 1; SELECT 2"), statement_count("SELECT $x$;$x$ /* ; /* ; */ */")
    (2, 1)
    >>> statement_count("SELECT E'\\\\';' ; x"), statement_count("  -- nothing\\n")
    (2, 0)
    """
    count, content, pos = 0, False, 0
    while pos < len(sql):
        match = _TOKEN.match(sql, pos)
        assert match is not None  # "." matches any character
        lexeme, pos = match.group(), match.end()
        if lexeme == "/*":
            depth = 1
            while depth and pos < len(sql):
                if sql.startswith("/*", pos):
                    depth, pos = depth + 1, pos + 2
                elif sql.startswith("*/", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
        elif lexeme == ";":
            count, content = count + content, False
        elif lexeme.startswith("$") and len(lexeme) > 1:
            close = sql.find(lexeme, pos)
            pos, content = (len(sql) if close < 0 else close + len(lexeme)), True
        elif not lexeme.startswith("--") and not lexeme.isspace():
            content = True
    return count + content


_SOURCES = ("exposition.py", "health.py", "discovery.py", "scheduler.py",  # self, health, fleet
            "collect.py")  # per-database runs


@functools.cache
def builtin_metric_names() -> frozenset[str]:
    """Every metric name the agent itself exports: the ``hiw_*`` string literals of the
    built-in collectors' modules and of the self-metrics (``exposition.py``), with and
    without ``_total`` (counters are declared without it). Derived from the code, so a
    new built-in family is reserved as soon as it exists; a unit test checks that it
    covers docs/metrics.md, the catalog the integration tests keep equal to the code."""
    package = importlib.resources.files("hiw_monitor")
    files = [f for f in package.joinpath("collectors").iterdir() if f.name.endswith(".py")]
    files += [package.joinpath(name) for name in _SOURCES]
    names: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"hiw_[a-z0-9_]+", node.value):
                names |= {node.value, node.value.removesuffix("_total"),
                          node.value + "_total"}
    return frozenset(names)


# --- the plan: which SQL, and do the predicates hold here ---------------------------------

_FACTS = """
SELECT current_user AS me, pg_catalog.current_database() AS db,
       pg_catalog.pg_is_in_recovery() AS in_recovery,
       ARRAY(SELECT e.extname::text FROM pg_catalog.pg_extension e
             WHERE e.extname = ANY (%(extensions)s::text[])) AS extensions,
       ARRAY(SELECT t.name FROM pg_catalog.unnest(%(tables)s::text[])
                                WITH ORDINALITY AS t(name, position)
             WHERE pg_catalog.to_regclass(t.name) IS NULL ORDER BY t.position) AS missing,
       ARRAY(SELECT t.name FROM pg_catalog.unnest(%(tables)s::text[])
                                WITH ORDINALITY AS t(name, position)
             WHERE pg_catalog.to_regclass(t.name) IS NOT NULL
               AND NOT pg_catalog.has_any_column_privilege(pg_catalog.to_regclass(t.name),
                                                           'SELECT')
             ORDER BY t.position) AS unreadable
"""
# After the user's statement, still inside its transaction: a statement that changed a
# session setting (SET default_transaction_read_only = off, SET ROLE, set_config(...,
# false)) must not outlive the collection and weaken the agent's connection policy for
# the next one. (A failed statement rolls its settings back with the transaction.)
RESET_SESSION = "RESET ALL; RESET ROLE"


@dataclass(frozen=True, slots=True)
class Plan:
    """What the plan step chose for this connection."""

    variant: SQLVariant
    checked: tuple[str, ...]  # the predicates that held, for the dry run

    def summary(self) -> str:
        checks = "; ".join(self.checked) if self.checked else "no predicates"
        return f"sql for {self.variant.label}; {checks}"


def _decide(decl: Declaration, rows: Mapping[str, Rows], step: Step) -> Plan:
    facts = rows["facts"][0]
    server = step.server
    variant = next((v for v in decl.sql if v.covers(server.version_num)), None)
    if variant is None:
        ranges = ", ".join(v.label for v in decl.sql)
        raise ReasonedError(Reason(
            "unsupported_version",
            f"no sql for PostgreSQL {server.version}: the declaration covers {ranges}; "
            "add an sql variant whose range includes it"))
    checked = []
    if decl.primary_only:
        if facts["in_recovery"]:
            raise ReasonedError(Reason(
                "not_primary", "primary_only: the collector runs on primaries and this "
                "server is a standby (in recovery)"))
        checked.append("primary")
    if decl.standby_only:
        if not facts["in_recovery"]:
            raise ReasonedError(Reason(
                "not_standby", "standby_only: the collector runs on standbys and this "
                "server is a primary"))
        checked.append("standby")
    installed = set(facts["extensions"] or ())
    for name in decl.extensions:
        if name not in installed:
            raise ReasonedError(Reason(
                "extension_missing",
                f"extension {name} is not installed in database {facts['db']!r}; run there: "
                f"CREATE EXTENSION {name}; (or remove the extension predicate)"))
        checked.append(f"extension {name}")
    if facts["missing"]:
        names = ", ".join(facts["missing"])
        raise ReasonedError(Reason(
            "undefined_table",
            f"table {names} does not exist in database {facts['db']!r} (looked up with "
            f"to_regclass and role {facts['me']!r}'s search_path); create it or fix the "
            "table predicate"))
    if facts["unreadable"]:
        names = ", ".join(facts["unreadable"])
        raise ReasonedError(Reason(
            "permission_denied",
            f"role {facts['me']!r} may not SELECT from {names}; run: GRANT SELECT ON "
            f"{names} TO {facts['me']};"))
    checked += [f"table {name} readable" for name in decl.tables]
    return Plan(variant, tuple(checked))


def _facts_params(decl: Declaration) -> dict[str, list[str]]:
    return {"extensions": list(decl.extensions), "tables": list(decl.tables)}


def _chosen_sql(step: Step) -> str:
    plan: Plan = step.plan
    return plan.variant.sql


# --- the transform ---------------------------------------------------------------------------


@dataclass
class Drops:
    """Rows (label sets) a collector left out on one target, per reason: the running
    totals (the counter) and the latest run's counts (logged when they change)."""

    total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    latest: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


_TYPE_NAMES = {"str": "text", "datetime": "a timestamp", "date": "a date", "time": "a time",
               "timedelta": "an interval", "dict": "json", "list": "an array",
               "bytes": "bytea", "UUID": "a uuid"}


def _sql_type(value: Any) -> str:
    name = type(value).__name__
    return _TYPE_NAMES.get(name, name)


def _number(value: Any, column: str) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | Decimal):
        try:
            return float(value)
        except OverflowError:  # a numeric beyond float's range
            return math.inf if value > 0 else -math.inf
    raise ReasonedError(Reason(
        "not_numeric",
        f"column {column} returned {_sql_type(value)}, not a number; cast it in the SQL "
        "(extract(epoch FROM ...) for times and intervals, ::float8 for numeric text) "
        "or declare it as a label"))


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_columns(decl: Declaration, rows: Rows) -> None:
    """The query must return exactly the declared columns (in any order)."""
    seen: Sequence[str] | None = getattr(rows, "columns", None)
    if seen is None:  # rows without their description (tests): the first row's keys
        if not rows:
            return
        seen = list(rows[0])
    declared = [c.name for c in decl.columns]
    missing = [name for name in declared if name not in seen]
    extra = [name for name in dict.fromkeys(seen) if name not in declared]
    twice = sorted({name for name in seen if list(seen).count(name) > 1})
    if not (missing or extra or twice):
        return
    if not seen:
        raise ReasonedError(Reason(
            "columns_mismatch",
            "the statement returned no result set (is it a SELECT?); declared columns: "
            f"{', '.join(declared)}"))
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        problems.append(f"not declared {', '.join(extra)}")
    if twice:
        problems.append(f"returned twice {', '.join(twice)}")
    raise ReasonedError(Reason(
        "columns_mismatch",
        f"the query's columns do not match the declaration: {'; '.join(problems)} (the "
        f"query returned: {', '.join(seen)}); declare every column (usage: ignore to skip "
        "one), alias them in the SQL, or give each a distinct name"))


def _transform(decl: Declaration, rows_by_name: Mapping[str, Rows], ctx: Context
               ) -> Iterator[Metric]:
    rows = rows_by_name["rows"]
    _check_columns(decl, rows)
    labels, values = decl.labels, decl.values
    families = {column.name: decl.family(column) for column in values}
    dropped = dict.fromkeys(DROP_REASONS, 0)
    kept: set[tuple[str, ...]] = set()
    for row in rows:
        if any(row[c.name] is None for c in labels):
            dropped["null_label"] += 1
            continue
        key = tuple(_label(row[c.name]) for c in labels)
        if key in kept:
            dropped["duplicate"] += 1
            continue
        if len(kept) >= decl.max_series:
            dropped["max_series"] += 1
            continue
        kept.add(key)
        for column in values:
            value = row[column.name]
            if value is not None:  # NULL: no sample for this row and column
                families[column.name].add_metric([ctx.target, *key],
                                                  _number(value, column.name))
    yield from families.values()
    yield _dropped_family(decl, ctx, dropped, len(kept))


def _dropped_family(decl: Declaration, ctx: Context, dropped: dict[str, int],
                    kept: int) -> Metric:
    drops: Drops = ctx.state if isinstance(ctx.state, Drops) else Drops()
    if dropped != drops.latest:
        (log.warning if any(dropped.values()) else log.info)(
            "custom_series_dropped", target=ctx.target, collector=decl.name, kept=kept,
            max_series=decl.max_series, **{f"dropped_{k}": n for k, n in dropped.items()})
    drops.latest = dropped
    family = CounterMetricFamily(
        DROPPED_FAMILY,
        "Rows (label sets) of a user-defined collector left out of /metrics: beyond its "
        "max_series (max_series), with a NULL label column (null_label), or repeating "
        "label values already seen (duplicate).",
        labels=["target", "collector", "reason"])
    for reason in DROP_REASONS:
        drops.total[reason] += dropped[reason]
        family.add_metric([ctx.target, decl.name, reason], float(drops.total[reason]))
    return family


def build(decl: Declaration) -> Collector:
    """The collector for a validated declaration."""
    facts = Query(VersionedSQL({0: _FACTS}), params=lambda _step: _facts_params(decl))
    return Collector(
        name=decl.name,
        help=decl.description,
        interval=decl.interval,
        timeout=decl.timeout,
        queries={"rows": Query(_chosen_sql), "reset": Query(VersionedSQL({0: RESET_SESSION}))},
        transform=functools.partial(_transform, decl),
        plan=PlanStep({"facts": facts}, functools.partial(_decide, decl)),
        new_state=Drops,
        per_database=decl.per_database,
    )
