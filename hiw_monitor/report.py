"""``hiw-monitor review``'s report: pure functions from :meth:`Health.report`'s
``list[TargetHealth]`` (and the time it was made) to text.

- :func:`markdown` is shaped like the DBA review it makes continuous: a title with the
  target and the date, a Summary (score, failing checks by severity, one line per
  component), the findings by priority (critical, high, medium, low: each failing or
  warning check with its reason and its remediation in a fenced block), the checks that
  pass, the ones not measured (why, and the GRANT they need), "SLAs: measured vs
  recommended" and "Database Health Score: X.X/10" with the points each check lost;
- :func:`html` the same as one standalone page (inline CSS, no external asset, every
  value escaped);
- :func:`json_text` ``/health``'s document (:func:`hiw_monitor.health.document`);
- :func:`exit_code` the verdict a cron or CI job gates on: 0, :data:`EXIT_CRITICAL` (4)
  when a check of severity critical fails, 1 when a target is unreachable.
"""

from __future__ import annotations

import html as _html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from hiw_monitor import __version__
from hiw_monitor.health import TargetHealth, document
from hiw_monitor.review.model import SEVERITIES, Finding
from hiw_monitor.units import format_duration

EXIT_OK, EXIT_UNREACHABLE, EXIT_CRITICAL = 0, 1, 4
FORMATS = ("markdown", "json", "html")
STATUS_LABEL = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "unknown": "UNKNOWN"}
COMPONENT_TITLE = {"backups": "Backups", "availability": "Availability",
                   "latency": "Query latency", "connections": "Connections",
                   "maintenance": "Maintenance", "security": "Security & compliance",
                   "replication": "Replication"}


def exit_code(reports: Sequence[TargetHealth]) -> int:
    """1 if a target is unreachable (it wins: its checks could not run), else 4 if a check
    of severity critical fails on any target, else 0.

    Warnings, unknown checks and failing checks of lower severity never change it.
    """
    if any(not r.up for r in reports):
        return EXIT_UNREACHABLE
    if any(r.critical_failures() for r in reports):
        return EXIT_CRITICAL
    return EXIT_OK


def render(fmt: str, reports: Sequence[TargetHealth], now: float) -> str:
    renderers: Mapping[str, Callable[[Sequence[TargetHealth], float], str]] = {
        "markdown": markdown, "json": json_text, "html": html}
    return renderers[fmt](reports, now)


def json_text(reports: Sequence[TargetHealth], now: float) -> str:
    """``/health``'s JSON, exactly (strict: no NaN)."""
    return json.dumps(document(reports, now), indent=1, allow_nan=False) + "\n"


# --- shared wording ---------------------------------------------------------------------


