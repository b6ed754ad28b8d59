"""Would autovacuum process this table now? Pure: no I/O.

The same test as PostgreSQL's ``relation_needs_vacanalyze()`` (autovacuum.c), from the
table's statistics counters, ``pg_class`` and the effective settings (server settings
overridden by the table's storage parameters):

* vacuum when ``dead > threshold + scale_factor * reltuples`` (capped at
  ``autovacuum_vacuum_max_threshold`` from PostgreSQL 18 on), or when
  ``inserts_since_vacuum > insert_threshold + insert_scale_factor * reltuples *
  unfrozen_share`` (the unfrozen share of pages from PostgreSQL 18 on, else 1; an insert
  threshold of -1 disables this trigger);
* analyze when ``modifications_since_analyze > analyze_threshold + analyze_scale_factor *
  reltuples``;
* always vacuum (to prevent wraparound) when ``age(relfrozenxid)`` exceeds
  ``autovacuum_freeze_max_age`` (the smaller of the server's and the table's) or
  ``mxid_age(relminmxid)`` exceeds ``autovacuum_multixact_freeze_max_age``, even when
  autovacuum is disabled for the table.

``reltuples`` below 0 (never vacuumed or analyzed, PostgreSQL 14+) counts as 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

# Settings and storage parameters this module reads (the reloption has the same name).
SETTINGS = (
    "autovacuum_vacuum_threshold",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_max_threshold",  # PostgreSQL 18+
    "autovacuum_vacuum_insert_threshold",
    "autovacuum_vacuum_insert_scale_factor",
    "autovacuum_analyze_threshold",
    "autovacuum_analyze_scale_factor",
    "autovacuum_freeze_max_age",
    "autovacuum_multixact_freeze_max_age",
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Effective autovacuum settings for one table (PostgreSQL's defaults here)."""

    vacuum_threshold: float = 50
    vacuum_scale_factor: float = 0.2
    vacuum_max_threshold: float = -1  # -1: no cap (before 18, or disabled)
    insert_threshold: float = 1000  # -1: no insert-triggered vacuum
    insert_scale_factor: float = 0.2
    analyze_threshold: float = 50
    analyze_scale_factor: float = 0.1
    freeze_max_age: float = 200_000_000
    multixact_freeze_max_age: float = 400_000_000
    enabled: bool = True

    @classmethod
    def from_server(cls, settings: Mapping[str, str | None]) -> Settings:
        """From ``current_setting()`` values keyed by their names (missing: defaults).

        >>> Settings.from_server({"autovacuum_vacuum_scale_factor": "0.05"}).vacuum_scale_factor
        0.05
        """
        base = cls()
        return base.override({name: value for name, value in settings.items()
                              if value not in (None, "")})

    def override(self, options: Mapping[str, str | None]) -> Settings:
        """These settings with storage parameters (``name=value`` pairs) applied.

        A table's ``autovacuum_freeze_max_age`` can only lower the server's, as in
        PostgreSQL.

        >>> s = Settings().override({"autovacuum_enabled": "false",
        ...                          "autovacuum_freeze_max_age": "500000000"})
        >>> s.enabled, s.freeze_max_age
        (False, 200000000.0)
        """
        fields: dict[str, float | bool] = {}
        for name, raw in options.items():
            if raw is None:
                continue
            if name == "autovacuum_enabled":
                fields["enabled"] = raw.strip().lower() in ("true", "on", "yes", "1", "t")
                continue
            field = _FIELDS.get(name)
            if field is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                continue
            if field in ("freeze_max_age", "multixact_freeze_max_age"):
                value = min(value, float(getattr(self, field)))
            fields[field] = value
        return replace(self, **fields)  # type: ignore[arg-type]


