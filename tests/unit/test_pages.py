"""pages.py: the status page rendered from health reports built here (no server)."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

from hiw_monitor.errors import Reason
from hiw_monitor.health import Health, LatencyPoint, TargetHealth
from hiw_monitor.pages import latency_chart, status_page
from hiw_monitor.review.checks import BY_ID
from hiw_monitor.review.model import Check, finding, score
from hiw_monitor.snapshot import Sample, SnapshotStore, TargetState

NOW = 1_800_000_000.0
HOSTILE = "<script>alert('x')</script>\"&amp;"
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "area", "base", "source"}
SVG_SELF_CLOSING = {"line", "path", "rect", "circle"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)
    parents: tuple[str, ...] = ()

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Dom(HTMLParser):
    """Every element with its attributes, the text directly inside it and its ancestors'
    tags; and a check that every non-void element is closed, in order."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []
        self.feed(page)
        self.close()
        assert not self.stack, f"unclosed: {[e.tag for e in self.stack]}"

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs},
                          parents=tuple(e.tag for e in self.stack))
        self.elements.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        assert tag in SVG_SELF_CLOSING | VOID, tag
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs},
                                     parents=tuple(e.tag for e in self.stack)))

    def handle_endtag(self, tag):
        assert self.stack, f"</{tag}> closes nothing"
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        for element in self.stack:
            element.text.append(data)

    def find(self, **attrs: str) -> list[Element]:
        """Elements whose attributes have these values (``class_`` matches one class)."""
        wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [e for e in self.elements
                if all((v in e.classes) if k == "class" else e.attrs.get(k) == v
                       for k, v in wanted.items())]

    def one(self, **attrs: str) -> Element:
        found = self.find(**attrs)
        assert len(found) == 1, (attrs, found)
        return found[0]


def text(element: Element) -> str:
    return " ".join("".join(element.text).split())


def target_state(name="db1", up=True, dsn="host=db1 user=hiw_monitor", error=None):
    return TargetState(name, dsn, up=up, server_version="16.4", error=error)


def sample(target="db1", collector="connections", error=None):
    return Sample(target, collector, 15.0, 45.0, finished_at=NOW - 3, duration=0.012,
                  error=error, last_success_at=None if error else NOW - 3, runs_total=4)


def view(*targets, samples=()):
    return (1, tuple(targets) or (target_state(),), tuple(samples) or (sample(),))


def a_report(name="db1", latency=(), backups=(), findings=None, up=True,
             p95_target=0.1) -> TargetHealth:
    if findings is None:
        findings = [
            finding(BY_ID["rls_enabled"], "fail",
                    "1 sensitive table without row-level security: public.classrooms"),
            finding(BY_ID["connection_pooling"], "warn", "no PgBouncer target"),
            finding(BY_ID["backup_freshness"], "pass", "all 2 backups healthy"),
            finding(BY_ID["latency_sla"], "pass", "p95 12.0 ms (SLA < 100 ms)",
                    seconds=0.012),
            finding(BY_ID["table_bloat"], "unknown", "the bloat collector is not enabled"),
        ]
    return TargetHealth(
        target=name, up=up, server_version="16.4", findings=tuple(findings),
        score=score(findings),
        slas={"availability": {"recommended": 0.9995, "measured": 1.0,
                               "window_seconds": 600.0, "met": True},
              "latency_p95": {"recommended_seconds": p95_target, "measured_seconds": 0.012,
                              "met": True},
              "rpo": {"recommended_seconds": 86400.0, "measured_seconds": 7200.0,
                      "met": True},
              "rto": {"recommended_seconds": 7200.0, "measured_seconds": None, "met": None}},
        backups=tuple(backups), latency=tuple(latency))


BACKUPS = (
    {"name": "nightly_full", "type": "full", "status": "healthy", "age_seconds": 7200.0,
     "warning_after_seconds": 93600.0, "critical_after_seconds": 180000.0},
    {"name": "hourly_wal", "type": "incremental", "status": "critical",
     "age_seconds": 90000.0, "warning_after_seconds": 7200.0,
     "critical_after_seconds": 14400.0},
)


def points(count=12, step=300.0, p95=0.02):
    return tuple(LatencyPoint(NOW - (count - i) * step, p95 / 2, p95 + i * 0.001, p95 * 3)
                 for i in range(count))


