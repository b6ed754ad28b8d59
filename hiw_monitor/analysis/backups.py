"""Backup health rules from the DBA review, as pure functions.

The review's ``backup_health_status`` view: Healthy when the last successful backup
ended less than 24 h ago, Warning under 48 h, Critical otherwise (and when there is none).
Two states the view cannot tell: ``unknown`` (the tables cannot be read) and ``future``
(the newest success ends after the database's now: a clock or time-zone error in the
writer, which the view would call Healthy until the clock catches up).
"""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("healthy", "warning", "critical", "unknown", "future")
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    warning_after: float = 24 * HOUR
    critical_after: float = 48 * HOUR


def backup_status(age: float | None, thresholds: Thresholds = Thresholds()) -> str:
    """healthy / warning / critical / future for the age (seconds) of the last success.

    ``None`` (never succeeded) is critical. The boundaries follow the review's view:
    an age of exactly 24 h is already a warning, exactly 48 h critical. A negative age
    (the success ends in the future) is ``future``: its real age cannot be known.

    >>> [backup_status(a) for a in (3600.0, 30 * HOUR, 50 * HOUR, None)]
    ['healthy', 'warning', 'critical', 'critical']
    >>> backup_status(24 * HOUR), backup_status(48 * HOUR)
    ('warning', 'critical')
    >>> backup_status(5 * 86400.0, Thresholds(8 * 86400.0, 9 * 86400.0))
    'healthy'
    >>> backup_status(-3 * HOUR), backup_status(0.0)
    ('future', 'healthy')
    """
    if age is None:
        return "critical"
    if age < 0:
        return "future"
    if age < thresholds.warning_after:
        return "healthy"
    if age < thresholds.critical_after:
        return "warning"
    return "critical"


def archiving_status(mode: str, configured: bool, last_archived: float | None,
                     last_failed: float | None) -> str:
    """healthy / failing / disabled for WAL archiving (times are Unix seconds).

    Failing when the newest failure is more recent than the newest success: the
    archiver retries the same segment until it works, so that is a stuck archive.

    >>> archiving_status("off", False, None, None)
    'disabled'
    >>> archiving_status("on", True, 100.0, 50.0), archiving_status("on", True, 100.0, 150.0)
    ('healthy', 'failing')
    >>> archiving_status("on", True, None, 10.0)
    'failing'
    """
    if mode == "off" or not configured:
        return "disabled"
    if last_failed is not None and (last_archived is None or last_failed > last_archived):
        return "failing"
    return "healthy"
