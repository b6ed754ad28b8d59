"""analysis/topn.py: bounded cardinality with exact totals."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hiw_monitor.analysis.topn import top_n_with_rest

keys = st.text(alphabet="abcdefghij", min_size=1, max_size=4).filter(lambda k: k != "other")
counts = st.dictionaries(keys, st.integers(min_value=0, max_value=10**9), max_size=30)
sizes = st.integers(min_value=0, max_value=35)


@given(counts, sizes)
def test_sum_is_preserved_exactly(data, n):
    assert sum(top_n_with_rest(data, n).values()) == sum(data.values())


@given(counts, sizes)
def test_at_most_n_plus_one_entries(data, n):
    result = top_n_with_rest(data, n)
    assert len(result) <= n + 1
    if len(data) <= n:
        assert result == data  # nothing to fold: no "other" entry
    else:
        assert len(result) == n + 1
        assert "other" in result


@given(counts, sizes)
def test_kept_entries_are_the_largest_and_unchanged(data, n):
    result = top_n_with_rest(data, n)
    kept = {k: v for k, v in result.items() if k != "other"}
    dropped = set(data) - set(kept)
    for key, value in kept.items():
        assert data[key] == value
    if kept and dropped:
        assert min(kept.values()) >= max(data[k] for k in dropped)
    if dropped:
        assert result["other"] == sum(data[k] for k in dropped)


@given(st.data(), counts, sizes)
def test_independent_of_input_order(draw, data, n):
    shuffled = dict(draw.draw(st.permutations(list(data.items()))))
    expected = list(top_n_with_rest(data, n).items())
    assert list(top_n_with_rest(shuffled, n).items()) == expected


def test_ties_broken_by_key():
    result = top_n_with_rest({"b": 1, "a": 1, "c": 1}, 1)
    assert result == {"a": 1, "other": 2}


def test_custom_other_label():
    assert top_n_with_rest({"x": 3, "y": 2, "z": 1}, 1, other="rest") == {"x": 3, "rest": 3}