def test_full_page_in_order_with_its_hooks():
    report = a_report(backups=BACKUPS, latency=points())
    page = status_page([report], view(), NOW)
    dom = Dom(page)

    overall = dom.one(id="score")
    assert overall.attrs["data-score"] == f"{report.score.value:g}"
    assert text(overall) == f"{report.score.value:.1f}"
    assert overall.attrs["data-critical-failures"] == "1"
    section = dom.one(class_="target-health")
    assert section.attrs["data-target"] == "db1"
    assert section.attrs["data-up"] == "true"
    assert dom.one(id="target-score").attrs["data-score"] == f"{report.score.value:g}"

    components = {e.attrs["data-component"]: e for e in dom.find() if "data-component" in e.attrs}
    assert set(components) == {"security", "connections", "backups", "latency",
                               "maintenance"}
    assert components["security"].attrs["data-score"] == "0"
    assert components["backups"].attrs["data-score"] == "10"
    assert components["maintenance"].attrs["data-score"] == ""  # only an unknown check
    assert "not measured" in text(components["maintenance"])

    slas = {e.attrs["data-sla"]: e.attrs["data-met"] for e in dom.find()
            if "data-sla" in e.attrs}
    assert slas == {"availability": "true", "latency_p95": "true", "rpo": "true", "rto": ""}

    rows = {e.attrs["data-backup"]: e for e in dom.find() if "data-backup" in e.attrs}
    assert rows["nightly_full"].attrs["data-status"] == "healthy"
    assert rows["nightly_full"].attrs["data-age-seconds"] == "7200"
    assert "2h ago" in text(rows["nightly_full"])
    assert "26h" in text(rows["nightly_full"]) or "1d2h" in text(rows["nightly_full"])
    assert "fail" in rows["hourly_wal"].classes

    latency = {e.attrs["data-quantile"]: e.attrs["data-seconds"] for e in dom.find()
               if "data-quantile" in e.attrs}
    last = report.latency[-1]
    assert latency == {"p50": f"{last.p50:g}", "p95": f"{last.p95:g}", "p99": f"{last.p99:g}"}
    chart = dom.one(id="latency-chart")
    assert chart.tag == "svg"
    assert "section" in chart.parents
    series = {e.attrs["data-series"]: e for e in dom.find(class_="series")}
    assert set(series) == {"p50", "p95", "p99"}
    assert all(e.attrs["data-points"] == "12" for e in series.values())
    assert series["p95"].attrs["d"].count("L") == 11
    assert dom.one(class_="sla-line").attrs["data-sla-seconds"] == "0.1"

    findings = dom.find(class_="finding")
    assert [e.attrs["data-check"] for e in findings] == ["rls_enabled", "connection_pooling"]
    rls = findings[0]
    assert (rls.attrs["data-status"], rls.attrs["data-severity"]) == ("fail", "critical")
    assert float(rls.attrs["data-points-lost"]) == report.score.lost("rls_enabled") > 0
    assert "public.classrooms" in text(rls)
    remediation = dom.find(class_="remediation")
    assert remediation[0].tag == "pre"
    assert text(remediation[0]).startswith("ALTER TABLE <table> ENABLE ROW LEVEL SECURITY")
    others = {e.attrs["data-check"]: e.attrs["data-status"] for e in dom.find()
              if "data-check" in e.attrs and "finding" not in e.classes}
    assert others == {"backup_freshness": "pass", "latency_sla": "pass",
                      "table_bloat": "unknown"}
    assert "details" in dom.find(data_check="table_bloat")[0].parents

    # the order an on-call engineer reads it in, then the tables of before
    order = [page.index(marker) for marker in (
        'id="score"', 'id="components"', 'id="slas"', 'id="backups"', 'id="latency"',
        'id="latency-chart"', 'id="findings"', 'id="targets"', 'id="collectors"')]
    assert order == sorted(order)
    assert dom.one(id="targets").tag == "table"
    assert dom.one(data_target="db1", data_collector="connections").attrs["data-status"] == "ok"
    assert '<meta http-equiv="refresh" content="30">' in page


def test_without_health_only_targets_and_collectors():
    error = Reason("timeout", "the query hit statement_timeout")
    page = status_page(None, view(target_state(up=False, error=Reason("connection", "refused")),
                                  samples=[sample(), sample(collector="bloat", error=error)]),
                       NOW)
    dom = Dom(page)
    assert not dom.find(id="score")
    assert not dom.find(class_="target-health")
    assert dom.one(data_target="db1", data_state="down")
    assert "host=db1 user=hiw_monitor" in page
    assert "refused" in page
    failed = dom.one(data_collector="bloat")
    assert failed.attrs["data-status"] == "error"
    assert "the query hit statement_timeout" in text(failed)


