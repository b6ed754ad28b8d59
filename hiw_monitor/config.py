"""Configuration: defaults < YAML file < environment < command-line flags.

``load()`` walks the whole document strictly (unknown keys, wrong types, bad durations,
duplicate target names), collects every problem with its key path and fix, and returns
a frozen :class:`Config`. Nothing here connects to a database.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from hiw_monitor.collectors import custom
from hiw_monitor.collectors.base import Collector, Option
from hiw_monitor.errors import ConfigError
from hiw_monitor.shard import Shard
from hiw_monitor.shard import parse as parse_shard
from hiw_monitor.units import parse_duration, parse_listen
from hiw_monitor.webconfig import WebConfig, load_web_config

DEFAULT_PORT = 9188  # postgres_exporter has 9187; pgbouncer_exporter 9127
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_DSN, ENV_LISTEN, ENV_CONFIG = "HIW_MONITOR_DSN", "HIW_MONITOR_LISTEN", "HIW_MONITOR_CONFIG"
ENV_TARGET_NAME = "HIW_MONITOR_TARGET_NAME"
ENV_WEB_CONFIG = "HIW_MONITOR_WEB_CONFIG"
ENV_SHARD = "HIW_MONITOR_SHARD"
DEFAULT_REFRESH = 30.0  # seconds between two looks at the discovery files (file_sd)

# Connection keys a target may set besides its name and password source.
_TARGET_PARAMS = ("host", "port", "dbname", "user", "sslmode", "sslrootcert", "sslcert", "sslkey")
# libpq parameters that may be printed (logs, the landing page, error messages), in that
# order: where the server is, who connects and how. Every other parameter is left out of
# what is printed: password, sslpassword, oauth_client_secret, scram_*_key, options
# (which can carry any setting), passfile, service, and whatever libpq adds next.
SAFE_PARAMS = (
    *_TARGET_PARAMS, "hostaddr", "application_name", "fallback_application_name",
    "connect_timeout", "target_session_attrs", "load_balance_hosts", "client_encoding",
    "sslcrl", "sslcrldir", "sslcertmode", "sslnegotiation", "sslsni",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "min_protocol_version",
    "max_protocol_version", "gssencmode", "channel_binding", "require_auth", "keepalives",
    "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
)
# What a target is (``type:``): a PostgreSQL server, or PgBouncer's admin console, which
# only the ``pgbouncer`` collector reads (and which it is the only one to read).
POSTGRESQL, PGBOUNCER = "postgresql", "pgbouncer"
TARGET_TYPES = (POSTGRESQL, PGBOUNCER)
PGBOUNCER_DBNAME = "pgbouncer"  # the admin console's database name
# Parameters PgBouncer refuses in the startup packet ("unsupported startup parameter")
# unless its ignore_startup_parameters lists them; the agent never sends them itself.
_PGBOUNCER_REFUSED = ("options", "replication")


@dataclass(frozen=True, slots=True)
class DatabaseSelection:
    """Which databases of an instance the per-database collectors run in (``databases:``):
    those whose name matches an ``include`` pattern and no ``exclude`` pattern (shell-style
    globs, case-sensitive). Templates and databases that refuse connections
    (``datallowconn = false``) are never selected.

    >>> s = DatabaseSelection(include=("*",), exclude=("postgres", "*_test"))
    >>> [s.matches(n) for n in ("heroes_in_waiting", "postgres", "hiw_test")]
    [True, False, False]
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def matches(self, datname: str) -> bool:
        return (any(fnmatch.fnmatchcase(datname, p) for p in self.include)
                and not any(fnmatch.fnmatchcase(datname, p) for p in self.exclude))


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One database to watch. ``conninfo`` never holds the password, but may hold other
    secret parameters (sslpassword, ...): it is printed only through :func:`redact`."""

    name: str
    conninfo: str = field(repr=False)  # may hold sslpassword and the like: see redact()
    password: str | None = field(default=None, repr=False)
    password_env: str | None = None
    password_file: str | None = None
    kind: str = POSTGRESQL  # ``type:`` in the config: postgresql or pgbouncer
    # (name, value) of the target's other labels: those of hiw_target_info only, never of
    # its series; not connection parameters (a change of labels does not reconnect)
    labels: tuple[tuple[str, str], ...] = ()
    # the databases the per-database collectors run in; None: only the DSN's database
    # (unless the config's top-level ``databases:`` applies; see Agent)
    databases: DatabaseSelection | None = None
    max_connections: int | None = None  # to this instance at once; None: the config's

    def for_database(self, datname: str) -> TargetConfig:
        """The same target connecting to database ``datname`` of the instance."""
        return replace(self, conninfo=make_conninfo(self.conninfo, dbname=datname),
                       databases=None)

    def connection(self) -> TargetConfig:
        """This target without its labels: two targets whose connection() are equal
        connect the same way."""
        return replace(self, labels=())

    def resolve_password(self) -> str | None:
        """The password from the DSN, the env var or the file (read at connect time,
        so a rotated secret file is picked up on reconnect)."""
        if self.password_env:
            return os.environ.get(self.password_env)
        if self.password_file:
            return Path(self.password_file).read_text(encoding="utf-8").strip()
        return self.password


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    connect_timeout: float = 5.0
    statement_timeout: float = 5.0
    lock_timeout: float = 1.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    # connections to one instance at once (a target may set its own max_connections):
    # its own, and one to the database a per-database collector is in (1: the target's
    # own connection is closed while the other databases are collected)
    max_connections: int = 2


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    name: str
    enabled: bool
    interval: float
    timeout: float
    stale_after: float
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FileSD:
    """Targets from files (Prometheus file_sd format; see hiw_monitor/discovery.py)."""

    files: tuple[str, ...]  # glob patterns, absolute (a relative one is the config file's)
    refresh_interval: float = DEFAULT_REFRESH


@dataclass(frozen=True, slots=True)
class Config:
    targets: tuple[TargetConfig, ...]
    listen: tuple[str, int]
    connection: ConnectionSettings
    collectors: Mapping[str, CollectorSettings]
    log_level: str = "info"
    log_format: str = "auto"
    source: str = "defaults"
    web: WebConfig = field(default_factory=WebConfig)  # TLS and basic auth (none by default)
    open_healthz: bool = True  # /healthz answers without credentials (for probes)
    # user-defined SQL collectors by name (custom_collectors, custom_collectors_dir); their
    # settings are in ``collectors`` too, after the built-ins'
    custom: Mapping[str, Collector] = field(default_factory=lambda: MappingProxyType({}))
    file_sd: FileSD | None = None  # targets from files, besides ``targets``
    shard: Shard | None = None  # watch only the targets this shard owns (None: all)
    # the databases: of every target that does not set its own (None: the DSN's only)
    databases: DatabaseSelection | None = None

    @property
    def enabled_collectors(self) -> tuple[CollectorSettings, ...]:
        return tuple(c for c in self.collectors.values() if c.enabled)


@dataclass(frozen=True, slots=True)
class Overrides:
    """What came from flags (highest precedence); ``None`` means not given."""

    config: str | None = None
    dsn: str | None = None
    listen: str | None = None
    target_name: str | None = None
    log_level: str | None = None
    log_format: str | None = None
    web_config: str | None = None
    shard: str | None = None


# --- the strict walk -------------------------------------------------------------------


class _Walk:
    """Collects problems with their key paths instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[ConfigError] = []

    def fail(self, path: str, problem: str, fix: str = "") -> None:
        self.problems.append(ConfigError(path, problem, fix))

    def mapping(self, value: Any, path: str, allowed: Mapping[str, str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {_kind(value)}", "write key: value pairs")
            return {}
        out = {}
        for key, item in value.items():
            if key not in allowed:
                near = ", ".join(sorted(allowed))
                self.fail(_join(path, key), "unknown key", f"use one of: {near}")
            else:
                out[key] = item
        return out

    def duration(self, value: Any, path: str, minimum: float = 0.0) -> float | None:
        try:
            seconds = parse_duration(value)
        except (ValueError, TypeError):
            self.fail(path, f"{value!r} is not a valid duration",
                      "write a positive duration like 500ms, 15s, 5m, 1h or 1d")
            return None
        if seconds < minimum:
            self.fail(path, f"{value!r} is too short", f"use at least {minimum:g}s")
            return None
        return seconds

    def typed(self, value: Any, path: str, kind: type | tuple[type, ...], what: str) -> Any:
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail(path, f"expected {what}, got a boolean", f"write {what}")
            return None
        if not isinstance(value, kind):
            self.fail(path, f"expected {what}, got {_kind(value)}", f"write {what}")
            return None
        return value

    def option(self, value: Any, path: str, spec: Option) -> Any:
        result: Any
        if spec.kind == "duration":
            result = self.duration(value, path)
        elif spec.kind == "bool":
            result = self.typed(value, path, bool, "true or false")
        elif spec.kind == "int":
            result = self.typed(value, path, int, "an integer")
        elif spec.kind == "float":
            result = self.typed(value, path, (int, float), "a number")
            result = None if result is None else float(result)
        elif spec.kind == "str":
            result = self.typed(value, path, str, "a string")
        elif spec.kind == "mapping":
            result = self.typed(value, path, dict, "a mapping")
            if result is not None and spec.parse is not None:
                try:
                    return spec.parse(result)
                except ValueError as exc:
                    self.fail(path, str(exc), spec.help)
                    return None
            return result
        elif spec.kind == "float_list":
            result = self.typed(value, path, list, "a list of numbers")
            if result is not None and not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in result):
                self.fail(path, "expected a list of numbers", "write numbers like [0.1, 0.25]")
                return None
            result = None if result is None else tuple(float(v) for v in result)
        else:
            result = self.typed(value, path, list, "a list of strings")
            if result is not None and not all(isinstance(v, str) for v in result):
                self.fail(path, "expected a list of strings", "quote every item")
                result = None
            result = None if result is None else tuple(result)
        if result is not None and spec.minimum is not None and result < spec.minimum:
            self.fail(path, f"{value!r} is below the minimum", f"use at least {spec.minimum:g}")
            return None
        if result is not None and spec.maximum is not None and result > spec.maximum:
            self.fail(path, f"{value!r} is above the maximum", f"use at most {spec.maximum:g}")
            return None
        if result is not None and spec.check is not None:
            problem = spec.check(result)
            if problem:
                self.fail(path, problem, spec.help)
                return None
        return result


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "nothing"}.get(type(value),
                                                                               type(value).__name__)


