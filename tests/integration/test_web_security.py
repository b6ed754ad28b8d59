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
from hiw_monitor.errors import ConfigError
from hiw_monitor.exposition import Exposition
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.web import App, serve
from hiw_monitor.webconfig import load_web_config

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


# --- client certificates: client_allowed_sans (mutual TLS) -------------------------------


def _openssl(*args: str) -> None:
    subprocess.run([require("openssl"), *args], check=True, capture_output=True, timeout=60)


def _signed(tmp, ca, name: str, san: str) -> None:
    """A key and a certificate for ``name`` with subjectAltName ``san``, signed by ``ca``."""
    (tmp / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(tmp / f"{name}.key"), "-out", str(tmp / f"{name}.csr"),
             "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(tmp / f"{name}.csr"), "-CA", str(ca / "ca.crt"),
             "-CAkey", str(ca / "ca.key"), "-CAcreateserial", "-days", "2",
             "-out", str(tmp / f"{name}.crt"), "-extfile", str(tmp / f"{name}.ext"))


@pytest.fixture(scope="module")
def mtls_files(tmp_path_factory):
    """A CA, a server certificate and client certificates with various SANs, all real."""
    tmp = tmp_path_factory.mktemp("mtls")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(tmp / "ca.key"), "-out", str(tmp / "ca.crt"),
             "-days", "2", "-subj", "/CN=hiw-test-ca")
    _signed(tmp, tmp, "server", "IP:127.0.0.1")
    _signed(tmp, tmp, "allowed_dns", "DNS:prometheus.internal,DNS:other.internal")
    _signed(tmp, tmp, "allowed_uri", "URI:spiffe://hiw/prometheus")
    _signed(tmp, tmp, "allowed_ip", "IP:10.0.0.5")
    _signed(tmp, tmp, "intruder", "DNS:mallory.internal,email:prometheus.internal@x")
    rogue = tmp / "rogue"
    rogue.mkdir()
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(rogue / "ca.key"), "-out", str(rogue / "ca.crt"),
             "-days", "2", "-subj", "/CN=rogue-ca")
    _signed(tmp, rogue, "rogue", "DNS:prometheus.internal")  # right SAN, wrong CA
    return tmp


def _mtls_web_config(tmp, extra: str) -> str:
    path = tmp / "mtls-web.yml"
    path.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                    "  client_ca_file: ca.crt\n" + extra)
    return str(path)


@pytest.fixture
def mtls_server(mtls_files):
    config = load_web_config(_mtls_web_config(
        mtls_files, "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_allowed_sans: [prometheus.internal, 'spiffe://hiw/prometheus', 10.0.0.5]\n"))
    store = SnapshotStore()
    server, thread = serve(App(store, Exposition(store), web=config), "127.0.0.1", 0)
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _get(port: int, files, client: str | None) -> int:
    context = ssl.create_default_context(cafile=str(files / "ca.crt"))
    if client:
        context.load_cert_chain(files / f"{client}.crt", files / f"{client}.key")
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("client", ["allowed_dns", "allowed_uri", "allowed_ip"])
def test_client_with_an_allowed_san_is_served(mtls_server, mtls_files, client):
    assert _get(mtls_server, mtls_files, client) == 200


@pytest.mark.parametrize("client", ["intruder", "rogue", None])
def test_client_without_an_allowed_san_is_refused(mtls_server, mtls_files, client):
    with pytest.raises((OSError, http.client.HTTPException)):
        _get(mtls_server, mtls_files, client)
    assert _get(mtls_server, mtls_files, "allowed_dns") == 200  # the server is fine


@pytest.mark.parametrize(("extra", "problem"), [
    ("  client_auth_type: RequestClientCert\n  client_allowed_sans: [a]\n",
     "RequireAndVerifyClientCert"),
    ("  client_auth_type: VerifyClientCertIfGiven\n  client_allowed_sans: [a]\n",
     "RequireAndVerifyClientCert"),
    ("  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: []\n",
     "is empty"),
    ("  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: a\n",
     "list of subject alternative names"),
], ids=["request-cert", "verify-if-given", "empty", "not-a-list"])
def test_allowed_sans_that_cannot_be_enforced_are_config_errors(mtls_files, extra, problem):
    with pytest.raises(ConfigError) as info:
        load_web_config(_mtls_web_config(mtls_files, extra))
    assert "tls_server_config.client_allowed_sans" in info.value.path
    assert problem in info.value.problem
    assert info.value.fix


def test_cli_refuses_allowed_sans_without_verified_certs(mtls_files):
    path = _mtls_web_config(mtls_files, "  client_auth_type: RequireAnyClientCert\n"
                            "  client_allowed_sans: [prometheus.internal]\n")
    result = subprocess.run([sys.executable, "-m", "hiw_monitor", "run", "--dsn",
                             "host=127.0.0.1 dbname=x", "--web.config.file", path],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "client_allowed_sans" in result.stderr
    assert "RequireAndVerifyClientCert" in result.stderr
    assert "Traceback" not in result.stderr
