"""Reset-safe deltas of cumulative counters, keyed by identity.

pg_stat_statements counters only grow, except when an entry is deallocated and created
again, when ``pg_stat_statements_reset()`` runs, or when the server restarts. The
:class:`CounterTracker` keeps the previous row of every key and turns each poll into the
*interval's* increments:

* a key seen before: current minus previous;
* a key whose counters went down, or whose ``since`` marker changed (PostgreSQL 17's
  ``stats_since``), or any key after a full reset: the entry started again inside the
  interval, so its current values are the interval's increments;
* a key not seen before: created inside the interval, so likewise its current values,
  except on the very first poll, which only sets the baseline;
* keys that vanished are forgotten; keys with no change produce no delta.

No delta is ever negative.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class CounterTracker(Generic[K]):
    """Turns successive snapshots of cumulative counters into non-negative increments."""

    def __init__(self, reset_fields: tuple[str, ...] = ("calls",)) -> None:
        self.reset_fields = reset_fields
        # previous values as compact tuples in the order of ``_fields`` (5,000 statements
        # x 14 counters stay a few hundred kB instead of megabytes of dicts)
        self._fields: tuple[str, ...] = ()
        self._prev: dict[K, tuple[float, ...]] = {}
        self._since: dict[K, object] = {}
        self.has_baseline = False
        self.restarts = 0  # keys seen starting again (counters down or a new ``since``)

    def forget(self) -> None:
        """Drop every previous row: the next update only sets a new baseline (the server
        behind the counters changed)."""
        self._prev = {}
        self._since = {}
        self.has_baseline = False

    def __len__(self) -> int:
        return len(self._prev)

    def update(
        self,
        rows: Mapping[K, Mapping[str, float]],
        *,
        full_reset: bool = False,
        since: Mapping[K, object] | None = None,
    ) -> dict[K, dict[str, float]]:
        """The increments since the previous call, per key (only keys that changed).

        >>> t = CounterTracker()
        >>> t.update({"q": {"calls": 5}})      # first poll: baseline only
        {}
        >>> t.update({"q": {"calls": 8}, "new": {"calls": 2}})
        {'q': {'calls': 3.0}, 'new': {'calls': 2.0}}
        >>> t.update({"q": {"calls": 1}})      # went down: restarted inside the interval
        {'q': {'calls': 1.0}}
        """
        since = since or {}
        deltas: dict[K, dict[str, float]] = {}
        new_prev: dict[K, tuple[float, ...]] = {}
        for key, current in rows.items():
            if tuple(current) != self._fields:
                # another shape of row (e.g. ALTER EXTENSION ... UPDATE added columns):
                # this poll is a new baseline, not a lifetime of counters in one interval
                if self._fields:  # (the first rows ever only set the shape)
                    self._prev = {}
                    self.has_baseline = False
                self._fields = tuple(current)
            values = tuple(float(v) for v in current.values())
            new_prev[key] = values
            previous = self._prev.get(key)
            restarted = full_reset or (
                key in since and key in self._since and since[key] != self._since[key])
            if previous is None:
                if not self.has_baseline:
                    continue
                delta = dict(zip(self._fields, values, strict=True))
            elif restarted or any(values[i] < previous[i] for i in self._reset_index()):
                delta = dict(zip(self._fields, values, strict=True))
                self.restarts += not full_reset
            elif previous == values:
                continue  # no change, no output
            else:
                delta = {f: max(0.0, v - p) for f, v, p in
                         zip(self._fields, values, previous, strict=True)}
            if any(v > 0 for v in delta.values()):
                deltas[key] = delta
        self._prev = new_prev
        self._since = dict(since)
        self.has_baseline = True
        return deltas

    def _reset_index(self) -> list[int]:
        return [i for i, f in enumerate(self._fields) if f in self.reset_fields]