def test_no_data_yet():
    """A target registered, nothing collected yet: most checks unknown, no chart."""
    store = SnapshotStore()
    store.register("db1", "host=db1", "connections", 15, 45)
    reports = Health(store, clock=lambda: NOW).report(NOW)
    page = status_page(reports, store.view(), NOW)
    dom = Dom(page)
    # no PgBouncer watched: the only measured check (availability is unknown until the
    # first connection attempt, not down)
    assert [e.attrs["data-check"] for e in dom.find(class_="finding")] == [
        "connection_pooling"]
    assert dom.one(id="score").attrs["data-score"] == f"{reports[0].score.value:g}"
    assert dom.one(class_="target-health").attrs["data-up"] == "false"
    assert dom.one(id="latency-chart").attrs["data-points"] == "0"
    assert all(e.attrs["data-points"] == "0" for e in dom.find(class_="series"))
    assert "no latency measured in the last hour" in page
    assert "the backups collector is not enabled" in text(dom.one(id="backups"))
    unknown = [e for e in dom.find(data_status="unknown") if "data-check" in e.attrs]
    assert len(unknown) > 10
    assert dom.one(data_collector="connections").attrs["data-status"] == "pending"


def test_nothing_measured_has_no_score():
    findings = [finding(BY_ID["rls_enabled"], "unknown", "the review collector has not run")]
    page = status_page([a_report(findings=findings)], view(), NOW)
    dom = Dom(page)
    assert dom.one(id="score").attrs["data-score"] == ""
    assert text(dom.one(id="score")) == "—"
    assert dom.one(id="target-score").attrs["data-score"] == ""
    assert "no failing or warning check" in text(dom.one(id="findings"))
    assert dom.one(data_component="security").attrs["data-score"] == ""


def test_no_postgresql_target():
    page = status_page([], (1, (), ()), NOW)
    dom = Dom(page)
    assert dom.one(id="score").attrs["data-score"] == ""
    assert "No PostgreSQL target" in page


def test_worst_target_is_the_page_score_and_ids_stay_unique():
    good = a_report("good", findings=[finding(BY_ID["rls_enabled"], "pass", "all")])
    bad = a_report("bad", latency=points(3))
    page = status_page([good, bad], view(target_state("good"), target_state("bad")), NOW)
    dom = Dom(page)
    assert dom.one(id="score").attrs["data-score"] == f"{bad.score.value:g}"
    assert [e.attrs["data-target"] for e in dom.find(class_="target-health")] == ["good", "bad"]
    ids = [e.attrs["id"] for e in dom.elements if "id" in e.attrs]
    assert len(ids) == len(set(ids))
    assert dom.one(id="latency-chart-2").attrs["data-points"] == "3"
    assert dom.one(id="findings-2")


HOSTILE_CHECK = Check("rls_enabled", f"title {HOSTILE}", "security", "critical", "security",
                      "sql", f"ALTER TABLE \"{HOSTILE}\" ENABLE ROW LEVEL SECURITY; -- '</pre>")


def test_hostile_values_are_escaped():
    backups = ({"name": HOSTILE, "type": f"t{HOSTILE}", "status": "warning",
                "age_seconds": 10.0, "warning_after_seconds": 5.0,
                "critical_after_seconds": 20.0},)
    findings = [finding(HOSTILE_CHECK, "fail", f"reason {HOSTILE}"),
                finding(BY_ID["availability"], "warn", f"up 99% {HOSTILE}")]
    report = TargetHealth(HOSTILE, False, HOSTILE, tuple(findings), score(findings),
                          {"latency_p95": {"recommended_seconds": 0.1}}, backups, ())
    state = TargetState(HOSTILE, f"host='{HOSTILE}'", up=False, server_version=HOSTILE,
                        error=Reason("connection", f"down {HOSTILE}"))
    samples = (Sample(HOSTILE, HOSTILE, 15.0, 45.0, finished_at=NOW,
                      error=Reason("internal", f"boom {HOSTILE}")),)
    page = status_page([report], (1, (state,), samples), NOW, version=HOSTILE)
    assert "<script" not in page
    assert HOSTILE not in page
    assert html.escape(HOSTILE) in page
    dom = Dom(page)  # well-formed: the values broke out of no element or attribute
    assert dom.one(class_="target-health").attrs["data-target"] == HOSTILE
    assert dom.one(data_backup=HOSTILE).attrs["data-status"] == "warning"
    assert dom.one(data_collector=HOSTILE).attrs["data-target"] == HOSTILE
    assert dom.one(data_target=HOSTILE, data_state="down")
    row = dom.one(data_check="rls_enabled")
    assert f"reason {HOSTILE}" in text(row)
    assert text(dom.find(class_="remediation")[0]) == \
        " ".join(HOSTILE_CHECK.remediation.split())
    assert not [e for e in dom.elements if e.tag in ("script", "img", "iframe", "object")]
    assert not [k for e in dom.elements for k in e.attrs if k.startswith("on")]


