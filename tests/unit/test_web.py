"""web.py: the WSGI app called directly (no sockets)."""

from __future__ import annotations

import base64
import gzip
import html
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import bcrypt
import pytest

from hiw_monitor import webconfig
from hiw_monitor.collectors.base import gauge
from hiw_monitor.errors import Reason
from hiw_monitor.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Exposition
from hiw_monitor.health import Health
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.web import App
from hiw_monitor.webconfig import WebConfig

# The validator's warnings are protocol violations: fail on them.
pytestmark = pytest.mark.filterwarnings("error::wsgiref.validate.WSGIWarning")

HOSTILE = "<script>alert(1)</script>"
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,"
                     "application/openmetrics-text;version=0.0.1;q=0.4,"
                     "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


class Response:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.code = int(status.split()[0])
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body


def call(app, path="/", method="GET", **extra) -> Response:
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.setdefault("QUERY_STRING", "")
    environ.update(PATH_INFO=path, REQUEST_METHOD=method, **extra)
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers
        return lambda data: None

    result = validator(app)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()
    return Response(seen["status"], seen["headers"], body)


def make_app(alive=None, store=None):
    store = store or SnapshotStore()
    return App(store, Exposition(store, clock=lambda: 10.0), alive=alive), store


def a_family(target):
    family = gauge("hiw_test_gauge", "Test.")
    family.add_metric([target], 1.0)
    return [family]


@pytest.fixture
def app_and_store():
    app, store = make_app()
    store.register("t1", "host=h1", "conn", interval=10, stale_after=30)
    store.record_success("t1", "conn", a_family("t1"), 1.0, 0.1)
    return app, store


def test_metrics_plain_text_by_default(app_and_store):
    app, _ = app_and_store
    response = call(app, "/metrics")
    assert response.code == 200
    assert response.headers["content-type"] == TEXT_CONTENT_TYPE
    assert int(response.headers["content-length"]) == len(response.body)
    assert b'hiw_test_gauge{target="t1"} 1.0' in response.body
    assert b"# EOF" not in response.body
    assert "content-encoding" not in response.headers


@pytest.mark.parametrize("accept", [
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text;version=1.0.0;charset=utf-8",
    PROMETHEUS_ACCEPT,
    "text/html, application/openmetrics-text; version=1.0.0",
])
def test_metrics_openmetrics_when_accepted(app_and_store, accept):
    app, _ = app_and_store
    response = call(app, "/metrics", HTTP_ACCEPT=accept)
    assert response.headers["content-type"] == OPENMETRICS_CONTENT_TYPE
    assert response.body.endswith(b"# EOF\n")


@pytest.mark.parametrize("accept", ["text/plain;version=0.0.4", "*/*", "text/html"])
def test_metrics_text_for_other_accepts(app_and_store, accept):
    app, _ = app_and_store
    response = call(app, "/metrics", HTTP_ACCEPT=accept)
    assert response.headers["content-type"] == TEXT_CONTENT_TYPE


def test_metrics_gzip(app_and_store):
    app, _ = app_and_store
    plain = call(app, "/metrics")
    zipped = call(app, "/metrics", HTTP_ACCEPT_ENCODING="gzip, deflate")
    assert zipped.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in zipped.headers["vary"].lower()
    assert int(zipped.headers["content-length"]) == len(zipped.body)
    assert gzip.decompress(zipped.body) == plain.body
    om = call(app, "/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0",
              HTTP_ACCEPT_ENCODING="gzip")
    assert gzip.decompress(om.body).endswith(b"# EOF\n")
    assert om.headers["content-type"] == OPENMETRICS_CONTENT_TYPE


def test_head_has_headers_but_no_body(app_and_store):
    app, _ = app_and_store
    for path in ("/metrics", "/healthz", "/ready", "/", "/nope"):
        get = call(app, path)
        head = call(app, path, method="HEAD")
        assert head.body == b""
        assert head.code == get.code
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == str(len(get.body))


def test_healthz():
    healthy, _ = make_app(alive=lambda: None)
    response = call(healthy, "/healthz")
    assert (response.code, response.body) == (200, b"ok\n")
    sick, _ = make_app(alive=lambda: "scheduler heartbeat is 93s old")
    response = call(sick, "/healthz")
    assert response.code == 503
    assert b"scheduler heartbeat is 93s old" in response.body
    default, _ = make_app()
    assert call(default, "/healthz").code == 200


def test_ready_needs_a_target():
    app, _ = make_app()
    response = call(app, "/ready")
    assert response.code == 503
    assert b"no targets" in response.body


def test_a_fleet_with_no_target_is_ready():
    """A shard that owns none of the discovered targets waits for nothing: ready (else a
    StatefulSet rollout stops at it for good)."""
    app, store = make_app()
    app.fleet = True
    assert call(app, "/ready").code == 200
    store.register("t1", "host=t1", "conn", interval=10, stale_after=30)
    assert call(app, "/ready").code == 503  # one target now: ready after its first run


