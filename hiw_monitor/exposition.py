"""Render the snapshot as Prometheus text or OpenMetrics, with self-metrics.

Rendering reads only the :class:`SnapshotStore`: no database work happens on a scrape.

The exposition is cut into *blocks*: one per (target, collector) record, one per target
for its self-metrics (``hiw_up``, ``hiw_collector_*``, ``hiw_target_series``, ...), one per
target for the families derived from the whole snapshot (the health score) and one for
the agent's own families of it (``hiw_target_info``), plus a few holding no target (the
declarations of the self-metrics, families without a target label). Each block keeps
its rendered sample lines per family and per format, and is rendered again only when its
input changes (another stored result, its series going stale, another health score), so a
collection costs the rendering of its own block (done in the collecting thread), not of
the whole exposition. A scrape assembles the body family by family (one HELP/TYPE header,
then the lines of every block with that family, in a stable order: text and OpenMetrics
want one group per family, and OpenMetrics forbids interleaving them), and caches it until
a block changes or the next stale deadline passes. ``/probe?target=NAME`` assembles one
target's blocks from the same cache (:meth:`Exposition.probe`). The derived families are
evaluated, for every target at once, at a scrape after the store changed (a probe: after
its target's records changed, at most every PROBE_DERIVED_EVERY seconds).

Gzip is assembled too (:class:`_Gzip`): the body is cut into chunks of about 64 kB at
stable places, each chunk is deflated once (raw deflate ending in a full flush, so the
segments concatenate; with the previous chunk's end as its dictionary, so the whole
compresses about as well as in one go), and the body is a single gzip member: a header,
the segments, an empty final block, the CRC-32 (combined from the chunks') and the length.
A chunk is compressed again only when its bytes, or the end of the one before, changed.

One bad family never breaks ``/metrics``: a family that client_python could not render
(a label value that is None or not a string, a value that is not a number) is dropped,
counted in ``hiw_exposition_dropped_families_total`` and logged once; every other family,
of the same collector too, is served.
"""

from __future__ import annotations

import gzip
import itertools
import math
import operator
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector as RegistryCollector
from prometheus_client.samples import Sample as PromSample

from hiw_monitor import __version__
from hiw_monitor.snapshot import Sample, SnapshotStore, TargetState

log = structlog.get_logger("hiw_monitor.exposition")

TEXT_CONTENT_TYPE = text_format.CONTENT_TYPE_LATEST
OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST
FAMILY_TYPES = frozenset({"counter", "gauge", "summary", "histogram", "gaugehistogram",
                          "stateset", "info", "unknown"})
# (target, collector, family) -> how many stored results had that family dropped
DroppedCounts = Mapping[tuple[str, str, str], int]


def self_metrics(
    targets: Iterable[TargetState], samples: Iterable[Sample], now: float,
    dropped: DroppedCounts | None = None, series: Mapping[str, int] | None = None,
) -> list[Metric]:
    """The agent's own families, computed from the records (one source of truth).

    ``series``: target -> how many series the target exports (``hiw_target_series``)."""
    up = GaugeMetricFamily("hiw_up", "1 if the agent's connection to the target works.",
                           labels=["target"])
    build = GaugeMetricFamily("hiw_build_info", "Agent version and the target's server version.",
                              labels=["target", "version", "server_version"])
    for t in targets:
        if t.checked:  # not before the first try: a restart is not an outage (burn rates)
            up.add_metric([t.name], 1.0 if t.up else 0.0)
        build.add_metric([t.name, __version__, t.server_version or "unknown"], 1.0)
    exported = GaugeMetricFamily(
        "hiw_target_series", "Series the agent exports for the target: its collectors', "
        "its self-metrics and its health families (what /probe?target= returns).",
        labels=["target"])
    for name, count in (series or {}).items():
        exported.add_metric([name], float(count))
    pair = ["target", "collector"]
    c_up = GaugeMetricFamily("hiw_collector_up",
                             "1 if the collector's latest run succeeded.", labels=pair)
    c_dur = GaugeMetricFamily("hiw_collector_duration_seconds",
                              "Wall time of the collector's latest run.", labels=pair)
    c_last = GaugeMetricFamily("hiw_collector_last_success_timestamp_seconds",
                               "When the collector last succeeded (Unix time).", labels=pair)
    c_err = CounterMetricFamily("hiw_collector_errors", "Failed runs of the collector.",
                                labels=pair)
    c_runs = CounterMetricFamily("hiw_collector_runs", "Runs of the collector.", labels=pair)
    c_skip = CounterMetricFamily(
        "hiw_collector_skipped",
        "Scheduled runs skipped: still_running (previous run not done) or missed.",
        labels=[*pair, "reason"])
    c_stale = GaugeMetricFamily(
        "hiw_collector_stale",
        "1 while the collector's series are withheld because its last success is too old.",
        labels=pair)
    c_reason = GaugeMetricFamily(
        "hiw_collector_last_error_info",
        "Present with value 1 while the collector's latest run failed; reason says why.",
        labels=[*pair, "reason"])
    for s in samples:
        labels = [s.target, s.collector]
        c_up.add_metric(labels, 1.0 if s.ok else 0.0)
        c_dur.add_metric(labels, s.duration)
        if s.last_success_at is not None:
            c_last.add_metric(labels, s.last_success_at)
        c_err.add_metric(labels, float(s.errors_total))
        c_runs.add_metric(labels, float(s.runs_total))
        c_stale.add_metric(labels, 0.0 if s.fresh(now) or s.finished_at is None else 1.0)
        if s.error is not None:
            c_reason.add_metric([*labels, s.error.code], 1.0)
        for reason, count in s.skipped:
            c_skip.add_metric([*labels, reason], float(count))
    c_dropped = CounterMetricFamily(
        "hiw_exposition_dropped_families",
        "Families of a collector's result left out of /metrics because they could not be "
        "rendered (a label value that is not a string, a value that is not a number).",
        labels=[*pair, "family"])
    for (target, collector, family), count in sorted((dropped or {}).items()):
        c_dropped.add_metric([target, collector, family], float(count))
    return [up, build, exported, c_up, c_dur, c_last, c_err, c_runs, c_skip, c_stale, c_reason,
            c_dropped]


