"""The fair worker pool: one run per target at a time, targets round-robin, a stalled
target holding one worker only."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from hiw_monitor.pool import FairPool

WAIT = 30.0  # bound of every wait; the verdicts never depend on speed


class Recorder:
    def __init__(self, stall: set[str] | None = None) -> None:
        self.lock = threading.Lock()
        self.done: list[tuple[str, str]] = []
        self.running: dict[str, int] = defaultdict(int)
        self.overlap = False
        self.release = threading.Event()
        self.stall = stall or set()
        self.finished = threading.Condition(self.lock)

    def __call__(self, target: str, collector: str) -> None:
        with self.lock:
            self.running[target] += 1
            self.overlap |= self.running[target] > 1
        if target in self.stall:
            assert self.release.wait(WAIT)
        with self.lock:
            self.running[target] -= 1
            self.done.append((target, collector))
            self.finished.notify_all()

    def wait_done(self, count: int) -> None:
        with self.lock:
            assert self.finished.wait_for(lambda: len(self.done) >= count, WAIT), self.done


def wait_busy(pool: FairPool, expected: dict[str, str]) -> None:
    deadline = time.monotonic() + WAIT
    while pool.busy() != expected:
        assert time.monotonic() < deadline, pool.busy()
        time.sleep(0.001)


def test_a_stalled_target_holds_one_worker_and_the_others_keep_running():
    run = Recorder(stall={"t0"})
    pool = FairPool(2, run)
    try:
        pool.submit("t0", "a")
        for round_ in range(5):  # five rounds of every other target, all while t0 stalls
            for i in range(1, 20):
                assert pool.submit(f"t{i}", f"c{round_}")
            run.wait_done(19 * (round_ + 1))
        assert pool.busy() == {"t0": "a"}
        assert ("t0", "a") not in run.done
        run.release.set()
        run.wait_done(19 * 5 + 1)
    finally:
        run.release.set()
        pool.stop()


def test_a_targets_runs_never_overlap_and_keep_their_order():
    run = Recorder()
    pool = FairPool(4, run)
    try:
        for name in ("a", "b", "c", "d"):
            assert pool.submit("t", name)
        run.wait_done(4)
        assert run.done == [("t", "a"), ("t", "b"), ("t", "c"), ("t", "d")]
        assert not run.overlap
    finally:
        pool.stop()


def test_a_run_already_waiting_is_not_queued_twice():
    run = Recorder(stall={"t"})
    pool = FairPool(1, run)
    try:
        assert pool.submit("t", "first")  # starts, stalls
        wait_busy(pool, {"t": "first"})
        assert pool.submit("t", "x")
        assert not pool.submit("t", "x")  # still waiting behind the stalled run
        assert pool.pending() == 1
        run.release.set()
        run.wait_done(2)
        assert run.done == [("t", "first"), ("t", "x")]
    finally:
        run.release.set()
        pool.stop()


def test_targets_are_served_round_robin():
    run = Recorder(stall={"gate"})
    pool = FairPool(1, run)
    try:
        pool.submit("gate", "hold")  # the one worker is busy while the queues fill
        wait_busy(pool, {"gate": "hold"})
        for name in ("a1", "a2", "a3"):
            pool.submit("a", name)
        pool.submit("b", "b1")
        pool.submit("c", "c1")
        run.release.set()
        run.wait_done(6)
        order = [target for target, _ in run.done[1:]]
        assert order[:3] == ["a", "b", "c"], order  # b and c do not wait for all of a
    finally:
        run.release.set()
        pool.stop()


def test_forget_drops_a_removed_targets_waiting_runs_and_wait_idle():
    run = Recorder(stall={"gate"})
    pool = FairPool(1, run)
    try:
        pool.submit("gate", "hold")
        wait_busy(pool, {"gate": "hold"})
        pool.submit("gone", "x")
        pool.submit("kept", "y")
        pool.forget("gone")
        assert not pool.wait_idle(0.05)
        run.release.set()
        assert pool.wait_idle(WAIT)
        assert [t for t, _ in run.done] == ["gate", "kept"]
    finally:
        run.release.set()
        pool.stop()


def test_a_bug_in_a_run_does_not_kill_the_worker():
    calls: list[str] = []
    done = threading.Event()

    def run(target: str, collector: str) -> None:
        calls.append(collector)
        if collector == "boom":
            raise RuntimeError("bug")
        done.set()

    pool = FairPool(1, run)
    try:
        pool.submit("t", "boom")
        pool.submit("t", "ok")
        assert done.wait(WAIT)
        assert calls == ["boom", "ok"]
    finally:
        pool.stop()


def test_no_workers_is_refused():
    with pytest.raises(ValueError, match="at least one worker"):
        FairPool(0, lambda target, collector: None)