def test_no_asset_from_anywhere():
    """Works offline on a locked-down host: nothing is loaded, from this host or another."""
    page = status_page([a_report(backups=BACKUPS, latency=points())], view(), NOW)
    dom = Dom(page)
    for reference in ("http://", "https://", "url(", "@import", "@font-face"):
        assert reference not in page
    assert not [e for e in dom.elements if "src" in e.attrs]
    assert not [e for e in dom.elements if e.tag in ("script", "link", "img", "iframe",
                                                     "object", "embed", "use", "image")]
    links = [e.attrs["href"] for e in dom.elements if "href" in e.attrs]
    assert links == ["/metrics", "/health", "/healthz", "/ready"]


def test_chart_gaps_single_points_and_the_sla_line():
    nan = math.nan
    series = (LatencyPoint(NOW - 3000, 0.01, 0.02, 0.03),
              LatencyPoint(NOW - 2400, 0.01, 0.02, 0.03),
              LatencyPoint(NOW - 1800, nan, nan, nan),  # no calls in that window: a gap
              LatencyPoint(NOW - 1200, 0.01, 0.5, 0.9),
              LatencyPoint(NOW - 7200, 0.01, 0.02, 0.03))  # older than the hour: left out
    dom = Dom(latency_chart(series, 0.1, NOW))
    paths = {e.attrs["data-series"]: e.attrs for e in dom.find(class_="series")}
    assert paths["p95"]["data-points"] == "3"
    assert paths["p95"]["d"].count("M") == 2  # two runs, one of them a lone point
    assert dom.one(id="latency-chart").attrs["data-points"] == "4"
    coordinates = [float(v) for v in re.findall(r"[-\d.]+", paths["p99"]["d"])]
    assert all(0 <= v <= 640 for v in coordinates)
    sla = dom.one(class_="sla-line").attrs
    p95_y = [float(y) for y in re.findall(r",([\d.]+)", paths["p95"]["d"])]
    # the SLA line sits between the fast points (below it) and the slow one (above it)
    assert min(p95_y) < float(sla["y1"]) < max(p95_y)
    assert sla["y1"] == sla["y2"]
    assert dom.one(id="latency-chart").attrs["data-span-seconds"] == "3000"


def test_a_young_agent_chart_spans_what_it_has():
    """Ten seconds of history fill the chart (a minute at least), not its last pixels."""
    series = tuple(LatencyPoint(NOW - 10 + i, 0.001, 0.004, 0.009) for i in range(10))
    dom = Dom(latency_chart(series, 0.1, NOW))
    assert dom.one(id="latency-chart").attrs["data-span-seconds"] == "60"
    xs = [float(v) for v in re.findall(r"[ML]([\d.]+),", dom.one(data_series="p95").attrs["d"])]
    assert max(xs) - min(xs) > 60  # px: a sixth of the plot, not a dot at its right edge
    # logarithmic: 4 ms and 100 ms are far apart, both inside the plot
    p95_y = float(re.findall(r",([\d.]+)", dom.one(data_series="p95").attrs["d"])[0])
    assert float(dom.one(class_="sla-line").attrs["y1"]) < p95_y - 40


@pytest.mark.parametrize("sla", [None, 0.1])
def test_empty_chart_is_still_an_svg(sla):
    chart = latency_chart((), sla, NOW, chart_id="c")
    dom = Dom(chart)
    assert dom.one(id="c").tag == "svg"
    assert bool(dom.find(class_="sla-line")) == (sla is not None)


def test_a_hundred_findings_and_a_full_hour_of_points():
    """Pure formatting of what is given: the reports, the store view and the time."""
    checks = [Check(f"c{i}", f"check {i}", "security", "high", "security", "sql", "fix")
              for i in range(100)]
    findings = [finding(c, "fail" if i % 2 else "warn", "why") for i, c in enumerate(checks)]
    report = a_report(findings=findings, latency=points(720, step=5.0))
    page = status_page([report], view(), NOW)
    assert len(Dom(page).find(class_="finding")) == 100
