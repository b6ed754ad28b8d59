"""Top-N with the rest summed, so totals stay exact while cardinality stays bounded."""

from __future__ import annotations

from collections.abc import Mapping


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
