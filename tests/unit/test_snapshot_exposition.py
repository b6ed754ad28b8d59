"""snapshot.py + exposition.py: the store, staleness, caching and the rendered formats."""

from __future__ import annotations

import gzip

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from hiw_monitor import exposition as exposition_module
from hiw_monitor.collectors.base import counter, gauge
from hiw_monitor.errors import Reason
from hiw_monitor.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Exposition,
    merge_families,
)
from hiw_monitor.snapshot import Sample, SnapshotStore

TIMEOUT = Reason("timeout", "canceling statement due to statement timeout; raise it")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def families_for(target: str, value: float = 1.0):
    g = gauge("hiw_test_gauge", "A test gauge.", ["db"])
    g.add_metric([target, "app"], value)
    c = counter("hiw_test_events", "A test counter.")
    c.add_metric([target], value * 10)
    return [g, c]


def parsed(body: bytes) -> dict:
    return {f.name: f for f in parse_text(body.decode())}


def samples_of(body: bytes, name: str) -> dict[tuple, float]:
    out = {}
    for family in parse_text(body.decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(body: bytes, name: str, **labels) -> float | None:
    return samples_of(body, name).get(tuple(sorted(labels.items())))


@pytest.fixture
def store():
    s = SnapshotStore()
    s.register("t1", "host=h1", "conn", interval=10, stale_after=30)
    return s


# --- store -------------------------------------------------------------------------------


def test_register_is_pending_and_idempotent(store):
    version, targets, samples = store.view()
    (sample,) = samples
    assert not sample.ok
    assert sample.finished_at is None
    assert not sample.fresh(0.0)
    assert [t.name for t in targets] == ["t1"]
    store.record_success("t1", "conn", families_for("t1"), 100.0, 0.5)
    store.register("t1", "host=h1", "conn", interval=10, stale_after=30)
    again = store.view()
    assert again[0] > version
    assert again[2][0].runs_total == 1  # registering again does not reset the record


def test_success_then_failure_keeps_families_and_counts(store):
    families = families_for("t1")
    ok = store.record_success("t1", "conn", families, 100.0, 0.25)
    assert ok.ok
    assert ok.families == tuple(families)
    assert (ok.last_success_at, ok.runs_total, ok.errors_total) == (100.0, 1, 0)
    failed = store.record_failure("t1", "conn", TIMEOUT, 110.0, 5.0)
    assert not failed.ok
    assert failed.error == TIMEOUT
    assert failed.families == tuple(families)
    assert failed.last_success_at == 100.0
    assert failed.finished_at == 110.0
    assert (failed.runs_total, failed.errors_total) == (2, 1)
    store.record_failure("t1", "conn", TIMEOUT, 120.0, 5.0)
    recovered = store.record_success("t1", "conn", [], 130.0, 0.1)
    assert recovered.ok
    assert recovered.error is None
    assert (recovered.runs_total, recovered.errors_total) == (4, 2)
    assert recovered.families == ()


def test_every_write_bumps_the_version(store):
    seen = [store.view()[0]]
    store.record_success("t1", "conn", [], 1.0, 0.1)
    seen.append(store.view()[0])
    store.record_failure("t1", "conn", TIMEOUT, 2.0, 0.1)
    seen.append(store.view()[0])
    store.record_skip("t1", "conn", "missed")
    seen.append(store.view()[0])
    store.set_target("t1", up=True, server_version="16.4")
    seen.append(store.view()[0])
    assert seen == sorted(set(seen))


def test_set_target_changes_only_when_different(store):
    store.set_target("t1", up=True, server_version="16.4")
    version = store.view()[0]
    store.set_target("t1", up=True)  # same state; server_version kept
    assert store.view()[0] == version
    (target,) = store.view()[1]
    assert (target.up, target.server_version) == (True, "16.4")
    store.set_target("t1", up=False, error=TIMEOUT)
    (target,) = store.view()[1]
    assert (target.up, target.server_version, target.error) == (False, "16.4", TIMEOUT)


def test_skips_are_counted_per_reason(store):
    for reason in ("still_running", "missed", "still_running"):
        store.record_skip("t1", "conn", reason)
    (sample,) = store.view()[2]
    assert dict(sample.skipped) == {"still_running": 2, "missed": 1}


def test_fresh_boundary():
    sample = Sample("t", "c", interval=10, stale_after=30, last_success_at=100.0,
                    finished_at=100.0)
    assert sample.fresh(100.0)
    assert sample.fresh(130.0)
    assert not sample.fresh(130.001)


# --- exposition --------------------------------------------------------------------------


def test_stale_series_are_withheld_but_self_metrics_report(store):
    clock = Clock(100.0)
    expo = Exposition(store, clock)
    store.record_success("t1", "conn", families_for("t1"), 100.0, 0.5)
    clock.now = 129.0
    fresh = expo.get().body
    assert value(fresh, "hiw_test_gauge", target="t1", db="app") == 1.0
    assert value(fresh, "hiw_collector_stale", target="t1", collector="conn") == 0.0

    store.record_failure("t1", "conn", TIMEOUT, 125.0, 5.0)
    still = expo.get().body  # a failure keeps serving the last success while fresh
    assert value(still, "hiw_test_gauge", target="t1", db="app") == 1.0
    assert value(still, "hiw_collector_up", target="t1", collector="conn") == 0.0

    clock.now = 131.0
    stale = expo.get().body
    assert "hiw_test_gauge" not in stale.decode()
    assert "hiw_test_events" not in stale.decode()
    labels = {"target": "t1", "collector": "conn"}
    assert value(stale, "hiw_collector_stale", **labels) == 1.0
    assert value(stale, "hiw_collector_up", **labels) == 0.0
    assert value(stale, "hiw_collector_last_success_timestamp_seconds", **labels) == 100.0
    assert value(stale, "hiw_collector_errors_total", **labels) == 1.0
    assert value(stale, "hiw_collector_runs_total", **labels) == 2.0


def test_last_error_info_carries_the_reason(store):
    expo = Exposition(store, Clock(100.0))
    store.record_failure("t1", "conn", TIMEOUT, 100.0, 5.0)
    body = expo.get().body
    assert value(body, "hiw_collector_last_error_info", target="t1", collector="conn",
                 reason="timeout") == 1.0
    store.record_success("t1", "conn", [], 100.0, 0.1)
    assert samples_of(expo.get().body, "hiw_collector_last_error_info") == {}


def test_pending_collector_is_down_but_not_stale(store):
    body = Exposition(store, Clock(100.0)).get().body
    labels = {"target": "t1", "collector": "conn"}
    assert value(body, "hiw_collector_up", **labels) == 0.0
    assert value(body, "hiw_collector_stale", **labels) == 0.0
    assert samples_of(body, "hiw_collector_last_success_timestamp_seconds") == {}


def test_skips_are_exposed(store):
    store.record_skip("t1", "conn", "missed")
    body = Exposition(store, Clock(0.0)).get().body
    assert value(body, "hiw_collector_skipped_total", target="t1", collector="conn",
                 reason="missed") == 1.0


def test_up_is_not_exported_before_the_first_connection_attempt(store):
    # a restart is not an outage: a 0 before the first try would burn the availability
    # SLO's error budget (HiwAvailabilityBudgetBurnFast) at every start
    assert samples_of(Exposition(store, Clock(0.0)).get().body, "hiw_up") == {}
    store.set_target("t1", up=False, error=Reason("connection", "refused"))
    assert value(Exposition(store, Clock(0.0)).get().body, "hiw_up", target="t1") == 0.0


def test_target_state_is_exposed(store):
    store.set_target("t1", up=True, server_version="16.4")
    body = Exposition(store, Clock(0.0)).get().body
    assert value(body, "hiw_up", target="t1") == 1.0
    (build,) = samples_of(body, "hiw_build_info")
    assert ("server_version", "16.4") in build


@pytest.fixture
def render_calls(monkeypatch):
    """The collector blocks rendered: one entry (openmetrics_format) per rendering of a
    block holding ``hiw_test_gauge`` (self-metrics blocks are rendered too, not counted)."""
    calls = []
    real = exposition_module.render_block

    def spy(families, *, openmetrics_format):
        if any(f.name == "hiw_test_gauge" for f in families):
            calls.append(openmetrics_format)
        return real(families, openmetrics_format=openmetrics_format)

    monkeypatch.setattr(exposition_module, "render_block", spy)
    return calls


def test_cache_reused_until_store_changes(store, render_calls):
    clock = Clock(100.0)
    expo = Exposition(store, clock, prerender=False)
    store.record_success("t1", "conn", families_for("t1", 1.0), 100.0, 0.1)
    first = expo.get()
    clock.now = 110.0
    assert expo.get() is first
    assert len(render_calls) == 1
    store.record_success("t1", "conn", families_for("t1", 2.0), 110.0, 0.1)
    second = expo.get()
    assert len(render_calls) == 2
    assert value(second.body, "hiw_test_gauge", target="t1", db="app") == 2.0


def test_cache_rerenders_at_the_stale_deadline(store, render_calls):
    clock = Clock(100.0)
    expo = Exposition(store, clock, prerender=False)
    store.record_success("t1", "conn", families_for("t1"), 100.0, 0.1)
    before = expo.get()
    clock.now = 129.9
    assert expo.get() is before
    assert len(render_calls) == 1
    clock.now = 130.5  # no store change, but the deadline (100 + 30) has passed
    after = expo.get().body
    assert len(render_calls) == 1  # nothing left of that block to render
    assert after != before.body
    assert "hiw_test_gauge" not in after.decode()
    assert value(after, "hiw_collector_stale", target="t1", collector="conn") == 1.0


def test_formats_and_gzip_are_cached_separately(store, render_calls):
    expo = Exposition(store, Clock(100.0), prerender=False)
    store.record_success("t1", "conn", families_for("t1"), 100.0, 0.1)
    plain = expo.get()
    zipped = expo.get(gzipped=True)
    assert len(render_calls) == 1  # gzip reuses the plain rendering
    om = expo.get(openmetrics_format=True)
    om_zipped = expo.get(openmetrics_format=True, gzipped=True)
    assert render_calls == [False, True]
    assert (plain.content_type, plain.gzipped) == (TEXT_CONTENT_TYPE, False)
    assert (zipped.content_type, zipped.gzipped) == (TEXT_CONTENT_TYPE, True)
    assert (om.content_type, om_zipped.content_type) == (OPENMETRICS_CONTENT_TYPE,) * 2
    assert gzip.decompress(zipped.body) == plain.body
    assert gzip.decompress(om_zipped.body) == om.body
    for rendered in (plain, zipped, om, om_zipped):  # all cached
        assert expo.get(openmetrics_format=rendered.content_type == OPENMETRICS_CONTENT_TYPE,
                        gzipped=rendered.gzipped) is rendered


def test_gzip_first_then_plain(store):
    expo = Exposition(store, Clock(100.0))
    store.record_success("t1", "conn", families_for("t1"), 100.0, 0.1)
    zipped = expo.get(gzipped=True)
    assert gzip.decompress(zipped.body) == expo.get().body


def two_targets_store():
    store = SnapshotStore()
    for target in ("alpha", "beta"):
        store.register(target, f"host={target}", "conn", interval=10, stale_after=30)
        store.record_success(target, "conn", families_for(target), 100.0, 0.1)
    return store


def test_same_family_from_two_targets_is_merged():
    body = Exposition(two_targets_store(), Clock(100.0)).get().body
    text = body.decode()
    assert text.count("# HELP hiw_test_gauge ") == 1
    assert text.count("# TYPE hiw_test_gauge ") == 1
    families = [f for f in parse_text(text) if f.name == "hiw_test_gauge"]
    assert len(families) == 1
    assert {s.labels["target"] for s in families[0].samples} == {"alpha", "beta"}
    events = samples_of(body, "hiw_test_events_total")
    assert {dict(k)["target"] for k in events} == {"alpha", "beta"}


def test_merge_does_not_mutate_the_stored_families():
    a, b = families_for("alpha")[0], families_for("beta")[0]
    merged = merge_families([a, b])
    assert len(merged) == 1
    assert len(merged[0].samples) == 2
    assert len(a.samples) == len(b.samples) == 1


def test_openmetrics_output_parses_and_ends_with_eof():
    store = two_targets_store()
    store.record_failure("beta", "conn", TIMEOUT, 101.0, 5.0)
    store.record_skip("alpha", "conn", "still_running")
    body = Exposition(store, Clock(101.0)).get(openmetrics_format=True).body.decode()
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(body)}
    assert {s.labels["target"] for s in families["hiw_test_gauge"].samples} == {"alpha", "beta"}
    assert families["hiw_test_events"].type == "counter"
    assert families["hiw_collector_errors"].type == "counter"
    for family in families.values():
        for sample in family.samples:
            assert sample.timestamp is None


