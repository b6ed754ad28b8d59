"""The status page at ``/``: what an on-call engineer opens first.

Pure functions from the already computed health reports (:meth:`Health.report`), the
snapshot store's view and the time: nothing here touches the database, and the page is
complete on its own (inline CSS and SVG, no script, no font, no image, no other host),
so it works offline on a locked-down host. Every dynamic value is HTML-escaped.

In order, per PostgreSQL target: the health score and its components, the service
levels, the backups (age against their warning and critical thresholds), p50/p95/p99
against the latency SLA with a chart of the last hour, the failing and warning checks
with their reason and remediation; then the targets and the collectors.

The hooks tests (and scripts) read, stable:

- ``#score[data-score]``: the page's health score, the worst target's (``/health``'s
  ``score``; ``data-score=""`` while nothing is measured), ``data-critical-failures``;
- ``section.target-health[data-target]`` (``id="target-n"``), one per PostgreSQL target,
  with ``data-score`` and ``data-up``; inside it, by class: ``.target-score``
  (``[data-score]``), ``table.components`` (rows
  ``[data-component][data-score]``), ``table.slas`` (``[data-sla][data-met]``),
  ``table.backups`` (``[data-backup][data-status][data-age-seconds]``),
  ``table.latency`` (``[data-quantile][data-seconds]``), ``svg.latency-chart``
  (``[data-points][data-span-seconds]``; ``path.series[data-series][data-points]``,
  ``line.sla-line[data-sla-seconds]``),
  ``table.findings`` (``tr.finding[data-check][data-status][data-severity]`` with
  ``.reason`` and ``pre.remediation``) and ``details.other-checks`` (the passing and
  unmeasured checks, ``[data-check][data-status]`` too);
- the first (or only) target's elements also carry the ids ``target-score``,
  ``components``, ``slas``, ``backups``, ``latency``, ``latency-chart`` and ``findings``;
  the n-th target's end in ``-n`` (``latency-chart-2``);
- ``#targets`` (rows ``[data-target][data-state]``) and ``#collectors`` (rows
  ``[data-target][data-collector][data-status]``), as before the review.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from hiw_monitor import __version__
from hiw_monitor.health import HISTORY_SECONDS, LatencyPoint, TargetHealth
from hiw_monitor.review.model import Finding
from hiw_monitor.snapshot import Sample, TargetState
from hiw_monitor.units import format_duration

StoreView = tuple[int, Sequence[TargetState], Sequence[Sample]]
REFRESH_SECONDS = 30

_STATUS_ORDER = {"fail": 0, "warn": 1, "unknown": 2, "pass": 3}
_BACKUP_CLASS = {"healthy": "pass", "warning": "warn", "critical": "fail", "future": "fail",
                 "unknown": "unknown"}
_SERIES = (("p50", "#3b7dd8"), ("p95", "#d97706"), ("p99", "#b91c1c"))

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:1.5em 2em;color:#1f2328;background:#fff;line-height:1.35}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.2em;margin:1.4em 0 .4em}
h3{font-size:1.02em;margin:1.1em 0 .3em}
table{border-collapse:collapse;margin:.2em 0 .6em}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.nav a{margin-right:.8em}.muted{color:#656d76}
.summary{display:flex;align-items:baseline;gap:1.2em;flex-wrap:wrap}
.big{font-size:2.6em;font-weight:700}.mid{font-size:1.6em;font-weight:700}
.target-health{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1.2em 1em;
margin:1em 0}
.target-head{display:flex;align-items:baseline;gap:.8em;flex-wrap:wrap}
.target-head h2{margin:.3em 0}
.badge{display:inline-block;padding:0 .45em;border-radius:3px;font-size:.85em;
font-weight:600;color:#fff;background:#8c959f}
.badge.pass,.badge.good{background:#1a7f37}.badge.warn,.badge.fair{background:#bf8700}
.badge.fail,.badge.poor{background:#cf222e}.badge.unknown{background:#8c959f}
.score-good{color:#1a7f37}.score-fair{color:#9a6700}.score-poor{color:#cf222e}
.score-unknown{color:#8c959f}
.bar{width:180px;height:10px;background:#eaeef2;border-radius:2px;position:relative}
.bar>span{display:block;height:100%;border-radius:2px}
.bar>i{position:absolute;top:-3px;bottom:-3px;width:2px}
.bar>i.w{background:#bf8700}.bar>i.c{background:#cf222e}
.fill-pass{background:#2da44e}.fill-warn{background:#d4a72c}.fill-fail{background:#cf222e}
.fill-unknown{background:#8c959f}
tr.fail>td:first-child{border-left:4px solid #cf222e}
tr.warn>td:first-child{border-left:4px solid #d4a72c}
tr.error{background:#ffebe9}tr.pending{background:#fff8c5}
pre.remediation{margin:0;padding:.4em .6em;background:#f6f8fa;border:1px solid #d0d7de;
border-radius:4px;white-space:pre-wrap;word-break:break-word;max-width:60em;
font-size:.85em}
.findings td.reason{max-width:28em}
svg.latency-chart{border:1px solid #d0d7de;border-radius:4px;background:#fff}
details{margin:.4em 0}summary{cursor:pointer}
"""