_FIELDS = {
    "autovacuum_vacuum_threshold": "vacuum_threshold",
    "autovacuum_vacuum_scale_factor": "vacuum_scale_factor",
    "autovacuum_vacuum_max_threshold": "vacuum_max_threshold",
    "autovacuum_vacuum_insert_threshold": "insert_threshold",
    "autovacuum_vacuum_insert_scale_factor": "insert_scale_factor",
    "autovacuum_analyze_threshold": "analyze_threshold",
    "autovacuum_analyze_scale_factor": "analyze_scale_factor",
    "autovacuum_freeze_max_age": "freeze_max_age",
    "autovacuum_multixact_freeze_max_age": "multixact_freeze_max_age",
}


def parse_reloptions(reloptions: Sequence[str] | None) -> dict[str, str]:
    """``pg_class.reloptions`` as a mapping (TOAST options, ``toast.*``, are left out).

    >>> parse_reloptions(["fillfactor=70", "autovacuum_enabled=false", "toast.x=1"])
    {'fillfactor': '70', 'autovacuum_enabled': 'false'}
    >>> parse_reloptions(None)
    {}
    """
    out = {}
    for option in reloptions or ():
        key, _, value = option.partition("=")
        if not key.startswith("toast."):
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class TableCounters:
    """What autovacuum looks at for one table."""

    reltuples: float
    dead_tuples: float
    inserts_since_vacuum: float
    modifications_since_analyze: float
    xid_age: float
    mxid_age: float
    relpages: float = 0
    relallfrozen: float = 0  # PostgreSQL 18+; 0 elsewhere (unfrozen share 1)


@dataclass(frozen=True, slots=True)
class Decision:
    vacuum_threshold: float
    insert_threshold: float  # -1 when the insert trigger is disabled
    analyze_threshold: float
    vacuum_due: bool  # for any reason, wraparound included
    analyze_due: bool
    wraparound: bool  # forced by transaction ID or multixact age


def decide(table: TableCounters, settings: Settings, autovacuum_on: bool = True) -> Decision:
    """The autovacuum decision for one table.

    >>> t = TableCounters(reltuples=10_000, dead_tuples=2_100, inserts_since_vacuum=0,
    ...                   modifications_since_analyze=900, xid_age=1000, mxid_age=0)
    >>> d = decide(t, Settings())
    >>> d.vacuum_threshold, d.vacuum_due, d.analyze_threshold, d.analyze_due
    (2050.0, True, 1050.0, False)
    >>> decide(t, Settings(enabled=False)).vacuum_due
    False
    >>> old = TableCounters(10_000, 0, 0, 0, xid_age=250_000_000, mxid_age=0)
    >>> decide(old, Settings(enabled=False)).wraparound
    True
    >>> capped = TableCounters(1e9, 150_000_000, 0, 0, 0, 0)
    >>> decide(capped, Settings(vacuum_max_threshold=100_000_000)).vacuum_threshold
    100000000.0
    """
    reltuples = max(0.0, table.reltuples)
    wraparound = (table.xid_age > settings.freeze_max_age
                  or table.mxid_age > settings.multixact_freeze_max_age)
    vac = settings.vacuum_threshold + settings.vacuum_scale_factor * reltuples
    if settings.vacuum_max_threshold >= 0:
        vac = min(vac, settings.vacuum_max_threshold)
    unfrozen = 1.0
    if table.relpages > 0 and table.relallfrozen > 0:
        unfrozen = 1.0 - min(table.relallfrozen, table.relpages) / table.relpages
    ins = -1.0
    if settings.insert_threshold >= 0:
        ins = settings.insert_threshold + settings.insert_scale_factor * reltuples * unfrozen
    anl = settings.analyze_threshold + settings.analyze_scale_factor * reltuples
    active = autovacuum_on and settings.enabled
    vacuum_due = wraparound or (active and (
        table.dead_tuples > vac or (ins >= 0 and table.inserts_since_vacuum > ins)))
    analyze_due = active and table.modifications_since_analyze > anl
    return Decision(float(vac), float(ins), float(anl), vacuum_due, analyze_due, wraparound)