def _text_problem(what: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"{what} is {type(value).__name__}, not str"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{what} is not valid Unicode"
    return None


def _number_problem(what: str, value: object) -> str | None:
    try:
        float(value)  # type: ignore[arg-type]  # what client_python does with it
    except (TypeError, ValueError, OverflowError):
        return f"{what} is {type(value).__name__}, not a number"
    return None


def family_problem(family: Metric) -> str | None:
    """Why client_python could not render ``family`` (text and OpenMetrics), or None.

    >>> from prometheus_client.core import GaugeMetricFamily
    >>> good = GaugeMetricFamily("hiw_x", "X.", labels=["target", "backup_name"])
    >>> good.add_metric(["t", "nightly"], 1.0)
    >>> family_problem(good) is None
    True
    >>> bad = GaugeMetricFamily("hiw_x", "X.", labels=["target", "backup_name"])
    >>> bad.add_metric(["t", None], 1.0)
    >>> family_problem(bad)
    'sample hiw_x: label backup_name is NoneType, not str'
    """
    if _plain(family, openmetrics_format=True):  # the common case, checked faster
        return None
    for what, text in (("name", family.name), ("help", family.documentation),
                       ("unit", family.unit)):
        problem = _text_problem(what, text)
        if problem is not None:
            return problem
    if family.type not in FAMILY_TYPES:
        return f"type {family.type!r} is not a metric type"
    for sample in family.samples:
        problem = _text_problem("sample name", sample.name)
        if problem is not None:
            return problem
        where = f"sample {sample.name}"
        if not isinstance(sample.labels, dict):
            return f"{where}: labels are {type(sample.labels).__name__}, not dict"
        for name, value in sample.labels.items():
            problem = _text_problem("a label name", name) or \
                _text_problem(f"label {name}", value)
            if problem is not None:
                return f"{where}: {problem}"
        problem = _number_problem("value", sample.value)
        if problem is None and sample.timestamp is not None:
            problem = _number_problem("timestamp", sample.timestamp)
        if problem is None and (sample.exemplar is not None
                                or sample.native_histogram is not None):
            problem = "exemplars and native histograms are not exported"
        if problem is not None:
            return f"{where}: {problem}"
    return None


MAX_LABEL_VALUE = 256  # characters; longer values (a 10 kB backup name) are cut with "…"


def _long(value: object) -> bool:
    return isinstance(value, str) and len(value) > MAX_LABEL_VALUE


def _bounded(sample: PromSample) -> PromSample:
    # never raises: a value that is not a string is left to family_problem and render
    if not any(_long(value) for value in sample.labels.values()):
        return sample
    labels = {name: value[: MAX_LABEL_VALUE - 1] + "…" if _long(value) else value
              for name, value in sample.labels.items()}
    return sample._replace(labels=labels)


def merge_families(families: Iterable[Metric]) -> list[Metric]:
    """One family per metric name: the samples of every target under one HELP/TYPE.

    Label values longer than MAX_LABEL_VALUE characters are truncated. (Escaping of
    quotes, backslashes and newlines is the exposition format's, done by client_python.)
    """
    merged: dict[str, Metric] = {}
    for family in families:
        into = merged.get(family.name)
        if into is None:
            into = Metric(family.name, family.documentation, family.type, family.unit)
            merged[family.name] = into
        into.samples.extend(_bounded(sample) for sample in family.samples)
    return list(merged.values())


class _Frozen(RegistryCollector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _client_render(families: list[Metric], *, openmetrics_format: bool) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Frozen(families))
    if openmetrics_format:
        body: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    else:
        body = text_format.generate_latest(registry)
    return body


# --- the common case, rendered without client_python's per-character validation -----------
# client_python checks every character of every label name of every sample (most of a
# collection's CPU when it was used for everything). The families the collectors make are
# nearly all plain: names in the legacy character set (checked here once per distinct
# name), string label values, numeric values, no timestamp, exemplar or OpenMetrics-only
# sample. Those are written here, byte for byte as client_python writes them (a property
# test compares the two on generated families: tests/unit/test_fast_render.py); any other
# family goes to client_python.

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # metric and label names written as they are
_TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "summary": "summary",
               "histogram": "histogram", "unknown": "untyped", "stateset": "gauge",
               "gaugehistogram": "histogram", "info": "gauge"}
_TEXT_NAME_SUFFIX = {"counter": "_total", "info": "_info"}
_TEXT_MOVED = ("_created", "_gsum", "_gcount")  # client_python moves these after the family
_plain_names: set[str] = set()


def _plain_name(name: object) -> bool:
    if name in _plain_names:
        return True
    if isinstance(name, str) and _NAME.fullmatch(name):
        if len(_plain_names) < 100_000:  # bounded: label names are few; a cache, not a leak
            _plain_names.add(name)
        return True
    return False


