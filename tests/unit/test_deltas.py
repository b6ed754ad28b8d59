"""CounterTracker: increments are never negative; resets count from zero."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hiw_monitor.analysis.deltas import CounterTracker

polls = st.lists(
    st.dictionaries(st.sampled_from("abcde"),
                    st.fixed_dictionaries({"calls": st.integers(0, 10**6),
                                           "total": st.floats(0, 1e6)}), max_size=5),
    min_size=1, max_size=10)


@given(polls, st.lists(st.booleans(), min_size=10, max_size=10))
def test_no_negative_delta_ever(sequence, resets):
    tracker = CounterTracker(reset_fields=("calls", "total"))
    for snapshot, reset in zip(sequence, resets, strict=False):
        for delta in tracker.update(snapshot, full_reset=reset).values():
            assert all(v >= 0 for v in delta.values())


@given(st.lists(st.integers(0, 1000), min_size=2, max_size=20))
def test_monotone_counters_sum_back_to_the_total(increments):
    tracker = CounterTracker()
    value = 0
    seen = 0.0
    tracker.update({"q": {"calls": 0}})
    for step in increments:
        value += step
        seen += tracker.update({"q": {"calls": value}}).get("q", {}).get("calls", 0.0)
    assert seen == value


def test_reset_counts_the_new_values_as_the_interval():
    tracker = CounterTracker()
    tracker.update({"q": {"calls": 100}})
    assert tracker.update({"q": {"calls": 7}}) == {"q": {"calls": 7.0}}
    assert tracker.update({"q": {"calls": 9}}, full_reset=True) == {"q": {"calls": 9.0}}


def test_stats_since_change_marks_a_recreated_entry():
    tracker = CounterTracker()
    tracker.update({"q": {"calls": 10}}, since={"q": 1.0})
    # more calls than before, yet re-created (PostgreSQL 17's stats_since moved)
    assert tracker.update({"q": {"calls": 12}}, since={"q": 2.0}) == {"q": {"calls": 12.0}}


def test_a_new_row_shape_starts_a_new_baseline():
    tracker = CounterTracker()
    tracker.update({"q": {"calls": 1000}})
    tracker.update({"q": {"calls": 1010}})
    # an extension update adds a column: not 1,020 calls in one interval
    assert tracker.update({"q": {"calls": 1020, "plans": 5}}) == {}
    assert tracker.update({"q": {"calls": 1030, "plans": 6}}) == \
        {"q": {"calls": 10.0, "plans": 1.0}}


def test_first_poll_is_only_a_baseline_and_vanished_keys_are_forgotten():
    tracker = CounterTracker()
    assert tracker.update({"a": {"calls": 5}, "b": {"calls": 1}}) == {}
    assert tracker.update({"a": {"calls": 5}}) == {}  # no change, no output
    assert len(tracker) == 1
    assert tracker.update({"a": {"calls": 5}, "b": {"calls": 1}}) == {"b": {"calls": 1.0}}