def esc(value: object) -> str:
    """``value`` as text, escaped for HTML text and for quoted attribute values."""
    return html.escape(str(value), quote=True)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _attr_num(value: Any) -> str:
    """A number for a data attribute (``""`` when unknown)."""
    number = _finite(value)
    return "" if number is None else f"{number:g}"


def _ms(seconds: Any) -> str:
    value = _finite(seconds)
    if value is None:
        return "—"
    ms = value * 1000
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms"


def _duration(seconds: Any) -> str:
    value = _finite(seconds)
    if value is None:
        return "—"
    return format_duration(max(0.0, value))


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    return f"{now - then:.0f}s ago"


def _score_class(value: float | None) -> str:
    if value is None:
        return "unknown"
    return "good" if value >= 8 else "fair" if value >= 5 else "poor"


def _score_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _met(value: Any) -> tuple[str, str]:
    """(data-met value, badge) of an SLA's ``met``."""
    if value is True:
        return "true", '<span class="badge pass">met</span>'
    if value is False:
        return "false", '<span class="badge fail">missed</span>'
    return "", '<span class="badge unknown">not measured</span>'


def _id(base: str, index: int) -> str:
    """The id of the ``index``-th target's element (the first's is plain)."""
    return base if index == 0 else f"{base}-{index + 1}"


# --- the sections of one target ----------------------------------------------------------


def _components(report: TargetHealth, index: int) -> str:
    rows = []
    for c in report.score.components:
        if not c.checks:
            continue  # e.g. replication on a lone server: nothing to judge
        kind = _score_class(c.score)
        if c.score is None:
            bar = '<div class="bar"></div>'
            shown, weight = "not measured", "—"
        else:
            fill = "pass" if kind == "good" else "warn" if kind == "fair" else "fail"
            bar = (f'<div class="bar"><span class="fill-{fill}" '
                   f'style="width:{max(0.0, min(c.score, 10.0)) * 10:.1f}%"></span></div>')
            shown, weight = f"{c.score:.1f}", f"{c.weight:.0%}"
        lost = sum(report.score.lost(check) for check in c.checks)
        rows.append(
            f'<tr data-component="{esc(c.name)}" data-score="{_attr_num(c.score)}">'
            f"<td>{esc(c.name)}</td><td>{bar}</td>"
            f'<td class="num score-{kind}">{shown}</td><td class="num">{weight}</td>'
            f'<td class="num">{lost:.2f}</td><td class="num">{len(c.checks)}</td></tr>')
    if not rows:
        rows.append('<tr><td colspan="6" class="muted">no check evaluated yet</td></tr>')
    return (f'<table class="components" id="{_id("components", index)}"><tr>'
            "<th>component</th><th>score</th><th>/ 10</th><th>weight</th>"
            "<th>points lost</th><th>checks</th></tr>" + "".join(rows) + "</table>")