def _join(path: str, key: Any) -> str:
    """The key path of ``key`` under ``path``; odd keys are quoted so they stay visible.

    >>> _join("collectors", "connections"), _join("", ""), _join("log", 3)
    ('collectors.connections', "['']", 'log[3]')
    """
    if not isinstance(key, str) or not key.isidentifier():
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


_TOP_KEYS = {
    "targets": "databases to watch",
    "listen": "HTTP address, host:port",
    "connection": "connection timeouts and reconnect backoff",
    "collectors": "per-collector settings",
    "log": "level and format",
    "web_config_file": "TLS / basic auth file in the exporter-toolkit format",
    "open_healthz": "whether /healthz skips basic auth",
    "custom_collectors": "user-defined SQL collectors (a list, or a mapping by name)",
    "custom_collectors_dir": "a directory of *.yaml files of user-defined SQL collectors",
    "file_sd": "targets from files: files (globs) and refresh_interval",
    "shard": "INDEX/COUNT: watch only the targets this shard owns",
    "databases": "default databases: (include/exclude globs) of every target, discovered "
                 "ones too",
}
_CONNECTION_KEYS = {
    "connect_timeout": "", "statement_timeout": "", "lock_timeout": "",
    "backoff_initial": "", "backoff_max": "", "max_connections": "",
}
_TARGET_KEYS = dict.fromkeys(("name", "type", "dsn", *_TARGET_PARAMS, "password_env",
                              "password_file", "labels", "databases", "max_connections"), "")
_DATABASES_KEYS = {"include": "", "exclude": ""}
_DATABASES_FIX = ("write databases: {include: [\"*\"], exclude: [postgres]} (shell-style "
                  "patterns of database names), or a list of patterns to include")
