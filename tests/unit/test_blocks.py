"""exposition.py's blocks: per-(target, source) rendering, family-major assembly, gzip
assembled from chunks, /probe's subset, hiw_target_series (issue 14 items 4 and 6)."""

from __future__ import annotations

import base64
import gzip
import math
import random
import struct
import zlib
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import bcrypt
import pytest
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from hiw_monitor import exposition as exposition_module
from hiw_monitor.collectors.base import counter, gauge
from hiw_monitor.errors import Reason
from hiw_monitor.exposition import (
    MAX_LABEL_VALUE,
    Exposition,
    family_problem,
    merge_families,
    render,
    self_metrics,
)
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.web import App
from hiw_monitor.webconfig import WebConfig

TIMEOUT = Reason("timeout", "canceling statement due to statement timeout")
HOSTILE = ['quote " here', "back\\slash", "new\nline", "\n# HELP hiw_fake A fake.\n",
           "# TYPE x counter", "ünïcødé ✓", "} 1.0\nhiw_injected 1", "x" * 10_000, ""]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def collector_families(target: str, collector: str, value: float = 1.0) -> list[Metric]:
    """A collector's result with every kind of family the renderer handles."""
    g = gauge(f"hiw_t_{collector}_gauge", "A gauge.", ["db"])
    for i in range(3):
        g.add_metric([target, f"db{i}"], value + i)
    c = counter("hiw_t_shared_events", "A counter every collector has.", ["collector"])
    c.add_metric([target, collector], value * 10)
    u = gauge(f"hiw_t_{collector}_age", "With a unit.", unit="seconds")
    u.add_metric([target], value)
    h = HistogramMetricFamily(f"hiw_t_{collector}_duration_seconds", "A histogram.",
                              labels=["target"])
    h.add_metric([target], [("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)], sum_value=2.5)
    s = SummaryMetricFamily(f"hiw_t_{collector}_latency_seconds", "A summary.",
                            labels=["target"])
    s.add_metric([target], count_value=3, sum_value=1.5)
    i = InfoMetricFamily(f"hiw_t_{collector}_build", "An info.", labels=["target"])
    i.add_metric([target], {"version": "1.2"})
    st = StateSetMetricFamily(f"hiw_t_{collector}_mode", "A state set.", labels=["target"])
    st.add_metric([target], {"on": True, "off": False})
    created = CounterMetricFamily(f"hiw_t_{collector}_created_things", "With _created.",
                                  labels=["target"])
    created.add_metric([target], 5.0, created=1_700_000_000.0)
    hostile = gauge(f"hiw_t_{collector}_hostile", "Hostile label values: \\ and \" and\n.",
                    ["name"])
    for n, text in enumerate(HOSTILE):
        hostile.add_metric([target, text], float(n))
    empty = gauge(f"hiw_t_{collector}_empty", "No samples: declared only.")
    return [g, c, u, h, s, i, st, created, hostile, empty]


def fleet(targets: int = 3, collectors: tuple[str, ...] = ("alpha", "beta"),
          clock: Clock | None = None) -> tuple[SnapshotStore, Clock]:
    clock = clock or Clock(1000.0)
    store = SnapshotStore()
    for n in range(targets):
        name = f"db{n}"
        for collector in collectors:
            store.register(name, f"host={name}", collector, interval=10, stale_after=30)
        store.set_target(name, up=True, server_version="16.4")
        for collector in collectors:
            store.record_success(name, collector, collector_families(name, collector),
                                 clock.now, 0.01)
    return store, clock


def health_like(store: SnapshotStore):
    """A derived callable like Health.families: one family over every target, plus one
    declared without samples."""
    calls = []

    def derived(now: float) -> list[Metric]:
        calls.append(now)
        _, targets, _ = store.view()
        score = gauge("hiw_t_health_score", "A score per target.")
        for t in targets:
            score.add_metric([t.name], 7.0 if t.up else 0.0)
        return [score, gauge("hiw_t_health_lost", "Declared, no samples.", ["check"])]

    derived.calls = calls  # type: ignore[attr-defined]
    return derived


def canonical(body: bytes, *, openmetrics_format: bool) -> dict[str, tuple]:
    """{family: (help, type, unit, sorted samples)} as prometheus_client parses it; NaN
    compared by its repr. A family may appear once only."""
    parse = parse_openmetrics if openmetrics_format else parse_text
    out: dict[str, tuple] = {}
    for family in parse(body.decode()):
        assert family.name not in out, f"{family.name} appears twice"
        samples = sorted((s.name, tuple(sorted(s.labels.items())), repr(s.value), s.timestamp)
                         for s in family.samples)
        out[family.name] = (family.documentation, family.type, family.unit, samples)
    return out


def old_body(store: SnapshotStore, now: float, derived=None, series=None, *,
             openmetrics_format: bool) -> bytes:
    """The exposition as the previous renderer made it: every family merged under one
    HELP/TYPE and rendered in one go (hiw_monitor 5bf1620's Exposition.families())."""
    _, targets, samples = store.view()
    families: list[Metric] = []
    for s in samples:
        families.extend(f for f in s.served(now) if family_problem(f) is None)
    families.extend(self_metrics(targets, samples, now, {}, series))
    if derived is not None:
        families.extend(derived(now))
    return render(merge_families(families), openmetrics_format=openmetrics_format)


def target_series(body: bytes) -> dict[str, float]:
    return {s.labels["target"]: s.value for f in parse_text(body.decode())
            for s in f.samples if s.name == "hiw_target_series"}


def sample_lines(body: bytes) -> list[str]:
    return [line for line in body.decode().splitlines() if line and not line.startswith("#")]


@pytest.fixture
def rendered_blocks(monkeypatch):
    """Every call of the per-block renderer: (the block's first label target, format)."""
    calls: list[tuple[str, bool]] = []
    real = exposition_module.render_block

    def spy(families, *, openmetrics_format):
        targets = {s.labels.get("target") for f in families for s in f.samples}
        names = {f.name for f in families}
        kind = "self" if "hiw_collector_up" in names else \
            "derived" if "hiw_t_health_score" in names else "collector"
        calls.append((kind, ",".join(sorted(t for t in targets if t)), openmetrics_format))
        return real(families, openmetrics_format=openmetrics_format)

    monkeypatch.setattr(exposition_module, "render_block", spy)
    return calls


# --- only what changed is rendered ------------------------------------------------------


def test_a_collection_renders_its_own_block_and_the_scrape_its_self_metrics(rendered_blocks):
    store, clock = fleet(targets=4)
    expo = Exposition(store, clock)  # pre-renders in the "collecting thread" (here)
    expo.get(openmetrics_format=True, gzipped=True)
    first = len(rendered_blocks)
    assert first == 4 * 2 + 4 + 1  # every collector block, every target's self-metrics,
    # the declarations of no target
    rendered_blocks.clear()
    clock.now += 1
    store.record_success("db2", "beta", collector_families("db2", "beta", 5.0), clock.now,
                         0.01)
    assert rendered_blocks == [("collector", "db2", True)]  # on update, OpenMetrics only
    body = expo.get(openmetrics_format=True, gzipped=True).body
    assert rendered_blocks == [("collector", "db2", True), ("self", "db2", True)]
    families = canonical(gzip.decompress(body), openmetrics_format=True)
    assert ("hiw_t_beta_gauge", (("db", "db0"), ("target", "db2")), "5.0", None) in \
        families["hiw_t_beta_gauge"][3]
    # a failed run keeps the same families: only the self-metrics change
    rendered_blocks.clear()
    store.record_failure("db1", "alpha", TIMEOUT, clock.now, 1.0)
    expo.get(openmetrics_format=True, gzipped=True)
    assert rendered_blocks == [("self", "db1", True)]
    # a skip, a target going down: the self-metrics only
    rendered_blocks.clear()
    store.record_skip("db0", "alpha", "missed")
    store.set_target("db3", up=False, error=TIMEOUT)
    expo.get(openmetrics_format=True, gzipped=True)
    assert sorted(rendered_blocks) == [("self", "db0", True), ("self", "db3", True)]
    # nothing changed: nothing rendered, the same bytes
    rendered_blocks.clear()
    again = expo.get(openmetrics_format=True, gzipped=True)
    assert expo.get(openmetrics_format=True, gzipped=True) is again
    assert rendered_blocks == []


def test_another_format_renders_each_block_once_then_on_update(rendered_blocks):
    store, clock = fleet(targets=2)
    expo = Exposition(store, clock)
    expo.get(openmetrics_format=True)
    rendered_blocks.clear()
    expo.get()
    expo.get(gzipped=True)
    assert sorted(rendered_blocks) == sorted(
        [("collector", f"db{n}", False) for n in range(2) for _ in range(2)]
        + [("self", "db0", False), ("self", "db1", False), ("self", "", False)])
    rendered_blocks.clear()
    clock.now += 1
    store.record_success("db0", "alpha", collector_families("db0", "alpha", 2.0), clock.now,
                         0.01)
    assert sorted(rendered_blocks) == [("collector", "db0", False), ("collector", "db0", True)]


def test_derived_families_are_split_per_target_and_rerendered_only_where_they_change(
        rendered_blocks):
    store, clock = fleet(targets=3)
    derived = health_like(store)
    expo = Exposition(store, clock, prerender=False, derived=derived)
    body = expo.get().body
    assert [k for k in rendered_blocks if k[0] == "derived"] == [
        ("derived", "db0", False), ("derived", "db1", False), ("derived", "db2", False)]
    assert "# TYPE hiw_t_health_lost gauge" in body.decode()  # declared, no samples
    rendered_blocks.clear()
    store.set_target("db1", up=False, error=TIMEOUT)  # db1's score changes, not the others
    body = expo.get().body
    assert sorted(rendered_blocks) == [("derived", "db1", False), ("self", "db1", False)]
    scores = {s.labels["target"]: s.value for f in parse_text(body.decode())
              for s in f.samples if s.name == "hiw_t_health_score"}
    assert scores == {"db0": 7.0, "db1": 0.0, "db2": 7.0}
    assert len(derived.calls) == 2  # once per change of the store, as before
    expo.get()
    assert len(derived.calls) == 2


# --- the body: the old renderer's, family-major, parseable ------------------------------


@pytest.mark.parametrize("openmetrics_format", [False, True])
def test_the_body_has_the_old_renderers_families_and_samples(openmetrics_format):
    store, clock = fleet(targets=3)
    store.record_failure("db1", "beta", TIMEOUT, clock.now, 1.0)
    store.record_skip("db2", "alpha", "still_running")
    store.register("db3", "host=db3", "alpha", 10, 30)  # pending: no result yet
    derived = health_like(store)
    expo = Exposition(store, clock, derived=derived)
    new = expo.get(openmetrics_format=openmetrics_format).body
    series = target_series(new)
    assert set(series) == {"db0", "db1", "db2", "db3"}
    old = old_body(store, clock.now, derived, series, openmetrics_format=openmetrics_format)
    assert canonical(new, openmetrics_format=openmetrics_format) == \
        canonical(old, openmetrics_format=openmetrics_format)
    if openmetrics_format:
        assert new.endswith(b"\n# EOF\n")
        assert new.count(b"# EOF") == 1
    text = new.decode()
    assert "hiw_t_shared_events_total{" in text  # counters end in _total
    assert "# TYPE hiw_t_shared_events" + ("" if openmetrics_format else "_total") + \
        " counter" in text
    assert ("# UNIT hiw_t_alpha_age_seconds seconds" in text) == openmetrics_format


def test_same_samples_in_the_same_family_order_as_the_old_renderer():
    store, clock = fleet(targets=2)
    expo = Exposition(store, clock)
    for openmetrics_format in (False, True):
        new = expo.get(openmetrics_format=openmetrics_format).body
        old = old_body(store, clock.now, None, target_series(new),
                       openmetrics_format=openmetrics_format)
        order = [line for line in new.decode().splitlines() if line.startswith("# TYPE")]
        assert order == [line for line in old.decode().splitlines()
                         if line.startswith("# TYPE")]
        assert sorted(sample_lines(new)) == sorted(sample_lines(old))


@pytest.mark.parametrize("openmetrics_format", [False, True])
def test_families_are_never_interleaved(openmetrics_format):
    store, clock = fleet(targets=5, collectors=("alpha", "beta", "gamma"))
    body = Exposition(store, clock).get(openmetrics_format=openmetrics_format).body.decode()
    current = None
    seen = []
    for line in body.splitlines():
        if line.startswith("# HELP "):
            current = line.split()[2]
            assert current not in seen, f"{current} starts twice"
            seen.append(current)
        elif line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert name.startswith(current.removesuffix("_total").removesuffix("_info")), \
                (name, current)
    assert "hiw_t_shared_events" in {n.removesuffix("_total") for n in seen}
    # parsers that insist on it
    canonical(body.encode(), openmetrics_format=openmetrics_format)


def test_hostile_label_values_render_escaped_and_long_ones_cut():
    store, clock = fleet(targets=2)
    expo = Exposition(store, clock)
    for openmetrics_format in (False, True):
        body = expo.get(openmetrics_format=openmetrics_format).body
        families = canonical(body, openmetrics_format=openmetrics_format)
        values = {dict(labels)["name"] for _, labels, _, _ in families["hiw_t_alpha_hostile"][3]
                  if dict(labels)["target"] == "db0"}
        cut = "x" * (MAX_LABEL_VALUE - 1) + "…"
        assert values == {*HOSTILE[:-2], cut, ""}
        assert "hiw_fake" not in families
        assert "hiw_injected" not in families
        assert families["hiw_t_alpha_hostile"][0] == 'Hostile label values: \\ and " and\n.'


# --- gzip ---------------------------------------------------------------------------------


def gzip_trailer(body: bytes) -> tuple[int, int]:
    return struct.unpack("<II", body[-8:])


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of about 8 kB (at least 4 kB), so that a small body has many."""
    monkeypatch.setattr(exposition_module, "_CHUNK", 8192)
    monkeypatch.setattr(exposition_module, "_WINDOW", 4096)


@pytest.mark.parametrize("openmetrics_format", [False, True])
def test_gzip_is_one_member_that_decompresses_to_the_plain_body(openmetrics_format,
                                                                small_chunks):
    store, clock = fleet(targets=20, collectors=("alpha", "beta", "gamma"))
    expo = Exposition(store, clock)
    zipped = expo.get(openmetrics_format=openmetrics_format, gzipped=True)
    plain = expo.get(openmetrics_format=openmetrics_format)
    assert len(plain.body) > 8 * exposition_module._CHUNK  # several chunks
    assert zipped.body[:3] == b"\x1f\x8b\x08"
    assert gzip.decompress(zipped.body) == plain.body
    # one member: a raw inflater sees its end exactly before the CRC and length
    inflater = zlib.decompressobj(wbits=-15)
    assert inflater.decompress(zipped.body[10:]) == plain.body
    assert inflater.eof
    assert len(inflater.unused_data) == 8
    assert gzip_trailer(zipped.body) == (zlib.crc32(plain.body), len(plain.body))
    # what Go's compress/gzip and curl do: a streaming gzip inflater
    assert zlib.decompress(zipped.body, wbits=31) == plain.body
    # and about as small as gzip in one go
    assert len(zipped.body) < 1.1 * len(gzip.compress(plain.body, compresslevel=6))


def test_gzip_compresses_again_only_the_chunks_a_change_touches(small_chunks):
    store, clock = fleet(targets=30, collectors=("alpha", "beta"))
    expo = Exposition(store, clock)
    expo.get(openmetrics_format=True, gzipped=True)
    assembler = expo._assembly_of[True].gzip
    total = assembler.compressed
    assert total > 10
    assembler.compressed = 0
    clock.now += 1
    store.record_success("db15", "alpha", collector_families("db15", "alpha", 9.0),
                         clock.now, 0.01)
    zipped = expo.get(openmetrics_format=True, gzipped=True).body
    assert 0 < assembler.compressed < total / 2
    plain = expo.get(openmetrics_format=True).body
    assert gzip.decompress(zipped) == plain
    assert b'hiw_t_alpha_gauge{db="db0",target="db15"} 9.0' in plain


@pytest.mark.parametrize("openmetrics_format", [False, True])
def test_a_large_probe_is_gzipped_from_chunks_compressed_once(openmetrics_format,
                                                             small_chunks, monkeypatch):
    """A target that is an instance with many databases has a large /probe body: gzipped
    like /metrics, from chunks, the unchanged ones not compressed again."""
    monkeypatch.setattr(exposition_module, "PROBE_CHUNKED_ABOVE", 4 * 8192)
    store, clock = fleet(targets=2, collectors=tuple(f"c{n}" for n in range(40)))
    expo = Exposition(store, clock)
    first = expo.probe("db1", openmetrics_format=openmetrics_format, gzipped=True)
    plain = expo.probe("db1", openmetrics_format=openmetrics_format)
    assert first is not None
    assert plain is not None
    assert len(plain.body) > 8 * 8192
    assert gzip.decompress(first.body) == plain.body  # from chunks from the first probe
    zipper = expo._probe_gzip[("db1", openmetrics_format)]
    assert ("db0", openmetrics_format) not in expo._probe_gzip  # not probed
    total, zipper.compressed = zipper.compressed, 0
    assert total > 8
    clock.now += 1
    store.record_success("db1", "c20", collector_families("db1", "c20", 9.0), clock.now, 0.01)
    changed = expo.probe("db1", openmetrics_format=openmetrics_format, gzipped=True)
    assert changed is not None
    assert 0 < zipper.compressed < total / 2
    fresh = expo.probe("db1", openmetrics_format=openmetrics_format)
    assert fresh is not None
    assert gzip.decompress(changed.body) == fresh.body
    assert zlib.decompress(changed.body, wbits=31) == fresh.body  # one streamable member
    assert b'db="db0",target="db1"} 9.0' in fresh.body
    # a small target's probe is compressed whole: no chunks kept for it
    small, _ = fleet(targets=1, collectors=("alpha",))
    other = Exposition(small, clock)
    zipped = other.probe("db0", openmetrics_format=openmetrics_format, gzipped=True)
    unzipped = other.probe("db0", openmetrics_format=openmetrics_format)
    assert zipped is not None
    assert unzipped is not None
    assert gzip.decompress(zipped.body) == unzipped.body
    assert other._probe_gzip == {}


def test_crc_of_concatenated_chunks():
    rng = random.Random(7)
    data = bytes(rng.getrandbits(8) for _ in range(5000))
    cuts = sorted(rng.sample(range(1, len(data)), 9))
    bounds = zip([0, *cuts], [*cuts, len(data)], strict=True)
    parts: list = []
    for a, b in bounds:  # each after the one before, with its end as the dictionary
        parts.append(exposition_module._deflate((data[a:b],), parts[-1].items if parts else ()))
    assert exposition_module._crc(parts) == zlib.crc32(data)
    assert exposition_module._crc(parts[3:], zlib.crc32(data[:cuts[2]])) == zlib.crc32(data)
    segments = b"".join(part.segment for part in parts)
    assert zlib.decompress(segments + exposition_module.GZIP_END, wbits=-15) == data


# --- drops and staleness ------------------------------------------------------------------


def bad_family(target: str) -> Metric:
    bad = gauge("hiw_t_bad", "A label value that is None.", ["name"])
    bad.add_metric([target, None], 1.0)
    return bad


def dropped_count(body: bytes, target: str, collector: str) -> float | None:
    for family in parse_text(body.decode()):
        for s in family.samples:
            if s.name == "hiw_exposition_dropped_families_total" and s.labels == {
                    "target": target, "collector": collector, "family": "hiw_t_bad"}:
                return s.value
    return None


def test_a_dropped_family_stays_dropped_and_is_counted_once_per_result():
    store, clock = fleet(targets=3)
    expo = Exposition(store, clock)
    clock.now += 1
    store.record_success("db1", "alpha", [*collector_families("db1", "alpha"),
                                          bad_family("db1")], clock.now, 0.01)
    body = expo.get().body
    assert b"hiw_t_bad{" not in body
    assert dropped_count(body, "db1", "alpha") == 1.0
    # other blocks change, the failing result stays: still out, counted once
    for n in (0, 2):
        store.record_success(f"db{n}", "beta", collector_families(f"db{n}", "beta", 3.0),
                             clock.now, 0.01)
    store.record_failure("db1", "alpha", TIMEOUT, clock.now, 1.0)
    body = expo.get(openmetrics_format=True, gzipped=True).body
    plain = gzip.decompress(body)
    assert b"hiw_t_bad{" not in plain
    assert b"hiw_t_alpha_gauge{db=\"db0\",target=\"db1\"}" in plain  # the rest is served
    assert dropped_count(expo.get().body, "db1", "alpha") == 1.0
    # a new result with the same problem counts again
    store.record_success("db1", "alpha", [bad_family("db1")], clock.now, 0.01)
    assert dropped_count(expo.get().body, "db1", "alpha") == 2.0
    assert dropped_count(expo.probe("db1").body, "db1", "alpha") == 2.0


def test_a_family_only_one_format_cannot_render_is_dropped_from_both(monkeypatch):
    store, clock = fleet(targets=2)
    real = exposition_module.render

    def fragile(families, *, openmetrics_format):
        if openmetrics_format and any(f.name == "hiw_t_beta_mode" for f in families):
            raise ValueError("cannot")
        return real(families, openmetrics_format=openmetrics_format)

    monkeypatch.setattr(exposition_module, "render", fragile)
    expo = Exposition(store, clock, prerender=False)
    assert b"hiw_t_beta_mode{" in expo.get().body  # text renders it
    om = expo.get(openmetrics_format=True).body
    assert b"hiw_t_beta_mode{" not in om
    assert b"hiw_t_beta_gauge{" in om
    text = expo.get().body  # and so does text now, and the drop is counted
    assert b"hiw_t_beta_mode{" not in text
    counted = {s.labels["target"]: s.value for f in parse_text(text.decode())
               for s in f.samples if s.name == "hiw_exposition_dropped_families_total"}
    assert counted == {"db0": 1.0, "db1": 1.0}


def test_staleness_withholds_series_at_the_deadline_and_only_there(rendered_blocks):
    store, clock = fleet(targets=3, clock=Clock(100.0))
    expo = Exposition(store, clock, prerender=False)
    clock.now = 110.0
    for n in (0, 2):  # db1 stops succeeding
        for collector in ("alpha", "beta"):
            store.record_success(f"db{n}", collector,
                                 collector_families(f"db{n}", collector), 110.0, 0.01)
    expo.get()
    rendered_blocks.clear()
    clock.now = 130.0  # db1's deadline is 100 + 30: still fresh
    assert b'target="db1"} 1.0' in expo.get().body
    assert rendered_blocks == []
    clock.now = 130.5
    body = expo.get().body
    # db1's two collector blocks, now empty (no target in them), and its stale flags
    assert sorted(rendered_blocks) == [("collector", "", False), ("collector", "", False),
                                       ("self", "db1", False)]
    families = canonical(body, openmetrics_format=False)
    assert all(dict(labels)["target"] != "db1" for _, labels, _, _ in
               families["hiw_t_alpha_gauge"][3])
    stale = {dict(labels)["target"]: value for _, labels, value, _ in
             families["hiw_collector_stale"][3] if dict(labels)["collector"] == "alpha"}
    assert stale == {"db0": "0.0", "db1": "1.0", "db2": "0.0"}


# --- /probe and hiw_target_series ---------------------------------------------------------


def test_probe_serves_one_targets_blocks_from_the_same_cache(rendered_blocks):
    store, clock = fleet(targets=3)
    derived = health_like(store)
    expo = Exposition(store, clock, derived=derived)
    everything = expo.get().body
    rendered_blocks.clear()
    for openmetrics_format in (False, True):
        probe = expo.probe("db1", openmetrics_format=openmetrics_format)
        assert probe is not None
        families = canonical(probe.body, openmetrics_format=openmetrics_format)
        targets = {dict(labels).get("target") for f in families.values()
                   for _, labels, _, _ in f[3]}
        assert targets == {"db1"}
        assert "hiw_t_health_score" in families
        assert "hiw_collector_up" in families
        assert probe.body.endswith(b"# EOF\n") == openmetrics_format
    assert {k[0] for k in rendered_blocks} <= {"collector", "self", "derived"}
    assert {k[1] for k in rendered_blocks} <= {"db1"}  # OpenMetrics was rendered already
    zipped = expo.probe("db1", gzipped=True)
    assert zipped is not None
    assert zipped.gzipped
    assert gzip.decompress(zipped.body) == expo.probe("db1").body
    assert expo.probe("nope") is None
    # the series a target exports: what its probe holds
    series = target_series(everything)
    for name in ("db0", "db1", "db2"):
        probe = expo.probe(name)
        assert len(sample_lines(probe.body)) == series[name]
    assert sum(series.values()) == len(sample_lines(everything))  # every line has a target


def test_hiw_target_series_follows_the_targets_blocks():
    store, clock = fleet(targets=2)
    expo = Exposition(store, clock, prerender=False)
    before = target_series(expo.get().body)
    clock.now += 1
    smaller = collector_families("db0", "alpha")[:1]  # 3 series instead of many
    store.record_success("db0", "alpha", smaller, clock.now, 0.01)
    after = target_series(expo.get().body)
    assert after["db1"] == before["db1"]
    assert after["db0"] < before["db0"]
    assert after["db0"] == len(sample_lines(expo.probe("db0").body))


def test_a_removed_target_is_no_longer_rendered_nor_cached():
    store, clock = fleet(targets=3)
    expo = Exposition(store, clock)
    expo.get(openmetrics_format=True, gzipped=True)
    assert expo.probe("db1") is not None
    remove = getattr(store, "remove_target", None)
    if remove is not None:
        remove("db1")
    else:  # a store without target removal yet: what it will do
        with store._lock:
            del store._targets["db1"]
            for key in [k for k in store._samples if k[0] == "db1"]:
                del store._samples[key]
            store.version += 1
    body = gzip.decompress(expo.get(openmetrics_format=True, gzipped=True).body)
    assert b'target="db1"' not in body
    assert b'target="db2"' in body
    assert expo.probe("db1") is None
    assert all(key[0] != "db1" for key in expo._blocks)
    assert all(key[0] != "db1" for key in expo._served)


def test_agent_families_are_rendered_per_target_when_the_store_keeps_them():
    store, clock = fleet(targets=2)
    info = Metric("hiw_t_target_info", "Labels of a target.", "gauge")
    info.add_sample("hiw_t_target_info", {"target": "db0", "team": "a"}, 1.0)
    info.add_sample("hiw_t_target_info", {"target": "db1", "team": "b"}, 1.0)
    shard = Metric("hiw_t_shard_targets", "No target label.", "gauge")
    shard.add_sample("hiw_t_shard_targets", {"shard": "0/2"}, 2.0)
    store.agent_families = lambda: (info, shard)  # type: ignore[attr-defined]
    store.version += 1
    expo = Exposition(store, clock)
    families = canonical(expo.get().body, openmetrics_format=False)
    assert len(families["hiw_t_target_info"][3]) == 2
    assert families["hiw_t_shard_targets"][3][0][2] == "2.0"
    probe = canonical(expo.probe("db1").body, openmetrics_format=False)
    assert [dict(labels)["team"] for _, labels, _, _ in probe["hiw_t_target_info"][3]] == ["b"]
    assert "hiw_t_shard_targets" not in probe


def test_no_targets_still_declares_the_self_metrics():
    expo = Exposition(SnapshotStore(), Clock(0.0))
    families = canonical(expo.get(openmetrics_format=True).body, openmetrics_format=True)
    assert families["hiw_exposition_dropped_families"][1] == "counter"
    assert families["hiw_target_series"][3] == []
    assert math.isclose(len(gzip.decompress(expo.get(gzipped=True).body)),
                        len(expo.get().body))


# --- GET /probe (the WSGI app, no sockets) ------------------------------------------------


def call(app, path, query="", **extra):
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD="GET", **extra)
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda data: None

    result = validator(app)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()
    return int(seen["status"].split()[0]), seen["headers"], body


@pytest.fixture
def probe_app():
    store, clock = fleet(targets=3)
    return App(store, Exposition(store, clock))


def test_probe_route_formats_and_gzip(probe_app):
    code, headers, body = call(probe_app, "/probe", "target=db2")
    assert code == 200
    assert headers["Content-Type"] == exposition_module.TEXT_CONTENT_TYPE
    assert {dict(labels).get("target") for f in canonical(body, openmetrics_format=False)
            .values() for _, labels, _, _ in f[3]} == {"db2"}
    code, headers, zipped = call(
        probe_app, "/probe", "target=db2", HTTP_ACCEPT_ENCODING="gzip",
        HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert (code, headers["Content-Encoding"]) == (200, "gzip")
    assert headers["Content-Type"] == exposition_module.OPENMETRICS_CONTENT_TYPE
    assert gzip.decompress(zipped).endswith(b"# EOF\n")
    # /metrics still has every target
    code, _, everything = call(probe_app, "/metrics")
    assert code == 200
    assert all(f'target="db{n}"'.encode() in everything for n in range(3))


@pytest.mark.parametrize(("query", "code"), [
    ("", 400), ("target=", 400), ("target=db0&target=db1", 400), ("other=db0", 400),
    ("target=db9", 404), ("target=%3Cscript%3E", 404), ("target=db0", 200),
    ("target=db0&other=1", 200),
])
def test_probe_refuses_a_missing_or_unknown_target_in_one_line(probe_app, query, code):
    status, headers, body = call(probe_app, "/probe", query)
    assert status == code
    if code != 200:
        assert headers["Content-Type"].startswith("text/plain")
        assert body.count(b"\n") == 1
        assert b"db0" not in body  # no list of the targets
        assert b"db1" not in body
        assert b"script" not in body  # nor the name asked for


def test_probe_needs_the_same_auth_as_metrics():
    store, clock = fleet(targets=1)
    web = WebConfig(users={"prom": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))})
    app = App(store, Exposition(store, clock), web=web)
    for path, query in (("/metrics", ""), ("/probe", "target=db0"), ("/probe", "")):
        assert call(app, path, query)[0] == 401
    auth = "Basic " + base64.b64encode(b"prom:pw").decode()
    assert call(app, "/probe", "target=db0", HTTP_AUTHORIZATION=auth)[0] == 200


def test_concurrent_collections_and_scrapes_serve_whole_bodies(small_chunks):
    import threading

    store, clock = fleet(targets=6)
    derived = health_like(store)
    expo = Exposition(store, clock, derived=derived)
    errors: list[BaseException] = []
    done = threading.Event()

    def collect(n: int) -> None:
        try:
            for i in range(40):
                name, collector = f"db{(n + i) % 6}", ("alpha", "beta")[i % 2]
                store.record_success(name, collector,
                                     collector_families(name, collector, float(i)),
                                     clock.now, 0.01)
                if i % 7 == 0:
                    store.record_failure(name, collector, TIMEOUT, clock.now, 0.5)
        except BaseException as exc:  # noqa: BLE001  # reported below
            errors.append(exc)

    def scrape(n: int) -> None:
        try:
            while not done.is_set():
                openmetrics_format = n % 2 == 0
                whole = expo.get(openmetrics_format=openmetrics_format, gzipped=True)
                canonical(gzip.decompress(whole.body), openmetrics_format=openmetrics_format)
                probe = expo.probe(f"db{n}", openmetrics_format=openmetrics_format,
                                   gzipped=n % 3 == 0)
                body = gzip.decompress(probe.body) if probe.gzipped else probe.body
                canonical(body, openmetrics_format=openmetrics_format)
        except BaseException as exc:  # noqa: BLE001  # reported below
            errors.append(exc)

    writers = [threading.Thread(target=collect, args=(n,)) for n in range(3)]
    readers = [threading.Thread(target=scrape, args=(n,)) for n in range(3)]
    for thread in [*writers, *readers]:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    done.set()
    for thread in readers:
        thread.join(timeout=120)
    assert errors == []
    # and at rest, the same as the old renderer
    new = expo.get(openmetrics_format=True).body
    old = old_body(store, clock.now, derived, target_series(expo.get().body),
                   openmetrics_format=True)
    assert canonical(new, openmetrics_format=True) == canonical(old, openmetrics_format=True)


def test_a_probe_evaluates_the_derived_families_only_for_its_targets_changes_and_rarely():
    store, clock = fleet(targets=3)
    derived = health_like(store)
    expo = Exposition(store, clock, derived=derived)
    expo.probe("db0")
    assert len(derived.calls) == 1
    store.set_target("db1", up=False, error=TIMEOUT)  # another target changed
    expo.probe("db0")
    assert len(derived.calls) == 1
    store.set_target("db0", up=False, error=TIMEOUT)  # this one: at most every 5 s
    expo.probe("db0")
    assert len(derived.calls) == 1
    clock.now += exposition_module.PROBE_DERIVED_EVERY
    probe = expo.probe("db0")
    assert len(derived.calls) == 2
    scores = {s.labels["target"]: s.value for f in parse_text(probe.body.decode())
              for s in f.samples if s.name == "hiw_t_health_score"}
    assert scores == {"db0": 0.0}
    expo.get()  # /metrics: at every change of the store, as before (none since)
    assert len(derived.calls) == 2
    store.set_target("db2", up=False, error=TIMEOUT)
    expo.get()
    assert len(derived.calls) == 3