def _slas(slas: Mapping[str, Mapping[str, Any]], index: int) -> str:
    rows = []
    availability = slas.get("availability")
    if availability is not None:
        met, badge = _met(availability.get("met"))
        target = _finite(availability.get("recommended"))
        measured = _finite(availability.get("measured"))
        window = _finite(availability.get("window_seconds"))
        rows.append(
            f'<tr data-sla="availability" data-met="{met}"><td>availability</td>'
            f'<td class="num">{"—" if target is None else f"{target:.2%}"}</td>'
            f'<td class="num">{"—" if measured is None else f"{measured:.3%}"}'
            + (f' <span class="muted">over {_duration(window)}</span>' if window else "")
            + f"</td><td>{badge}</td></tr>")
    for name, label in (("latency_p95", "query latency p95"), ("rpo", "RPO (newest backup)"),
                        ("rto", "RTO (slowest verified restore)")):
        sla = slas.get(name)
        if sla is None:
            continue
        met, badge = _met(sla.get("met"))
        show = _ms if name == "latency_p95" else _duration
        rows.append(
            f'<tr data-sla="{esc(name)}" data-met="{met}"><td>{esc(label)}</td>'
            f'<td class="num">&lt; {show(sla.get("recommended_seconds"))}</td>'
            f'<td class="num">{show(sla.get("measured_seconds"))}</td><td>{badge}</td></tr>')
    return (f'<table class="slas" id="{_id("slas", index)}"><tr><th>service level</th>'
            "<th>target</th><th>measured</th><th></th></tr>" + "".join(rows) + "</table>")


def _backup_bar(age: float | None, warn: float | None, crit: float | None,
                kind: str) -> str:
    scale = max(x for x in (age, warn, crit, 1.0) if x is not None)
    scale = max(scale, (crit or warn or 0.0) * 1.25)
    width = 0.0 if age is None else min(age / scale, 1.0) * 100
    ticks = "".join(f'<i class="{cls}" style="left:{value / scale * 100:.1f}%" '
                    f'title="{name} after {_duration(value)}"></i>'
                    for cls, name, value in (("w", "warning", warn), ("c", "critical", crit))
                    if value is not None)
    return (f'<div class="bar"><span class="fill-{kind}" style="width:{width:.1f}%"></span>'
            f"{ticks}</div>")


def _backups(report: TargetHealth, index: int) -> str:
    rows = []
    for b in report.backups:
        status = str(b.get("status", "unknown"))
        kind = _BACKUP_CLASS.get(status, "unknown")
        age = _finite(b.get("age_seconds"))
        warn = _finite(b.get("warning_after_seconds"))
        crit = _finite(b.get("critical_after_seconds"))
        rows.append(
            f'<tr class="backup {kind}" data-backup="{esc(b.get("name", ""))}" '
            f'data-status="{esc(status)}" data-age-seconds="{_attr_num(age)}">'
            f'<td>{esc(b.get("name", ""))}</td><td>{esc(b.get("type", ""))}</td>'
            f'<td><span class="badge {kind}">{esc(status)}</span></td>'
            f'<td class="num">{"never" if age is None else _duration(age) + " ago"}</td>'
            f"<td>{_backup_bar(age, warn, crit, kind)}</td>"
            f'<td class="num">{_duration(warn)}</td><td class="num">{_duration(crit)}</td>'
            "</tr>")
    if not rows:
        why = next((f.reason for f in report.findings if f.check.id == "backup_freshness"),
                   "no backup reported")
        rows.append(f'<tr><td colspan="7" class="muted">{esc(why)}</td></tr>')
    return (f'<table class="backups" id="{_id("backups", index)}"><tr><th>backup</th>'
            "<th>type</th><th>status</th><th>age</th><th>age vs thresholds</th>"
            "<th>warning after</th><th>critical after</th></tr>" + "".join(rows)
            + "</table>")


def _sla_seconds(report: TargetHealth) -> float | None:
    return _finite(report.slas.get("latency_p95", {}).get("recommended_seconds"))


def _latency_table(report: TargetHealth, index: int) -> str:
    sla = _sla_seconds(report)
    points = report.latency
    latest = points[-1] if points else None
    rows = []
    for name, _ in _SERIES:
        now_value = _finite(getattr(latest, name)) if latest is not None else None
        if now_value is None and name == "p95":
            now_value = _finite(report.slas.get("latency_p95", {}).get("measured_seconds"))
        values = [v for v in (_finite(getattr(p, name)) for p in points) if v is not None]
        worst = max(values) if values else None
        over = now_value is not None and sla is not None and now_value > sla
        mark = "fail" if over and name == "p95" else "warn" if over else ""
        rows.append(
            f'<tr class="{mark}" data-quantile="{name}" data-seconds="{_attr_num(now_value)}">'
            f'<td>{name}</td><td class="num">{_ms(now_value)}</td>'
            f'<td class="num">{_ms(worst)}</td></tr>')
    note = "" if points else ("; no latency measured yet (the statements collector needs "
                              "two polls with traffic between them)")
    return (f'<table class="latency" id="{_id("latency", index)}"><tr><th>quantile</th>'
            f"<th>now</th><th>worst, last hour</th></tr>{''.join(rows)}</table>"
            f'<p class="muted">SLA: p95 &lt; {_ms(sla)}{note}</p>')