_FILE_SD_KEYS = {"files": "", "refresh_interval": ""}
# a label name (Prometheus rules); names starting with __ are Prometheus' own
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = ("target",)  # hiw_target_info's own
_COLLECTOR_KEYS = {"enabled": "", "interval": "", "timeout": "", "stale_after": ""}


def _parse_dsn(dsn: str, path: str, walk: _Walk) -> dict[str, Any] | None:
    try:
        return dict(conninfo_to_dict(dsn))
    except psycopg.ProgrammingError:
        # The library's message may quote part of the DSN, password included: not echoed.
        walk.fail(path, "is not a valid libpq connection string or URI",
                  "write it like postgresql://user@host:5432/dbname or 'host=... dbname=...'")
        return None


def default_target_name(params: Mapping[str, Any], env: Mapping[str, str] | None = None) -> str:
    """``host:port/dbname`` from connection parameters, libpq's defaults filled in.

    >>> default_target_name({"host": "db1", "port": "5433", "dbname": "hiw"})
    'db1:5433/hiw'
    >>> default_target_name({"host": "/var/run/postgresql", "user": "mon"})
    'localhost:5432/mon'
    """
    env = os.environ if env is None else env
    host = str(params.get("host") or env.get("PGHOST") or "localhost")
    if host.startswith("/"):
        host = "localhost"
    port = str(params.get("port") or env.get("PGPORT") or "5432")
    dbname = (params.get("dbname") or env.get("PGDATABASE") or params.get("user")
              or "postgres")
    return f"{host}:{port}/{dbname}"


def redact(conninfo: str) -> str:
    """The connection string as it may be printed (logs, pages, errors): only the
    parameters in :data:`SAFE_PARAMS`, so no password or other secret.

    >>> redact("postgresql://mon:s3cret@db:5432/hiw")
    'host=db port=5432 dbname=hiw user=mon'
    >>> redact("host=db sslpassword=k3y options='-c x=y' sslmode=require")
    'host=db sslmode=require'
    >>> redact("not a dsn")
    '<unparsable connection string>'
    """
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparsable connection string>"
    safe = {key: params[key] for key in SAFE_PARAMS if params.get(key) is not None}
    return make_conninfo("", **safe)


def _target(raw: Any, path: str, walk: _Walk, env: Mapping[str, str]) -> TargetConfig | None:
    if not isinstance(raw, dict):
        walk.fail(path, f"expected a mapping, got {_kind(raw)}",
                  "write the target as name:, dsn: (or host:, dbname:) under the '-'")
        return None
    entry = walk.mapping(raw, path, _TARGET_KEYS)
    params: dict[str, Any] = {}
    if "dsn" in entry:
        dsn_path = path if path.startswith(("--", "HIW_")) else f"{path}.dsn"
        if walk.typed(entry["dsn"], dsn_path, str, "a connection string") is None:
            return None
        parsed = _parse_dsn(entry["dsn"], dsn_path, walk)
        if parsed is None:
            return None
        params.update(parsed)
    for key in _TARGET_PARAMS:
        if key in entry:
            value = entry[key]
            if key == "port":
                numeric = (isinstance(value, int) and not isinstance(value, bool)) or (
                    isinstance(value, str) and value.isdigit())
                if not numeric or not 0 < int(value) < 65536:
                    walk.fail(f"{path}.port", f"{value!r} is not a port number",
                              "write a number between 1 and 65535")
                    continue
            elif walk.typed(value, f"{path}.{key}", str, "a string") is None:
                continue
            params[key] = str(value)
    port_text = str(params.get("port") or "")
    if port_text and not all(p.isdigit() and 0 < int(p) < 65536 for p in port_text.split(",")):
        walk.fail(f"{path}.port" if "dsn" not in entry or "port" in entry else path,
                  f"port {port_text!r} is not a number between 1 and 65535",
                  "fix the port in the connection string")
        return None
    kind = _target_type(entry, path, walk)
    if kind is None:
        return None
    if kind == PGBOUNCER:
        if not _pgbouncer_params(entry, params, path, walk):
            return None
    elif "dsn" not in entry and "host" not in entry and "dbname" not in entry:
        walk.fail(path, "a target needs a dsn or host/port/dbname/user",
                  "add dsn: postgresql://user@host:5432/dbname, or host: and dbname:")
        return None
    password = params.pop("password", None)
    sources = [k for k in ("password_env", "password_file") if k in entry]
    if len(sources) > 1:
        walk.fail(path, "password_env and password_file are both set", "keep one of them")
    for key in sources:
        walk.typed(entry[key], f"{path}.{key}", str, "a string")
    if "name" in entry:
        name = walk.typed(entry["name"], f"{path}.name", str, "a string")
        if name is not None and not name.strip():
            walk.fail(f"{path}.name", "is empty", "give the target a short stable name")
            name = None
    else:
        name = default_target_name(params, env)
    labels = _info_labels(entry["labels"], f"{path}.labels", walk) if "labels" in entry else ()
    databases = (_databases(entry["databases"], f"{path}.databases", walk)
                 if "databases" in entry else None)
    max_connections = (_max_connections(entry["max_connections"], f"{path}.max_connections",
                                        walk) if "max_connections" in entry else None)
    if kind == PGBOUNCER and databases is not None:
        walk.fail(f"{path}.databases", "a pgbouncer target has no databases to walk",
                  "drop databases: from the pgbouncer target")
    if name is None or labels is None:
        return None
    try:
        conninfo = make_conninfo(**params)
    except psycopg.ProgrammingError:
        walk.fail(path, "holds characters a connection string cannot carry (e.g. NUL)",
                  "remove control characters from the connection settings")
        return None
    return TargetConfig(
        name=name,
        conninfo=conninfo,
        password=password,
        password_env=entry.get("password_env"),
        password_file=entry.get("password_file"),
        kind=kind,
        labels=labels,
        databases=databases,
        max_connections=max_connections,
    )


