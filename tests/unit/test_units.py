"""units.py: durations and listen addresses."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hiw_monitor.units import format_duration, parse_duration, parse_listen

# Written out independently of the module's own table.
SECONDS_PER = {"ms": 0.001, "s": 1, "m": 60, "h": 60 * 60, "d": 24 * 60 * 60}


@pytest.mark.parametrize(("unit", "size"), sorted(SECONDS_PER.items()))
def test_every_unit(unit, size):
    assert parse_duration(f"7{unit}") == pytest.approx(7 * size)
    assert parse_duration(f"2.5{unit}") == pytest.approx(2.5 * size)


def test_compound_and_spaces():
    assert parse_duration("1h30m") == 90 * 60
    assert parse_duration("1d2h3m4s5ms") == pytest.approx(86400 + 7200 + 180 + 4 + 0.005)
    assert parse_duration(" 1h 30m ") == 90 * 60


@pytest.mark.parametrize(("value", "expected"), [
    ("15", 15.0), ("1.5", 1.5), ("0", 0.0), (2, 2.0), (0.25, 0.25), (0, 0.0),
])
def test_plain_numbers_are_seconds(value, expected):
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == expected


@pytest.mark.parametrize("value", [-1, -0.5, "-5", "-5s", "-1h30m"])
def test_negative_rejected(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [
    "", "   ", "soon", "5x", "m5", "1h30", "h", "1hh", "5 parsecs", "1.h", "s5", "1h-30m",
])
def test_garbage_rejected_with_the_accepted_forms(value):
    with pytest.raises(ValueError, match="500ms, 15s, 5m, 1h or 1d"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_bool_rejected(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "infinity", float("nan"), float("inf")])
def test_non_finite_rejected(value):
    # A duration must be a finite number of seconds; NaN/inf would become an interval.
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [None, [1], {"s": 1}, object()])
def test_wrong_type_is_a_value_error(value):
    # Callers (the config walk) handle ValueError/TypeError, not AttributeError.
    with pytest.raises(ValueError):
        parse_duration(value)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(SECONDS_PER))),
                min_size=1, max_size=5))
def test_compound_sum(parts):
    text = "".join(f"{count}{unit}" for count, unit in parts)
    expected = sum(count * SECONDS_PER[unit] for count, unit in parts)
    assert math.isclose(parse_duration(text), expected, rel_tol=1e-12, abs_tol=1e-9)


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_format_round_trips_whole_seconds(seconds):
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert " " not in text


@given(st.integers(min_value=1, max_value=999))
def test_format_round_trips_milliseconds(millis):
    text = format_duration(millis / 1000)
    assert text.endswith("ms")
    assert math.isclose(parse_duration(text), millis / 1000)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9188", ("127.0.0.1", 9188)),
    ("localhost:1", ("localhost", 1)),
    ("db.example:65535", ("db.example", 65535)),
    (":9000", ("0.0.0.0", 9000)),
    ("localhost", ("localhost", 4242)),
    ("[::1]:9188", ("::1", 9188)),
    ("[::]:80", ("::", 80)),
    ("[::1]", ("::1", 4242)),
    ("  0.0.0.0:8080  ", ("0.0.0.0", 8080)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text, 4242) == expected


@pytest.mark.parametrize("text", [
    "h:0", "h:65536", "h:99999", "h:-1", "h:http", "h:80a", ":0", "[::1]:0", "[::1]:http",
])
def test_parse_listen_bad_port(text):
    with pytest.raises(ValueError, match="between 1 and 65535"):
        parse_listen(text, 9188)


@given(st.sampled_from(["127.0.0.1", "localhost", "db-1.internal", "10.0.0.7"]),
       st.integers(min_value=1, max_value=65535))
def test_parse_listen_host_port_property(host, port):
    assert parse_listen(f"{host}:{port}", 1) == (host, port)
    assert parse_listen(f"[{host}]:{port}", 1) == (host, port)
