"""A light, bounded background workload shaped like the HiW app (classroom bursts,
progress updates, job queue polling, analytics refreshes), so the demo has something
to show. Anonymous data only, like the app itself."""

from __future__ import annotations

import contextlib
import random
import threading
from typing import Any

import psycopg

QUERIES: tuple[tuple[str, float], ...] = (
    # (statement, relative weight)
    ("SELECT id, name FROM classrooms WHERE facilitator_id = "
     "(SELECT id FROM facilitators ORDER BY random() LIMIT 1) AND is_active", 5),
    ("SELECT count(*) FROM student_sessions WHERE classroom_id = "
     "(SELECT id FROM classrooms ORDER BY random() LIMIT 1) AND is_active", 5),
    ("UPDATE student_sessions SET last_activity_at = now() WHERE id = "
     "(SELECT id FROM student_sessions TABLESAMPLE SYSTEM (1) LIMIT 1)", 4),
    ("UPDATE student_progress SET completion_percentage = least(100, completion_percentage + 5),"
     " updated_at = now() WHERE id = (SELECT id FROM student_progress TABLESAMPLE SYSTEM (1)"
     " LIMIT 1)", 4),
    ("SELECT id FROM job_queue WHERE status = 'pending' ORDER BY priority, scheduled_at"
     " LIMIT 5", 3),
    ("SELECT lesson_id, avg(completion_percentage) FROM student_progress GROUP BY lesson_id", 1),
    ("SELECT * FROM classroom_analytics_summary ORDER BY avg_completion DESC NULLS LAST"
     " LIMIT 10", 2),
    # no refresh of the analytics view: the demo shows the review finding it stale
)


class Workload:
    """``clients`` threads issuing app-like statements at about ``rate`` per second in all,
    until :meth:`stop`. Errors are counted, never raised (the demo must keep going)."""

    def __init__(self, dsn: str, clients: int = 2, rate: float = 20.0) -> None:
        self.dsn = dsn
        self.clients = clients
        self.rate = rate
        self.statements = 0
        self.errors = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Workload:
        for i in range(self.clients):
            thread = threading.Thread(target=self._loop, args=(i,), daemon=True,
                                      name=f"hiw-demo-workload-{i}")
            thread.start()
            self._threads.append(thread)
        return self

    def _loop(self, seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311 - load shaping, not security
        pause = self.clients / self.rate
        statements = [q for q, _ in QUERIES]
        weights = [w for _, w in QUERIES]
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True,
                                           application_name="hiw_demo_app", connect_timeout=3)
                conn.execute(rng.choices(statements, weights)[0].encode())
                self.statements += 1
            except psycopg.Error:
                self.errors += 1
                if conn is not None and conn.broken:
                    conn = None
                self._stop.wait(1.0)
            self._stop.wait(rng.uniform(0.5, 1.5) * pause)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