def _databases(raw: Any, path: str, walk: _Walk) -> DatabaseSelection | None:
    """``databases:``: a mapping of include/exclude pattern lists, or a list (include)."""
    entry = {"include": raw} if isinstance(raw, list | str) else raw
    if not isinstance(entry, dict):
        walk.fail(path, f"expected a mapping, got {_kind(raw)}", _DATABASES_FIX)
        return None
    entry = walk.mapping(entry, path, _DATABASES_KEYS)
    found: dict[str, tuple[str, ...]] = {}
    for key in ("include", "exclude"):
        value = entry.get(key, ["*"] if key == "include" else [])
        items = [value] if isinstance(value, str) else value
        where = path if key == "include" and not isinstance(raw, dict) else f"{path}.{key}"
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            walk.fail(where, f"expected a list of database name patterns, got {_kind(value)}",
                      _DATABASES_FIX)
            return None
        found[key] = tuple(items)
    if not found["include"]:
        walk.fail(f"{path}.include", "is empty: no database would be collected",
                  "include at least one pattern, e.g. \"*\"")
        return None
    return DatabaseSelection(include=found["include"], exclude=found["exclude"])


def _max_connections(raw: Any, path: str, walk: _Walk) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        walk.fail(path, f"expected a whole number of at least 1, got {raw!r}",
                  "write e.g. 2 (the target's own connection and one per-database one)")
        return None
    return raw


def info_label(name: Any, value: Any) -> tuple[str, str] | str:
    """(name, value) of a label of hiw_target_info, or why it cannot be one.

    >>> info_label("team", "payments"), info_label("tier", 1), info_label("on", True)
    (('team', 'payments'), ('tier', '1'), ('on', 'true'))
    >>> info_label("target", "x")
    "label 'target' is reserved (hiw_target_info names the target with it)"
    """
    if not isinstance(name, str) or not LABEL_NAME.fullmatch(name) or name.startswith("__"):
        return f"{name!r} is not a label name"
    if name in RESERVED_LABELS:
        return f"label {name!r} is reserved (hiw_target_info names the target with it)"
    if isinstance(value, bool):
        return name, "true" if value else "false"
    if isinstance(value, int | float | str):
        return name, str(value)
    return f"label {name!r}: expected a string, got {_kind(value)}"


def _info_labels(raw: Any, path: str, walk: _Walk) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(raw, dict):
        walk.fail(path, f"expected a mapping, got {_kind(raw)}", "write name: value pairs")
        return None
    labels = []
    for name, value in raw.items():
        found = info_label(name, value)
        if isinstance(found, str):
            walk.fail(_join(path, name), found,
                      "use letters, digits and _ (not starting with a digit or __), "
                      "a string value, and not the name target")
            return None
        labels.append(found)
    return tuple(sorted(labels))


def parse_target(raw: Mapping[str, Any], path: str, env: Mapping[str, str] | None = None
                 ) -> TargetConfig:
    """One target entry, checked as a ``targets:`` item is (for discovery files);
    raises :class:`ConfigError` with every problem."""
    walk = _Walk()
    target = _target(dict(raw), path, walk, os.environ if env is None else env)
    if walk.problems:
        raise ConfigError.combine(walk.problems)
    if target is None:  # every path that returns None has reported why
        raise ConfigError(path, "is not a valid target")
    return target


def _target_type(entry: Mapping[str, Any], path: str, walk: _Walk) -> str | None:
    kind = entry.get("type", POSTGRESQL)
    if kind not in TARGET_TYPES:
        walk.fail(f"{path}.type", f"{kind!r} is not a target type",
                  f"use one of: {', '.join(TARGET_TYPES)}")
        return None
    return str(kind)


def _pgbouncer_params(entry: Mapping[str, Any], params: dict[str, Any], path: str,
                      walk: _Walk) -> bool:
    """A PgBouncer target connects to the admin console (dbname ``pgbouncer``, the default
    here) with nothing in its startup packet that PgBouncer would refuse."""
    if "dsn" not in entry and "host" not in entry:
        walk.fail(path, "a pgbouncer target needs a dsn or host/port/user",
                  "add dsn: postgresql://user@host:6432/pgbouncer, or host: and port:")
        return False
    ok = True
    dbname = params.setdefault("dbname", PGBOUNCER_DBNAME)
    if dbname != PGBOUNCER_DBNAME:
        where = f"{path}.dbname" if "dbname" in entry else f"{path}.dsn"
        walk.fail(where, f"dbname {dbname!r}: a pgbouncer target reads PgBouncer's admin "
                  "console, whose database is pgbouncer",
                  "write dbname: pgbouncer (or leave it out); watch the PostgreSQL server "
                  "behind PgBouncer as a target of its own")
        ok = False
    for key in _PGBOUNCER_REFUSED:
        if key in params:
            walk.fail(f"{path}.dsn", f"{key} is set: PgBouncer refuses startup parameters it "
                      "does not know (unless ignore_startup_parameters lists them)",
                      f"remove {key} from the connection string")
            ok = False
    return ok


SettingsCheck = Callable[[float, float, Mapping[str, Any]], list[tuple[str, str, str]]]


def _bloat_check() -> SettingsCheck:
    from hiw_monitor.collectors.bloat import check_settings

    return check_settings


# Checks across a collector's options, interval and timeout (options that cannot fit the
# collector's time budget): collector name -> a function returning the check.
_SETTINGS_CHECKS: dict[str, Callable[[], SettingsCheck]] = {"bloat": _bloat_check}


def _collectors(
    raw: Any, walk: _Walk, known: Mapping[str, Collector]
) -> dict[str, CollectorSettings]:
    section = walk.mapping(raw, "collectors", dict.fromkeys(known, ""))
    result = {}
    for name, collector in known.items():
        path = f"collectors.{name}"
        allowed = {**_COLLECTOR_KEYS, **dict.fromkeys(collector.options, "")}
        entry = walk.mapping(section.get(name), path, allowed)
        enabled = True
        if "enabled" in entry:
            enabled = walk.typed(entry["enabled"], f"{path}.enabled", bool, "true or false")
        interval = collector.interval
        if "interval" in entry:
            interval = walk.duration(entry["interval"], f"{path}.interval", 0.1) or interval
        timeout = collector.timeout
        if "timeout" in entry:
            timeout = walk.duration(entry["timeout"], f"{path}.timeout", 0.01) or timeout
        stale_after = 3 * interval
        if "stale_after" in entry:
            stale_after = walk.duration(entry["stale_after"], f"{path}.stale_after", 0.1) or 0.0
            if stale_after and stale_after < interval:
                walk.fail(f"{path}.stale_after", "is shorter than the interval",
                          "use at least the interval (default: 3 x interval)")
        options = {}
        for key, spec in collector.options.items():
            if key in entry:
                options[key] = walk.option(entry[key], f"{path}.{key}", spec)
            else:
                options[key] = spec.default
        check = _SETTINGS_CHECKS.get(name)
        if check is not None and enabled:
            for key, problem, fix in check()(interval, timeout, options):
                walk.fail(f"{path}.{key}", problem, fix)
        result[name] = CollectorSettings(
            name=name, enabled=bool(enabled), interval=interval, timeout=timeout,
            stale_after=stale_after or 3 * interval, options=MappingProxyType(options),
        )
    return result