def test_text_output_has_no_timestamps():
    store = two_targets_store()
    store.record_failure("beta", "conn", TIMEOUT, 101.0, 5.0)
    text = Exposition(store, Clock(101.0)).get().body.decode()
    assert text.strip()
    families = list(parse_text(text))
    assert families
    for family in families:
        for sample in family.samples:
            assert sample.timestamp is None
    for line in text.splitlines():
        if line and not line.startswith("#"):
            # name{labels} value -- nothing after the value
            assert len(line.rsplit("} ", 1)[-1].split()) == 1


def test_updates_prerender_the_formats_scrapers_ask_for(render_calls):
    store = SnapshotStore()
    store.register("t1", "dsn", "conn", 15, 45)
    clock = Clock(100.0)
    exposition = Exposition(store, clock)
    exposition.get(openmetrics_format=True, gzipped=True)  # what Prometheus asks for
    store.record_success("t1", "conn", families_for("t1"), 100.0, 0.1)
    assert render_calls == [True]  # rendered in the collecting thread, on update
    exposition.get(openmetrics_format=True, gzipped=True)
    assert render_calls == [True]  # the scrape renders no collector block
    exposition.get()  # a scraper of the text format: from now on, rendered on update too
    assert render_calls == [True, False]
    store.record_success("t1", "conn", families_for("t1", 2.0), 101.0, 0.1)
    assert sorted(render_calls) == [False, False, True, True]


