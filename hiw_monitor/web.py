"""The HTTP side: ``/metrics``, ``/probe?target=NAME`` (one target's series), ``/health``
(the review as JSON), ``/healthz``, ``/ready`` and the status page ``/``.

A tiny WSGI app on a threading ``wsgiref`` server: every request gets its own daemon
thread, so a slow client never holds up another scrape, and nothing here touches the
database.
"""

from __future__ import annotations

import base64
import errno
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog

from hiw_monitor import pages
from hiw_monitor.errors import ConfigError
from hiw_monitor.exposition import Exposition, Rendered
from hiw_monitor.health import Health, document
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.webconfig import WebConfig, peer_sans

log = structlog.get_logger("hiw_monitor.web")

StartResponse = Callable[..., Any]
Liveness = Callable[[], str | None]  # returns a reason when unhealthy, None when fine
# the status page loads nothing: no script, no other host; its CSS and SVG are inline
PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    web: WebConfig = WebConfig()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """With ``client_allowed_sans``: finish the TLS handshake (in this request's own
        thread) and close the connection, unanswered, when the verified client
        certificate carries none of the allowed SANs (exporter-toolkit refuses it in
        the handshake; Python's ssl module has no hook there, so this is the next step)."""
        if self.web.client_allowed_sans is not None and isinstance(request, ssl.SSLSocket):
            request.settimeout(_QuietHandler.timeout)
            request.do_handshake()
            cert = request.getpeercert()
            if not self.web.allows_peer(cert):
                log.warning("client_certificate_refused", client=str(client_address[0]),
                            sans=peer_sans(cert),
                            reason="no subject alternative name in client_allowed_sans")
                return  # shutdown_request() closes the connection
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that breaks off (or speaks plain HTTP to TLS) is not worth a traceback."""
        log.debug("http_client_error", client=str(client_address[0]))


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # a client that sends nothing for 30 s is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Access logs are noise for a scrape target; errors still surface via WSGI."""


def _accepted(header: str) -> set[str]:
    """Media types or codings an Accept(-Encoding) header allows (q=0 means refused).

    >>> sorted(_accepted("gzip;q=0, br, application/openmetrics-text; version=1.0.0"))
    ['application/openmetrics-text', 'br']
    """
    allowed = set()
    for part in header.split(","):
        value, *params = (p.strip() for p in part.split(";"))
        refused = any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000")
                      for p in params)
        if value and not refused:
            allowed.add(value.lower())
    return allowed


