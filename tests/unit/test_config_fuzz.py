"""Configuration fuzzing: any YAML document, and any value at any key of a valid one,
gives either a valid Config or a ConfigError naming a key path; never another exception."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiw_monitor.config import Config, Overrides, load
from hiw_monitor.errors import ConfigError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), st.sampled_from(["15s", "5m", "1h", "-1s", "0",
                                                           "1e9", "nan", "10x", ""]))
values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children,
                                                    max_size=4)), max_leaves=12)

VALID = {
    "listen": "127.0.0.1:9188",
    "targets": [{"name": "a", "host": "db", "port": 5432, "dbname": "hiw", "user": "mon",
                 "password_env": "PW"}],
    "connection": {"connect_timeout": "5s", "lock_timeout": "1s"},
    "collectors": {
        "connections": {"interval": "15s", "top_applications": 10},
        "statements": {"top_n": 100, "window": "5m", "buckets": [0.05, 0.1, 0.2],
                       "sla_exclude_queries": ["^REFRESH"]},
        "backups": {"thresholds": {"weekly": {"warning_after": "8d", "critical_after": "9d"}},
                    "log_table": "backup_execution_log"},
    },
    "log": {"level": "info", "format": "json"},
}


def key_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from key_paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from key_paths(child, (*prefix, index))


PATHS = [p for p in key_paths(VALID) if p]


def replaced(document, path, value):
    if len(path) == 1:
        copy = document.copy() if isinstance(document, dict) else list(document)
        copy[path[0]] = value
        return copy
    copy = document.copy() if isinstance(document, dict) else list(document)
    copy[path[0]] = replaced(document[path[0]], path[1:], value)
    return copy


def outcome(tmp_path, text: str):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        return load(Overrides(config=str(path)), environ={})
    except ConfigError as exc:
        error = exc
    assert error.message.strip(), "a ConfigError must say something"
    for problem in (error, *error.also):
        assert problem.path, f"no key path in {problem.line!r}"
    return error


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values)
def test_any_yaml_document(tmp_path, document):
    result = outcome(tmp_path, yaml.safe_dump(document))
    assert isinstance(result, Config | ConfigError)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_text(tmp_path, text):
    result = outcome(tmp_path, text)
    assert isinstance(result, Config | ConfigError)


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(PATHS), values)
def test_any_value_anywhere_in_a_valid_document(tmp_path, path, value):
    result = outcome(tmp_path, yaml.safe_dump(replaced(VALID, path, value)))
    if isinstance(result, ConfigError):
        # the problem is reported at (or under / above) the key that was changed
        wanted = ".".join(str(p) for p in path if not isinstance(p, int))
        reported = [p.path.replace("targets[0]", "targets") for p in (result, *result.also)]
        assert any(r.startswith(wanted) or wanted.startswith(r.split("[")[0])
                   for r in reported), (path, reported)


def test_the_valid_document_is_valid(tmp_path):
    assert isinstance(outcome(tmp_path, yaml.safe_dump(VALID)), Config)