# --- a family that cannot be rendered (issue 10, item 7) --------------------------------


def unrenderable(target: str):
    """Three families client_python cannot render: a NULL label value, a label value that
    is not a string, a value that is not a number."""
    null = gauge("hiw_test_null_label", "A label value that is NULL.", ["backup_name"])
    null.add_metric([target, None], 1.0)
    number = gauge("hiw_test_int_label", "A label value that is an int.", ["backup_name"])
    number.add_metric([target, 7], 1.0)
    text = gauge("hiw_test_text_value", "A value that is text.")
    text.add_metric([target], "n/a")
    return [null, number, text]


BAD_NAMES = ("hiw_test_null_label", "hiw_test_int_label", "hiw_test_text_value")


def dropped(body: bytes, target: str = "t1", collector: str = "conn") -> dict[str, float]:
    return {family: value(body, "hiw_exposition_dropped_families_total", target=target,
                          collector=collector, family=family) for family in BAD_NAMES}


def test_an_unrenderable_family_is_dropped_counted_and_logged_once(store):
    from structlog.testing import capture_logs

    store.register("t2", "host=h2", "conn", interval=10, stale_after=30)
    clock = Clock(100.0)
    expo = Exposition(store, clock)  # pre-renders on every update, in the recording thread
    with capture_logs() as logs:
        store.record_success("t1", "conn", [*families_for("t1"), *unrenderable("t1")],
                             100.0, 0.1)
        store.record_success("t2", "conn", families_for("t2", 2.0), 100.0, 0.1)
        body = expo.get().body
        om = expo.get(openmetrics_format=True).body.decode()
        # the rest of the same collector, and the other target, are served
        assert value(body, "hiw_test_gauge", target="t1", db="app") == 1.0
        assert value(body, "hiw_test_events_total", target="t1") == 10.0
        assert value(body, "hiw_test_gauge", target="t2", db="app") == 2.0
        assert {f.name for f in parse_openmetrics(om)} >= {"hiw_test_gauge", "hiw_test_events"}
        for name in BAD_NAMES:
            assert f"# TYPE {name} " not in body.decode()
            assert f"\n{name}{{" not in om
        assert dropped(body) == dict.fromkeys(BAD_NAMES, 1.0)
        # re-rendering the same stored result (a deadline, a failed run) counts nothing new
        clock.now = 105.0
        store.record_failure("t1", "conn", TIMEOUT, 105.0, 1.0)
        assert dropped(expo.get().body) == dict.fromkeys(BAD_NAMES, 1.0)
        # a new result with the same problem counts again, but is not logged again
        store.record_success("t1", "conn", [*families_for("t1", 3.0), *unrenderable("t1")],
                             110.0, 0.1)
        clock.now = 110.0
        body = expo.get().body
        assert dropped(body) == dict.fromkeys(BAD_NAMES, 2.0)
        assert value(body, "hiw_test_gauge", target="t1", db="app") == 3.0
    events = [e for e in logs if e["event"] == "family_dropped"]
    assert sorted(e["family"] for e in events) == sorted(BAD_NAMES)
    assert {(e["target"], e["collector"]) for e in events} == {("t1", "conn")}
    assert "backup_name is NoneType, not str" in next(
        e["problem"] for e in events if e["family"] == "hiw_test_null_label")


