"""A bounded worker pool that is fair across targets.

Every run of a target goes through the target's own queue: its runs never overlap (they
share one connection) and run in the order they came due, and a worker takes the next
target that has work and is not being served, round-robin. So a target that stalls
(a network black hole until the client deadline) holds at most one worker, and the
others keep every other target's collections on time; and a target's backlog is at most
one pending run per collector (a run already queued is not queued twice).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import structlog

log = structlog.get_logger("hiw_monitor.pool")


class FairPool:
    """``workers`` threads running ``run(target, collector)`` items (see the module doc)."""

    def __init__(self, workers: int, run: Callable[[str, str], None],
                 name: str = "hiw-worker") -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self._run = run
        self._cond = threading.Condition()
        self._queues: dict[str, deque[str]] = {}  # target -> collectors waiting, in order
        self._ready: deque[str] = deque()  # targets with work, not being served
        self._active: dict[str, str] = {}  # target -> the collector running now
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, target: str, collector: str) -> bool:
        """Queue a run; False when that collector of that target is already waiting."""
        with self._cond:
            if self._stopping:
                return False
            queue = self._queues.setdefault(target, deque())
            if collector in queue:
                return False
            queue.append(collector)
            if target not in self._active and target not in self._ready:
                self._ready.append(target)
                self._cond.notify()
            return True

    def forget(self, target: str) -> None:
        """Drop a removed target's waiting runs (a run in progress finishes)."""
        with self._cond:
            self._queues.pop(target, None)
            if target in self._ready:
                self._ready.remove(target)

    def busy(self) -> dict[str, str]:
        """What runs now: target -> collector."""
        with self._cond:
            return dict(self._active)

    def pending(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs or waits (after the scheduler paused); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._active and not any(self._queues.values()), timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or bool(self._ready))
                if self._stopping:
                    return
                target = self._ready.popleft()
                queue = self._queues.get(target)
                if not queue:
                    continue
                collector = queue.popleft()
                self._active[target] = collector
            try:
                self._run(target, collector)
            except Exception:  # run_collection never raises; a bug must not kill a worker
                log.exception("worker_bug", target=target, collector=collector)
            finally:
                with self._cond:
                    self._active.pop(target, None)
                    if self._queues.get(target):
                        self._ready.append(target)  # behind the targets already waiting
                    self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking work, drop what waits, and join the workers (runs in progress are
        expected to have been cancelled by the caller)."""
        with self._cond:
            self._stopping = True
            self._queues.clear()
            self._ready.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=timeout)
