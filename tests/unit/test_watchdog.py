"""The client-side deadlines of every target share one thread (hiw_monitor/target.py
``_Deadlines``): a fleet of 200 targets no longer holds 200 watchdog threads. A deadline
that passes while armed expires (once), a disarmed one never does, and a slow or failing
expiry does not stop the others'."""

from __future__ import annotations

import threading
import time

from hiw_monitor.target import _Watchdog


def watchdog_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("hiw-watchdog"))


def test_one_thread_serves_every_deadline():
    expired: list[tuple[int, float]] = []
    lock = threading.Lock()

    def expire_as(index: int):
        def expire(conn, seconds):
            with lock:
                expired.append((index, seconds))
        return expire

    dogs = [_Watchdog(f"t{i}", expire_as(i)) for i in range(200)]
    for i, dog in enumerate(dogs):
        dog.arm(object(), 0.05 if i % 2 == 0 else 30.0)  # type: ignore[arg-type]
    assert watchdog_threads() == 1
    deadline = time.monotonic() + 10
    while len(expired) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # none more, none twice
    assert sorted(i for i, _ in expired) == list(range(0, 200, 2))
    assert {s for _, s in expired} == {0.05}
    for dog in dogs:
        dog.disarm()
    assert watchdog_threads() == 1


def test_disarmed_in_time_never_expires_and_a_failing_expiry_is_contained():
    fired: list[str] = []

    def boom(conn, seconds):
        fired.append("boom")
        raise RuntimeError("a bug in an expiry")

    quick = _Watchdog("quick", lambda conn, seconds: fired.append("quick"))
    safe = _Watchdog("safe", lambda conn, seconds: fired.append("safe"))
    failing = _Watchdog("failing", boom)
    safe.arm(object(), 0.2)  # type: ignore[arg-type]
    failing.arm(object(), 0.05)  # type: ignore[arg-type]
    safe.disarm()  # the round trip ended in time
    quick.arm(object(), 0.3)  # type: ignore[arg-type]  # armed after the failure
    deadline = time.monotonic() + 10
    while "quick" not in fired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fired == ["boom", "quick"]
    # re-armed: the newest deadline counts, not the first
    late = _Watchdog("late", lambda conn, seconds: fired.append("late"))
    late.arm(object(), 0.05)  # type: ignore[arg-type]
    late.arm(object(), 30.0)  # type: ignore[arg-type]
    time.sleep(0.3)
    assert "late" not in fired
    late.close()
