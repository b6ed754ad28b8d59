"""TLS and basic auth for the agent's endpoints, from an exporter-toolkit web config file:
the same ``--web.config.file`` format as postgres_exporter and node_exporter, so an
existing file can be reused.

    tls_server_config:
      cert_file: /etc/hiw-monitor/tls.crt
      key_file: /etc/hiw-monitor/tls.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: /etc/hiw-monitor/ca.crt
      client_allowed_sans: [prometheus.internal]     # optional: the client certificate
                                                     # must carry one of these SANs
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...                         # bcrypt hash (htpasswd -nBC 10 "")

Keys that tune Go's TLS stack (cipher_suites, curve_preferences, ...) are accepted and
ignored, with a warning: Python's defaults are used.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import structlog
import yaml

from hiw_monitor.errors import ConfigError

log = structlog.get_logger("hiw_monitor.webconfig")
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
            "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version", "client_allowed_sans"}
_IGNORED_TLS_KEYS = {"cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
                     "cert", "key"}
# The SAN kinds exporter-toolkit compares (Go's DNSNames, EmailAddresses, IPAddresses,
# URIs), as Python's getpeercert() names them.
_SAN_KINDS = ("DNS", "email", "IP Address", "URI")
_TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}


@dataclass(frozen=True)
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    # None: any verified client certificate; else it must carry one of these SANs
    client_allowed_sans: frozenset[str] | None = None
    _verified: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def auth_required(self) -> bool:
        return bool(self.users)

    def check(self, user: str, password: str) -> bool:
        """bcrypt-verify ``user:password``; successes are remembered (keyed by a salted
        digest, never the password) so a scrape every 15 s does not pay bcrypt each time.

        Like exporter-toolkit (Go's bcrypt): a password longer than bcrypt's 72 bytes is
        compared on its first 72 bytes, never an error; an unknown user costs one bcrypt
        check against a dummy hash of the configured users' cost, so the response time
        does not tell which user names exist.
        """
        secret = password.encode()[:BCRYPT_MAX_BYTES]
        hashed = self.users.get(user)
        if hashed is None:
            _checkpw(secret, _dummy_hash(self.dummy_cost))  # same work as a known user
            return False
        key = hmac.new(_SECRET, f"{user}\0{password}".encode(), hashlib.sha256).hexdigest()
        with self._lock:
            if self._verified.get(key):
                return True
        ok = _checkpw(secret, hashed)
        if ok:
            with self._lock:
                if len(self._verified) > 64:
                    self._verified.clear()
                self._verified[key] = True
        return ok

    def allows_peer(self, cert: Mapping[str, Any] | None) -> bool:
        """Whether a verified client certificate (``SSLSocket.getpeercert()``) may connect:
        with ``client_allowed_sans``, one of its DNS, email, IP or URI SANs must be listed
        (IP addresses compared as addresses).

        >>> web = WebConfig(client_allowed_sans=frozenset({"prom.internal", "::1"}))
        >>> web.allows_peer({"subjectAltName": (("DNS", "prom.internal"),)})
        True
        >>> web.allows_peer({"subjectAltName": (("IP Address", "0:0:0:0:0:0:0:1"),)})
        True
        >>> web.allows_peer({"subjectAltName": (("DNS", "other"),), "subject": ()})
        False
        >>> web.allows_peer(None), WebConfig().allows_peer(None)
        (False, True)
        """
        if self.client_allowed_sans is None:
            return True
        allowed = {_san_key(value) for value in self.client_allowed_sans}
        return any(_san_key(value) in allowed for value in peer_sans(cert))

    @property
    def dummy_cost(self) -> int:
        """The bcrypt cost of the dummy check for unknown users: the highest cost among
        the configured hashes, so an unknown user is never the fastest answer."""
        return max((_cost(hashed) for hashed in self.users.values()), default=10)


BCRYPT_MAX_BYTES = 72  # bcrypt uses at most the first 72 bytes of a password
_SECRET = os.urandom(32)  # keys the cache of verified credentials; never leaves the process


def peer_sans(cert: Mapping[str, Any] | None) -> list[str]:
    """The DNS, email, IP and URI subject alternative names of a peer certificate."""
    if not cert:
        return []
    return [str(value).strip() for kind, value in cert.get("subjectAltName", ())
            if kind in _SAN_KINDS]


def _san_key(value: str) -> str:
    """A SAN as compared: IP addresses in one canonical form, everything else as is."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a password bcrypt refuses (e.g. a future length or NUL rule)
        return False


def _cost(hashed: bytes) -> int:
    """The cost factor of a ``$2y$10$...`` hash (4..31).

    >>> _cost(b"$2y$12$" + b"a" * 53), _cost(b"garbage")
    (12, 10)
    """
    parts = hashed.split(b"$")
    try:
        return min(31, max(4, int(parts[2])))
    except (IndexError, ValueError):
        return 10


@functools.cache
def _dummy_hash(cost: int = 10) -> bytes:
    return bcrypt.hashpw(b"dummy", bcrypt.gensalt(rounds=cost))


def _fail(path: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(path, problem, fix)


def load_web_config(path: str) -> WebConfig:
    """Read and validate a web config file. Raises ConfigError naming the key and fix."""
    where = f"web config {path}"
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise _fail(where, "file not found", "check --web.config.file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(where, f"cannot be read ({exc.__class__.__name__})",
                    "fix its permissions / encoding") from None
    except yaml.YAMLError:
        raise _fail(where, "invalid YAML", "fix the YAML syntax") from None
    if not isinstance(document, dict):
        raise _fail(where, "expected a mapping", "see the exporter-toolkit web config format")
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise _fail(f"{where}: {sorted(unknown)[0]}", "unknown key",
                    f"use {', '.join(sorted(_TOP_KEYS))}")
    users = _users(document.get("basic_auth_users") or {}, where)
    tls = document.get("tls_server_config")
    context = _tls(tls, where, Path(path).parent)
    sans = _allowed_sans(tls, where) if isinstance(tls, dict) and context is not None \
        else None
    web = WebConfig(ssl_context=context, users=users, client_allowed_sans=sans)
    if users:
        _dummy_hash(web.dummy_cost)  # now, not in the first unknown user's request
    return web


def _users(raw: Any, where: str) -> dict[str, bytes]:
    if not isinstance(raw, dict):
        raise _fail(f"{where}: basic_auth_users", "expected user: bcrypt-hash pairs",
                    "generate hashes with htpasswd -nBC 10 USER")
    users = {}
    for user, hashed in raw.items():
        try:
            value = str(hashed).encode()
            bcrypt.checkpw(b"probe", value)  # raises ValueError on anything not bcrypt
        except ValueError:
            raise _fail(f"{where}: basic_auth_users.{user}", "is not a bcrypt hash",
                        "generate one with htpasswd -nBC 10 USER") from None
        users[str(user)] = value
    return users


def _allowed_sans(raw: Mapping[str, Any], where: str) -> frozenset[str] | None:
    """``client_allowed_sans``, enforced for a verified client certificate only."""
    value = raw.get("client_allowed_sans")
    if value is None:
        return None
    key_path = f"{where}: tls_server_config.client_allowed_sans"
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(key_path, "expected a list of subject alternative names",
                    "write it like [prometheus.internal, 10.0.0.5]")
    if not value:
        raise _fail(key_path, "is empty, so no client could connect",
                    "list the SANs allowed, or remove the key")
    auth = raw.get("client_auth_type", "NoClientCert")
    if auth != "RequireAndVerifyClientCert":
        raise _fail(key_path, f"needs client_auth_type RequireAndVerifyClientCert (it is "
                    f"{auth}): the SANs of a certificate no CA vouches for prove nothing",
                    "set client_auth_type: RequireAndVerifyClientCert and client_ca_file, "
                    "or remove client_allowed_sans")
    return frozenset(value)


def _tls(raw: Any, where: str, base: Path) -> ssl.SSLContext | None:
    if raw is None:
        return None
    key_path = f"{where}: tls_server_config"
    if not isinstance(raw, dict):
        raise _fail(key_path, "expected a mapping", "set cert_file and key_file")
    unknown = set(raw) - _TLS_KEYS - _IGNORED_TLS_KEYS
    if unknown:
        raise _fail(f"{key_path}.{sorted(unknown)[0]}", "unknown key",
                    f"use {', '.join(sorted(_TLS_KEYS))}")
    for ignored in sorted(set(raw) & _IGNORED_TLS_KEYS):
        log.warning("web_config_key_ignored", key=f"tls_server_config.{ignored}",
                    reason="Python's TLS defaults are used")
    if not raw.get("cert_file") or not raw.get("key_file"):
        raise _fail(key_path, "cert_file and key_file are both required",
                    "point them at the PEM certificate and key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(base / raw["cert_file"], base / raw["key_file"])
    except (OSError, ssl.SSLError) as exc:
        raise _fail(f"{key_path}.cert_file", f"cannot load certificate/key ({exc})",
                    "check both PEM files and that the key matches the certificate") from None
    auth = raw.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise _fail(f"{key_path}.client_auth_type", f"unknown value {auth!r}",
                    f"use one of {', '.join(CLIENT_AUTH)}")
    context.verify_mode = CLIENT_AUTH[auth]
    if raw.get("client_ca_file"):
        try:
            context.load_verify_locations(base / raw["client_ca_file"])
        except (OSError, ssl.SSLError) as exc:
            raise _fail(f"{key_path}.client_ca_file", f"cannot load ({exc})",
                        "point it at a PEM CA bundle") from None
    elif auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        raise _fail(f"{key_path}.client_ca_file", "is required for " + auth,
                    "set client_ca_file")
    for name, attribute in (("min_version", "minimum_version"),
                            ("max_version", "maximum_version")):
        if name in raw:
            if raw[name] not in VERSIONS:
                raise _fail(f"{key_path}.{name}", f"unknown version {raw[name]!r}",
                            f"use one of {', '.join(VERSIONS)}")
            setattr(context, attribute, VERSIONS[raw[name]])
    return context