# --- user-defined SQL collectors (see hiw_monitor/collectors/custom.py) -----------------

_CUSTOM_KEYS = dict.fromkeys((
    "name", "help", "sql", "interval", "timeout", "stale_after", "enabled", "primary_only",
    "standby_only", "extension", "table", "metric_prefix", "max_series", "columns",
    "per_database"), "")
_VARIANT_KEYS = {"min_version": "", "max_version": "", "sql": ""}
_COLUMN_KEYS = {"usage": "", "help": "", "unit": ""}
_USAGE_FIX = "use one of: label, gauge, counter, ignore"


def _custom_entries(raw: Any, path: str, walk: _Walk) -> list[tuple[str, Any, Any]]:
    """(key path, raw declaration, the name its mapping key gives) of each declaration:
    a list, a mapping by name, or (a file of its own) one declaration."""
    if raw is None:
        return []
    if isinstance(raw, list):
        return [(f"{path}[{index}]", item, None) for index, item in enumerate(raw)]
    if isinstance(raw, dict):
        if "sql" in raw and not isinstance(raw["sql"], dict):
            return [(path, raw, None)]
        return [(_join(path, key), item, key) for key, item in raw.items()]
    walk.fail(path, f"expected a list of collectors, got {_kind(raw)}",
              "write each collector as a list item starting with '- name:'")
    return []


def _custom_files(raw: Any, walk: _Walk, base: Path) -> list[tuple[str, Any, Any]]:
    path = "custom_collectors_dir"
    if not isinstance(raw, str) or not raw.strip():
        walk.fail(path, f"expected a directory path, got {_kind(raw)}",
                  "write the path of a directory of *.yaml files")
        return []
    folder = Path(raw) if Path(raw).is_absolute() else base / raw
    if not folder.is_dir():
        walk.fail(path, f"{str(folder)!r} is not a directory",
                  "create it or fix the path (a relative path is relative to the config file)")
        return []
    entries = []
    for file in sorted(f for f in folder.iterdir() if f.suffix in (".yaml", ".yml")):
        try:
            document = _read_file(str(file))
        except ConfigError as exc:
            walk.problems.append(exc)
            continue
        entries += _custom_entries(document or None, str(file), walk)
    return entries


def _sql_text(value: Any, path: str, walk: _Walk) -> str | None:
    text = walk.typed(value, path, str, "the query as a string")
    if text is None:
        return None
    count = custom.statement_count(text)
    if count == 0:
        walk.fail(path, "holds no SQL statement", "write one SELECT")
        return None
    if count > 1:
        walk.fail(path, f"holds {count} statements",
                  "write one SELECT (a trailing semicolon is fine): a collector runs one "
                  "read-only statement")
        return None
    return str(text)


def _version(value: Any, path: str, walk: _Walk) -> int | None:
    try:
        return custom.version_num(value)
    except (TypeError, ValueError) as exc:
        walk.fail(path, str(exc), 'write a version like "13", "15.2" or 150002')
        return None


def _custom_sql(raw: Any, path: str, walk: _Walk) -> tuple[custom.SQLVariant, ...]:
    if isinstance(raw, str):
        text = _sql_text(raw, path, walk)
        return () if text is None else (custom.SQLVariant(text),)
    if not isinstance(raw, list) or not raw:
        walk.fail(path, f"expected the query or a list of versions, got {_kind(raw)}",
                  "write sql: SELECT ..., or a list of {min_version, max_version, sql}")
        return ()
    variants = []
    for index, item in enumerate(raw):
        where = f"{path}[{index}]"
        entry = walk.mapping(item, where, _VARIANT_KEYS)
        if not isinstance(item, dict):
            continue
        if "sql" not in entry:
            walk.fail(where, "has no sql", "add sql: the query for these versions")
            continue
        text = _sql_text(entry["sql"], f"{where}.sql", walk)
        low = _version(entry["min_version"], f"{where}.min_version", walk) \
            if "min_version" in entry else 0
        high = _version(entry["max_version"], f"{where}.max_version", walk) \
            if "max_version" in entry else None
        if text is None or low is None or ("max_version" in entry and high is None):
            continue
        if high is not None and high <= low:
            walk.fail(where, "max_version is not above min_version",
                      "ranges are half-open, [min_version, max_version): make max the larger")
            continue
        variants.append(custom.SQLVariant(text, low, high))
    ordered = sorted(variants, key=lambda v: v.min_version)
    for before, after in itertools.pairwise(ordered):
        if before.max_version is None or before.max_version > after.min_version:
            walk.fail(path, f"version ranges '{before.label}' and '{after.label}' overlap",
                      "ranges are half-open [min_version, max_version): end one where "
                      "the next begins")
    return tuple(ordered)


