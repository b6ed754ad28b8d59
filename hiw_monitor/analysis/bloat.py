"""Statistics-based bloat estimates for heap tables and B-tree indexes. Pure: no I/O.

The idea (the classic catalog estimate, written out here from PostgreSQL's page
layout): from the columns' average stored width and null fraction (``pg_stats``), or
their fixed width (``pg_type.typlen``), compute the size of an average tuple as
PostgreSQL lays it out (header, null bitmap, alignment padding, line pointer); from the
page size, the page header and the fillfactor, how many such tuples fit on one page;
from the live tuple count, how many pages a freshly packed relation would need. What the
relation occupies beyond that is dead or free space: ``bloat = actual - expected``.

Everything is in bytes and pages of ``block_size`` (8192 unless PostgreSQL was built
otherwise). The constants are those of a 64-bit build (MAXALIGN 8).

>>> cols = [Column(4, "i"), Column(8, "d"), Column(33.0, "i", varlena=True)]  # int4, int8, text
>>> round(heap_tuples_per_page(cols), 1)
98.8
>>> expected = expected_heap_pages(100_000, cols)
>>> expected
1013
>>> table = estimate(actual_pages=1900, expected=expected)
>>> round(table.ratio, 3), table.wasted_bytes
(0.467, 7266304)
>>> estimate(actual_pages=900, expected=expected).ratio  # smaller than expected: no bloat
0.0
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

BLOCK_SIZE = 8192
MAXALIGN = 8
PAGE_HEADER = 24  # SizeOfPageHeaderData
ITEM_ID = 4  # one line pointer per tuple
HEAP_TUPLE_HEADER = 23  # offsetof(HeapTupleHeaderData, t_bits)
INDEX_TUPLE_HEADER = 8  # IndexTupleData: t_tid (6) + t_info (2)
INDEX_NULL_BITMAP = 4  # IndexAttributeBitMapData, present when a key is NULL
BTREE_SPECIAL = 16  # BTPageOpaqueData at the end of every B-tree page
BTREE_LEAF_FILLFACTOR = 90  # BTREE_DEFAULT_FILLFACTOR
BTREE_NONLEAF_FILLFACTOR = 70
HEAP_DEFAULT_FILLFACTOR = 100
SHORT_VARLENA_MAX = 126  # varlena values up to this size are stored unaligned (1-byte header)
ALIGNMENT = {"c": 1, "s": 2, "i": 4, "d": 8}
# How the offset after a variable-width value is distributed modulo 8. Statistics give
# only the average width: values of one width (codes, hashes, tokens) shift the offset
# by exactly that much, widely varying ones leave it uniform. Taking half of each bounds
# the padding error to about 1.75 bytes per variable-width value whichever it is.
VARLENA_SPREAD = 0.5


@dataclass(frozen=True, slots=True)
class Column:
    """One stored attribute: its average stored width in bytes (``pg_stats.avg_width`` for
    variable-width types, ``pg_type.typlen`` for fixed-width ones), its alignment
    (``pg_type.typalign``: c, s, i, d), whether it is a varlena, and its null fraction."""

    width: float
    align: str = "c"
    varlena: bool = False
    null_frac: float = 0.0


@dataclass(frozen=True, slots=True)
class Estimate:
    """Pages a relation occupies, pages it would need freshly packed, and the difference."""

    actual_pages: int
    expected_pages: int
    block_size: int = BLOCK_SIZE

    @property
    def wasted_pages(self) -> int:
        return max(0, self.actual_pages - self.expected_pages)

    @property
    def wasted_bytes(self) -> int:
        return self.wasted_pages * self.block_size

    @property
    def ratio(self) -> float:
        """Wasted share of the relation, 0..1 (0 for an empty relation)."""
        if self.actual_pages <= 0:
            return 0.0
        return self.wasted_pages / self.actual_pages


def align_up(offset: float, alignment: int) -> float:
    """``offset`` rounded up to a multiple of ``alignment``.

    >>> align_up(23, 8), align_up(24, 8), align_up(5, 1), align_up(6.5, 4)
    (24.0, 24.0, 5.0, 8.0)
    """
    if alignment <= 1:
        return float(offset)
    return float(math.ceil(offset / alignment) * alignment)


def _layout(columns: Sequence[Column]) -> tuple[float, float]:
    """(expected data bytes, expected padding up to the next MAXALIGN) of one tuple.

    Attributes are laid out in column order; each is aligned to its type's alignment,
    except short varlena values (1-byte header, up to 126 bytes), which PostgreSQL stores
    unaligned. A NULL takes no space (only its bit in the null bitmap), so a column is
    present with probability ``1 - null_frac`` (columns independent). Padding depends only
    on the offset modulo 8, so the offset's residue is tracked as a distribution: exact
    for fixed-width columns; after a variable-width value, half shifted by its average
    width and half uniform (see ``VARLENA_SPREAD``).
    """
    residues = [1.0] + [0.0] * (MAXALIGN - 1)  # P(offset % 8 == r); headers are MAXALIGNed
    total = 0.0
    for column in columns:
        present = 1.0 - min(max(column.null_frac, 0.0), 1.0)
        width = max(column.width, 0.0)
        alignment = ALIGNMENT.get(column.align, 1)
        if column.varlena and width <= SHORT_VARLENA_MAX:
            alignment = 1
        shifted = [0.0] * MAXALIGN
        added = 0.0
        for residue, probability in enumerate(residues):
            if probability == 0.0:
                continue
            padding = (alignment - residue % alignment) % alignment
            added += probability * (padding + width)
            spread = 1.0 if width != int(width) else (VARLENA_SPREAD if column.varlena else 0.0)
            if spread:
                for r in range(MAXALIGN):
                    shifted[r] += spread * probability / MAXALIGN
            if spread < 1.0:
                shifted[int(residue + padding + width) % MAXALIGN] += (1 - spread) * probability
        total += present * added
        residues = [(1.0 - present) * old + present * new
                    for old, new in zip(residues, shifted, strict=True)]
    tail = sum(p * ((MAXALIGN - r) % MAXALIGN) for r, p in enumerate(residues))
    return total, tail


def data_width(columns: Sequence[Column]) -> float:
    """Expected bytes of the attribute data of one tuple, alignment padding between
    attributes included (see :func:`_layout`).

    >>> data_width([Column(1, "c"), Column(8, "d")])  # 1 byte, 7 padding, 8 bytes
    16.0
    >>> data_width([Column(8, "d"), Column(1, "c")])
    9.0
    >>> data_width([Column(4, "i", null_frac=0.5)])
    2.0
    >>> data_width([Column(1, "c"), Column(10, "i", varlena=True)])  # short varlena: unaligned
    11.0
    >>> data_width([Column(4, "i"), Column(8, "d", null_frac=0.5), Column(4, "i")])
    14.0
    """
    return _layout(columns)[0]


def _fixed_layout(columns: Sequence[Column]) -> bool:
    """True when every tuple has the same size (fixed widths, never NULL)."""
    return all(not c.varlena and c.null_frac <= 0.0 for c in columns)


def heap_tuple_bytes(columns: Sequence[Column], natts: int | None = None) -> float:
    """Expected bytes one heap tuple takes on its page, line pointer included.

    The header is 23 bytes, plus a null bitmap (one bit per attribute) when the tuple
    has a NULL, rounded up to MAXALIGN; the tuple is MAXALIGNed; the line pointer adds 4.

    >>> heap_tuple_bytes([Column(4, "i")])  # 24 header + 4 data -> 32, + 4 line pointer
    36.0
    >>> heap_tuple_bytes([Column(8, "d")] * 2)
    44.0
    """
    natts = len(columns) if natts is None else natts
    no_null = 1.0
    for column in columns:
        no_null *= 1.0 - min(max(column.null_frac, 0.0), 1.0)
    plain = align_up(HEAP_TUPLE_HEADER, MAXALIGN)
    with_bitmap = align_up(HEAP_TUPLE_HEADER + math.ceil(natts / 8), MAXALIGN)
    header = no_null * plain + (1.0 - no_null) * with_bitmap
    data, tail = _layout(columns)
    return header + data + tail + ITEM_ID


def _per_page(usable: float, tuple_bytes: float, fixed: bool) -> float:
    """Tuples per page: a whole number for equal tuples; for varying ones the space left
    at the end of a page averages half a tuple."""
    if tuple_bytes <= 0:
        return 0.0
    if fixed:
        return float(math.floor(usable / tuple_bytes))
    return max(1.0, usable / tuple_bytes - 0.5)


def heap_tuples_per_page(columns: Sequence[Column], fillfactor: int = HEAP_DEFAULT_FILLFACTOR,
                         block_size: int = BLOCK_SIZE, natts: int | None = None) -> float:
    """How many average tuples a freshly filled heap page holds.

    Inserts stop filling a page when less than ``(100 - fillfactor)%`` of it would stay
    free; a page holds at most MaxHeapTuplesPerPage tuples.

    >>> heap_tuples_per_page([Column(4, "i")])  # (8192 - 24) / 36 = 226.9 -> 226
    226.0
    >>> heap_tuples_per_page([Column(4, "i")], fillfactor=50)  # (8192 - 24 - 4096) / 36
    113.0
    """
    reserve = block_size * (100 - fillfactor) / 100
    usable = block_size - PAGE_HEADER - reserve
    tuple_bytes = heap_tuple_bytes(columns, natts)
    max_tuples = (block_size - PAGE_HEADER) // (align_up(HEAP_TUPLE_HEADER, MAXALIGN) + ITEM_ID)
    return min(float(max_tuples), _per_page(usable, tuple_bytes, _fixed_layout(columns)))


def expected_heap_pages(live_tuples: float, columns: Sequence[Column],
                        fillfactor: int = HEAP_DEFAULT_FILLFACTOR,
                        block_size: int = BLOCK_SIZE, natts: int | None = None) -> int:
    """Pages ``live_tuples`` average tuples need when freshly packed.

    >>> expected_heap_pages(0, [Column(4, "i")]), expected_heap_pages(1, [Column(4, "i")])
    (0, 1)
    >>> expected_heap_pages(2260, [Column(4, "i")]), expected_heap_pages(2261, [Column(4, "i")])
    (10, 11)
    >>> expected_heap_pages(1_000_000, [Column(4, "i")])  # a fresh one-int4 table: 4425 too
    4425
    """
    if live_tuples <= 0:
        return 0
    per_page = heap_tuples_per_page(columns, fillfactor, block_size, natts)
    return math.ceil(live_tuples / per_page) if per_page > 0 else 0


def index_tuple_bytes(columns: Sequence[Column]) -> float:
    """Expected bytes of one B-tree leaf tuple, line pointer included.

    The header is 8 bytes (heap TID and flags), 16 when a key is NULL (null bitmap,
    MAXALIGNed); the tuple is MAXALIGNed; the line pointer adds 4.

    >>> index_tuple_bytes([Column(4, "i")])  # 8 + 4 -> 16, + 4
    20.0
    >>> index_tuple_bytes([Column(8, "d"), Column(8, "d")])
    28.0
    """
    no_null = 1.0
    for column in columns:
        no_null *= 1.0 - min(max(column.null_frac, 0.0), 1.0)
    header = no_null * INDEX_TUPLE_HEADER + (1.0 - no_null) * align_up(
        INDEX_TUPLE_HEADER + INDEX_NULL_BITMAP, MAXALIGN)
    data, tail = _layout(columns)
    return header + data + tail + ITEM_ID


def expected_btree_pages(index_tuples: float, columns: Sequence[Column],
                         fillfactor: int = BTREE_LEAF_FILLFACTOR,
                         block_size: int = BLOCK_SIZE) -> int:
    """Pages a freshly built B-tree over ``index_tuples`` entries needs: leaf pages
    filled to the fillfactor, internal levels filled to 70 % as CREATE INDEX leaves them,
    and the metapage.

    Deduplication (PostgreSQL 13+) is not modelled: an index with many equal keys can be
    smaller than this, and then shows no bloat.

    >>> expected_btree_pages(0, [Column(4, "i")])
    1
    >>> expected_btree_pages(1_000_000, [Column(4, "i")])  # a fresh int4 index: 2745 too
    2745
    """
    if index_tuples <= 0:
        return 1  # the metapage
    tuple_bytes = index_tuple_bytes(columns)
    fixed = _fixed_layout(columns)
    usable = block_size - PAGE_HEADER - BTREE_SPECIAL
    leaf_usable = usable - block_size * (100 - fillfactor) / 100
    per_leaf = max(1.0, _per_page(leaf_usable, tuple_bytes, fixed))
    leaf_pages = math.ceil(index_tuples / per_leaf)
    inner_usable = usable - block_size * (100 - BTREE_NONLEAF_FILLFACTOR) / 100
    fanout = max(2.0, _per_page(inner_usable, tuple_bytes, fixed) - 1)
    pages, level = leaf_pages, leaf_pages
    while level > 1:
        level = math.ceil(level / fanout)
        pages += level
    return pages + 1


def estimate(actual_pages: int, expected: int, block_size: int = BLOCK_SIZE) -> Estimate:
    """Bundle actual and expected pages (see :class:`Estimate` for ratio and bytes)."""
    return Estimate(max(0, actual_pages), max(0, expected), block_size)


def fillfactor_of(reloptions: Sequence[str] | None, default: int) -> int:
    """The ``fillfactor`` storage parameter from ``pg_class.reloptions``, else ``default``.

    >>> fillfactor_of(["fillfactor=70", "autovacuum_enabled=false"], 100)
    70
    >>> fillfactor_of(None, 90), fillfactor_of(["fillfactor=abc"], 90)
    (90, 90)
    """
    for option in reloptions or ():
        key, _, value = option.partition("=")
        if key == "fillfactor" and value.isdigit():
            return min(100, max(10, int(value)))
    return default


# --- exact mode: rounds of measurements (pure bookkeeping) ----------------------------------
#
# A round measures the largest relations one by one (pgstattuple), a budget's worth per run;
# what a run does not reach waits for the next run. The collector keeps the queue between
# runs; these functions say what a run measures and what is left afterwards.

Key = tuple[str, int]  # (kind, oid): kind "table" or "index"


def largest(sizes: Iterable[tuple[Key, int]], n: int) -> list[Key]:
    """The ``n`` largest relations, largest first (then by oid).

    >>> largest([(("table", 3), 10), (("table", 1), 30), (("table", 2), 10)], 2)
    [('table', 1), ('table', 2)]
    """
    ranked = sorted(sizes, key=lambda pair: (-pair[1], pair[0][1]))
    return [key for key, _ in ranked[:n]]


def current_round(queue: Sequence[Key], started: float | None, present: Collection[Key],
                  fresh: Sequence[Key], now: float, interval: float
                  ) -> tuple[list[Key], float | None]:
    """This run's queue and when its round started: the queue without the relations that
    went away; once it is empty, a new round over ``fresh`` (the largest relations now)
    when none ran yet or the last one started ``interval`` seconds ago or more.

    >>> current_round([("table", 1), ("table", 2)], 0.0, {("table", 2)}, [], 10.0, 60.0)
    ([('table', 2)], 0.0)
    >>> current_round([], 0.0, set(), [("index", 5)], 10.0, 60.0)  # not due yet
    ([], 0.0)
    >>> current_round([], 0.0, set(), [("index", 5)], 60.0, 60.0)
    ([('index', 5)], 60.0)
    >>> current_round([], None, set(), [("index", 5)], 10.0, 60.0)  # the first round
    ([('index', 5)], 10.0)
    """
    kept = [key for key in queue if key in present]
    if not kept and (started is None or now - started >= interval):
        return list(fresh), now
    return kept, started


def measurable(queue: Sequence[Key], locked: Collection[Key]) -> list[Key]:
    """What a run measures, in order: the queue without relations that hold or await an
    ACCESS EXCLUSIVE lock (they are never opened; the round passes them by).

    >>> measurable([("table", 1), ("table", 2), ("index", 3)], {("table", 2)})
    [('table', 1), ('index', 3)]
    """
    return [key for key in queue if key not in locked]


def remaining(queue: Sequence[Key], locked: Collection[Key], attempted: int) -> list[Key]:
    """The queue after a run that attempted the first ``attempted`` of
    :func:`measurable` (whatever their outcome) before its budget ran out: the attempted
    relations and the locked ones passed on the way are done for this round; when every
    one was attempted, nothing is left.

    >>> queue = [("table", 1), ("table", 2), ("index", 3), ("index", 4)]
    >>> remaining(queue, {("table", 2)}, 1)  # budget spent after table 1
    [('table', 2), ('index', 3), ('index', 4)]
    >>> remaining(queue, {("table", 2)}, 2)  # table 2 passed by, locked
    [('index', 4)]
    >>> remaining(queue, {("table", 2)}, 3), remaining(queue, set(queue), 0)
    ([], [])
    >>> remaining(queue, set(), 0)  # no time at all
    [('table', 1), ('table', 2), ('index', 3), ('index', 4)]
    """
    order = measurable(queue, locked)
    if attempted >= len(order):
        return []
    if attempted <= 0:
        return list(queue)
    return list(queue[queue.index(order[attempted - 1]) + 1:])