def _tick(seconds: float) -> str:
    return f"{seconds:g} s" if seconds >= 1 else f"{seconds * 1000:g} ms"


def latency_chart(points: Sequence[LatencyPoint], sla: float | None, now: float,
                  chart_id: str = "latency-chart", width: int = 640,
                  height: int = 200) -> str:
    """An inline SVG of p50/p95/p99 over the last hour, with the SLA as a dashed line.

    The time axis ends now and spans the history held: the hour, or less while the
    agent has not run that long (at least a minute). The latency axis is logarithmic
    (decades labelled), so a 2 ms p50 and a 100 ms SLA are both readable. Each quantile
    is one ``<path>`` (a gap where a value is missing; an isolated point is a dot, a
    zero-length round-capped segment)."""
    left, right, top, bottom = 56, 78, 12, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    shown = [p for p in points if now - HISTORY_SECONDS <= p.at <= now + 1]
    oldest = min((p.at for p in shown), default=now - HISTORY_SECONDS)
    span = min(HISTORY_SECONDS, max(60.0, now - oldest))
    start = now - span
    values = [v for p in shown for v in (_finite(p.p50), _finite(p.p95), _finite(p.p99))
              if v is not None and v > 0]
    extremes = [*values, *([sla] if sla else [])] or [1e-3, 0.1]
    high = math.ceil(math.log10(max(extremes) * 1.05))
    low = min(math.floor(math.log10(max(min(extremes), 1e-6))), high - 2)

    def x(at: float) -> float:
        return left + (min(max(at, start), now) - start) / span * plot_w

    def y(value: float) -> float:
        level = math.log10(value) if value > 0 else low
        return top + plot_h * (1 - (min(max(level, low), high) - low) / (high - low))

    parts = [f'<svg class="latency-chart" id="{esc(chart_id)}" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="query latency p50, p95 and p99, last {format_duration(span)}" '
             f'data-points="{len(shown)}" data-span-seconds="{span:.0f}">',
             f"<title>query latency p50, p95, p99 over the last {format_duration(span)} "
             "(logarithmic scale)</title>"]
    for decade in range(low, high + 1):  # the grid, a line per decade
        gy = y(10.0 ** decade)
        parts.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{left + plot_w}" y2="{gy:.1f}" '
                     'stroke="#eaeef2" stroke-width="1"/>')
        parts.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="#656d76">{_tick(10.0 ** decade)}</text>')
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        back = span * (1 - fraction)
        label = "now" if back == 0 else f"-{format_duration(back)}"
        parts.append(f'<text x="{x(now - back):.1f}" y="{height - 8}" text-anchor="middle" '
                     f'font-size="11" fill="#656d76">{label}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" '
                 'fill="none" stroke="#d0d7de"/>')
    if sla is not None:
        sy = y(sla)
        parts.append(f'<line class="sla-line" data-sla-seconds="{sla:g}" x1="{left}" '
                     f'y1="{sy:.1f}" x2="{left + plot_w}" y2="{sy:.1f}" stroke="#cf222e" '
                     'stroke-width="1.5" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{left + plot_w + 4}" y="{sy + 4:.1f}" font-size="11" '
                     f'fill="#cf222e">SLA {esc(_ms(sla))}</text>')
    for i, (name, color) in enumerate(_SERIES):
        commands: list[str] = []
        pen_down = False
        count = 0
        for p in shown:
            measured = _finite(getattr(p, name))
            if measured is None:
                pen_down = False
                continue
            px, py = x(p.at), y(measured)
            if pen_down:
                commands.append(f"L{px:.1f},{py:.1f}")
            else:
                commands.append(f"M{px:.1f},{py:.1f}l0,0")
            pen_down = True
            count += 1
        parts.append(f'<path class="series {name}" data-series="{name}" data-points="{count}" '
                     f'd="{" ".join(commands) or "M0,0"}" fill="none" stroke="{color}" '
                     'stroke-width="2" stroke-linejoin="round" stroke-linecap="round"/>')
        ly = top + plot_h - 40 + i * 16  # the legend, right of the plot, near its bottom
        parts.append(f'<line x1="{left + plot_w + 6}" y1="{ly}" x2="{left + plot_w + 22}" '
                     f'y2="{ly}" stroke="{color}" stroke-width="2"/>'
                     f'<text x="{left + plot_w + 26}" y="{ly + 4}" font-size="11" '
                     f'fill="#1f2328">{name}</text>')
    if not shown:
        parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" '
                     'text-anchor="middle" font-size="13" fill="#656d76">no latency '
                     "measured in the last hour</text>")
    parts.append("</svg>")
    return "".join(parts)


