"""Targets from files, in Prometheus' ``file_sd`` format, re-read when they change.

A discovery file is a YAML (or, named ``*.json``, a JSON) list of groups, the same files
Prometheus' ``file_sd_configs`` read::

    - targets: ["db1.internal:5432", "db2.internal:5432"]
      labels: {dbname: heroes_in_waiting, user: hiw_monitor,
               password_file: /run/secrets/hiw_monitor, env: prod}

Each item of ``targets`` is one target: ``host:port`` (``host``, ``[v6addr]:port``), or
a whole libpq URI / ``key=value`` string. The group's ``labels`` carry the keys a
``targets:`` entry of the config file takes (:data:`CONNECTION_LABELS`: ``name``,
``type``, ``dbname``, ``user``, ``sslmode``, the SSL files, ``password_env``,
``password_file``); never a password (``password``, or one inside a URI, is refused: the
file is Prometheus' too). Labels starting with ``__`` are Prometheus' own and ignored;
every other label is a label of the target's ``hiw_target_info`` (never of its series).
A target's name is its ``name`` label (a group that names its target holds only that
one), else ``host:port/dbname``.

A file is taken whole or not at all: one that cannot be read, is not valid YAML/JSON
(half-written), is empty, or holds one bad entry keeps its last good list, and the
problem is logged (``discovery_error``) and counted. A file that is gone (deleted, or no
longer matched by a glob) takes its targets with it. A name already taken (by the config
file's ``targets:``, or by a file earlier in sorted order) is refused with both places.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
import yaml
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hiw_monitor.config import Config, FileSD, TargetConfig, info_label, parse_target
from hiw_monitor.errors import ConfigError

log = structlog.get_logger("hiw_monitor.discovery")

# The labels that say how to connect: the keys of a config file's target entry, but for
# the address (from ``targets``) and the password (never in a discovery file).
CONNECTION_LABELS = ("name", "type", "dbname", "user", "sslmode", "sslrootcert", "sslcert",
                     "sslkey", "password_env", "password_file")
# Labels refused, and the fix.
_REFUSED = {
    "password": "never write a password in a discovery file (Prometheus reads the file "
                "too): give a password_file or password_env label",
    "host": "write the address in targets (host:port), not as a label",
    "port": "write the address in targets (host:port), not as a label",
    "dsn": "write the connection string in targets, not as a label",
}
# Why a file was refused, as hiw_discovery_errors_total{reason}
REASONS = ("unreadable", "syntax", "empty", "format", "target", "duplicate")


class Problem(Exception):  # noqa: N818 - a finding about a file, not a bug
    """Why a discovery file (or one of its entries) is refused."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


def address(item: str) -> dict[str, str]:
    """The connection keys of one ``targets`` item.

    >>> address("db1:5432"), address("db1"), address("[::1]:5433")
    ({'host': 'db1', 'port': '5432'}, {'host': 'db1'}, {'host': '::1', 'port': '5433'})
    >>> address("postgresql://mon@db1/hiw")
    {'dsn': 'postgresql://mon@db1/hiw'}
    """
    if "://" in item or "=" in item:
        return {"dsn": item}
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return {"host": host, "port": rest[1:]} if rest.startswith(":") else {"host": host}
    if item.count(":") == 1:
        host, port = item.split(":")
        return {"host": host, "port": port}
    return {"host": item}


def _labels(raw: Any, where: str) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """(connection keys, info labels) of a group's labels."""
    if raw is None:
        return {}, ()
    if not isinstance(raw, dict):
        raise Problem("format", f"{where}: expected a mapping of labels, got "
                      f"{type(raw).__name__}")
    keys: dict[str, str] = {}
    info: list[tuple[str, str]] = []
    for name, value in raw.items():
        at = f"{where}.{name}"
        if name in _REFUSED:
            raise Problem("target", f"{at}: refused ({_REFUSED[name]})")
        if isinstance(name, str) and name.startswith("__"):
            continue  # Prometheus' own (__meta_*, __scheme__, ...)
        if name in CONNECTION_LABELS:
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise Problem("target", f"{at}: expected a string, got {type(value).__name__}")
            keys[name] = str(value)
            continue
        found = info_label(name, value)
        if isinstance(found, str):
            raise Problem("target", f"{at}: {found}")
        info.append(found)
    return keys, tuple(sorted(info))


