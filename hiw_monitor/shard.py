"""Which agent of a fleet watches which target: rendezvous (highest random weight) hashing.

Each agent is one shard ``INDEX/COUNT``. A target belongs to the shard whose weight for
its name is the highest, the weight being a SHA-256 of (shard index, target name): stable
across processes, machines and Python versions (never ``hash()``, which is salted per
process). Growing from ``COUNT`` to ``COUNT + 1`` shards moves a target only when the new
shard wins it (about one in ``COUNT + 1``); every other target stays where it was, since
the old shards' weights do not change. No coordination: every agent computes the same
owner from the name alone. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

# INDEX: a number, or a name ending in -N such as a StatefulSet pod's (hiw-monitor-2)
_SHARD = re.compile(
    r"(?:(?P<number>[0-9]+)|(?P<pod>[^/\s]+)-(?P<ordinal>[0-9]+))/(?P<count>[0-9]+)")
MAX_COUNT = 10_000


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard of ``count``: the agent watches the targets :func:`owner` gives it."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, name: str) -> bool:
        return owner(name, self.count) == self.index

    def owned(self, names: Iterable[str]) -> list[str]:
        """The names of ``names`` this shard owns, in their order."""
        return [name for name in names if self.owns(name)]


def parse(text: str) -> Shard:
    """``INDEX/COUNT`` (INDEX from 0 to COUNT - 1, or a pod name ending in ``-INDEX``).

    >>> parse("2/3"), parse("hiw-monitor-2/3"), str(parse(" 0/1 "))
    (Shard(index=2, count=3), Shard(index=2, count=3), '0/1')
    >>> parse("3/3")
    Traceback (most recent call last):
    ...
    ValueError: shard index 3 is not below the shard count 3
    >>> parse("-1/2")
    Traceback (most recent call last):
    ...
    ValueError: '-1/2' is not INDEX/COUNT
    """
    match = _SHARD.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not INDEX/COUNT")
    index = int(match["number"] if match["number"] is not None else match["ordinal"])
    count = int(match["count"])
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"shard count {count} is not between 1 and {MAX_COUNT}")
    if index >= count:
        raise ValueError(f"shard index {index} is not below the shard count {count}")
    return Shard(index, count)


def weight(name: str, index: int) -> int:
    """The shard's weight for the target: the first 8 bytes of SHA-256("index\\0name")."""
    digest = hashlib.sha256(f"{index}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owner(name: str, count: int) -> int:
    """The index of the shard (of ``count``) that owns the target ``name``.

    >>> owner("db1:5432/hiw", 1)
    0
    >>> [owner(n, 3) for n in ("a", "b", "c")] == [owner(n, 3) for n in ("a", "b", "c")]
    True
    """
    if count < 1:
        raise ValueError("a fleet has at least one shard")
    # ties (equal 64-bit weights) go to the lower index, the same in every agent
    return max(range(count), key=lambda index: (weight(name, index), -index))
