"""report.py: the review's renderers and verdict, from hand-made TargetHealth values (no
database); and the demo's banner and the review command's parser in cli.py."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

from hiw_monitor import cli, report
from hiw_monitor.health import TargetHealth, document
from hiw_monitor.review.checks import BY_ID, CHECKS
from hiw_monitor.review.model import Check, Finding, Status, finding, score

NOW = datetime(2026, 3, 2, 12, 30, tzinfo=UTC).timestamp()
HOSTILE = "<script>alert('x')</script>"
HOSTILE_REASON = "table \"<img src=x onerror=alert(1)>\" & 'quotes' | pipe\nnext line"
SECTIONS = ["# PostgreSQL DBA Review: hiw", "## Summary", "## Critical Priority Issues",
            "## High Priority Issues", "## Medium Priority Issues", "## Low Priority Issues",
            "## Checks That Pass", "## Not Measured", "## SLAs: measured vs recommended",
            "## Database Health Score: "]


def slas(**overrides: dict) -> dict:
    base = {
        "availability": {"recommended": 0.9995, "measured": 1.0, "window_seconds": 12.0,
                         "met": True},
        "latency_p95": {"recommended_seconds": 0.1, "measured_seconds": 0.0123, "met": True},
        "rpo": {"recommended_seconds": 86400.0, "measured_seconds": 2400.0, "met": True},
        "rto": {"recommended_seconds": 7200.0, "measured_seconds": None, "met": None},
    }
    return {**base, **overrides}


def health(statuses: dict[str, Status], *, target: str = "hiw", up: bool = True,
           reasons: dict[str, str] | None = None, **kwargs) -> TargetHealth:
    """A target whose checks have the given statuses (every other check passes)."""
    found = [finding(c, statuses.get(c.id, "pass"),
                     (reasons or {}).get(c.id, f"reason of {c.id}")) for c in CHECKS]
    return health_of(found, target=target, up=up, **kwargs)


def health_of(found: list[Finding], *, target: str = "hiw", up: bool = True,
              sla: dict | None = None) -> TargetHealth:
    return TargetHealth(target=target, up=up, server_version="15.18", findings=tuple(found),
                        score=score(found), slas=sla or slas(), backups=(), latency=())


DEMO = {"rls_enabled": "fail", "retention_overdue": "fail", "expected_indexes": "fail",
        "connection_pooling": "warn", "data_growth": "warn", "latency_sla": "unknown"}


# --- Markdown ---------------------------------------------------------------------------


def test_markdown_has_the_reviews_sections_in_order():
    text = report.markdown([health(DEMO)], NOW)
    positions = [text.find(heading) for heading in SECTIONS]
    assert -1 not in positions, [h for h, p in zip(SECTIONS, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    assert "2026-03-02 12:30 UTC" in text.split("\n## Summary")[0]
    assert "PostgreSQL 15.18" in text


def test_markdown_summary_counts_and_components():
    h = health(DEMO)
    text = report.markdown([h], NOW)
    summary = text.split("## Summary")[1].split("## Critical")[0]
    assert f"**Health score: {h.score.value:.1f}/10**" in summary
    assert "**Failing checks**: 3 (2 critical, 1 high, 0 medium, 0 low)" in summary
    assert "**Warnings**: 2 (0 critical, 0 high, 1 medium, 1 low)" in summary
    assert "**not measured**: 1" in summary
    # one line per component that has checks, in the score's order
    lines = summary.split("By component:")[1].strip().splitlines()
    assert [line.split("**")[1] for line in lines] == [
        "Backups", "Availability", "Query latency", "Connections", "Maintenance",
        "Security & compliance", "Replication"]
    security = next(x for x in lines if "Security" in x)
    component = next(c for c in h.score.components if c.name == "security")
    assert security.startswith(f"- **Security & compliance**: {component.score:.1f}/10 "
                               "(8 checks, 2 failing, ")
    availability = next(x for x in lines if "Availability" in x)
    assert "(1 check, 0 failing, " in availability
    latency = next(x for x in lines if "Query latency" in x)
    assert "1 failing, 1 not measured" in latency


def test_markdown_findings_are_under_their_severity_with_remediation_fenced():
    text = report.markdown([health(DEMO)], NOW)
    sections = dict(re.findall(r"## (\w+) Priority Issues\n\n(.*?)(?=\n## )", text, re.S))
    assert set(sections) == {"Critical", "High", "Medium", "Low"}
    assert "(`rls_enabled`)" in sections["Critical"]
    assert "(`retention_overdue`)" in sections["Critical"]
    assert "### FAIL: The review's partial and composite indexes exist and are valid " \
        "(`expected_indexes`)" in sections["High"]
    assert "### WARN: " in sections["Medium"]
    assert "(`connection_pooling`)" in sections["Medium"]
    assert "(`data_growth`)" in sections["Low"]
    assert "- **Reason**: reason of rls_enabled" in sections["Critical"]
    # the remediation verbatim, in a fenced block
    assert "```\n" + BY_ID["expected_indexes"].remediation + "\n```" in sections["High"]
    # passing and unknown checks are not findings
    for body in sections.values():
        assert "(`availability`)" not in body
        assert "(`latency_sla`)" not in body


def test_markdown_orders_failures_before_warnings_and_says_none_when_empty():
    text = report.markdown([health({"ssl_enabled": "warn", "audit_log_active": "fail"})], NOW)
    high = text.split("## High Priority Issues")[1].split("## Medium")[0]
    assert high.index("audit_log_active") < high.index("ssl_enabled")
    assert "## Critical Priority Issues\n\nNone.\n" in text
    assert "## Low Priority Issues\n\nNone.\n" in text


def test_markdown_lists_passing_and_unknown_checks_with_the_grant_they_need():
    text = report.markdown([health(DEMO)], NOW)
    passing = text.split("## Checks That Pass")[1].split("## Not Measured")[0]
    assert "(`availability`, critical): reason of availability" in passing
    assert "rls_enabled" not in passing
    unknown = text.split("## Not Measured")[1].split("## SLAs")[0]
    assert "(`latency_sla`, high): reason of latency_sla." in unknown
    assert f"Needs: {BY_ID['latency_sla'].needs}." in unknown
    everything_known = report.markdown([health({})], NOW)
    assert "## Not Measured\n\nNone: every check was measured." in everything_known


def test_markdown_sla_table_measured_vs_recommended():
    text = report.markdown([health(DEMO)], NOW)
    table = text.split("## SLAs: measured vs recommended")[1].split("\n## ")[0]
    assert "| SLA | Recommended | Measured | Met |" in table
    assert "| Database availability | 99.95 % | 100 % over the agent's last 12s | yes |" in table
    assert "| Query response time (95th percentile) | < 100 ms | 12.3 ms | yes |" in table
    assert "| Backup RPO | < 24 h | 40m (since the newest successful backup) | yes |" in table
    assert "| Backup RTO | < 2 h | not measured | not measured |" in table
    missed = report.markdown([health({}, sla=slas(latency_p95={
        "recommended_seconds": 0.1, "measured_seconds": 0.25, "met": False}))], NOW)
    assert "| < 100 ms | 250.0 ms | NO |" in missed


def test_markdown_health_score_lists_the_points_each_check_lost():
    h = health(DEMO)
    text = report.markdown([h], NOW)
    tail = text.split(f"## Database Health Score: {h.score.value:.1f}/10")[1]
    rows = re.findall(r"^\| .*\(`(\w+)`\) \| (\w+) \| (\w+) \| ([\d.]+) \|$", tail, re.M)
    assert {r[0] for r in rows} == {"rls_enabled", "retention_overdue", "expected_indexes",
                                    "connection_pooling", "data_growth"}
    points = [float(r[3]) for r in rows]
    assert points == sorted(points, reverse=True)
    for check, _, _, lost in rows:
        assert lost == f"{h.score.lost(check):.2f}"
    assert math.isclose(sum(x.points for x in h.score.losses), 10 - h.score.value,
                        abs_tol=0.01)
    assert f"= {h.score.value:.2f}" in tail
    assert "No check lost a point." in report.markdown([health({})], NOW)


def test_markdown_without_any_measured_check_says_so():
    h = health({c.id: "unknown" for c in CHECKS})
    assert h.score.value is None
    text = report.markdown([h], NOW)
    assert "**Health score: not measured**" in text
    assert "## Database Health Score: not measured" in text
    assert "No check was measured, so there is no score." in text


def test_markdown_keeps_hostile_text_inert_and_on_one_line():
    h = health({"rls_enabled": "fail"}, target=HOSTILE,
               reasons={"rls_enabled": HOSTILE_REASON})
    text = report.markdown([h], NOW)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks show, never render
    assert not re.search(r"(?<!\\)<[A-Za-z/!?]", prose)  # no raw tag
    # escaped: a Markdown renderer shows it, and runs nothing
    assert "# PostgreSQL DBA Review: \\<script>alert('x')\\</script>" in text
    assert "- **Reason**: table \"\\<img src=x onerror=alert(1)>\" & 'quotes' | pipe " \
        "next line" in text
    # a | in a table cell does not split the row
    sla = health({}, sla=slas(rto={"recommended_seconds": 7200.0, "measured_seconds": None,
                                   "met": None}))
    cell = report._cell("a|b")
    assert cell == "a\\|b"
    assert all(line.count(" | ") - line.count("\\|") >= 3
               for line in report.markdown([sla], NOW).splitlines()
               if line.startswith("| Backup"))


def test_markdown_fence_outgrows_backticks_in_a_remediation():
    odd = Check("odd", "Odd", "security", "low", "security", "sql",
                "run:\n```sql\nSELECT 1;\n```")
    text = report.markdown([health_of([finding(odd, "fail", "r")])], NOW)
    assert "````\nrun:\n```sql\nSELECT 1;\n```\n````" in text


def test_markdown_of_several_targets_and_of_none():
    text = report.markdown([health(DEMO, target="a"), health({}, target="b")], NOW)
    assert "# PostgreSQL DBA Review: a" in text
    assert "# PostgreSQL DBA Review: b" in text
    assert text.index("Review: a") < text.index("\n---\n") < text.index("Review: b")
    assert "no PostgreSQL target to review" in report.markdown([], NOW)


# --- HTML ---------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.open: list[str] = []
        self.void = {"meta", "hr", "br", "link", "img", "input"}

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag not in self.void:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open[-1:] == [tag], (tag, self.open[-5:])
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.open == [], parser.open
    return parser


def test_html_is_a_standalone_page_with_every_section():
    page = report.html([health(DEMO)], NOW)
    parsed = parse(page)
    assert page.startswith("<!doctype html>")
    assert {"html", "head", "style", "body", "h1", "h2", "table", "pre"} <= set(parsed.tags)
    # nothing fetched: no script, stylesheet link, image or remote URL
    assert not {"script", "link", "img", "iframe"} & set(parsed.tags)
    assert not [v for k, v in parsed.attrs if k in ("src", "href")]
    assert "http" not in page.split("<body>")[0].lower().replace("http-equiv", "")
    text = " ".join(parsed.text)
    for heading in ("Summary", "Critical Priority Issues", "High Priority Issues",
                    "Medium Priority Issues", "Low Priority Issues", "Checks That Pass",
                    "Not Measured", "SLAs: measured vs recommended", "Database Health Score"):
        assert heading in text
    assert BY_ID["expected_indexes"].remediation in "".join(parsed.text)


def test_html_escapes_every_value():
    hostile_check = Check("hostile", "<b>bold</b> title", "security", "critical", "security",
                          "sql", "DROP TABLE x; -- </pre><script>alert(2)</script>",
                          needs="GRANT <everything>")
    found = [finding(hostile_check, "fail", HOSTILE_REASON),
             finding(replace(hostile_check, id="other"), "unknown", HOSTILE)]
    page = report.html([health_of(found, target=HOSTILE)], NOW)
    parsed = parse(page)
    assert not {"script", "img", "b"} & set(parsed.tags)
    text = "".join(parsed.text)
    assert HOSTILE in text  # shown as text, the way it was written
    assert "<img src=x onerror=alert(1)>" in text
    assert "</pre><script>alert(2)</script>" in text
    assert "GRANT <everything>" in text
    assert "&lt;script&gt;" in page


# --- JSON and the verdict -------------------------------------------------------------------


def test_json_is_the_health_document():
    h = health(DEMO)
    nan = replace(h, findings=(*h.findings[:-1],
                               replace(h.findings[-1], measured={"ratio": math.nan})))
    for reports in ([h], [nan, health({}, target="b")], []):
        text = report.json_text(reports, NOW)
        assert json.loads(text) == json.loads(json.dumps(document(reports, NOW)))
    assert json.loads(report.json_text([h], NOW))["score"] == h.score.value
    assert "NaN" not in report.json_text([nan], NOW)


def test_render_dispatches_on_the_format():
    reports = [health(DEMO)]
    assert report.render("markdown", reports, NOW) == report.markdown(reports, NOW)
    assert report.render("html", reports, NOW) == report.html(reports, NOW)
    assert report.render("json", reports, NOW) == report.json_text(reports, NOW)
    assert set(report.FORMATS) == {"markdown", "html", "json"}


@pytest.mark.parametrize(("statuses", "up", "expected"), [
    ({}, True, 0),
    ({"rls_enabled": "warn", "audit_log_active": "fail", "ssl_enabled": "fail"}, True, 0),
    ({"rls_enabled": "unknown", "backup_freshness": "unknown"}, True, 0),
    ({"rls_enabled": "fail"}, True, 4),
    ({"availability": "fail", "xid_wraparound": "fail"}, True, 4),
    ({"availability": "fail"}, False, 1),  # unreachable wins over the critical failure
    ({}, False, 1),
])
def test_exit_code(statuses, up, expected):
    assert report.exit_code([health(statuses, up=up)]) == expected


def test_exit_code_over_several_targets():
    fine, critical = health({}, target="a"), health({"rls_enabled": "fail"}, target="b")
    assert report.exit_code([fine, critical]) == report.EXIT_CRITICAL == 4
    assert report.exit_code([fine, critical, health({}, target="c", up=False)]) == 1
    assert report.exit_code([fine]) == 0
    assert report.exit_code([]) == 0


# --- cli: the review command's parser and the demo's banner ------------------------------------


def test_review_help_documents_exit_code_4(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["review", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--format {markdown,json,html}" in out
    assert "--window SECONDS" in out
    assert "--output FILE" in out
    assert re.search(r"^\s+4\s+review: a check of severity critical fails", out, re.M)
    assert "4 ``review``" in (cli.__doc__ or "")


@pytest.mark.parametrize("bad", ["-1", "soon", "nan", "inf"])
def test_review_window_must_be_seconds(bad, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["review", "--window", bad])
    assert exited.value.code == 2
    assert "--window" in capsys.readouterr().err


def test_review_defaults():
    args = cli.build_parser().parse_args(["review"])
    assert (args.format, args.window, args.output) == ("markdown", 10.0, None)


def test_banner_shows_the_url_the_score_and_the_failing_checks():
    h = health(DEMO, target="heroes_in_waiting",
               reasons={"rls_enabled": "public.classrooms: RLS not enabled\n(and more)",
                        "retention_overdue": "x" * 500})
    text = cli.banner([h], "http://127.0.0.1:9187/", width=100)
    lines = text.splitlines()
    assert lines[0] == lines[-1] == "+" + "-" * 98 + "+"
    assert all(len(line) == 100 and line[0] == "|" and line[-1] == "|" for line in lines[1:-1])
    assert "http://127.0.0.1:9187/" in text
    assert f"{h.score.value:.1f}/10" in text
    assert "rls_enabled" in text
    assert "public.classrooms: RLS not enabled (and more)" in text
    assert "retention_overdue  xxx" in text
    assert "..." in text
    assert "expected_indexes" in text
    assert "connection_pooling" not in text  # a warning, counted, not listed
    assert "3; and 2 warning(s)" in text


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:9187/"), ("0.0.0.0", "http://127.0.0.1:9187/"),
    ("::", "http://[::1]:9187/"), ("::1", "http://[::1]:9187/"),
    ("localhost", "http://localhost:9187/")])
def test_banner_url_is_one_a_browser_opens(host, url):
    assert cli._browsable("http", host, 9187) == url