def _plain(family: Metric, openmetrics_format: bool) -> bool:
    if not _plain_name(family.name) or family.type not in _TEXT_TYPES \
            or not isinstance(family.documentation, str) or not isinstance(family.unit, str):
        return False
    moved = tuple(family.name + suffix for suffix in _TEXT_MOVED)
    for sample in family.samples:
        if sample.timestamp is not None or sample.exemplar is not None \
                or sample.native_histogram is not None or type(sample.value) not in (float, int) \
                or not _plain_name(sample.name) or not isinstance(sample.labels, dict):
            return False
        if not openmetrics_format and sample.name in moved:
            return False
        for name, value in sample.labels.items():
            if not isinstance(value, str) or not _plain_name(name):
                return False
    return True


def _go_float(value: float) -> str:
    """A sample value as Go (and so Prometheus and client_python) writes it.

    >>> [_go_float(v) for v in (1, 0.5, float("inf"), -float("inf"), 1e22, 12345678.0)]
    ['1.0', '0.5', '+Inf', '-Inf', '1e+22', '1.2345678e+07']
    """
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:  # NaN
        return "NaN"
    text = repr(d)
    dot = text.find(".")
    if d > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _value(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def _fast(family: Metric, openmetrics_format: bool) -> str:
    name, doc = family.name, family.documentation
    if openmetrics_format:
        head = (f"# HELP {name} {_value(doc)}\n# TYPE {name} {family.type}\n"
                + (f"# UNIT {name} {family.unit}\n" if family.unit else ""))
    else:
        shown = name + _TEXT_NAME_SUFFIX.get(family.type, "")
        help_text = doc.replace("\\", "\\\\").replace("\n", "\\n")
        head = f"# HELP {shown} {help_text}\n# TYPE {shown} {_TEXT_TYPES[family.type]}\n"
    lines = [head]
    for sample in family.samples:
        if sample.labels:
            labels = ",".join(f'{k}="{_value(v)}"' for k, v in sorted(sample.labels.items()))
            lines.append(f"{sample.name}{{{labels}}} {_go_float(sample.value)}\n")
        else:
            lines.append(f"{sample.name} {_go_float(sample.value)}\n")
    return "".join(lines)


def render(families: list[Metric], *, openmetrics_format: bool) -> bytes:
    """``families`` in the text format or OpenMetrics, as client_python renders them
    (plain families written here, the others by client_python). Raises what client_python
    raises for a family it cannot render."""
    parts: list[bytes] = []
    for family in families:
        if _plain(family, openmetrics_format):
            parts.append(_fast(family, openmetrics_format).encode("utf-8"))
            continue
        body = _client_render([family], openmetrics_format=openmetrics_format)
        parts.append(body.removesuffix(b"# EOF\n") if openmetrics_format else body)
    if openmetrics_format:
        parts.append(b"# EOF\n")
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Rendered:
    body: bytes
    content_type: str
    gzipped: bool


# --- blocks: one family of one block rendered once per format --------------------------

COLLECTOR, SELF, AGENT, DERIVED = 0, 1, 2, 3  # what a block holds (and its output order)
BlockKey = tuple[str, int, str]  # (target, kind, collector); "" target: no target's
# text format: client_python writes these samples of a family as gauges of their own
# after it (``x_created``...), in this order
_SUFFIXES = ("_created", "_gcount", "_gsum")
# the derived families (health) are evaluated for every target at once, O(targets): a
# /probe of a target whose records changed evaluates them again at most this often, so
# a Prometheus probing 200 targets does not evaluate them at every probe
PROBE_DERIVED_EVERY = 5.0  # seconds
# a /probe body larger than this (bytes, plain) is gzipped from cached chunks (_Gzip), a
# smaller one whole (cheaper than the bookkeeping)
PROBE_CHUNKED_ABOVE = 4 * 65536
_CHUNK = 65536  # bytes of the body deflated together, about (see _Gzip) ...
_WINDOW = 32768  # ... and at least: deflate's window


class Piece(NamedTuple):
    """One family of one block, rendered in one format."""

    header: bytes  # the HELP, TYPE (and UNIT) lines
    lines: bytes  # the block's sample lines of the family
    # text format: (suffix, header, lines) of the family's _created/_gcount/_gsum samples
    extras: tuple[tuple[str, bytes, bytes], ...] = ()
    origin: int = 0  # hash((family, "", block key)): where the lines come from (_Gzip)


def _sections(body: bytes) -> list[tuple[bytes, bytes]]:
    """(header lines, sample lines) of each ``# HELP`` section of a rendered body. (A HELP
    text or label value has its newlines escaped, and a sample line never starts with #.)"""
    out = []
    start, end = 0, len(body)
    while start < end:
        after = body.find(b"\n# HELP ", start)
        stop = end if after < 0 else after + 1
        header_end = body.index(b"\n", body.index(b"\n", start) + 1) + 1  # HELP, TYPE
        if body.startswith(b"# UNIT ", header_end):
            header_end = body.index(b"\n", header_end) + 1
        if not body.startswith(b"# HELP ", start) or header_end > stop:
            raise ValueError("not a HELP, TYPE section")
        out.append((body[start:header_end], body[header_end:stop]))
        start = stop
    return out


def render_block(families: Sequence[Metric], *, openmetrics_format: bool) -> dict[str, Piece]:
    """The families of one block (unique names) rendered by :func:`render` in one go, cut
    per family: {name: Piece}, in their order. Raises what rendering raises."""
    if not families:
        return {}
    body = render(list(families), openmetrics_format=openmetrics_format)
    if openmetrics_format:
        if not body.endswith(b"# EOF\n"):
            raise ValueError("OpenMetrics without # EOF")
        body = body[:-len(b"# EOF\n")]
    sections = _sections(body)
    pieces: dict[str, Piece] = {}
    at = 0
    for family in families:
        if openmetrics_format:
            suffixes: tuple[str, ...] = ()
        else:
            names = {sample.name for sample in family.samples}
            suffixes = tuple(s for s in _SUFFIXES if family.name + s in names)
        if at + 1 + len(suffixes) > len(sections):
            raise ValueError("fewer sections than families")
        header, lines = sections[at]
        extras = tuple((suffix, *sections[at + 1 + i]) for i, suffix in enumerate(suffixes))
        pieces[family.name] = Piece(header, lines, extras)
        at += 1 + len(suffixes)
    if at != len(sections):
        raise ValueError("more sections than families")
    return pieces


@dataclass(eq=False, slots=True)
class _Block:
    """A part of the exposition rendered on its own: one (target, collector) record, one
    target's self-metrics, agent or derived families, or those of no target ("")."""

    key: BlockKey
    source: object = None  # what the families were made from: unchanged, not re-rendered
    families: tuple[Metric, ...] = ()  # renderable, one per name, label values bounded
    series: int = 0
    pieces: dict[bool, dict[str, Piece]] = field(default_factory=dict)  # per format
    sample: Sample | None = None  # a collector block's record, and whether it was fresh
    fresh: bool = False

    def set(self, source: object, families: tuple[Metric, ...]) -> None:
        self.source, self.families = source, families
        self.series = sum(len(family.samples) for family in families)
        self.pieces = {}


def _merged(families: list[Metric]) -> tuple[Metric, ...] | None:
    try:
        return tuple(merge_families(families))
    except Exception:  # noqa: BLE001  # Metric() refused a name
        return None


def _by_target(families: Iterable[Metric], known: Mapping[str, object]
               ) -> dict[str, list[Metric]]:
    """Families of several targets (health, the agent's) as one part per target, by the
    ``target`` label of their samples; under "" what has no (known) target: a family
    without samples (its declaration), one that will be dropped. Never raises."""
    out: dict[str, list[Metric]] = {}
    for family in families:
        groups: dict[str, list[PromSample]] = {}
        if family_problem(family) is None:
            for sample in family.samples:
                target = sample.labels.get("target", "")
                groups.setdefault(target if target in known else "", []).append(sample)
        if len(groups) <= 1:
            out.setdefault(next(iter(groups), ""), []).append(family)
            continue
        for target, samples in groups.items():
            part = Metric(family.name, family.documentation, family.type, family.unit)
            part.samples = samples
            out.setdefault(target, []).append(part)
    return out


# --- gzip, assembled from chunks deflated once -----------------------------------------

_POLY = 0xEDB88320  # CRC-32, reflected (zlib's crc32.c)


def _multmodp(a: int, b: int) -> int:
    """a times b modulo the CRC-32 polynomial."""
    if a == 0:
        return 0
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^n) modulo the polynomial
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def _shift(size: int) -> int:
    """x^(8 size) modulo the polynomial: appending ``size`` bytes to a CRC's message."""
    p, k = 1 << 31, 3
    while size:
        if size & 1:
            p = _multmodp(_X2N[k & 31], p)
        size >>= 1
        k += 1
    return p


