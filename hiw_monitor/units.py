"""Parsing and formatting of human-written units (durations, listen addresses).

Pure functions, no I/O. Examples here run as doctests.
"""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")  # no exponents, underscores, nan or inf


def _finite_non_negative(seconds: float, original: object) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"{original!r} is not a finite duration")
    if seconds < 0:
        raise ValueError(f"{original!r} is negative; a duration must be >= 0")
    return seconds


def parse_duration(text: str | int | float) -> float:
    """Return the number of seconds in a duration such as ``15s``, ``5m``, ``1h30m``.

    Plain numbers are seconds. Raises ``ValueError`` with the accepted forms.

    >>> parse_duration("15s"), parse_duration("5m"), parse_duration("1h30m")
    (15.0, 300.0, 5400.0)
    >>> parse_duration("250ms"), parse_duration(2), parse_duration("1.5")
    (0.25, 2.0, 1.5)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ValueError: 'soon' is not a duration; write it like 500ms, 15s, 5m, 1h or 1d
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(  # noqa: TRY004 - callers handle one error type for bad input
            f"{text!r} is not a duration; write it like 500ms, 15s, 5m, 1h or 1d")
    if isinstance(text, int | float):
        return _finite_non_negative(float(text), text)
    cleaned = text.strip().replace(" ", "")
    if _PLAIN_NUMBER.fullmatch(cleaned):
        return _finite_non_negative(float(cleaned), text)
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(cleaned):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(cleaned):
        raise ValueError(f"{text!r} is not a duration; write it like 500ms, 15s, 5m, 1h or 1d")
    return total


def format_duration(seconds: float) -> str:
    """Format seconds the way a human would write them in the config file.

    >>> format_duration(15), format_duration(300), format_duration(5400), format_duration(0.25)
    ('15s', '5m', '1h30m', '250ms')
    """
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            count, rest = divmod(rest, size)
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """Split ``host:port`` (or ``:port``, ``host``, ``[::1]:port``) into host and port.

    >>> parse_listen("127.0.0.1:9188", 1), parse_listen(":9000", 1), parse_listen("localhost", 9188)
    (('127.0.0.1', 9188), ('0.0.0.0', 9000), ('localhost', 9188))
    >>> parse_listen("[::1]:9188", 1)
    ('::1', 9188)
    >>> parse_listen("127.0.0.1:http", 1)
    Traceback (most recent call last):
    ValueError: port 'http' is not a number between 1 and 65535
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    host = host or "0.0.0.0"  # noqa: S104 - ":port" means every interface, as in other exporters
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not a number between 1 and 65535")
    return host, int(port_text)