def test_a_render_failure_the_check_did_not_foresee_is_isolated_too(store, monkeypatch):
    from structlog.testing import capture_logs

    monkeypatch.setattr(exposition_module, "family_problem", lambda family: None)
    expo = Exposition(store, Clock(100.0), prerender=False)
    store.record_success("t1", "conn", [*families_for("t1"), *unrenderable("t1")[:1]],
                         100.0, 0.1)
    with capture_logs() as logs:
        body = expo.get().body
        om = expo.get(openmetrics_format=True, gzipped=True).body
    assert value(body, "hiw_test_gauge", target="t1", db="app") == 1.0
    assert "\nhiw_test_null_label{" not in body.decode()
    assert "\nhiw_test_null_label{" not in gzip.decompress(om).decode()
    assert value(body, "hiw_exposition_dropped_families_total", target="t1",
                 collector="conn", family="hiw_test_null_label") == 1.0
    assert [e["event"] for e in logs].count("family_dropped") == 1
    assert "render_failed" in [e["event"] for e in logs]


def test_the_dropped_families_counter_is_always_declared(store):
    body = Exposition(store, Clock(0.0)).get(openmetrics_format=True).body.decode()
    families = {f.name: f for f in parse_openmetrics(body)}
    assert families["hiw_exposition_dropped_families"].type == "counter"
    assert families["hiw_exposition_dropped_families"].samples == []