def test_ready_once_every_target_has_one_success():
    app, store = make_app()
    for target in ("t1", "t2"):
        for collector in ("conn", "db"):
            store.register(target, f"host={target}", collector, interval=10, stale_after=30)
    response = call(app, "/ready")
    assert response.code == 503
    assert b"t1" in response.body
    assert b"t2" in response.body

    store.record_success("t1", "conn", [], 1.0, 0.1)
    store.record_failure("t2", "conn", Reason("timeout", "slow"), 1.0, 5.0)
    response = call(app, "/ready")
    assert response.code == 503
    assert b"t2" in response.body
    assert b"t1" not in response.body

    # One success per target is enough; the other collectors may still be pending.
    store.record_success("t2", "db", [], 2.0, 0.1)
    response = call(app, "/ready")
    assert (response.code, response.body) == (200, b"ready\n")

    # Readiness is not lost by a later failure: the agent is up, the database is not.
    store.record_failure("t1", "conn", Reason("timeout", "slow"), 3.0, 5.0)
    assert call(app, "/ready").code == 200


def test_landing_page_escapes_everything():
    app, store = make_app()
    store.register(HOSTILE, f"host='{HOSTILE}'", HOSTILE, interval=10, stale_after=30)
    store.register("plain", "host=h", "conn", interval=10, stale_after=30)
    store.record_failure(HOSTILE, HOSTILE, Reason("internal", f"boom {HOSTILE}"), 1.0, 0.1)
    store.set_target(HOSTILE, up=False, server_version=HOSTILE,
                     error=Reason("connection", f"down {HOSTILE}"))
    response = call(app, "/")
    assert response.code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.body.decode()
    assert "<script" not in page
    assert html.escape(HOSTILE) in page
    assert f"boom {html.escape(HOSTILE)}" in page
    assert f"down {html.escape(HOSTILE)}" in page
    assert ">plain<" in page
    assert 'href="/metrics"' in page


def test_landing_page_is_the_status_page_with_a_health():
    store = SnapshotStore()
    store.register("t1", "host=h1", "connections", interval=10, stale_after=30)
    app = App(store, Exposition(store), health=Health(store))
    response = call(app, "/")
    assert response.code == 200
    page = response.body.decode()
    assert 'id="score"' in page
    assert '<section class="target-health" id="target-1" data-target="t1"' in page
    assert 'id="latency-chart"' in page
    assert 'id="targets"' in page
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy
    assert response.headers["cache-control"] == "no-store"


def test_landing_page_without_a_health_lists_targets_and_collectors(app_and_store):
    app, _ = app_and_store
    page = call(app, "/").body.decode()
    assert 'id="score"' not in page
    assert 'data-target="t1" data-state="down"' in page
    assert 'data-collector="conn" data-status="ok"' in page
    assert "host=h1" in page


def test_unknown_path_is_404(app_and_store):
    app, _ = app_and_store
    for path in ("/nope", "/metrics/extra", "/favicon.ico"):
        response = call(app, path)
        assert response.code == 404
        assert b"/metrics" in response.body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(app_and_store, method):
    app, _ = app_and_store
    response = call(app, "/metrics", method=method)
    assert response.code == 405
    # RFC 9110 section 15.5.6: a 405 response MUST carry an Allow header.
    allowed = {m.strip() for m in response.headers.get("allow", "").split(",")}
    assert {"GET", "HEAD"} <= allowed


# --- basic auth -----------------------------------------------------------------------------

LONG = "p" * 72 + "-tail-beyond-bcrypt"  # 91 bytes


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def auth_app():
    hashed = bcrypt.hashpw(LONG.encode()[:72], bcrypt.gensalt(rounds=4))
    store = SnapshotStore()
    web = WebConfig(users={"prometheus": hashed, "short": bcrypt.hashpw(b"pw", hashed[:29])})
    return App(store, Exposition(store, clock=lambda: 10.0), web=web)


@pytest.mark.parametrize(("user", "password", "code"), [
    ("prometheus", LONG, 200),  # longer than 72 bytes: compared on the first 72, like Go
    ("prometheus", "p" * 72, 200),
    ("prometheus", "p" * 72 + "-another-tail", 200),
    ("prometheus", "q" + "p" * 100, 401),
    ("prometheus", "é" * 100, 401),  # 200 bytes of UTF-8
    ("nobody", LONG, 401),
    ("short", "x" * 1000, 401),
    ("short", "pw", 200),
], ids=lambda v: f"{len(v.encode())}B" if isinstance(v, str) and len(v) > 20 else str(v))
def test_long_passwords_get_401_or_200_never_500(auth_app, user, password, code):
    response = call(auth_app, "/metrics", HTTP_AUTHORIZATION=basic(user, password))
    assert response.code == code


def test_unknown_user_costs_one_bcrypt_check_of_the_same_cost(auth_app, monkeypatch):
    """Equal work for known and unknown names (counted, not timed)."""
    seen: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        seen.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", counting)
    web = auth_app.web
    assert not web.check("nobody", "guess")
    assert not web.check("prometheus", "guess")
    assert not web.check("nobody", LONG)
    assert len(seen) == 3
    costs = [hashed.split(b"$")[2] for hashed in seen]
    assert costs == [b"04", b"04", b"04"]  # the dummy has the configured users' cost
    assert seen[0] not in web.users.values()
