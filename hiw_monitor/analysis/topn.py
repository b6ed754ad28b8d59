"""Top-N with the rest summed, so totals stay exact while cardinality stays bounded, and
the membership of a top N that follows the workload without flapping."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar


def top_n_with_rest(counts: Mapping[str, float], n: int, other: str = "other"
                    ) -> dict[str, float]:
    """Keep the ``n`` largest entries and sum the others under ``other``.

    Ties are broken by key so the result does not depend on input order. The sum of
    the result always equals the sum of the input.

    >>> top_n_with_rest({"a": 5, "b": 1, "c": 3, "d": 1}, 2)
    {'a': 5, 'c': 3, 'other': 2}
    >>> top_n_with_rest({"a": 5}, 2)
    {'a': 5}
    """
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[:n])
    rest = ranked[n:]
    if rest:
        kept[other] = kept.get(other, 0) + sum(value for _, value in rest)
    return kept


K = TypeVar("K", bound=Hashable)
# A challenger this many times heavier than the weakest member's recent average takes
# its place at once; otherwise it must rank in the top N on two polls in a row.
DOMINANCE = 2.0
# Weight of the newest interval in a member's recent average of activity.
SMOOTHING = 0.5


@dataclass(slots=True)
class _Member:
    recent: float  # exponentially smoothed activity per interval
    active_at: float  # when it last had any activity


@dataclass
class Membership(Generic[K]):
    """Which keys get a series of their own: at most ``n``, following the workload.

    Each poll ranks the keys by their activity in the interval (e.g. execution time).

    * **Entry.** A key among the interval's top ``n`` gets a place at once while places
      are free. When all are taken, it replaces the member with the lowest recent
      activity among those outside this interval's top ``n``: at once if it is
      ``DOMINANCE`` times heavier than that member's recent average, else when it ranks
      in the top ``n`` on a second poll in a row. So a statement that becomes the
      heaviest after a deploy has its series within two polls.
    * **Hysteresis.** Two keys trading places around rank ``n`` do not flap: neither
      ranks in the top ``n`` twice in a row, and neither dominates the other.
    * **Exit.** A member idle (no activity) for ``hold`` seconds leaves, as does a key
      that no longer exists. Before the first interval (no activity known yet) free
      places are filled by lifetime totals, so series appear from the first poll.
    """

    n: int
    hold: float
    _members: dict[K, _Member] = field(default_factory=dict)
    _pending: set[K] = field(default_factory=set)  # in the top n last poll, not admitted

    @property
    def members(self) -> list[K]:
        return list(self._members)

    def update(self, activity: Mapping[K, float], present: Collection[K], now: float,
               lifetime: Mapping[K, float] | None = None) -> set[K]:
        """Apply one poll; returns the keys that became members in it.

        >>> m = Membership(n=2, hold=600.0)
        >>> sorted(m.update({}, ["a", "b", "c"], 0.0, lifetime={"a": 5, "b": 9, "c": 1}))
        ['a', 'b']
        >>> m.update({"c": 100.0, "a": 1.0}, ["a", "b", "c"], 60.0)  # dominant: at once
        {'c'}
        >>> m.members
        ['a', 'c']
        """
        for key in [k for k in self._members if k not in present]:
            del self._members[key]
        for key, member in self._members.items():
            value = activity.get(key, 0.0)
            member.recent = SMOOTHING * value + (1.0 - SMOOTHING) * member.recent
            if value > 0:
                member.active_at = now
        for key in [k for k, m in self._members.items() if now - m.active_at > self.hold]:
            del self._members[key]

        ranked = sorted((k for k, v in activity.items() if v > 0 and k in present),
                        key=lambda k: (-activity[k], repr(k)))
        top = ranked[: self.n]
        in_top = set(top)
        admitted: set[K] = set()
        if not activity and lifetime:  # no interval yet: fill free places by lifetime
            by_lifetime = sorted((k for k in present if k not in self._members),
                                 key=lambda k: (-lifetime.get(k, 0.0), repr(k)))
            for key in by_lifetime[: self.n - len(self._members)]:
                self._admit(key, 0.0, now, admitted)
            return admitted
        for key in top:
            if key in self._members:
                continue
            if len(self._members) < self.n:
                self._admit(key, activity.get(key, 0.0), now, admitted)
                continue
            victims = [k for k in self._members if k not in in_top]
            if not victims:
                break
            victim = min(victims, key=lambda k: (self._members[k].recent, repr(k)))
            if key in self._pending or \
                    activity[key] > DOMINANCE * self._members[victim].recent:
                del self._members[victim]
                self._admit(key, activity[key], now, admitted)
        self._pending = {k for k in in_top if k not in self._members}
        return admitted

    def _admit(self, key: K, value: float, now: float, admitted: set[K]) -> None:
        self._members[key] = _Member(recent=value, active_at=now)
        admitted.add(key)