def _group(raw: Any, where: str, env: Mapping[str, str]) -> list[TargetConfig]:
    if not isinstance(raw, dict):
        raise Problem("format", f"{where}: expected a mapping with targets: and labels:, got "
                      f"{type(raw).__name__}")
    unknown = sorted(str(key) for key in raw if key not in ("targets", "labels"))
    if unknown:
        raise Problem("format", f"{where}: unknown key {unknown[0]!r} (a group has targets: "
                      "and labels:)")
    items = raw.get("targets")
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise Problem("format", f"{where}.targets: expected a list of host:port strings")
    keys, info = _labels(raw.get("labels"), f"{where}.labels")
    if "name" in keys and len(items) > 1:
        raise Problem("target", f"{where}.labels.name: names one target, but the group has "
                      f"{len(items)} (put each named target in a group of its own, or leave "
                      "name out: the name is then host:port/dbname)")
    found = []
    for index, item in enumerate(items):
        at = f"{where}.targets[{index}]"
        try:
            target = parse_target({**address(item.strip()), **keys}, at, env)
        except ConfigError as exc:
            raise Problem("target", exc.message.replace("\n", "; ")) from None
        if target.password is not None:
            raise Problem("target", f"{at}: holds a password ({_REFUSED['password']})")
        found.append(replace(target, labels=info))
    return found


def parse(text: str, file: str, env: Mapping[str, str] | None = None) -> list[TargetConfig]:
    """The targets of a discovery file's text, or :class:`Problem` (see the module doc)."""
    if not text.strip():
        raise Problem("empty", "the file is empty (half-written?); write [] for no targets")
    try:
        document = json.loads(text) if file.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = getattr(exc, "lineno", None) or (mark.line + 1 if mark else None)
        at = f" at line {line}" if line else ""
        raise Problem("syntax", f"invalid {'JSON' if file.endswith('.json') else 'YAML'}{at} "
                      "(half-written?)") from None
    if not isinstance(document, list):
        raise Problem("format", f"expected a list of groups (- targets: [...]), got "
                      f"{type(document).__name__}")
    env = os.environ if env is None else env
    return [t for index, group in enumerate(document) for t in _group(group, f"[{index}]", env)]


@dataclass
class _File:
    signature: tuple[int, int, int, int] | None = None  # see _signature(), as last read
    targets: tuple[TargetConfig, ...] = ()  # the last good list
    problem: Problem | None = None  # why the latest version was refused, if it was


