"""TLS and basic auth from an exporter-toolkit web config file, with real TLS clients."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import ssl
import subprocess
import sys

import bcrypt
import pytest
from conftest import MONITOR_PASSWORD
from helpers import wait_for
from tools import require

from hiw_monitor.demo.cluster import free_port

pytestmark = pytest.mark.integration
USER, PASSWORD = "prometheus", "scrape-secret-7f3a"


@pytest.fixture(scope="module")
def web_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    subprocess.run([require("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(tmp / "tls.key"), "-out", str(tmp / "tls.crt"),
                    "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    (tmp / "web.yml").write_text(
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        "  min_version: TLS12\n"
        f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    return tmp


@pytest.fixture
def secured_agent(pg, web_files):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiw_monitor", "run", "--dsn", pg.monitor_dsn(),
         "--listen", f"127.0.0.1:{port}", "--web.config.file", str(web_files / "web.yml")],
        env={**os.environ, "PGPASSWORD": MONITOR_PASSWORD},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    context = ssl.create_default_context(cafile=str(web_files / "tls.crt"))

    def request(path: str, auth: tuple[str, str] | None = None, tls: bool = True):
        conn = (http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
                if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
        headers = {}
        if auth:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def up() -> bool:
        try:
            return request("/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=30, what="TLS /healthz")
        yield request, port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_tls_and_basic_auth(secured_agent):
    request, _, _ = secured_agent
    assert request("/metrics")[0] == 401
    assert request("/metrics", (USER, "wrong"))[0] == 401
    assert request("/metrics", ("mallory", PASSWORD))[0] == 401
    assert request("/metrics", (USER, PASSWORD + "x" * 100))[0] == 401  # > 72 bytes: no 500
    assert request("/metrics", ("mallory", "x" * 100))[0] == 401
    status, body = request("/metrics", (USER, PASSWORD))
    assert status == 200
    assert b"hiw_up{" in body
    assert request("/", (USER, PASSWORD))[0] == 200
    assert request("/ready")[0] == 401
    assert request("/healthz")[0] == 200  # open for probes by default
    with pytest.raises((OSError, http.client.HTTPException)):
        request("/healthz", tls=False)  # plain HTTP to the TLS port is refused


def test_curl_speaks_to_it(secured_agent, web_files):
    _, port, _ = secured_agent
    curl = require("curl")
    base = [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
            str(web_files / "tls.crt")]
    good = subprocess.run([*base, "-u", f"{USER}:{PASSWORD}",
                           f"https://127.0.0.1:{port}/metrics"], capture_output=True,
                          text=True, timeout=30, check=False)
    bad = subprocess.run([*base, "-u", f"{USER}:nope", f"https://127.0.0.1:{port}/metrics"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert (good.stdout, bad.stdout) == ("200", "401")


def test_bad_web_config_is_a_usage_error(tmp_path, web_files):
    broken = tmp_path / "web.yml"
    broken.write_text("basic_auth_users:\n  prometheus: plaintext-password\n")
    result = subprocess.run([sys.executable, "-m", "hiw_monitor", "run", "--dsn",
                             "host=127.0.0.1 dbname=x", "--web.config.file", str(broken)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "basic_auth_users.prometheus" in result.stderr
    assert "bcrypt" in result.stderr
    assert "plaintext-password" not in result.stderr
    assert "Traceback" not in result.stderr
