"""A known password goes through every command and failure path; it must never appear
in logs, /metrics, the landing page, /ready or error messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import HIW_DB
from helpers import http_get, wait_for

from hiw_monitor.demo.cluster import free_port

pytestmark = pytest.mark.integration
CANARY = "Canary-S3cret-9f2e"
WRONG = "Wrong-Canary-77aa"


@pytest.fixture
def canary_role(pg):
    with pg.admin() as admin:
        admin.execute("DROP ROLE IF EXISTS canary_monitor")
        admin.execute(f"CREATE ROLE canary_monitor LOGIN PASSWORD '{CANARY}'")
        admin.execute("GRANT pg_monitor TO canary_monitor")
    return pg


def hiw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hiw_monitor", *args], capture_output=True,
                          text=True, timeout=90, env={**os.environ, **(env or {})}, check=False)


def clean(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text
        assert WRONG not in text


def test_one_shot_paths_never_print_the_password(canary_role, tmp_path):
    port = canary_role.cluster.port
    good = f"postgresql://canary_monitor:{CANARY}@127.0.0.1:{port}/{HIW_DB}"
    wrong = f"postgresql://canary_monitor:{WRONG}@127.0.0.1:{port}/{HIW_DB}"
    dead = f"postgresql://canary_monitor:{CANARY}@127.0.0.1:{free_port()}/{HIW_DB}"
    results = [
        hiw("once", "--dsn", good),
        hiw("once", "--dsn", wrong),
        hiw("once", "--dsn", dead),
        hiw("once", env={"HIW_MONITOR_DSN": good}),
        hiw("once", "--dsn", f"host=127.0.0.1 password={CANARY} port=notaport"),
        hiw("once", "--dsn", f"postgresql://x:{CANARY}@[bad"),
        hiw("run", "--dsn", good, "--listen", "127.0.0.1:http"),
    ]
    inline = tmp_path / "inline.yaml"
    inline.write_text(f"targets:\n  - name: a\n    dsn: {good}\n  - name: a\n    dsn: {good}\n")
    results.append(hiw("validate-config", str(inline)))
    assert results[0].returncode == 0
    assert results[1].returncode == 1
    assert results[2].returncode == 1
    assert results[3].returncode == 0
    assert all(r.returncode == 2 for r in results[4:])
    for result in results:
        clean(result.stdout, result.stderr)
        assert "Traceback" not in result.stderr


def test_long_running_agent_never_shows_the_password(canary_role, tmp_path):
    secret_file = tmp_path / "password"
    secret_file.write_text(CANARY + "\n")
    config = tmp_path / "agent.yaml"
    port = free_port()
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        "targets:\n"
        f"  - name: from_file\n    host: 127.0.0.1\n    port: {canary_role.cluster.port}\n"
        f"    dbname: {HIW_DB}\n    user: canary_monitor\n    password_file: {secret_file}\n"
        f"  - name: from_env\n    host: 127.0.0.1\n    port: {canary_role.cluster.port}\n"
        f"    dbname: {HIW_DB}\n    user: canary_monitor\n    password_env: CANARY_PW\n"
        f"  - name: wrong\n    dsn: postgresql://canary_monitor@127.0.0.1:"
        f"{canary_role.cluster.port}/{HIW_DB}\n    password_env: WRONG_PW\n"
        "collectors:\n  connections: {interval: 1s}\n  database: {interval: 1s}\n")
    proc = subprocess.Popen([sys.executable, "-m", "hiw_monitor", "run", "--config", str(config),
                             "--log-level", "debug"],
                            env={**os.environ, "CANARY_PW": CANARY, "WRONG_PW": WRONG},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def collected() -> bool:
            try:
                text = http_get(url + "/metrics", timeout=2).text
            except OSError:
                return False
            return 'hiw_up{target="from_env"} 1.0' in text and \
                'hiw_up{target="from_file"} 1.0' in text and \
                'reason="auth_failed",target="wrong"' in text

        wait_for(collected, timeout=30, what="three targets collected")
        pages = [http_get(url + path).text for path in ("/metrics", "/", "/ready", "/healthz")]
        om = http_get(url + "/metrics",
                      {"Accept": "application/openmetrics-text; version=1.0.0"}).text
        clean(*pages, om)
        assert 'hiw_up{target="wrong"} 0.0' in pages[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    clean(out, err)
    assert "password authentication failed" in err  # the reason is logged, the secret not


SSL_CANARY = "Ssl-Canary-3b8d"


def test_secret_connection_parameters_are_never_printed(canary_role):
    """sslpassword, options, passfile and friends are secrets too: only known-safe
    parameters are printed (logs, the landing page, error messages)."""
    port = canary_role.cluster.port
    secrets = (f"sslpassword={SSL_CANARY} passfile=/nonexistent/{SSL_CANARY} "
               f"options='-c app.key={SSL_CANARY}' sslmode=disable")
    good = (f"host=127.0.0.1 port={port} dbname={HIW_DB} user=canary_monitor "
            f"password={CANARY} {secrets}")
    dead = good.replace(f"port={port}", f"port={free_port()}")
    results = [
        hiw("once", "--dsn", good, "--log-level", "debug"),
        hiw("once", "--dsn", dead, "--log-level", "debug"),
        hiw("once", "--dsn", good.replace(f"port={port}", "port=notaport")),
    ]
    assert [r.returncode for r in results] == [0, 1, 2]
    listen = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hiw_monitor", "run", "--dsn", good,
                             "--listen", f"127.0.0.1:{listen}", "--log-level", "debug"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{listen}"
    try:
        def collected() -> bool:
            try:
                return http_get(url + "/ready", timeout=2).status == 200
            except OSError:
                return False

        wait_for(collected, timeout=30, what="the agent ready")
        pages = [http_get(url + path).text for path in ("/", "/metrics", "/ready")]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert "user=canary_monitor" in pages[0]  # the connection is shown, its secrets not
    for text in (*pages, out, err, *(r.stdout for r in results), *(r.stderr for r in results)):
        assert SSL_CANARY not in text
        assert CANARY not in text
    assert "connected" in err
    assert "Traceback" not in err
