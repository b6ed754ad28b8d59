"""The status page at ``/`` in a real browser: a real agent on the HiW database, a little
workload for the latency chart, then Debian's chromium, headless, dumps the DOM (asserted
against ``/health``) and takes a screenshot.

``HIW_UPDATE_SCREENSHOTS=1`` also copies the screenshot to docs/images/status-page.png
(the one the docs show)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import HIW_DB, MONITOR_PASSWORD
from helpers import http_get, running_agent, wait_for
from tools import require

from hiw_monitor.config import Overrides, load
from hiw_monitor.review.checks import BY_ID
from hiw_monitor.scheduler import Agent

pytestmark = pytest.mark.integration
PG_VERSIONS = ("pg15",)  # the page does not depend on the server's version
SCREENSHOT = Path(__file__).parents[2] / "docs" / "images" / "status-page.png"
WINDOW = (1280, 1600)
UPDATE = os.environ.get("HIW_UPDATE_SCREENSHOTS") == "1"
BROWSER_TIMEOUT = 120  # a hang guard: a loaded machine starts chromium slowly, not never


@contextlib.contextmanager
def serving(config) -> Iterator[tuple[Agent, str]]:
    """The agent as ``hiw-monitor run`` wires it (cli.serve_agent): health included."""
    with running_agent(config) as run:
        yield run.agent, run.url


@contextlib.contextmanager
def workload(pg) -> Iterator[None]:
    """Queries on the HiW tables, a few a second, until the block ends (the statements
    collector turns them into p50/p95/p99 between its polls)."""
    stop = threading.Event()

    def run() -> None:
        with pg.admin() as conn:
            conn.autocommit = True
            round_ = 0
            while not stop.is_set():
                round_ += 1
                conn.execute("SELECT count(*) FROM classrooms")
                conn.execute("SELECT count(*) FROM student_sessions WHERE is_active")
                conn.execute("SELECT pg_sleep(%s)", [0.002 if round_ % 10 else 0.03])
                stop.wait(0.05)

    thread = threading.Thread(target=run, name="status-page-workload", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def chromium(tmp: Path, *args: str) -> str:
    """Run headless chromium once (a fresh profile, nothing fetched but the page) and
    return its stdout. Its stderr is noise (D-Bus, GPU) unless it fails. On a hang the
    whole process group it started is killed, by its id."""
    binary = require("chromium")
    profile = Path(tmp) / f"chromium-profile-{len(list(Path(tmp).glob('chromium-*')))}"
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-extensions", "--hide-scrollbars",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own group: renderer, zygote, gpu
        process.communicate(timeout=30)
        raise AssertionError(f"chromium did not finish in {BROWSER_TIMEOUT}s: "
                             f"{' '.join(command)}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # helpers left behind, if any
    assert process.returncode == 0, f"chromium exited {process.returncode}: {err[-3000:]}"
    return out


@dataclass(eq=False)
class Node:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)
    descendants: list[Node] = field(default_factory=list)

    def string(self) -> str:
        return " ".join("".join(self.text).split())


def matches(node: Node, attrs: dict[str, str]) -> bool:
    """``attrs`` with ``class_`` matching one of the node's classes, ``data_x`` data-x."""
    for key, value in attrs.items():
        name = key.rstrip("_").replace("_", "-")
        if name == "class":
            if value not in node.attrs.get("class", "").split():
                return False
        elif node.attrs.get(name) != value:
            return False
    return True


class Dom(HTMLParser):
    """The elements of chromium's serialized DOM, each with its text and descendants."""

    VOID = frozenset({"meta", "br", "link", "img", "input", "hr", "wbr", "col", "area",
                      "base", "source"})

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.nodes: list[Node] = []
        self.open: list[Node] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.nodes.append(node)
        for outer in self.open:
            outer.descendants.append(node)
        if tag not in self.VOID:
            self.open.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.open.pop()

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.open) - 1, -1, -1):
            if self.open[index].tag == tag:
                del self.open[index:]
                return

    def handle_data(self, data: str) -> None:
        for node in self.open:
            node.text.append(data)

    def where(self, **attrs: str) -> list[Node]:
        return [n for n in self.nodes if matches(n, attrs)]

    def one(self, **attrs: str) -> Node:
        found = self.where(**attrs)
        assert len(found) == 1, (attrs, len(found))
        return found[0]


def inside(outer: Node, **attrs: str) -> list[Node]:
    return [n for n in outer.descendants if matches(n, attrs)]


def health(url: str) -> dict[str, Any]:
    reply = http_get(url + "/health")
    assert reply.status == 200
    document: dict[str, Any] = json.loads(reply.body)
    return document