def _custom_column(key: Any, raw: Any, path: str, walk: _Walk) -> custom.Column | None:
    if not isinstance(key, str) or not key:
        walk.fail(path, "a column name must be a non-empty string", "quote the column name")
        return None
    spec = walk.mapping(raw, path, _COLUMN_KEYS) if isinstance(raw, dict) else {"usage": raw}
    usage_path = f"{path}.usage" if isinstance(raw, dict) else path
    usage = spec.get("usage")
    if usage is None:
        walk.fail(usage_path, "has no usage", _USAGE_FIX)
        return None
    if usage not in custom.USAGES:
        walk.fail(usage_path, f"unknown usage {usage!r}", _USAGE_FIX)
        return None
    help_text = walk.typed(spec.get("help", ""), f"{path}.help", str, "a string")
    unit = walk.typed(spec.get("unit", ""), f"{path}.unit", str, "a string")
    if unit and usage not in ("gauge", "counter"):
        walk.fail(f"{path}.unit", f"a {usage} column has no unit", "remove unit:")
    elif unit and not custom.METRIC_NAME.fullmatch(unit):
        walk.fail(f"{path}.unit", f"{unit!r} is not a valid unit",
                  "use a base unit such as seconds, bytes or ratio")
    if usage == "label" and (not custom.LABEL_NAME.fullmatch(key) or key.startswith("__")):
        walk.fail(path, f"{key!r} is not a valid label name",
                  "alias the column in the SQL to letters, digits and _ (not starting with "
                  "a digit or __)")
    elif usage == "label" and key in custom.RESERVED_LABELS:
        walk.fail(path, f"label {key!r} is reserved (every series carries it)",
                  "alias the column in the SQL to another name")
    elif usage in ("gauge", "counter") and not re.fullmatch(r"[a-zA-Z0-9_]+", key):
        walk.fail(path, f"{key!r} cannot be part of a metric name",
                  "alias the column in the SQL to letters, digits and _")
    if help_text is None or unit is None:
        return None
    return custom.Column(key, usage, help_text, unit)


def _custom_columns(raw: Any, path: str, walk: _Walk) -> tuple[custom.Column, ...]:
    if not isinstance(raw, dict) or not raw:
        walk.fail(path, "no columns declared" if raw is None or raw == {} else
                  f"expected a mapping of columns, got {_kind(raw)}",
                  "map every column the query returns to label, gauge, counter or ignore")
        return ()
    columns = [_custom_column(key, spec, _join(path, key), walk) for key, spec in raw.items()]
    found = tuple(c for c in columns if c is not None)
    if len(found) == len(columns) and not any(c.is_value for c in found):
        walk.fail(path, "no value column", "declare at least one column as gauge or counter")
    return found


def _flag(entry: Mapping[str, Any], key: str, path: str, walk: _Walk) -> bool:
    if key not in entry:
        return False
    return bool(walk.typed(entry[key], f"{path}.{key}", bool, "true or false"))


def _names(entry: Mapping[str, Any], key: str, path: str, walk: _Walk, pattern: re.Pattern[str],
           what: str) -> tuple[str, ...]:
    raw = entry.get(key)
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        walk.fail(f"{path}.{key}", f"expected {what} or a list of them, got {_kind(raw)}",
                  f"write {what}")
        return ()
    for item in items:
        if not pattern.fullmatch(item):
            walk.fail(f"{path}.{key}", f"{item!r} is not {what}", f"write {what}")
    return tuple(items)


def _declaration(raw: Any, path: str, key: Any, walk: _Walk) -> custom.Declaration | None:
    if not isinstance(raw, dict):
        walk.fail(path, f"expected a mapping, got {_kind(raw)}",
                  "write the collector as name:, sql:, columns: (see docs/writing-collectors.md)")
        return None
    before = len(walk.problems)
    entry = walk.mapping(raw, path, _CUSTOM_KEYS)
    name = entry.get("name", key)
    if key is not None and "name" in entry and entry["name"] != key:
        walk.fail(f"{path}.name", f"{entry['name']!r} differs from the key {key!r}",
                  "drop name: (the key names the collector) or make them equal")
    if name is None:
        walk.fail(path, "has no name", "add name: an identifier such as job_queue")
    elif not isinstance(name, str) or not custom.COLLECTOR_NAME.fullmatch(name):
        walk.fail(f"{path}.name" if "name" in entry else path,
                  f"{name!r} is not a valid collector name",
                  "use letters, digits and _ (at most 63, not starting with a digit)")
    help_text = walk.typed(entry.get("help", ""), f"{path}.help", str, "a string")
    if "sql" not in entry:
        walk.fail(path, "has no sql", "add sql: the query (one SELECT)")
    sql = _custom_sql(entry["sql"], f"{path}.sql", walk) if "sql" in entry else ()
    if "columns" not in entry:
        walk.fail(path, "has no columns",
                  "add columns: each column the query returns with its usage")
    columns = _custom_columns(entry["columns"], f"{path}.columns", walk) \
        if "columns" in entry else ()
    interval = custom.DEFAULT_INTERVAL
    if "interval" in entry:
        interval = walk.duration(entry["interval"], f"{path}.interval", 0.1) or interval
    timeout = custom.DEFAULT_TIMEOUT
    if "timeout" in entry:
        timeout = walk.duration(entry["timeout"], f"{path}.timeout", 0.01) or timeout
    stale_after = None
    if "stale_after" in entry:
        stale_after = walk.duration(entry["stale_after"], f"{path}.stale_after", 0.1)
        if stale_after is not None and stale_after < interval:
            walk.fail(f"{path}.stale_after", "is shorter than the interval",
                      "use at least the interval (default: 3 x interval)")
    enabled = entry.get("enabled", True)
    if "enabled" in entry:
        enabled = walk.typed(entry["enabled"], f"{path}.enabled", bool, "true or false")
    primary_only = _flag(entry, "primary_only", path, walk)
    standby_only = _flag(entry, "standby_only", path, walk)
    if primary_only and standby_only:
        walk.fail(f"{path}.standby_only", "primary_only and standby_only are both true",
                  "keep one of them: no server is both")
    per_database = _flag(entry, "per_database", path, walk)
    if per_database and any(c.name == "datname" and c.usage == "label" for c in columns):
        walk.fail(f"{path}.columns.datname", "a per_database collector labels its series "
                  "with datname itself", "drop the datname column or rename it")
    extensions = _names(entry, "extension", path, walk, custom.EXTENSION_NAME,
                        "an extension name")
    tables = _names(entry, "table", path, walk, custom.TABLE_NAME,
                    "a table name such as public.job_queue")
    prefix = None
    if "metric_prefix" in entry:
        prefix = walk.typed(entry["metric_prefix"], f"{path}.metric_prefix", str, "a string")
        if prefix is not None and not custom.METRIC_NAME.fullmatch(prefix):
            walk.fail(f"{path}.metric_prefix", f"{prefix!r} cannot start a metric name",
                      "use letters, digits and _, not starting with a digit, e.g. hiw_jobs_")
    max_series = custom.DEFAULT_MAX_SERIES
    if "max_series" in entry:
        max_series = walk.typed(entry["max_series"], f"{path}.max_series", int, "an integer")
        if max_series is not None and max_series < 1:
            walk.fail(f"{path}.max_series", f"{max_series!r} is below the minimum",
                      "use at least 1")
    if len(walk.problems) > before:
        return None
    return custom.Declaration(
        name=name, sql=sql, columns=columns, help=help_text, interval=interval,
        timeout=timeout, stale_after=stale_after, enabled=bool(enabled), metric_prefix=prefix,
        max_series=max_series, primary_only=primary_only, standby_only=standby_only,
        extensions=extensions, tables=tables, per_database=per_database)


