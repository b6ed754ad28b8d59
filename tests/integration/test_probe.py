"""GET /probe?target=NAME on a running agent: one target's series, from the same cache as
/metrics (issue 14 item 6). Two targets, ``a`` and ``b``, are two names for the HiW
database on the same real PostgreSQL."""

from __future__ import annotations

import gzip
import subprocess

import pytest
import yaml
from conftest import HIW_DB, MONITOR_PASSWORD
from helpers import http_get, running_agent, sample, samples, wait_for
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from tools import prometheus, promql, require

from hiw_monitor.config import Overrides, load

pytestmark = pytest.mark.integration

OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


def two_targets(server, tmp_path):
    dsn = server.cluster.dsn(HIW_DB, user="hiw_monitor", password=MONITOR_PASSWORD)
    path = tmp_path / "two-targets.yaml"
    path.write_text(yaml.safe_dump({"targets": [{"name": "a", "dsn": dsn},
                                                {"name": "b", "dsn": dsn}]}))
    return load(Overrides(config=str(path)), environ={})


def targets_of(text: str) -> set[str | None]:
    return {dict(labels).get("target") for (_, labels) in samples(text)}


def series_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def promtool_accepts(body: bytes) -> None:
    result = subprocess.run([require("promtool"), "check", "metrics"], input=body,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_probe_serves_one_targets_series_and_metrics_both(pg, tmp_path):
    with running_agent(two_targets(pg, tmp_path)) as run:
        def collected() -> bool:
            text = run.metrics()
            return all(sample(text, "hiw_collector_up", target=t, collector=c) == 1
                       for t in ("a", "b") for c in ("connections", "database"))

        wait_for(collected, what="connections and database collected for a and b")
        everything = http_get(run.url + "/metrics")
        assert everything.status == 200
        assert targets_of(everything.text) >= {"a", "b"}
        promtool_accepts(everything.body)

        for name, other in (("a", "b"), ("b", "a")):
            probe = http_get(f"{run.url}/probe?target={name}")
            assert probe.status == 200
            assert probe.headers["Content-Type"].startswith("text/plain")
            assert targets_of(probe.text) == {name}
            assert f'target="{other}"' not in probe.text
            assert sample(probe.text, "hiw_up", target=name) == 1
            assert sample(probe.text, "hiw_collector_up", target=name,
                          collector="connections") == 1
            assert sample(probe.text, "hiw_database_size_bytes", target=name,
                          datname=HIW_DB) > 0
            assert sample(probe.text, "hiw_target_series", target=name) == \
                series_lines(probe.text)
            promtool_accepts(probe.body)

        # OpenMetrics and gzip, as Prometheus asks
        zipped = http_get(run.url + "/probe?target=a",
                          {**OPENMETRICS, "Accept-Encoding": "gzip"})
        assert zipped.status == 200
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert zipped.headers["Content-Type"].startswith("application/openmetrics-text")
        body = gzip.decompress(zipped.body).decode()
        assert body.endswith("# EOF\n")
        families = {f.name: f for f in parse_openmetrics(body)}
        assert {s.labels["target"] for f in families.values() for s in f.samples} == {"a"}
        assert families["hiw_collector_runs"].type == "counter"

        for path in ("/metrics", "/probe?target=b"):
            plain = http_get(run.url + path, OPENMETRICS)
            zipped = http_get(run.url + path, {**OPENMETRICS, "Accept-Encoding": "gzip"})
            assert zipped.headers["Content-Encoding"] == "gzip"
            text = gzip.decompress(zipped.body).decode()
            assert {f.name for f in parse_openmetrics(text)} == \
                {f.name for f in parse_openmetrics(plain.text)}
            # curl decompresses it as a client of its own does
            curl = subprocess.run(
                [require("curl"), "--silent", "--show-error", "--fail", "--compressed",
                 "--max-time", "60", "-H", f"Accept: {OPENMETRICS['Accept']}",
                 run.url + path],
                capture_output=True, timeout=90, check=False)
            assert curl.returncode == 0, curl.stderr
            assert {f.name for f in parse_openmetrics(curl.stdout.decode())} == \
                {f.name for f in parse_openmetrics(plain.text)}


def test_probe_refuses_a_missing_or_unknown_target(pg, tmp_path):
    with running_agent(two_targets(pg, tmp_path)) as run:
        missing = http_get(run.url + "/probe")
        assert missing.status == 400
        assert missing.text.count("\n") == 1
        assert http_get(run.url + "/probe?target=").status == 400
        unknown = http_get(run.url + "/probe?target=c")
        assert unknown.status == 404
        assert unknown.text == "no such target\n"  # neither the name nor the targets
        assert http_get(run.url + "/probe?target=a").status == 200


def test_prometheus_scrapes_probe_and_metrics_gzipped(pg, tmp_path):
    """A real Prometheus (Go's compress/gzip reads the assembled gzip body; it asks for
    OpenMetrics) scrapes /metrics and /probe?target=a: every scrape is up, and the probe
    job gets a's series only, as many as hiw_target_series says."""
    with running_agent(two_targets(pg, tmp_path)) as run:
        wait_for(lambda: sample(run.metrics(), "hiw_collector_up", target="a",
                                collector="database") == 1, what="a's database collected")
        agent = run.url.removeprefix("http://")
        jobs = [{"job_name": "metrics", "static_configs": [{"targets": [agent]}]},
                {"job_name": "probe", "metrics_path": "/probe", "params": {"target": ["a"]},
                 "static_configs": [{"targets": [agent]}]}]
        with prometheus(tmp_path, run.url, jobs) as url:

            def scraped() -> bool:
                up = {r["metric"]["job"]: r["value"][1] for r in promql(url, "up")}
                series = promql(url, 'hiw_target_series{job="probe"}')
                return up == {"metrics": "1", "probe": "1"} and bool(series)

            wait_for(scraped, what="both jobs scraped")
            probed = {r["metric"].get("target") for r in promql(url, '{job="probe"}')
                      if not r["metric"]["__name__"].startswith("scrape_")
                      and r["metric"]["__name__"] != "up"}
            assert probed == {"a"}
            everything = {r["metric"].get("target") for r in promql(url, "hiw_up")}
            assert everything == {"a", "b"}

            def counted() -> bool:  # one scrape's count against what that scrape said
                samples_scraped = promql(url, 'scrape_samples_scraped{job="probe"}')
                series = promql(url, 'hiw_target_series{job="probe"}')
                return bool(samples_scraped) and bool(series) and \
                    samples_scraped[0]["value"][1] == series[0]["value"][1]

            wait_for(counted, what="scrape_samples_scraped == hiw_target_series")
        assert "gzip" not in (tmp_path / "prometheus.log").read_text().lower()
