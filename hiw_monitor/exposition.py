"""Render the snapshot as Prometheus text or OpenMetrics, with self-metrics.

Rendering reads only the :class:`SnapshotStore`: no database work happens on a scrape.
The bytes are cached per (store version, format, gzip) and re-rendered when the store
changes or when the next stale deadline passes.

One bad family never breaks ``/metrics``: a family that client_python could not render
(a label value that is None or not a string, a value that is not a number) is dropped,
counted in ``hiw_exposition_dropped_families_total`` and logged once; every other family,
of the same collector too, is served.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

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
    dropped: DroppedCounts | None = None,
) -> list[Metric]:
    """The agent's own families, computed from the records (one source of truth)."""
    up = GaugeMetricFamily("hiw_up", "1 if the agent's connection to the target works.",
                           labels=["target"])
    build = GaugeMetricFamily("hiw_build_info", "Agent version and the target's server version.",
                              labels=["target", "version", "server_version"])
    for t in targets:
        if t.checked:  # not before the first try: a restart is not an outage (burn rates)
            up.add_metric([t.name], 1.0 if t.up else 0.0)
        build.add_metric([t.name, __version__, t.server_version or "unknown"], 1.0)
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
    return [up, build, c_up, c_dur, c_last, c_err, c_runs, c_skip, c_stale, c_reason,
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


def render(families: list[Metric], *, openmetrics_format: bool) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Frozen(families))
    if openmetrics_format:
        body: bytes = openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    else:
        body = text_format.generate_latest(registry)
    return body


@dataclass(frozen=True, slots=True)
class Rendered:
    body: bytes
    content_type: str
    gzipped: bool


class Exposition:
    """Cached rendering of a :class:`SnapshotStore`."""

    def __init__(self, store: SnapshotStore, clock: Callable[[], float] = time.time,
                 *, prerender: bool = True,
                 derived: Callable[[float], list[Metric]] | None = None) -> None:
        self.store = store
        self.clock = clock
        # families computed from the whole snapshot (the health score), at each render
        self.derived = derived
        self._lock = threading.Lock()
        self._cache: dict[tuple[bool, bool], Rendered] = {}
        self._cache_version = -1
        self._valid_until = 0.0
        self._families: list[Metric] = []
        # (target, collector) -> (the families last served, those of them that render):
        # each stored result is checked once, and its dropped families counted once
        self._checked: dict[tuple[str, str], tuple[tuple[Metric, ...], tuple[Metric, ...]]] = {}
        self._dropped: dict[tuple[str, str, str], int] = {}
        # plain text, and what Prometheus asks for (OpenMetrics + gzip), from the start
        self._wanted: set[tuple[bool, bool]] = {(False, False), (True, True)}
        if prerender:
            # render once per update, in the collecting thread, so scrapes only copy bytes
            store.subscribe(self._prerender)

    def _prerender(self) -> None:
        # render what scrapers have asked for (Prometheus: OpenMetrics + gzip), so the
        # first scrape after an update only copies bytes too
        for openmetrics_format, gzipped in tuple(self._wanted):
            self.get(openmetrics_format=openmetrics_format, gzipped=gzipped)

    def _drop(self, key: tuple[str, str], family: Metric, problem: str) -> None:
        name = family.name if isinstance(family.name, str) else repr(family.name)
        counted = (*key, name)
        if counted not in self._dropped:  # log once per (target, collector, family)
            log.error("family_dropped", target=key[0], collector=key[1], family=name,
                      problem=problem)
        self._dropped[counted] = self._dropped.get(counted, 0) + 1

    def _renderable(self, key: tuple[str, str], families: tuple[Metric, ...]
                    ) -> tuple[Metric, ...]:
        checked = self._checked.get(key)
        if checked is not None and checked[0] is families:
            return checked[1]
        good = []
        for family in families:
            problem = family_problem(family)
            if problem is None:
                good.append(family)
            else:
                self._drop(key, family, problem)
        self._checked[key] = (families, tuple(good))
        return tuple(good)

    def _isolate(self) -> None:
        """Rendering failed although every family passed ``family_problem``: try each
        served family alone and drop those that fail, so the rest is still served."""
        for key, (served, good) in list(self._checked.items()):
            kept = []
            for family in good:
                try:
                    render([family], openmetrics_format=False)
                    render([family], openmetrics_format=True)
                except Exception as exc:  # noqa: BLE001  # whatever it is, it stays out
                    # the type only: client_python's message carries the samples' values
                    self._drop(key, family, f"rendering raised {type(exc).__name__}")
                else:
                    kept.append(family)
            self._checked[key] = (served, tuple(kept))

    def families(self) -> list[Metric]:
        """Every family to expose right now: collector series (see ``Sample.served``)
        that can be rendered, plus self-metrics."""
        now = self.clock()
        version, targets, samples = self.store.view()
        out: list[Metric] = []
        valid_until = float("inf")
        for s in samples:
            out.extend(self._renderable((s.target, s.collector), s.served(now)))
            if s.fresh(now):
                # re-render when these go stale (and a failing collector's fallback shows)
                assert s.last_success_at is not None
                valid_until = min(valid_until, s.last_success_at + s.stale_after)
        out.extend(self_metrics(targets, samples, now, self._dropped))
        if self.derived is not None:
            try:
                derived = tuple(self.derived(now))
            except Exception:  # a bug there must not take /metrics down
                log.exception("derived_families_failed")
                derived = ()
            out.extend(self._renderable(("", "derived"), derived))
        self._cache_version, self._valid_until = version, valid_until
        return merge_families(out)

    def _render(self, openmetrics_format: bool) -> bytes:
        try:
            return render(self._families, openmetrics_format=openmetrics_format)
        except Exception as exc:  # noqa: BLE001  # isolated below, and logged per family
            failure = type(exc).__name__  # not the message: it carries the samples' values
        log.error("render_failed", error=failure)
        self._isolate()
        self._cache.clear()  # the other format may hold the family that failed here
        self._families = self.families()
        return render(self._families, openmetrics_format=openmetrics_format)

    def get(self, *, openmetrics_format: bool = False, gzipped: bool = False) -> Rendered:
        self._wanted.add((openmetrics_format, gzipped))  # at most 4 combinations
        with self._lock:
            now = self.clock()
            if self.store.version != self._cache_version or now >= self._valid_until:
                self._cache.clear()
                self._families = self.families()
            key = (openmetrics_format, gzipped)
            cached = self._cache.get(key)
            if cached is None:
                plain = self._cache.get((openmetrics_format, False))
                body = plain.body if plain else self._render(openmetrics_format)
                content_type = OPENMETRICS_CONTENT_TYPE if openmetrics_format \
                    else TEXT_CONTENT_TYPE
                if gzipped:
                    self._cache[(openmetrics_format, False)] = Rendered(body, content_type, False)
                    body = gzip.compress(body, compresslevel=6, mtime=0)
                cached = Rendered(body, content_type, gzipped)
                self._cache[key] = cached
            return cached