def _custom_collectors(top: Mapping[str, Any], walk: _Walk, known: Mapping[str, Collector],
                       base: Path) -> list[custom.Declaration]:
    """Every declaration, validated alone and against the others and the built-ins."""
    entries = _custom_entries(top.get("custom_collectors"), "custom_collectors", walk)
    if "custom_collectors_dir" in top:
        entries += _custom_files(top["custom_collectors_dir"], walk, base)
    builtin = custom.builtin_metric_names()
    names: dict[str, str] = {}  # collector name -> where declared
    metrics: dict[str, str] = {}  # metric name -> the column that exports it
    found = []
    for path, raw, key in entries:
        decl = _declaration(raw, path, key, walk)
        if decl is None:
            continue
        where = f"{path}.name" if key is None else path
        if decl.name in known:
            walk.fail(where, f"{decl.name!r} is the name of a built-in collector",
                      "give the custom collector another name")
            continue
        if decl.name in names:
            walk.fail(where, f"duplicate collector name {decl.name!r} (also {names[decl.name]})",
                      "give every collector its own name")
            continue
        names[decl.name] = path
        if _custom_metrics(decl, path, walk, builtin, metrics):
            found.append(decl)
    return found


def _custom_metrics(decl: custom.Declaration, path: str, walk: _Walk, builtin: frozenset[str],
                    metrics: dict[str, str]) -> bool:
    """Check the declaration's metric names against the built-in ones and those already
    declared (``metrics``, which gains its names); False if one is invalid or taken."""
    ok = True
    try:
        names = decl.metric_names()
    except ValueError:
        walk.fail(f"{path}.metric_prefix", f"{decl.prefix!r} + a column is not a metric name",
                  "use a metric_prefix starting with a letter or _, e.g. hiw_jobs_")
        return False
    for column, (family, wire) in names.items():
        where = _join(f"{path}.columns", column)
        taken = next(((n, f"the built-in metric {n}") for n in (family, wire) if n in builtin),
                     None) or next(((n, metrics[n]) for n in (family, wire) if n in metrics),
                                   None)
        if taken is not None:
            walk.fail(where, f"metric {wire} collides with {taken[1]}",
                      "choose another metric_prefix or column alias (docs/metrics.md lists "
                      "the built-in metrics)")
            ok = False
            continue
        metrics[family] = metrics[wire] = where
    return ok


def _read_file(path: str) -> Any:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "config file not found",
                          "check the path given by --config / HIW_MONITOR_CONFIG") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a config file", "point at the YAML file") \
            from None
    except PermissionError:
        raise ConfigError(path, "config file is not readable by this user",
                          "fix its permissions or run as its owner") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "config file is not UTF-8 text", "save it as UTF-8") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(path, f"invalid YAML{where}: {problem}",
                          "fix the YAML syntax (indentation, colons, quotes)") from None
    return {} if document is None else document