def _date(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _score(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1f}/10"


def _hours(seconds: float) -> str:
    """24 h, 2 h; a duration otherwise (90m -> 1h30m)."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return format_duration(seconds)


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.3f}".rstrip("0").rstrip(".") + " %"


def _met(value: Any) -> str:
    return "not measured" if value is None else "yes" if value else "NO"


def sla_rows(report: TargetHealth) -> list[tuple[str, str, str, str]]:
    """(SLA, recommended, measured, met) for the four SLAs of the review."""
    slas = report.slas
    rows: list[tuple[str, str, str, str]] = []
    a = slas.get("availability", {})
    if a:
        measured = "not measured" if a.get("measured") is None else \
            f"{_pct(a['measured'])} over the agent's last " \
            f"{format_duration(float(a.get('window_seconds') or 0.0))}"
        rows.append(("Database availability", _pct(float(a["recommended"])), measured,
                     _met(a.get("met"))))
    lat = slas.get("latency_p95", {})
    if lat:
        seconds = lat.get("measured_seconds")
        rows.append(("Query response time (95th percentile)",
                     f"< {float(lat['recommended_seconds']) * 1000:g} ms",
                     "not measured" if seconds is None else f"{seconds * 1000:.1f} ms",
                     _met(lat.get("met"))))
    for key, title, what in (("rpo", "Backup RPO", "since the newest successful backup"),
                             ("rto", "Backup RTO", "the slowest verified restore")):
        sla = slas.get(key, {})
        if sla:
            seconds = sla.get("measured_seconds")
            rows.append((title, f"< {_hours(float(sla['recommended_seconds']))}",
                         "not measured" if seconds is None
                         else f"{format_duration(float(seconds))} ({what})",
                         _met(sla.get("met"))))
    return rows


def _order(report: TargetHealth) -> Callable[[Finding], tuple[int, float, int]]:
    position = {f.check.id: i for i, f in enumerate(report.findings)}
    return lambda f: (0 if f.status == "fail" else 1, -report.score.lost(f.check.id),
                      position[f.check.id])


def by_severity(report: TargetHealth) -> dict[str, list[Finding]]:
    """The failing and warning checks by severity (critical first), the failures first
    in each, then by the points they lose."""
    out: dict[str, list[Finding]] = {s: [] for s in SEVERITIES}
    for f in sorted(report.failing(), key=_order(report)):
        out[f.check.severity].append(f)
    return out


def _counts(report: TargetHealth, status: str) -> str:
    counted = [sum(1 for f in report.findings if f.status == status and f.check.severity == s)
               for s in SEVERITIES]
    return ", ".join(f"{n} {s}" for n, s in zip(counted, SEVERITIES, strict=True))


def _component_lines(report: TargetHealth) -> list[tuple[str, str]]:
    """(component, its line) for every component with a check."""
    status = {f.check.id: f.status for f in report.findings}
    out = []
    for c in report.score.components:
        if not c.checks:
            continue
        failing = sum(1 for i in c.checks if status.get(i) == "fail")
        warning = sum(1 for i in c.checks if status.get(i) == "warn")
        unknown = sum(1 for i in c.checks if status.get(i) == "unknown")
        parts = [f"{len(c.checks)} check{'s' if len(c.checks) != 1 else ''}",
                 f"{failing} failing"]
        if warning:
            parts.append(f"{warning} warning")
        if unknown:
            parts.append(f"{unknown} not measured")
        weight = f", {c.weight:.0%} of the score" if c.score is not None else ""
        out.append((COMPONENT_TITLE.get(c.name, c.name),
                    f"{_score(c.score)} ({', '.join(parts)}{weight})"))
    return out


def losses(report: TargetHealth) -> list[tuple[Finding, float]]:
    """Every measured check that lost points, the biggest loss first."""
    by_id = {f.check.id: f for f in report.findings}
    lost = [(by_id[x.check], x.points) for x in report.score.losses
            if x.points > 0 and x.check in by_id]
    return sorted(lost, key=lambda item: -item[1])


# --- Markdown -------------------------------------------------------------------------


_TAG = re.compile(r"<(?=[A-Za-z/!?])")


def _md(text: object) -> str:
    """One line of Markdown text: no line breaks, no raw HTML (a ``<`` that could open
    a tag, an autolink or a comment is escaped; ``< 24 h`` stays as it is)."""
    return _TAG.sub(r"\\<", re.sub(r"\s*[\r\n]+\s*", " ", str(text)))


def _cell(text: object) -> str:
    return _md(text).replace("|", "\\|")


def _fence(body: str) -> str:
    """A fenced block longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{body.rstrip()}\n{fence}"


def _md_finding(report: TargetHealth, f: Finding) -> list[str]:
    c = f.check
    lines = [f"### {STATUS_LABEL[f.status]}: {_md(c.title)} (`{c.id}`)", "",
             f"- **Status**: {f.status} ({c.severity}, {c.category}; "
             f"loses {report.score.lost(c.id):.2f} points)",
             f"- **Reason**: {_md(f.reason)}"]
    if c.review:
        lines.append(f"- **The review**: {_md(c.review)}")
    lines += ["- **Remediation**:", "", _fence(c.remediation), ""]
    return lines


def _md_target(report: TargetHealth, now: float) -> list[str]:
    version = f"PostgreSQL {report.server_version}" if report.server_version else \
        "server version unknown"
    state = "up" if report.up else "**UNREACHABLE**"
    failing = [f for f in report.findings if f.status == "fail"]
    out = [f"# PostgreSQL DBA Review: {_md(report.target)}", "",
           f"Generated by hiw-monitor {__version__} on {_date(now)}; {_md(version)}; "
           f"the target is {state}.", "",
           "## Summary", "",
           f"**Health score: {_score(report.score.value)}**", "",
           f"- **Failing checks**: {len(failing)} ({_counts(report, 'fail')})",
           f"- **Warnings**: {sum(1 for f in report.findings if f.status == 'warn')} "
           f"({_counts(report, 'warn')})",
           f"- **Passing**: {sum(1 for f in report.findings if f.status == 'pass')}; "
           f"**not measured**: {sum(1 for f in report.findings if f.status == 'unknown')}",
           "", "By component:", ""]
    out += [f"- **{_md(name)}**: {line}" for name, line in _component_lines(report)]
    out.append("")
    for severity, found in by_severity(report).items():
        out += [f"## {severity.title()} Priority Issues", ""]
        if not found:
            out += ["None.", ""]
        for f in found:
            out += _md_finding(report, f)
    passing = [f for f in report.findings if f.status == "pass"]
    out += ["## Checks That Pass", ""]
    out += [f"- ✅ **{_md(f.check.title)}** (`{f.check.id}`, {f.check.severity}): "
            f"{_md(f.reason)}" for f in passing] or ["None."]
    out += ["", "## Not Measured", ""]
    unknown = [f for f in report.findings if f.status == "unknown"]
    for f in unknown:
        needs = f" Needs: {_md(f.check.needs)}." if f.check.needs else ""
        out.append(f"- **{_md(f.check.title)}** (`{f.check.id}`, {f.check.severity}): "
                   f"{_md(f.reason)}.{needs}")
    if not unknown:
        out.append("None: every check was measured.")
    out += ["", "## SLAs: measured vs recommended", "",
            "| SLA | Recommended | Measured | Met |", "| --- | --- | --- | --- |"]
    out += [f"| {' | '.join(_cell(x) for x in row)} |" for row in sla_rows(report)]
    out += ["", f"## Database Health Score: {_score(report.score.value)}", ""]
    lost = losses(report)
    if report.score.value is None:
        out.append("No check was measured, so there is no score.")
    elif not lost:
        out.append("No check lost a point.")
    else:
        total = sum(points for _, points in lost)
        out += [f"10 - {total:.2f} points lost = {report.score.value:.2f}. The points each "
                "check lost (its severity's share of its component's weight):", "",
                "| Check | Severity | Status | Points lost |", "| --- | --- | --- | ---: |"]
        out += [f"| {_cell(f.check.title)} (`{f.check.id}`) | {f.check.severity} | "
                f"{f.status} | {points:.2f} |" for f, points in lost]
    out.append("")
    return out


def markdown(reports: Sequence[TargetHealth], now: float) -> str:
    """The review as Markdown: one document per target, separated by a rule."""
    if not reports:
        return f"# PostgreSQL DBA Review\n\nGenerated by hiw-monitor {__version__} on " \
            f"{_date(now)}: no PostgreSQL target to review.\n"
    parts = ["\n".join(_md_target(r, now)) for r in reports]
    return "\n---\n\n".join(parts)


# --- HTML -----------------------------------------------------------------------------

_CSS = """\
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;
max-width:60em;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.2em}h2{margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}
pre{background:#f6f8fa;border:1px solid #ddd;padding:.6em;overflow-x:auto;
white-space:pre-wrap}code{font-family:ui-monospace,monospace}
.score{font-size:1.6em;font-weight:bold}.fail{color:#b00020}.warn{color:#8a5a00}
.pass{color:#1b6e20}.unknown{color:#555}.finding{border-left:4px solid #ccc;
padding:.1em 1em;margin:1em 0}.finding.fail{border-color:#b00020;color:inherit}
.finding.warn{border-color:#d89000;color:inherit}.meta{color:#555}"""


def _e(value: object) -> str:
    return _html.escape(str(value), quote=True)


def _html_target(report: TargetHealth, now: float) -> list[str]:
    version = f"PostgreSQL {report.server_version}" if report.server_version else \
        "server version unknown"
    state = "up" if report.up else "<strong class='fail'>UNREACHABLE</strong>"
    failing = [f for f in report.findings if f.status == "fail"]
    warn = sum(1 for f in report.findings if f.status == "warn")
    out = ["<section>", f"<h1>PostgreSQL DBA Review: {_e(report.target)}</h1>",
           f"<p class='meta'>Generated by hiw-monitor {_e(__version__)} on {_e(_date(now))}; "
           f"{_e(version)}; the target is {state}.</p>",
           "<h2>Summary</h2>",
           f"<p class='score'>Health score: {_e(_score(report.score.value))}</p><ul>",
           f"<li><strong>Failing checks</strong>: {len(failing)} "
           f"({_e(_counts(report, 'fail'))})</li>",
           f"<li><strong>Warnings</strong>: {warn} ({_e(_counts(report, 'warn'))})</li>",
           f"<li><strong>Passing</strong>: "
           f"{sum(1 for f in report.findings if f.status == 'pass')}; <strong>not "
           f"measured</strong>: {sum(1 for f in report.findings if f.status == 'unknown')}"
           "</li></ul>",
           "<table><tr><th>Component</th><th>Score</th></tr>"]
    out += [f"<tr><td>{_e(name)}</td><td>{_e(line)}</td></tr>"
            for name, line in _component_lines(report)]
    out.append("</table>")
    for severity, found in by_severity(report).items():
        out.append(f"<h2>{_e(severity.title())} Priority Issues</h2>")
        if not found:
            out.append("<p>None.</p>")
        for f in found:
            c = f.check
            review = f"<li><strong>The review</strong>: {_e(c.review)}</li>" if c.review \
                else ""
            out.append(
                f"<div class='finding {_e(f.status)}'><h3><span class='{_e(f.status)}'>"
                f"{_e(STATUS_LABEL[f.status])}</span>: {_e(c.title)} (<code>{_e(c.id)}</code>)"
                f"</h3><ul><li><strong>Status</strong>: {_e(f.status)} ({_e(c.severity)}, "
                f"{_e(c.category)}; loses {report.score.lost(c.id):.2f} points)</li>"
                f"<li><strong>Reason</strong>: {_e(f.reason)}</li>{review}</ul>"
                f"<p><strong>Remediation</strong>:</p><pre><code>{_e(c.remediation)}"
                "</code></pre></div>")
    out.append("<h2>Checks That Pass</h2>")
    passing = [f for f in report.findings if f.status == "pass"]
    out.append("<ul>" + "".join(
        f"<li><span class='pass'>&#10004;</span> <strong>{_e(f.check.title)}</strong> "
        f"(<code>{_e(f.check.id)}</code>, {_e(f.check.severity)}): {_e(f.reason)}</li>"
        for f in passing) + "</ul>" if passing else "<p>None.</p>")
    out.append("<h2>Not Measured</h2>")
    unknown = [f for f in report.findings if f.status == "unknown"]
    out.append("<ul>" + "".join(
        f"<li><strong>{_e(f.check.title)}</strong> (<code>{_e(f.check.id)}</code>, "
        f"{_e(f.check.severity)}): {_e(f.reason)}."
        + (f" Needs: <code>{_e(f.check.needs)}</code>." if f.check.needs else "") + "</li>"
        for f in unknown) + "</ul>" if unknown else "<p>None: every check was measured.</p>")
    out += ["<h2>SLAs: measured vs recommended</h2>",
            "<table><tr><th>SLA</th><th>Recommended</th><th>Measured</th><th>Met</th></tr>"]
    for name, recommended, measured, met in sla_rows(report):
        css = "pass" if met == "yes" else "fail" if met == "NO" else "unknown"
        out.append(f"<tr><td>{_e(name)}</td><td>{_e(recommended)}</td><td>{_e(measured)}</td>"
                   f"<td class='{css}'>{_e(met)}</td></tr>")
    out += ["</table>", f"<h2>Database Health Score: {_e(_score(report.score.value))}</h2>"]
    lost = losses(report)
    if report.score.value is None:
        out.append("<p>No check was measured, so there is no score.</p>")
    elif not lost:
        out.append("<p>No check lost a point.</p>")
    else:
        total = sum(points for _, points in lost)
        out += [f"<p>10 - {total:.2f} points lost = {report.score.value:.2f}. The points "
                "each check lost:</p>",
                "<table><tr><th>Check</th><th>Severity</th><th>Status</th>"
                "<th>Points lost</th></tr>"]
        out += [f"<tr><td>{_e(f.check.title)} (<code>{_e(f.check.id)}</code>)</td>"
                f"<td>{_e(f.check.severity)}</td><td class='{_e(f.status)}'>{_e(f.status)}</td>"
                f"<td>{points:.2f}</td></tr>" for f, points in lost]
        out.append("</table>")
    out.append("</section>")
    return out


def html(reports: Sequence[TargetHealth], now: float) -> str:
    """The review as one standalone HTML page (inline CSS, nothing fetched)."""
    title = "PostgreSQL DBA Review" + (
        ": " + ", ".join(r.target for r in reports) if reports else "")
    body: list[str] = []
    for i, r in enumerate(reports):
        if i:
            body.append("<hr>")
        body += _html_target(r, now)
    if not reports:
        body.append(f"<h1>PostgreSQL DBA Review</h1><p>Generated by hiw-monitor "
                    f"{_e(__version__)} on {_e(_date(now))}: no PostgreSQL target to "
                    "review.</p>")
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