class _Deflated(NamedTuple):
    items: tuple[bytes, ...]  # what was compressed ...
    after: tuple[bytes, ...]  # ... after what: the previous chunk's last items (its end)
    segment: bytes  # raw deflate ending in a full flush: it concatenates
    crc: int
    size: int
    shift: int  # _shift(size)
    end: tuple[bytes, ...]  # _end(items): what the next chunk comes after


def _deflate(items: tuple[bytes, ...], after: tuple[bytes, ...] = ()) -> _Deflated:
    """Deflate ``items`` as they follow ``after``, whose last 32 kB are the dictionary:
    the decompressor has them in its window there, so they may be referred to."""
    data = b"".join(items)
    window = b"".join(after)[-_WINDOW:]
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=window) if window \
        else zlib.compressobj(6, zlib.DEFLATED, -15)
    segment = compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
    return _Deflated(items, after, segment, zlib.crc32(data), len(data), _shift(len(data)),
                     _end(items))


def _end(items: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The last items, as few as hold _WINDOW bytes (or all)."""
    size, start = 0, len(items)
    while start > 0 and size < _WINDOW:
        start -= 1
        size += len(items[start])
    return items[start:]


def _crc(parts: Sequence[_Deflated], crc: int = 0) -> int:
    """The CRC-32 of the parts' bytes one after the other (after bytes of CRC ``crc``)."""
    for part in parts:
        crc = _multmodp(part.shift, crc) ^ part.crc
    return crc


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0
GZIP_END = b"\x03\x00"  # an empty final block (fixed Huffman)

Item = tuple[bytes, int]  # bytes of the body, hash((family, suffix, block or None))


class _Run(NamedTuple):
    """Consecutive pieces of the body up to one after which a gzip chunk may end."""

    first: int  # the origin of its first piece (a chunk's key)
    items: tuple[bytes, ...]
    size: int
    cut: bool  # a chunk may end after it (else: the body's or a family's last pieces)


def _runs(items: Iterable[Item]) -> list[_Run]:
    """``items`` as runs: a chunk may end after a piece with a probability of its length
    / (_CHUNK - _WINDOW), decided by a hash of its origin (see :class:`_Gzip`)."""
    span = _CHUNK - _WINDOW
    runs = []
    current: list[bytes] = []
    size = first = 0
    for data, origin in items:
        if not data:
            continue
        if not current:
            first = origin
        current.append(data)
        size += len(data)
        if (origin & 0xFFFFFFFF) * span < len(data) << 32:
            runs.append(_Run(first, tuple(current), size, True))
            current, size = [], 0
    if current:
        runs.append(_Run(first, tuple(current), size, False))
    return runs


class _Gzip:
    """The gzip body of one format from chunks deflated once, kept until their bytes
    change.

    The body's pieces (a family's header, a block's lines of it) are cut into chunks of
    about _CHUNK bytes at stable places: once a chunk has _WINDOW bytes, it ends after a
    piece with a probability of the piece's length / (_CHUNK - _WINDOW), decided by a hash
    of where the piece comes from (:func:`_runs`). So a changed block changes the chunks
    holding its lines, and a cut moves only near a piece whose length changed. A chunk is
    deflated with the previous chunk's last 32 kB as its dictionary (what a decompressor
    has in its window there, as pigz does): it compresses about as well as the whole
    body, and is compressed again when its own bytes or the end of the previous chunk
    changed."""

    def __init__(self) -> None:
        self._chunks: dict[int, _Deflated] = {}  # by the origin of their first piece
        self._last: list[_Deflated] = []  # the last body's chunks ...
        self._crcs: list[int] = []  # ... and the CRC of the body up to the end of each
        self.compressed = 0  # chunks deflated (tests, benchmarks)

    def body(self, runs: Iterable[_Run]) -> bytes:
        kept: dict[int, _Deflated] = {}
        chunks: list[_Deflated] = []
        group: list[bytes] = []
        size = first = 0
        for run in runs:
            if not group:
                first = run.first
            group.extend(run.items)
            size += run.size
            if run.cut and size >= _WINDOW:
                chunks.append(self._chunk(kept, first, group, chunks))
                group, size = [], 0
        if group:
            chunks.append(self._chunk(kept, first, group, chunks))
        self._chunks = kept
        # the CRC: as far as the chunks are those of the last body, as computed then
        same = next((i for i, (a, b) in enumerate(zip(chunks, self._last, strict=False))
                     if a is not b), min(len(chunks), len(self._last)))
        crcs = self._crcs[:same]
        crc = crcs[-1] if crcs else 0
        for chunk in chunks[same:]:
            crc = _crc((chunk,), crc)
            crcs.append(crc)
        self._last, self._crcs = chunks, crcs
        size = sum(chunk.size for chunk in chunks)
        return b"".join((GZIP_HEADER, *(chunk.segment for chunk in chunks), GZIP_END,
                         struct.pack("<II", crc, size & 0xFFFFFFFF)))

    def _chunk(self, kept: dict[int, _Deflated], first: int, group: list[bytes],
               before: list[_Deflated]) -> _Deflated:
        items = tuple(group)
        after = before[-1].end if before else ()
        chunk = self._chunks.get(first)
        if chunk is None or chunk.items != items or chunk.after != after:
            chunk = _deflate(items, after)
            self.compressed += 1
        kept[first] = chunk
        return chunk


Part = tuple[BlockKey, dict[str, Piece]]  # a block's pieces in one format
EOF_RUN = _Run(0, (b"# EOF\n",), len(b"# EOF\n"), False)


def _families(parts: Iterable[Part]) -> dict[str, list[Piece]]:
    """Family-major: for each family name (first seen first) its pieces, block by block."""
    out: dict[str, list[Piece]] = {}
    for _, pieces in parts:
        for name, piece in pieces.items():
            entry = out.get(name)
            if entry is None:
                out[name] = [piece]
            else:
                entry.append(piece)
    return out


def _family(name: str, pieces: Sequence[Piece]) -> list[_Run]:
    """One family's part of the body: its header, the lines of each block, and (text
    format) its _created/_gcount/_gsum sections."""
    items: list[Item] = [(pieces[0].header, hash((name, "", None)))]
    items.extend([(piece.lines, piece.origin) for piece in pieces])
    found: dict[str, list[Item]] = {}
    for piece in pieces:
        for suffix, header, lines in piece.extras:
            found.setdefault(suffix, [(header, hash((name, suffix, None)))]).append(
                (lines, hash((suffix, piece.origin))))
    for suffix in sorted(found):
        items.extend(found[suffix])
    return _runs(items)


class _Assembly:
    """The body of one format, family by family; a family's part is made again only
    when one of its pieces changed."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[tuple[Piece, ...], list[_Run]]] = {}
        self.gzip = _Gzip()

    def runs(self, parts: Sequence[Part], openmetrics_format: bool) -> list[_Run]:
        known, kept = self._families, {}
        out: list[_Run] = []
        for name, pieces in _families(parts).items():
            key = tuple(pieces)
            cached = known.get(name)
            runs = cached[1] if cached is not None and cached[0] == key else \
                _family(name, key)
            kept[name] = (key, runs)
            out.extend(runs)
        self._families = kept
        if openmetrics_format:
            out.append(EOF_RUN)
        return out


def _runs_of(parts: Sequence[Part], openmetrics_format: bool) -> list[_Run]:
    """The body of a few blocks (one target's), uncached."""
    out = [run for name, pieces in _families(parts).items() for run in _family(name, pieces)]
    if openmetrics_format:
        out.append(EOF_RUN)
    return out


def _joined(runs: Iterable[_Run]) -> bytes:
    return b"".join([data for run in runs for data in run.items])


class Exposition:
    """Cached, incremental rendering of a :class:`SnapshotStore` (see the module doc)."""

    def __init__(self, store: SnapshotStore, clock: Callable[[], float] = time.time,
                 *, prerender: bool = True,
                 derived: Callable[[float], list[Metric]] | None = None) -> None:
        self.store = store
        self.clock = clock
        # families computed from the whole snapshot (the health score), split per target
        self.derived = derived
        self._lock = threading.Lock()  # the blocks
        self._assembly = threading.Lock()  # the assembled bodies
        self._blocks: dict[BlockKey, _Block] = {}
        self._samples: tuple[Sample, ...] = ()  # as last seen, in the store's order
        self._states: dict[str, TargetState] = {}
        self._names: tuple[str, ...] = ()  # targets, in order
        self._version = -1
        self._valid_until = 0.0  # the next stale deadline (a lower bound)
        self._dirty: set[str] = {""}  # targets whose self-metrics block is out of date
        self._touched: dict[str, int] = {}  # target -> when its records last changed
        self._clock_tick = 0
        self._derived_version = -1
        self._derived_until = 0.0
        self._derived_at = float("-inf")  # when they were last evaluated
        self._derived_seen: dict[str, int] = {}  # _touched at the last derived evaluation
        self._agent: tuple[Metric, ...] = ()
        self._order: tuple[_Block, ...] | None = None  # every block, in output order
        self._of_target: dict[str, tuple[_Block, ...]] = {}
        self._dropped: dict[tuple[str, str, str], int] = {}
        self._drops_of: dict[str, dict[tuple[str, str, str], int]] = {}
        # formats the collecting thread renders blocks in: those scrapers asked for
        # (Prometheus: OpenMetrics) from the start
        self._formats: set[bool] = {True}
        self._served: dict[tuple[str | None, bool, bool], tuple[tuple[object, ...], Rendered]] = {}
        # /probe of a large target: its gzip chunks
        self._probe_gzip: dict[tuple[str, bool], _Gzip] = {}
        self._assembly_of: dict[bool, _Assembly] = {}  # /metrics, per format
        self._pruned: tuple[str, ...] = ()  # the targets _served was last pruned for
        if prerender:
            # the changed blocks are rendered in the collecting thread, after each run
            store.subscribe(self._prerender)

    # --- drops ---------------------------------------------------------------------------

    def _drop(self, target: str, source: str, family: Metric, problem: str) -> None:
        name = family.name if isinstance(family.name, str) else repr(family.name)
        counted = (target, source, name)
        if counted not in self._dropped:  # log once per (target, collector, family)
            log.error("family_dropped", target=target, collector=source, family=name,
                      problem=problem)
        self._dropped[counted] = self._dropped.get(counted, 0) + 1
        self._drops_of.setdefault(target, {})[counted] = self._dropped[counted]
        self._dirty.add(target)

    def _renderable(self, target: str, source: str, families: Iterable[Metric]
                    ) -> tuple[Metric, ...]:
        """The families that render, one per name, long label values cut; the others
        dropped and counted."""
        good = []
        for family in families:
            problem = family_problem(family)
            if problem is None:
                good.append(family)
            else:
                self._drop(target, source, family, problem)
        merged = _merged(good)
        if merged is not None:
            return merged
        kept = []  # a name Metric() refuses: which family
        for family in good:
            if _merged([family]) is None:
                self._drop(target, source, family, "rendering raised ValueError")
            else:
                kept.append(family)
        return _merged(kept) or ()

    @staticmethod
    def _source(block: _Block) -> str:
        _, kind, collector = block.key
        return collector if kind == COLLECTOR else ("self", "agent", "derived")[kind - 1]

    # --- keeping the blocks up to date (under self._lock) --------------------------------

    def _touch(self, target: str) -> None:
        self._clock_tick += 1
        self._touched[target] = self._clock_tick
        self._dirty.add(target)

    def _collector(self, sample: Sample, now: float) -> _Block | None:
        """Bring one record's block up to date; the block if it must be rendered again."""
        key = (sample.target, COLLECTOR, sample.collector)
        block = self._blocks.get(key)
        if block is None:
            block = self._blocks[key] = _Block(key)
            self._order = None
        fresh = sample.fresh(now)
        if block.sample is sample and block.fresh == fresh:
            return None
        block.sample, block.fresh = sample, fresh
        self._touch(sample.target)
        served = sample.served(now)
        if block.source is served:  # a failed run: still the same families
            return None
        block.set(served, self._renderable(sample.target, sample.collector, served))
        return block

    def _update(self, now: float) -> list[_Block]:
        """Follow the store: the targets, and the collector blocks that changed (returned,
        to be rendered). Only the changed records are looked at, unless a deadline passed
        or records came or went."""
        version, targets, samples = self.store.view()
        if version == self._version and now < self._valid_until:
            return []
        self._version = version
        if targets != tuple(self._states.values()):
            for state in targets:
                if self._states.get(state.name) is not state:
                    self._touch(state.name)
            if tuple(self._states) != tuple(t.name for t in targets):
                self._order = None
            self._states = {t.name: t for t in targets}
        changed: list[_Block] = []
        before = self._samples
        moved: list[int] = []
        quick = now < self._valid_until and len(before) == len(samples)
        if quick:  # the same records, some of them replaced: find those (in C)
            moved = list(itertools.compress(range(len(samples)),
                                            map(operator.is_not, before, samples)))
            quick = all((samples[i].target, samples[i].collector)
                        == (before[i].target, before[i].collector) for i in moved)
        valid_until = self._valid_until if quick else float("inf")
        for sample in (samples[i] for i in moved) if quick else samples:
            block = self._collector(sample, now)
            if block is not None:
                changed.append(block)
            if sample.fresh(now):
                valid_until = min(valid_until, self._deadline(sample))
        self._valid_until = valid_until
        if self._order is None or len(samples) != len(before):  # records came or went
            self._forget({(s.target, COLLECTOR, s.collector) for s in samples})
        self._samples = samples
        if self._order is None:
            names = dict.fromkeys(t.name for t in targets)
            names.update(dict.fromkeys(s.target for s in samples))
            names.pop("", None)
            self._names = tuple(names)
        self._update_agent()
        return changed

    @staticmethod
    def _deadline(sample: Sample) -> float:
        assert sample.last_success_at is not None
        return sample.last_success_at + sample.stale_after

    def _forget(self, pairs: set[BlockKey]) -> None:
        """Drop the blocks of records no longer in the store (a removed target)."""
        names = {key[0] for key in pairs} | set(self._states)
        for key in list(self._blocks):
            if (key not in pairs and key[1] == COLLECTOR) or (key[0] and key[0] not in names):
                del self._blocks[key]
                self._order = None
        for target in list(self._drops_of):
            if target and target not in names:
                for counted in self._drops_of.pop(target):
                    self._dropped.pop(counted, None)
        for target in list(self._touched):
            if target not in names:
                del self._touched[target]

    def _split(self, kind: int, families: Iterable[Metric]) -> None:
        """Agent or derived families, one block per target."""
        parts = _by_target(families, self._states)
        for key in [key for key in self._blocks if key[1] == kind and key[0] not in parts]:
            del self._blocks[key]
            self._dirty.add(key[0])
            self._order = None
        source = ("self", "agent", "derived")[kind - 1]
        for target, found in parts.items():
            key = (target, kind, "")
            block = self._blocks.get(key)
            if block is None:
                block = self._blocks[key] = _Block(key)
                self._order = None
            elif block.source == tuple(found):
                continue
            block.set(tuple(found), self._renderable(target, source, found))
            self._dirty.add(target)

    def _update_agent(self) -> None:
        # the agent's own families (hiw_target_info, discovery's), with stores that keep them
        agent: Callable[[], tuple[Metric, ...]] | None = getattr(
            self.store, "agent_families", None)
        families = agent() if agent is not None else ()
        if families != self._agent:
            self._agent = families
            self._split(AGENT, families)

    def _derived_due(self, now: float, target: str | None) -> bool:
        if self.derived is None:
            return False
        if now >= self._derived_until:
            return True
        if target is None:  # everything: at every change of the store, as before
            return self._derived_version != self._version
        if target not in self._derived_seen:  # a new target: at once
            return True
        # one target: when its records changed since (its health reads only them), at
        # most every PROBE_DERIVED_EVERY seconds
        return self._touched.get(target) != self._derived_seen[target] and \
            abs(now - self._derived_at) >= PROBE_DERIVED_EVERY  # (a clock set back too)

    def _evaluate(self, now: float) -> tuple[Metric, ...]:
        assert self.derived is not None
        try:
            return tuple(self.derived(now))
        except Exception:  # a bug there must not take /metrics down
            log.exception("derived_families_failed")
            return ()

    def _self_block(self, target: str, now: float) -> None:
        block = self._blocks[(target, SELF, "")]
        drops = self._drops_of.get(target, {})
        if not target:  # the declarations, and what was dropped of no target's
            block.set(None, tuple(merge_families(self_metrics((), (), now, drops))))
            return
        records = [b.sample for b in self._data_blocks(target)
                   if b.key[1] == COLLECTOR and b.sample is not None]
        state = self._states.get(target)
        other = sum(b.series for b in self._data_blocks(target))
        families = self_metrics([state] if state is not None else [], records, now, drops,
                                series={target: 0})
        total = other + sum(len(f.samples) for f in families)
        for family in families:
            if family.name == "hiw_target_series":
                family.samples[0] = family.samples[0]._replace(value=float(total))
        block.set(None, tuple(merge_families(families)))

    def _ordered(self) -> tuple[_Block, ...]:
        if self._order is None:
            blocks = self._blocks
            by_target: dict[str, list[_Block]] = {name: [] for name in self._names}
            order = []
            for sample in self._samples:
                block = blocks.get((sample.target, COLLECTOR, sample.collector))
                if block is not None:
                    order.append(block)
                    by_target.setdefault(sample.target, []).append(block)
            for kind in (SELF, AGENT, DERIVED):
                for name in ("", *self._names):
                    block = blocks.get((name, kind, ""))
                    if block is not None:
                        order.append(block)
                        if name:
                            by_target.setdefault(name, []).append(block)
            self._order = tuple(order)
            self._of_target = {name: tuple(found) for name, found in by_target.items()}
        return self._order

    def _data_blocks(self, target: str) -> Iterator[_Block]:
        self._ordered()
        return (b for b in self._of_target.get(target, ()) if b.key[1] != SELF)

    def _rendered(self, block: _Block, openmetrics_format: bool) -> dict[str, Piece]:
        pieces = block.pieces.get(openmetrics_format)
        if pieces is not None:
            return pieces
        try:
            pieces = render_block(block.families, openmetrics_format=openmetrics_format)
        except Exception as exc:  # noqa: BLE001  # isolated below, and logged per family
            failure = type(exc).__name__  # not the message: it carries the samples' values
        else:
            return self._keep(block, openmetrics_format, pieces)
        log.error("render_failed", error=failure, target=block.key[0],
                  collector=self._source(block))
        kept = []  # each family alone, in both formats: those that fail stay out
        for family in block.families:
            try:
                render_block([family], openmetrics_format=False)
                render_block([family], openmetrics_format=True)
            except Exception as exc:  # noqa: BLE001  # whatever it is, it stays out
                self._drop(block.key[0], self._source(block), family,
                           f"rendering raised {type(exc).__name__}")
            else:
                kept.append(family)
        block.set(block.source, tuple(kept))  # both formats again, without them
        self._dirty.add(block.key[0])  # its series changed
        pieces = render_block(block.families, openmetrics_format=openmetrics_format)
        return self._keep(block, openmetrics_format, pieces)

    @staticmethod
    def _keep(block: _Block, openmetrics_format: bool, pieces: dict[str, Piece]
              ) -> dict[str, Piece]:
        key = block.key
        pieces = {name: piece._replace(origin=hash((name, "", key)))
                  for name, piece in pieces.items()}
        block.pieces[openmetrics_format] = pieces
        return pieces

    def _prerender(self) -> None:
        """After a recorded run, in the collecting thread: the changed collector blocks,
        rendered in the formats scrapers asked for. The rest waits for a scrape."""
        try:
            with self._lock:
                for block in self._update(self.clock()):
                    for openmetrics_format in self._formats:
                        self._rendered(block, openmetrics_format)
        except Exception:  # a bug here must not fail the collection; a scrape tries again
            log.exception("prerender_failed")

    def _parts(self, target: str | None, openmetrics_format: bool) -> tuple[Part, ...] | None:
        """Up to date, rendered: every block (or one target's), in order; None for a
        target the store does not have."""
        now = self.clock()
        with self._lock:
            self._formats.add(openmetrics_format)
            self._update(now)
            due = self._derived_due(now, target)
            # what the evaluation reads (a change meanwhile is seen at the next scrape)
            seen = (self._version, self._valid_until, dict(self._touched), now)
        if due:  # outside the lock: collections go on meanwhile
            derived = self._evaluate(now)
        with self._lock:
            self._update(now)
            if due:
                (self._derived_version, self._derived_until, self._derived_seen,
                 self._derived_at) = seen
                self._split(DERIVED, derived)
            if target is not None and target not in self._names:
                return None
            blocks = self._ordered() if target is None else self._of_target.get(target, ())
            for block in blocks:
                if block.key[1] != SELF:
                    self._rendered(block, openmetrics_format)
            dirty = [name for name in self._dirty if not name or name in self._names]
            self._dirty.clear()
            for name in dirty:
                if (name, SELF, "") not in self._blocks:
                    self._blocks[(name, SELF, "")] = _Block((name, SELF, ""))
                    self._order = None
            self._ordered()  # once, before the blocks of each target are looked up
            for name in dirty:
                self._self_block(name, now)
            blocks = self._ordered() if target is None else self._of_target.get(target, ())
            return tuple((block.key, self._rendered(block, openmetrics_format))
                         for block in blocks)

    # --- serving -------------------------------------------------------------------------

    def _serve(self, target: str | None, openmetrics_format: bool, gzipped: bool
               ) -> Rendered | None:
        parts = self._parts(target, openmetrics_format)
        if parts is None:
            return None
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics_format else TEXT_CONTENT_TYPE
        key = tuple(part[1] for part in parts)  # the pieces: identical while unchanged
        with self._assembly:
            cached = self._served.get((target, openmetrics_format, gzipped))
            if cached is not None and cached[0] == key:
                return cached[1]
            if target is None:  # everything: from the parts of families kept
                assembly = self._assembly_of.setdefault(openmetrics_format, _Assembly())
                runs = assembly.runs(parts, openmetrics_format)
                # gzip: from chunks compressed once
                body = assembly.gzip.body(runs) if gzipped else _joined(runs)
            else:
                runs = _runs_of(parts, openmetrics_format)
                if gzipped and sum(run.size for run in runs) > PROBE_CHUNKED_ABOVE:
                    # one large target (an instance with many databases): from chunks
                    # compressed once, like /metrics
                    zipper = self._probe_gzip.setdefault((target, openmetrics_format),
                                                         _Gzip())
                    body = zipper.body(runs)
                else:  # one small target: compressed whole
                    plain = self._served.get((target, openmetrics_format, False))
                    body = plain[1].body if plain is not None and plain[0] == key \
                        else _joined(runs)
                    if gzipped:
                        body = gzip.compress(body, compresslevel=6, mtime=0)
            rendered = Rendered(body, content_type, gzipped)
            self._served[(target, openmetrics_format, gzipped)] = (key, rendered)
            names = self._names
            if names is not self._pruned:  # keep only the probes of targets still watched
                self._pruned = names
                for old in [k for k in self._served if k[0] is not None and k[0] not in names]:
                    del self._served[old]
                for gone in [k for k in self._probe_gzip if k[0] not in names]:
                    del self._probe_gzip[gone]
            return rendered

    def get(self, *, openmetrics_format: bool = False, gzipped: bool = False) -> Rendered:
        """Every target's series and the self-metrics (``/metrics``)."""
        rendered = self._serve(None, openmetrics_format, gzipped)
        assert rendered is not None
        return rendered

    def probe(self, target: str, *, openmetrics_format: bool = False,
              gzipped: bool = False) -> Rendered | None:
        """One target's series, self-metrics and health (``/probe?target=``), from the
        same blocks; None for a target the store does not have."""
        return self._serve(target, openmetrics_format, gzipped)