def load(
    overrides: Overrides | None = None,
    environ: Mapping[str, str] | None = None,
    known: Mapping[str, Collector] | None = None,
    *,
    require_targets: bool = True,
) -> Config:
    """Build the effective configuration. Raises :class:`ConfigError` listing every problem."""
    flags = overrides or Overrides()
    env = os.environ if environ is None else environ
    if known is None:
        from hiw_monitor.collectors import BY_NAME

        known = BY_NAME
    walk = _Walk()

    config_path = flags.config or env.get(ENV_CONFIG) or None
    document: Any = _read_file(config_path) if config_path else {}
    source = config_path or "defaults"
    if not isinstance(document, dict):
        raise ConfigError(source, f"the top level must be a mapping, got {_kind(document)}",
                          "start the file with keys such as targets:, listen:, collectors:")
    top = walk.mapping(document, "", _TOP_KEYS)

    # targets: a DSN from a flag or the environment replaces the file's list
    dsn = flags.dsn or env.get(ENV_DSN) or None
    targets: list[tuple[str, TargetConfig]] = []  # (where in the input, target)
    if dsn:
        where = "--dsn" if flags.dsn else ENV_DSN
        raw: dict[str, Any] = {"dsn": dsn}
        name = flags.target_name or env.get(ENV_TARGET_NAME)
        if name:
            raw["name"] = name
        target = _target(raw, where, walk, env)
        targets = [(where, target)] if target else []
    elif "targets" in top:
        raw_targets = top["targets"]
        if not isinstance(raw_targets, list):
            walk.fail("targets", f"expected a list, got {_kind(raw_targets)}",
                      "write each target as a list item starting with '- name:'")
        else:
            for index, item in enumerate(raw_targets):
                target = _target(item, f"targets[{index}]", walk, env)
                if target:
                    targets.append((f"targets[{index}]", target))
    seen: dict[str, str] = {}
    for where, target in targets:
        if target.name in seen:
            walk.fail(f"{where}.name", f"duplicate target name {target.name!r} "
                      f"(also {seen[target.name]})", "give every target its own name")
        seen.setdefault(target.name, where)
    base = Path(config_path).parent if config_path else Path.cwd()
    file_sd = _file_sd(top["file_sd"], walk, base) if "file_sd" in top else None
    if dsn:  # watch this one database: neither the file's targets nor its discovery
        file_sd = None
    if require_targets and not targets and file_sd is None and not walk.problems:
        walk.fail("targets", "no database to watch",
                  f"give --dsn, set {ENV_DSN}, or list targets (or file_sd) in the config "
                  "file")
    shard = _shard(flags, env, top, walk)
    databases = _databases(top["databases"], "databases", walk) \
        if top.get("databases") is not None else None

    # listen
    listen_text = flags.listen or env.get(ENV_LISTEN) or top.get("listen", DEFAULT_LISTEN)
    listen = ("127.0.0.1", DEFAULT_PORT)
    if not isinstance(listen_text, str):
        walk.fail("listen", f"expected host:port, got {_kind(listen_text)}",
                  f"write it like {DEFAULT_LISTEN}")
    else:
        try:
            listen = parse_listen(listen_text, DEFAULT_PORT)
        except ValueError as exc:
            walk.fail("listen", str(exc), f"write it like {DEFAULT_LISTEN}")

    # connection
    conn_raw = walk.mapping(top.get("connection"), "connection", _CONNECTION_KEYS)
    defaults = ConnectionSettings()
    conn_values: dict[str, Any] = {
        key: walk.duration(value, f"connection.{key}", 0.001) for key, value in conn_raw.items()
        if key != "max_connections"
    }
    if "max_connections" in conn_raw:
        conn_values["max_connections"] = _max_connections(
            conn_raw["max_connections"], "connection.max_connections", walk)
    connection = ConnectionSettings(**{
        key: value if value is not None else getattr(defaults, key)
        for key, value in {**dict.fromkeys(_CONNECTION_KEYS), **conn_values}.items()
    })
    if connection.backoff_max < connection.backoff_initial:
        walk.fail("connection.backoff_max", "is shorter than backoff_initial",
                  "make backoff_max >= backoff_initial")

    collectors = _collectors(top.get("collectors"), walk, known)
    declarations = _custom_collectors(top, walk, known, base)
    for decl in declarations:
        collectors[decl.name] = CollectorSettings(
            name=decl.name, enabled=decl.enabled, interval=decl.interval,
            timeout=decl.timeout, stale_after=decl.stale_after or 3 * decl.interval,
            options=MappingProxyType({}))

    # log
    log = walk.mapping(top.get("log"), "log", {"level": "", "format": ""})
    level = flags.log_level or str(log.get("level", "info"))
    log_format = flags.log_format or str(log.get("format", "auto"))
    if level.lower() not in LOG_LEVELS:
        walk.fail("log.level", f"unknown level {level!r}", f"use one of {', '.join(LOG_LEVELS)}")
    if log_format not in LOG_FORMATS:
        walk.fail("log.format", f"unknown format {log_format!r}",
                  f"use one of {', '.join(LOG_FORMATS)}")

    # web: TLS and basic auth
    web = WebConfig()
    web_path = flags.web_config or env.get(ENV_WEB_CONFIG) or top.get("web_config_file")
    if web_path is not None and not isinstance(web_path, str):
        walk.fail("web_config_file", f"expected a file path, got {_kind(web_path)}",
                  "write the path of the web config file")
    elif web_path:
        try:
            web = load_web_config(web_path)
        except ConfigError as exc:
            walk.problems.append(exc)
    open_healthz = top.get("open_healthz", True)
    if not isinstance(open_healthz, bool):
        walk.fail("open_healthz", f"expected true or false, got {_kind(open_healthz)}",
                  "write true or false")
        open_healthz = True

    if walk.problems:
        error = ConfigError.combine(walk.problems)
        error.source = config_path or ""
        raise error
    return Config(
        targets=tuple(target for _, target in targets),
        listen=listen,
        connection=connection,
        collectors=MappingProxyType(collectors),
        log_level=level.lower(),
        log_format=log_format,
        source=source,
        web=web,
        open_healthz=open_healthz,
        custom=MappingProxyType({decl.name: custom.build(decl) for decl in declarations}),
        file_sd=file_sd,
        shard=shard,
        databases=databases,
    )


def _file_sd(raw: Any, walk: _Walk, base: Path) -> FileSD | None:
    """``file_sd: {files: [globs], refresh_interval: 30s}``; a relative glob is the
    config file's (its directory's)."""
    if not isinstance(raw, dict):
        walk.fail("file_sd", f"expected a mapping, got {_kind(raw)}",
                  "write files: [targets/*.yaml] and optionally refresh_interval: 30s")
        return None
    entry = walk.mapping(raw, "file_sd", _FILE_SD_KEYS)
    files = entry.get("files")
    patterns = [files] if isinstance(files, str) else files
    if not isinstance(patterns, list) or not patterns or not all(
            isinstance(p, str) and p.strip() for p in patterns):
        walk.fail("file_sd.files", f"expected a list of file paths, got {_kind(files)}",
                  "list files or globs such as targets/*.yaml (relative to the config file)")
        return None
    refresh = DEFAULT_REFRESH
    if "refresh_interval" in entry:
        refresh = walk.duration(entry["refresh_interval"], "file_sd.refresh_interval", 0.1) \
            or DEFAULT_REFRESH
    # absolute (base / an absolute path is that path), so a later chdir changes nothing
    resolved = tuple(os.path.normpath((base / p).absolute()) for p in patterns)
    return FileSD(files=resolved, refresh_interval=refresh)


SHARD_FIX = ("write INDEX/COUNT with INDEX from 0 to COUNT - 1, e.g. 0/3, or a pod name "
             "ending in -INDEX, e.g. hiw-monitor-2/3")


def _shard(flags: Overrides, env: Mapping[str, str], top: Mapping[str, Any], walk: _Walk
           ) -> Shard | None:
    """--shard > HIW_MONITOR_SHARD > shard: (INDEX/COUNT; see hiw_monitor/shard.py)."""
    if flags.shard:
        where, text = "--shard", flags.shard
    elif env.get(ENV_SHARD):
        where, text = ENV_SHARD, env[ENV_SHARD]
    elif top.get("shard") is not None:
        where, text = "shard", top["shard"]
    else:
        return None
    if not isinstance(text, str):
        walk.fail(where, f"expected INDEX/COUNT, got {_kind(text)}", SHARD_FIX)
        return None
    try:
        return parse_shard(text)
    except ValueError as exc:
        walk.fail(where, str(exc), SHARD_FIX)
        return None