def ready(url: str, points: int) -> bool:
    """A score, the review's own findings (rls_enabled measured), backups and ``points``
    latency points in the chart's history."""
    targets = health(url)["targets"]
    if not targets:
        return False
    t = targets[0]
    checks = {c["id"]: c["status"] for c in t["checks"]}
    return (t["score"] is not None and checks.get("rls_enabled") not in (None, "unknown")
            and bool(t["backups"]) and len(t["latency_history"]) >= points)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_status_page_in_a_real_browser(pg, tmp_path, monkeypatch):
    monkeypatch.setenv("HIW_TEST_PG_PASSWORD", MONITOR_PASSWORD)
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump({
        "targets": [{"name": "hiw", "dsn": pg.cluster.dsn(HIW_DB, user="hiw_monitor"),
                     "password_env": "HIW_TEST_PG_PASSWORD"}],
        "collectors": {"statements": {"interval": "1s"}, "connections": {"interval": "2s"}},
    }))
    config = load(Overrides(config=str(config_file)), environ={})
    require("chromium")  # before the agent: skip (or, in CI, fail) at once without it
    with workload(pg), serving(config) as (_, url):
        points = 45 if UPDATE else 3  # the docs' picture: a line across the chart's minute
        wait_for(lambda: ready(url, points), timeout=300, every=0.5,
                 what=f"/health with a score, the review's findings, backups and {points} "
                      "latency points")

        # the DOM chromium built from the page, and /health on either side of it
        for _ in range(5):
            before = health(url)
            dump = chromium(tmp_path, "--dump-dom", url + "/")
            dom = Dom(dump)
            after = health(url)
            page_score = dom.one(id="score").attrs["data-score"]
            if float(page_score) in (before["score"], after["score"]):
                break
        else:
            raise AssertionError(f"the page's score {page_score} is neither /health's "
                                 f"{before['score']} nor {after['score']}")
        report = after["targets"][0]

        # per target: the score and its components
        section = dom.where(class_="target-health")
        assert [s.attrs["data-target"] for s in section] == ["hiw"]
        assert float(dom.one(id="target-score").attrs["data-score"]) in (
            before["targets"][0]["score"], report["score"])
        components = {n.attrs["data-component"] for n in dom.nodes
                      if "data-component" in n.attrs}
        assert components == {c["name"] for c in report["components"]}
        assert {"security", "backups", "latency"} <= components

        # backups, with their age against the thresholds
        rows = {n.attrs["data-backup"]: n for n in dom.where(class_="backup")}
        assert set(rows) == {b["name"] for b in report["backups"]}
        for b in report["backups"]:
            assert rows[b["name"]].attrs["data-status"] == b["status"]
        assert all(inside(row, class_="bar") for row in rows.values())

        # the latency table and the chart of the last hour, with the SLA line
        quantiles = {n.attrs["data-quantile"] for n in dom.nodes if "data-quantile" in n.attrs}
        assert quantiles == {"p50", "p95", "p99"}
        chart = dom.one(id="latency-chart")
        assert chart.tag == "svg"
        assert int(chart.attrs["data-points"]) >= 3
        series = {n.attrs["data-series"]: n for n in dom.where(class_="series")}
        assert set(series) == {"p50", "p95", "p99"}
        for path in series.values():
            assert path.tag == "path"
            assert int(path.attrs["data-points"]) >= 3
            assert "L" in path.attrs["d"]  # a line, not lone dots
        sla = dom.one(class_="sla-line")
        assert float(sla.attrs["data-sla-seconds"]) == \
            report["slas"]["latency_p95"]["recommended_seconds"]

        # the failing check the demo plants, with its reason and remediation
        rls = dom.where(class_="finding", data_check="rls_enabled")
        assert len(rls) == 1
        assert rls[0].attrs["data-status"] == "fail"
        assert rls[0].attrs["data-severity"] == "critical"
        reason = next(c["reason"] for c in report["checks"] if c["id"] == "rls_enabled")
        assert " ".join(reason.split()) in rls[0].string()
        remediation = inside(rls[0], class_="remediation")
        assert remediation[0].tag == "pre"
        assert remediation[0].string() == " ".join(BY_ID["rls_enabled"].remediation.split())
        failing = {c["id"] for c in after["targets"][0]["checks"]
                   if c["status"] in ("fail", "warn")}
        shown = {n.attrs["data-check"] for n in dom.where(class_="finding")}
        assert shown <= failing | {c["id"] for c in before["targets"][0]["checks"]
                                   if c["status"] in ("fail", "warn")}

        # then the targets and the collectors, as before the review
        targets = dom.one(id="targets")
        assert inside(targets, data_target="hiw", data_state="up")
        assert "user=hiw_monitor" in targets.string()
        assert MONITOR_PASSWORD not in dump
        collectors = {n.attrs["data-collector"] for n in dom.one(id="collectors").descendants
                      if "data-collector" in n.attrs}
        assert {"statements", "review", "backups", "connections"} <= collectors
        assert not [n for n in dom.nodes if n.tag in ("script", "img", "link", "iframe")]

        # a screenshot, as an on-call engineer sees it
        shot = tmp_path / "status-page.png"
        chromium(tmp_path, f"--screenshot={shot}",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", url + "/")
    data = shot.read_bytes()
    assert png_size(data) == WINDOW
    assert len(data) > 30_000  # a rendered page, not a blank one
    if UPDATE:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
