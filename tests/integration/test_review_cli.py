"""`hiw-monitor review` as a cron or CI job runs it: the DBA review as Markdown, JSON or
HTML on the demo database, and the exit code it gates on (0, 4 critical, 1 unreachable,
2 usage)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
from html.parser import HTMLParser

import pytest
from conftest import HIW_DB, MONITOR_PASSWORD
from test_cli import assert_one_line_error, hiw

from hiw_monitor.demo.cluster import free_port

pytestmark = pytest.mark.integration
MONITOR = {"PGPASSWORD": MONITOR_PASSWORD}
HOSTILE = "hiw<script>alert(1)</script>"


def review(pg, *args: str, dbname: str = HIW_DB, traffic: bool = False,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``review --dsn`` as the monitoring role; with ``traffic``, the application's
    queries run (as another role) until it exits, so the latency window sees calls.
    ``timeout`` is a hang guard."""
    cmd = [sys.executable, "-m", "hiw_monitor", "review", "--dsn", pg.monitor_dsn(dbname),
           *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **MONITOR})
    done = threading.Event()

    def app() -> None:
        with pg.admin(HIW_DB) as conn:
            while not done.is_set():
                conn.execute("SELECT count(*) FROM classrooms WHERE is_active")
                done.wait(0.05)

    worker = threading.Thread(target=app, daemon=True) if traffic else None
    if worker is not None:
        worker.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if worker is not None:
            worker.join(timeout=30)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def section(text: str, heading: str) -> str:
    """The body of the Markdown section ``## heading``, up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {heading!r} in:\n{text}"
    return match.group(1)


def test_markdown_review_of_the_demo_database_lists_the_planted_failures_and_exits_4(pg):
    result = review(pg, "--target-name", "hiw", "--window", "3", traffic=True)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    text = result.stdout
    headings = re.findall(r"^##? (.+)$", text, re.M)
    assert headings[:2] == ["PostgreSQL DBA Review: hiw", "Summary"]
    assert [h for h in headings if h.endswith("Priority Issues")] == [
        "Critical Priority Issues", "High Priority Issues", "Medium Priority Issues",
        "Low Priority Issues"]
    assert headings[-4:-1] == ["Checks That Pass", "Not Measured",
                               "SLAs: measured vs recommended"]
    assert headings[-1].startswith("Database Health Score: ")
    order = ["Summary", "Critical Priority Issues", "Low Priority Issues", "Checks That Pass"]
    assert [headings.index(h) for h in order] == sorted(headings.index(h) for h in order)
    score = re.search(r"^## Database Health Score: (\d+\.\d)/10$", text, re.M)
    assert score, text
    assert f"**Health score: {score.group(1)}/10**" in section(text, "Summary")
    assert 0 < float(score.group(1)) < 10

    # the failures the demo schema plants, under their severity, with the remediation
    critical = section(text, "Critical Priority Issues")
    assert "### FAIL: Row-level security on sensitive tables (`rls_enabled`)" in critical
    assert "public.classrooms" in critical
    assert "(`retention_overdue`)" in critical
    assert "ENABLE ROW LEVEL SECURITY" in critical
    high = section(text, "High Priority Issues")
    assert "### FAIL: The review's partial and composite indexes exist and are valid " \
        "(`expected_indexes`)" in high
    assert "```\nCREATE INDEX CONCURRENTLY" in high
    assert "(`availability`, critical)" in section(text, "Checks That Pass")
    # the window measured the latency SLA (the application's calls between two polls)
    slas = section(text, "SLAs: measured vs recommended")
    latency = re.search(r"^\| Query response time \(95th percentile\) \| < 100 ms \| "
                        r"([\d.]+) ms \| (yes|NO) \|$", slas, re.M)
    assert latency, slas
    assert "| Database availability | 99.95 % | " in slas
    assert "| Backup RPO | < 24 h | " in slas
    assert "| Backup RTO | < 2 h | " in slas
    assert "(`rls_enabled`) | critical | fail |" in section(
        text, f"Database Health Score: {score.group(1)}/10")
    assert "hiw-monitor: critical checks failing: " in result.stderr
    assert "hiw: rls_enabled" in result.stderr


def test_json_review_is_the_health_document(pg):
    result = review(pg, "--target-name", "hiw", "--format", "json", "--window", "0")
    assert result.returncode == 4, result.stderr
    doc = json.loads(result.stdout)
    assert isinstance(doc["score"], float)
    assert 0 < doc["score"] < 10
    assert doc["critical_failures"] >= 2
    (target,) = doc["targets"]
    assert target["target"] == "hiw"
    assert target["up"] is True
    checks = {c["id"]: c for c in target["checks"]}
    assert checks["rls_enabled"]["status"] == "fail"
    assert checks["retention_overdue"]["status"] == "fail"
    assert checks["expected_indexes"]["status"] == "fail"
    # --window 0: one poll of pg_stat_statements, so the latency is not measured
    assert checks["latency_sla"]["status"] == "unknown"
    assert target["slas"]["latency_p95"]["met"] is None
    assert {"availability", "latency_p95", "rpo", "rto"} == set(target["slas"])


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_review_to_a_file_parses_and_escapes(pg, tmp_path):
    out = tmp_path / "review.html"
    result = review(pg, "--target-name", HOSTILE, "--format", "html", "--window", "0",
                    "--output", str(out))
    assert result.returncode == 4, result.stderr
    assert result.stdout == ""
    page = out.read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    assert "script" not in parsed.tags
    assert {"html", "style", "h1", "h2", "table", "pre"} <= set(parsed.tags)
    text = "".join(parsed.text)
    assert f"PostgreSQL DBA Review: {HOSTILE}" in text  # shown, not run
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Row-level security on sensitive tables" in text
    assert not list(tmp_path.glob(".review.html.*"))  # no temporary file left


def test_a_database_where_no_critical_check_fails_exits_0(pg, tmp_path):
    """A fresh empty database: the HiW-specific checks are not measured there. Whatever
    critical check still fails is turned off (collectors.review.disabled_checks): then
    nothing critical fails and the gate opens."""
    dbname = f"review_empty_{secrets.token_hex(4)}"
    with pg.admin("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    try:
        first = review(pg, "--format", "json", "--window", "0", dbname=dbname)
        doc = json.loads(first.stdout)
        checks = {c["id"]: c for c in doc["targets"][0]["checks"]}
        for hiw_only in ("rls_enabled", "retention_overdue", "student_pii_columns"):
            assert checks[hiw_only]["status"] == "unknown", checks[hiw_only]
        failing = sorted(i for i, c in checks.items()
                         if c["severity"] == "critical" and c["status"] == "fail")
        assert doc["critical_failures"] == len(failing)
        assert first.returncode == (4 if failing else 0), first.stderr

        config = tmp_path / "review.yaml"
        config.write_text("collectors:\n  review:\n    disabled_checks: ["
                          + ", ".join(failing) + "]\n", encoding="utf-8")
        second = review(pg, "--config", str(config), "--window", "0", dbname=dbname)
        assert second.returncode == 0, second.stderr + second.stdout
        assert "## Critical Priority Issues\n\nNone.\n" in second.stdout
        for check in failing:
            assert f"`{check}`" not in second.stdout
        assert "critical checks failing" not in second.stderr
    finally:
        with pg.admin("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def test_review_of_an_unreachable_target_prints_the_report_and_exits_1():
    port = free_port()
    result = hiw("review", "--dsn",
                 f"postgresql://hiw_monitor:hunter2secret@127.0.0.1:{port}/x")
    assert result.returncode == 1, result.stderr
    assert f"# PostgreSQL DBA Review: 127.0.0.1:{port}/x" in result.stdout
    assert "the target is **UNREACHABLE**" in result.stdout
    assert "(`availability`)" in section(result.stdout, "Critical Priority Issues")
    assert f"hiw-monitor: unreachable: 127.0.0.1:{port}/x" in result.stderr
    assert "hunter2secret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_review_usage_errors_exit_2(tmp_path):
    for bad in (["--format", "pdf"], ["--window", "-1"], ["--bogus"]):
        result = hiw("review", "--dsn", "postgresql://u@127.0.0.1:1/x", *bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    assert_one_line_error(hiw("review", env={"HIW_MONITOR_DSN": "", "HIW_MONITOR_CONFIG": ""}),
                          "targets", "--dsn")
    assert_one_line_error(hiw("review", "--dsn", "postgresql://u@127.0.0.1:1/x", "--output",
                              str(tmp_path / "missing" / "review.md")),
                          "--output", "no directory")