def _finding_row(f: Finding, lost: float) -> str:
    c = f.check
    return (f'<tr class="finding {esc(f.status)}" data-check="{esc(c.id)}" '
            f'data-status="{esc(f.status)}" data-severity="{esc(c.severity)}" '
            f'data-points-lost="{lost:g}">'
            f'<td><span class="badge {esc(f.status)}">{esc(f.status)}</span></td>'
            f"<td>{esc(c.severity)}</td>"
            f'<td><strong>{esc(c.title)}</strong><br><code class="muted">{esc(c.id)}</code>'
            f' <span class="muted">· {esc(c.category)} · {esc(c.component)}</span></td>'
            f'<td class="reason">{esc(f.reason)}</td><td class="num">{lost:.2f}</td>'
            f'<td><pre class="remediation">{esc(c.remediation)}</pre></td></tr>')


def _findings(report: TargetHealth, index: int) -> str:
    bad = sorted(report.failing(), key=lambda f: (_STATUS_ORDER[f.status],
                                                  -report.score.lost(f.check.id)))
    head = ("<tr><th>status</th><th>severity</th><th>check</th><th>reason</th>"
            "<th>points lost</th><th>remediation</th></tr>")
    rows = [_finding_row(f, report.score.lost(f.check.id)) for f in bad]
    if not rows:
        rows.append('<tr><td colspan="6" class="muted">no failing or warning check</td></tr>')
    table = (f'<table class="findings" id="{_id("findings", index)}">{head}{"".join(rows)}'
             "</table>")
    others = sorted((f for f in report.findings if f.status in ("unknown", "pass")),
                    key=lambda f: _STATUS_ORDER[f.status])
    if not others:
        return table
    unknown = sum(1 for f in others if f.status == "unknown")
    other_rows = "".join(
        f'<tr class="{esc(f.status)}" data-check="{esc(f.check.id)}" '
        f'data-status="{esc(f.status)}"><td><span class="badge {esc(f.status)}">'
        f"{esc(f.status)}</span></td><td>{esc(f.check.title)}<br>"
        f'<code class="muted">{esc(f.check.id)}</code></td><td>{esc(f.reason)}</td></tr>'
        for f in others)
    return (table + f'<details class="other-checks"><summary>{len(others) - unknown} '
            f"passing, {unknown} not measured</summary><table><tr><th>status</th>"
            f"<th>check</th><th>reason</th></tr>{other_rows}</table></details>")


def target_section(report: TargetHealth, index: int, now: float) -> str:
    """One PostgreSQL target's health, in the order an on-call engineer reads it."""
    value = report.score.value
    kind = _score_class(value)
    up = ('<span class="badge pass">up</span>' if report.up
          else '<span class="badge fail">down</span>')
    version = (f' <span class="muted">PostgreSQL {esc(report.server_version)}</span>'
               if report.server_version else "")
    critical = len(report.critical_failures())
    return (
        f'<section class="target-health" id="target-{index + 1}" '
        f'data-target="{esc(report.target)}" data-score="{_attr_num(value)}" '
        f'data-up="{"true" if report.up else "false"}">'
        f'<div class="target-head"><h2>{esc(report.target)}</h2>'
        f'<span class="target-score mid score-{kind}" id="{_id("target-score", index)}" '
        f'data-score="{_attr_num(value)}">{_score_text(value)}</span>'
        '<span class="muted">/ 10</span>'
        + (f'<span class="badge fail">{critical} critical failure'
           f'{"s" if critical != 1 else ""}</span>' if critical else "")
        + f"{up}{version}</div>"
        "<h3>Components</h3>" + _components(report, index)
        + "<h3>Service levels</h3>" + _slas(report.slas, index)
        + "<h3>Backups</h3>" + _backups(report, index)
        + "<h3>Query latency, last hour</h3>" + _latency_table(report, index)
        + latency_chart(report.latency, _sla_seconds(report), now,
                        chart_id=_id("latency-chart", index))
        + "<h3>Failing and warning checks</h3>" + _findings(report, index)
        + "</section>")