@dataclass
class Discovery:
    """The files of a ``file_sd`` setting and their last good lists (not thread-safe: one
    caller at a time, the agent's reload)."""

    config: FileSD
    reserved: Mapping[str, str] = field(default_factory=dict)  # static name -> where
    env: Mapping[str, str] | None = None
    _files: dict[str, _File] = field(default_factory=dict)
    _errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    # (file, name) -> where the name was taken first: the entries refused as duplicates
    _duplicates: dict[tuple[str, str], str] = field(default_factory=dict)

    def paths(self) -> list[str]:
        """The files the patterns match now, sorted."""
        found: set[str] = set()
        for pattern in self.config.files:
            found.update(p for p in glob.glob(pattern) if Path(p).is_file())  # noqa: PTH207
        return sorted(found)

    def scan(self, force: bool = False) -> tuple[TargetConfig, ...]:
        """Look at the files (re-reading the new and changed ones, every one if ``force``)
        and return the discovered targets: every file's last good list, in sorted file
        order, without the names taken before them."""
        paths = self.paths()
        for gone in sorted(set(self._files) - set(paths)):
            log.info("discovery_file_gone", file=gone,
                     targets_removed=len(self._files.pop(gone).targets))
        for path in paths:
            self._look(path, force)
        return self._merge(paths)

    def _look(self, path: str, force: bool) -> None:
        try:
            before = _signature(path)
        except OSError:
            return  # gone since the glob: its targets go at the next look
        state = self._files.setdefault(path, _File())
        if not force and before == state.signature:
            return
        try:
            data = Path(path).read_bytes()
            if _signature(path) != before:
                return  # being written: read again at the next look
        except OSError as exc:
            state.signature = before  # counted once, not at every look
            self._refuse(path, state, Problem("unreadable", f"cannot read it: "
                                              f"{exc.strerror or exc}"))
            return
        state.signature = before
        try:
            targets = parse(data.decode("utf-8"), path, self.env)
        except UnicodeDecodeError:
            self._refuse(path, state, Problem("syntax", "not UTF-8 text (half-written?)"))
            return
        except Problem as problem:
            self._refuse(path, state, problem)
            return
        if state.problem is not None or tuple(targets) != state.targets:
            log.info("discovery_file_read", file=path, targets=len(targets))
        state.targets, state.problem = tuple(targets), None

    def _refuse(self, path: str, state: _File, problem: Problem) -> None:
        self._errors[problem.reason] += 1
        state.problem = problem
        log.warning("discovery_error", file=path, reason=problem.reason, problem=problem.text,
                    kept=len(state.targets),
                    fix="the file's last good list stays until it is fixed")

    def _merge(self, paths: Sequence[str]) -> tuple[TargetConfig, ...]:
        taken = dict(self.reserved)  # name -> where
        found: list[TargetConfig] = []
        duplicates: dict[tuple[str, str], str] = {}
        for path in paths:
            for target in self._files[path].targets:
                if target.name in taken:
                    duplicates[(path, target.name)] = taken[target.name]
                    if (path, target.name) not in self._duplicates:
                        self._errors["duplicate"] += 1
                        log.warning("discovery_error", file=path, reason="duplicate",
                                    problem=f"duplicate target name {target.name!r} (also "
                                    f"{taken[target.name]}); the first is kept",
                                    fix="give every target its own name (a name label)")
                    continue
                taken[target.name] = path
                found.append(target)
        self._duplicates = duplicates
        return tuple(found)

    def problems(self) -> list[tuple[str, str]]:
        """(file, problem) of every file whose latest version was refused and of every
        entry refused as a duplicate, as of the latest scan."""
        refused = [(path, f.problem.text) for path, f in sorted(self._files.items())
                   if f.problem is not None]
        return refused + [(path, f"duplicate target name {name!r} (also {first})")
                          for (path, name), first in self._duplicates.items()]

    def families(self) -> list[Metric]:
        valid = GaugeMetricFamily(
            "hiw_discovery_file_valid", "1 if the discovery file's latest version was "
            "taken, 0 if it was refused (its last good list stays).", labels=["file"])
        listed = GaugeMetricFamily(
            "hiw_discovery_targets", "Targets in the discovery file's last good list.",
            labels=["file"])
        for path, state in sorted(self._files.items()):
            valid.add_metric([path], 0.0 if state.problem else 1.0)
            listed.add_metric([path], float(len(state.targets)))
        errors = CounterMetricFamily(
            "hiw_discovery_errors", "Discovery files (or their entries) refused, by reason: "
            "unreadable, syntax, empty, format, target (a bad entry), duplicate (a name "
            "already taken).", labels=["reason"])
        for reason in REASONS:
            errors.add_metric([reason], float(self._errors[reason]))
        return [valid, listed, errors]


def _signature(path: str) -> tuple[int, int, int, int]:
    """What tells a changed file: written (mtime, size), replaced (inode), or its
    permissions changed (ctime)."""
    stat = Path(path).stat()
    return stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino


def from_config(config: Config) -> Discovery | None:
    """The discovery of ``config``'s file_sd (None without one); the names of its
    ``targets:`` are taken first."""
    if config.file_sd is None:
        return None
    return Discovery(config.file_sd, reserved={
        t.name: f"targets[{index}] of {config.source}" for index, t in enumerate(config.targets)})