# --- a failed run and the on_failure fallback (issue 10, item 8) ------------------------


def fallback_for(target: str):
    family = gauge("hiw_test_fallback", "What a failing collector reports once stale.")
    family.add_metric([target], 1.0)
    return [family]


def test_served_keeps_the_last_good_families_until_stale_then_the_fallback():
    families, fallback = tuple(families_for("t")), tuple(fallback_for("t"))
    ok = Sample("t", "c", interval=10, stale_after=30, families=families,
                last_success_at=100.0, finished_at=100.0)
    assert ok.served(130.0) == families
    assert ok.served(131.0) == ()
    failing = Sample("t", "c", interval=10, stale_after=30, families=families,
                     last_success_at=100.0, finished_at=110.0, error=TIMEOUT, fallback=fallback)
    assert failing.served(110.0) == families
    assert failing.served(130.0) == families
    assert failing.served(130.5) == fallback
    never = Sample("t", "c", interval=10, stale_after=30, finished_at=110.0, error=TIMEOUT,
                   fallback=fallback)
    assert never.served(110.0) == fallback


def test_a_failed_run_keeps_the_last_good_series_and_the_fallback_waits_for_staleness(store):
    clock = Clock(100.0)
    expo = Exposition(store, clock)
    store.record_success("t1", "conn", families_for("t1"), 100.0, 0.1)
    clock.now = 110.0
    store.record_failure("t1", "conn", TIMEOUT, 110.0, 5.0, fallback_for("t1"))
    failed = expo.get().body
    assert value(failed, "hiw_test_gauge", target="t1", db="app") == 1.0
    assert value(failed, "hiw_test_fallback", target="t1") is None
    assert value(failed, "hiw_collector_up", target="t1", collector="conn") == 0.0
    clock.now = 125.0
    store.record_failure("t1", "conn", TIMEOUT, 125.0, 5.0, fallback_for("t1"))
    assert value(expo.get().body, "hiw_test_gauge", target="t1", db="app") == 1.0
    clock.now = 130.5  # no store change: the stale deadline alone re-renders
    stale = expo.get().body
    assert value(stale, "hiw_test_gauge", target="t1", db="app") is None
    assert value(stale, "hiw_test_fallback", target="t1") == 1.0
    assert value(stale, "hiw_collector_stale", target="t1", collector="conn") == 1.0
    clock.now = 135.0
    store.record_success("t1", "conn", families_for("t1", 2.0), 135.0, 0.1)
    recovered = expo.get().body
    assert value(recovered, "hiw_test_gauge", target="t1", db="app") == 2.0
    assert value(recovered, "hiw_test_fallback", target="t1") is None