# --- the tables of targets and collectors (the page before the review) ------------------


def targets_table(targets: Sequence[TargetState]) -> str:
    rows = "".join(
        f'<tr class="{"ok" if t.up else "error"}" data-target="{esc(t.name)}" '
        f'data-state="{"up" if t.up else "down"}"><td>{esc(t.name)}</td><td>{esc(t.dsn)}</td>'
        f"<td>{'up' if t.up else 'down'}</td><td>{esc(t.server_version or '?')}</td>"
        f"<td>{esc(t.error.text) if t.error else ''}</td></tr>"
        for t in targets)
    return ('<table id="targets"><tr><th>target</th><th>connection</th><th>state</th>'
            f"<th>server</th><th>last error</th></tr>{rows}</table>")


def collectors_table(samples: Sequence[Sample], now: float) -> str:
    rows = []
    for s in samples:
        status = "ok" if s.ok else ("pending" if s.finished_at is None else "error")
        rows.append(
            f'<tr class="{status}" data-target="{esc(s.target)}" '
            f'data-collector="{esc(s.collector)}" data-status="{status}">'
            f"<td>{esc(s.target)}</td><td>{esc(s.collector)}</td>"
            f"<td>{status}</td><td>{_age(now, s.finished_at)}</td>"
            f"<td>{s.duration * 1000:.1f} ms</td><td>{_age(now, s.last_success_at)}</td>"
            f"<td>{s.interval:g}s</td><td>{esc(s.error.text) if s.error else ''}</td></tr>")
    return ('<table id="collectors"><tr><th>target</th><th>collector</th><th>status</th>'
            "<th>last run</th><th>duration</th><th>last success</th><th>interval</th>"
            f"<th>last error</th></tr>{''.join(rows)}</table>")


def status_page(reports: Sequence[TargetHealth] | None, view: StoreView, now: float,
                version: str = __version__) -> str:
    """The whole page. ``reports`` None: no health evaluated (only the targets and
    collectors are shown)."""
    _, targets, samples = view
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    body = []
    if reports is not None:
        scores = [r.score.value for r in reports if r.score.value is not None]
        worst = min(scores) if scores else None
        critical = sum(len(r.critical_failures()) for r in reports)
        body.append(
            f'<div class="summary" id="health-summary"><span id="score" '
            f'class="big score-{_score_class(worst)}" data-score="{_attr_num(worst)}" '
            f'data-critical-failures="{critical}">{_score_text(worst)}</span>'
            f'<span class="muted">/ 10 health score'
            f'{" (the worst target)" if len(reports) > 1 else ""}</span>'
            f'<span class="badge {"fail" if critical else "pass"}">{critical} critical '
            f'failure{"s" if critical != 1 else ""}</span></div>')
        body.extend(target_section(r, i, now) for i, r in enumerate(reports))
        if not reports:
            body.append('<p class="muted">No PostgreSQL target to review.</p>')
    body.append("<h2>Targets</h2>" + targets_table(targets))
    body.append("<h2>Collectors</h2>" + collectors_table(samples, now))
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>hiw-monitor status</title><style>{_CSS}</style></head><body>\n"
        f"<h1>hiw-monitor {esc(version)}</h1>"
        f'<p class="nav"><a href="/metrics">/metrics</a><a href="/health">/health</a>'
        '<a href="/healthz">/healthz</a><a href="/ready">/ready</a>'
        f'<span class="muted" id="generated" data-generated-at="{now:.3f}">generated '
        f"{generated}, refreshed every {REFRESH_SECONDS}s</span></p>\n"
        + "\n".join(body) + "\n</body></html>\n")