class App:
    """The WSGI application."""

    def __init__(self, store: SnapshotStore, exposition: Exposition,
                 alive: Liveness | None = None, web: WebConfig | None = None,
                 open_healthz: bool = True, health: Health | None = None,
                 fleet: bool = False) -> None:
        self.store = store
        # targets come from discovery files or a shard's share: none is a valid state
        # (a shard that owns nothing yet), ready rather than waiting for ever
        self.fleet = fleet
        self.exposition = exposition
        self.health = health
        self.alive = alive or (lambda: None)
        self.web = web or WebConfig()
        self.open_healthz = open_healthz

    def _authorized(self, environ: dict[str, Any]) -> bool:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return bool(sep) and self.web.check(user, password)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return self._plain(start_response, "405 Method Not Allowed", "use GET\n",
                               [("Allow", "GET, HEAD")])
        exempt = path == "/healthz" and self.open_healthz
        if self.web.auth_required and not exempt and not self._authorized(environ):
            return self._plain(start_response, "401 Unauthorized", "authentication required\n",
                               [("WWW-Authenticate", 'Basic realm="hiw-monitor"')])
        if path == "/metrics":
            body = self._metrics(environ, start_response)
        elif path == "/probe":
            body = self._probe(environ, start_response)
        elif path == "/healthz":
            reason = self.alive()
            body = self._plain(start_response, "503 Service Unavailable" if reason else "200 OK",
                               f"{reason}\n" if reason else "ok\n")
        elif path == "/ready":
            reason = self.readiness()
            body = self._plain(start_response, "503 Service Unavailable" if reason else "200 OK",
                               f"{reason}\n" if reason else "ready\n")
        elif path == "/health":
            now = time.time()
            reports = self.health.report(now) if self.health is not None else []
            data = json.dumps(document(reports, now), indent=1, allow_nan=False).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(data))),
                                      ("Cache-Control", "no-store")])
            body = [data]
        elif path == "/":
            page = self.landing().encode()
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                      ("Content-Length", str(len(page))),
                                      ("Cache-Control", "no-store"),
                                      ("Content-Security-Policy", PAGE_POLICY),
                                      ("X-Content-Type-Options", "nosniff")])
            body = [page]
        else:
            body = self._plain(start_response, "404 Not Found",
                               "not found; try /metrics, /probe?target=NAME, /health, "
                               "/healthz, /ready or /\n")
        return [] if method == "HEAD" else body

    @staticmethod
    def _plain(start_response: StartResponse, status: str, text: str,
               extra: list[tuple[str, str]] | None = None) -> list[bytes]:
        data = text.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(data))), *(extra or [])])
        return [data]

    @staticmethod
    def _formats(environ: dict[str, Any]) -> tuple[bool, bool]:
        """(OpenMetrics, gzip) as the request accepts them."""
        return ("application/openmetrics-text" in _accepted(environ.get("HTTP_ACCEPT", "")),
                "gzip" in _accepted(environ.get("HTTP_ACCEPT_ENCODING", "")))

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        openmetrics, gzipped = self._formats(environ)
        rendered = self.exposition.get(openmetrics_format=openmetrics, gzipped=gzipped)
        return self._exposition(rendered, start_response)

    def _probe(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        """One target's blocks of the exposition (its collectors', self-metrics, health),
        from the same cache as /metrics: a Prometheus job may scrape each target as its
        own instance. Nothing here touches the database either."""
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        names = query.get("target", [])
        if len(names) != 1 or not names[0]:
            return self._plain(start_response, "400 Bad Request",
                               "give one target: /probe?target=NAME\n")
        openmetrics, gzipped = self._formats(environ)
        rendered = self.exposition.probe(names[0], openmetrics_format=openmetrics,
                                         gzipped=gzipped)
        if rendered is None:  # the name is not echoed, nor the targets listed
            return self._plain(start_response, "404 Not Found", "no such target\n")
        return self._exposition(rendered, start_response)

    @staticmethod
    def _exposition(rendered: Rendered, start_response: StartResponse) -> list[bytes]:
        headers = [("Content-Type", rendered.content_type),
                   ("Content-Length", str(len(rendered.body))), ("Vary", "Accept-Encoding")]
        if rendered.gzipped:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [rendered.body]

    def readiness(self) -> str | None:
        """None when every target has had at least one successful collection (a fleet
        with no target, e.g. a shard that owns none, is ready: it waits for nothing)."""
        _, targets, samples = self.store.view()
        waiting = sorted({s.target for s in samples} - {s.target for s in samples
                                                          if s.last_success_at is not None})
        if not targets:
            return None if self.fleet else "no targets configured"
        if waiting:
            return "not ready: no successful collection yet for " + ", ".join(waiting)
        return None

    def landing(self) -> str:
        """The status page (:mod:`hiw_monitor.pages`), from the store and the health
        reports already computed from it: nothing here touches the database."""
        now = time.time()
        reports = self.health.report(now) if self.health is not None else None
        return pages.status_page(reports, self.store.view(), now)


def serve(app: App, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Bind and serve in a daemon thread. A busy or forbidden address is a ConfigError.

    With TLS the handshake happens in each request's own thread, not in the accept loop,
    so a client that stalls in the handshake holds up nobody else.
    """
    try:
        server = make_server(host, port, app, server_class=_Server6 if ":" in host else _Server,
                             handler_class=_QuietHandler)
    except OSError as exc:
        where = f"listen {host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(where, "address already in use",
                              "stop the other process or pick another port with --listen") \
                from None
        if exc.errno == errno.EACCES:
            raise ConfigError(where, "permission denied", "use a port above 1023") from None
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(where, "cannot bind this address on this machine",
                              "use an address of this host, e.g. 127.0.0.1 or 0.0.0.0") from None
        raise
    server.web = app.web
    if app.web.ssl_context is not None:
        server.socket = app.web.ssl_context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="hiw-http", daemon=True)
    thread.start()
    return server, thread
