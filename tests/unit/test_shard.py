"""shard.py: rendezvous hashing of target names over agents, and INDEX/COUNT parsing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hiw_monitor.shard import Shard, owner, parse, weight

NAMES = [f"db{i:02d}.internal:5432/heroes_in_waiting" for i in range(30)]


def owners(names, count):
    return {name: owner(name, count) for name in names}


def test_every_target_is_owned_by_exactly_one_of_three_shards():
    shards = [Shard(index, 3) for index in range(3)]
    owned = [set(shard.owned(NAMES)) for shard in shards]
    assert set().union(*owned) == set(NAMES)
    assert sum(len(o) for o in owned) == len(NAMES)  # no name twice
    for name in NAMES:
        assert sum(shard.owns(name) for shard in shards) == 1
    assert all(owned), "a shard of three owns none of 30 names: the hash does not spread"


def test_growing_from_three_to_four_shards_moves_only_to_the_new_shard():
    before, after = owners(NAMES, 3), owners(NAMES, 4)
    moved = [name for name in NAMES if before[name] != after[name]]
    assert all(after[name] == 3 for name in moved)  # the exact property
    assert all(before[name] == after[name] for name in NAMES if after[name] != 3)
    assert 3 <= len(moved) <= 15  # about a quarter of 30


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=50, unique=True),
       st.integers(1, 12))
def test_adding_a_shard_never_moves_a_target_between_old_shards(names, count):
    before, after = owners(names, count), owners(names, count + 1)
    for name in names:
        assert after[name] in (before[name], count)


def test_the_owner_is_the_same_in_another_process():
    """A stable hash (SHA-256), not Python's hash() (salted per process)."""
    code = ("from hiw_monitor.shard import owner; "
            f"print([owner(n, 5) for n in {NAMES!r}])")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": "12345"}, check=True, timeout=120)
    assert other.stdout.strip() == str([owner(n, 5) for n in NAMES])


def test_weights_are_per_shard_and_name():
    assert weight("a", 0) != weight("a", 1)
    assert weight("a", 0) != weight("b", 0)
    assert weight("a", 0) == weight("a", 0)
    assert owner("anything", 1) == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("0/1", Shard(0, 1)), ("2/3", Shard(2, 3)), ("hiw-monitor-2/3", Shard(2, 3)),
    ("web-0/4", Shard(0, 4)), (" 1/2 ", Shard(1, 2)), ("a-b-c-7/8", Shard(7, 8)),
])
def test_parse(text, expected):
    assert parse(text) == expected
    assert str(parse(text)) == f"{expected.index}/{expected.count}"


@pytest.mark.parametrize(("text", "why"), [
    ("3/3", "not below the shard count 3"), ("hiw-monitor-3/3", "not below"),
    ("a/b", "not INDEX/COUNT"), ("0/0", "between 1 and"), ("-1/2", "not INDEX/COUNT"),
    ("1", "not INDEX/COUNT"), ("1/", "not INDEX/COUNT"), ("/3", "not INDEX/COUNT"),
    ("1/2/3", "not INDEX/COUNT"), ("hiw-monitor/3", "not INDEX/COUNT"),
    ("x-/3", "not INDEX/COUNT"), ("", "not INDEX/COUNT"), ("1.0/3", "not INDEX/COUNT"),
])
def test_parse_refuses(text, why):
    with pytest.raises(ValueError, match=why):
        parse(text)
