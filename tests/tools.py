"""Locating the real Prometheus-ecosystem binaries the rule tests need, and running a
real Prometheus against the agent.

Under CI=true a missing binary is a failure (CI installs them); elsewhere the test skips
with the command that installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

IN_CI = os.environ.get("CI", "").lower() == "true"
DEBIAN_PACKAGE = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "curl": "curl",
    "openssl": "openssl",
}


def require(binary: str) -> str:
    found = shutil.which(binary)
    if found:
        return found
    message = f"{binary} not found; apt-get install {DEBIAN_PACKAGE.get(binary, binary)}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError  # unreachable: skip raises


# --- a real Prometheus for the end-to-end tests ---------------------------------------------

RULES = Path(__file__).parents[1] / "alerts" / "hiw_monitor.rules.yml"


def fast_rules(tmp: Path) -> Path:
    """The bundled rules with every ``for:`` shortened to 1 s and groups evaluated every
    second, written under ``tmp``."""
    text = re.sub(r"^(\s+)for: \S+$", r"\1for: 1s", RULES.read_text(), flags=re.MULTILINE)
    path = tmp / "rules.yml"
    path.write_text(text.replace("interval: 30s", "interval: 1s"))
    return path


@contextlib.contextmanager
def prometheus(tmp: Path, agent_url: str,
               scrape_configs: list[dict[str, Any]] | None = None) -> Iterator[str]:
    """A real Prometheus scraping the agent every second with :func:`fast_rules` (or with
    ``scrape_configs`` of the caller's); yields its URL and stops it (by its PID)
    afterwards."""
    from hiw_monitor.demo.cluster import free_port

    binary = require("prometheus")
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(fast_rules(tmp))],
        "scrape_configs": scrape_configs or [{"job_name": "hiw-monitor", "static_configs": [
            {"targets": [agent_url.removeprefix("http://")]}]}],
    }))
    with (tmp / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def promql(url: str, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query ([] while Prometheus is not answering yet)."""
    from helpers import http_get

    try:
        reply = http_get(f"{url}/api/v1/query?query={urllib.parse.quote(expr)}")
        body = json.loads(reply.body)
    except (OSError, ValueError):  # not listening yet, or 503 while starting
        return []
    return body["data"]["result"] if body.get("status") == "success" else []
