"""Fleets on real PostgreSQL: targets discovered from file_sd files while the agent runs
(added, changed, removed, half-written files, SIGHUP), fairness across 20 targets with
one of them stalled, and sharding a fleet of 30 over three and then four agents.

Every target here is the one shared server under its own name (each with its own
connection, as distinct databases would have): the fleet logic is the same whatever is
behind a name, and a server holds the 30 connections the sharding test needs. It does not
depend on the server version either: one version (15) is enough.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import HIW_DB, MONITOR_PASSWORD
from helpers import (
    agent_connections,
    http_get,
    running_agent,
    sample,
    samples,
    wait_for,
    wait_for_agent_connections,
)
from proxy import StallingProxy

from hiw_monitor.collectors import ALL
from hiw_monitor.config import Overrides, load
from hiw_monitor.demo.cluster import free_port
from hiw_monitor.shard import owner

pytestmark = pytest.mark.integration
PG_VERSIONS = ("pg15",)


# --- a fleet on disk ------------------------------------------------------------------


def write_config(tmp_path: Path, refresh: str = "200ms", collectors: tuple[str, ...] = (
        "connections",), timeout: str = "5s") -> Path:
    """A config whose targets come from tmp_path/targets/*.yaml; only ``collectors`` run,
    every second, with ``timeout`` (the others are disabled: less load on a shared
    machine)."""
    (tmp_path / "targets").mkdir(exist_ok=True)
    (tmp_path / "pw").write_text(MONITOR_PASSWORD + "\n")
    settings = "\n".join(
        f"  {c.name}: {{interval: 1s, timeout: {timeout}}}" if c.name in collectors else
        f"  {c.name}: {{enabled: false}}" for c in ALL)
    path = tmp_path / "hiw.yaml"
    path.write_text(textwrap.dedent(f"""\
        file_sd:
          files: [targets/*.yaml]
          refresh_interval: {refresh}
        connection:
          connect_timeout: 2s
          backoff_initial: 200ms
          backoff_max: 1s
        """) + f"collectors:\n{settings}\n")
    return path


def fleet_file(path: Path, targets: dict[str, int], half: bool = False) -> None:
    """Write the discovery file: name -> port of 127.0.0.1, as a tool would (whole, by a
    rename), or cut short (``half``: the moment a writer that does not rename is at)."""
    text = "".join(textwrap.dedent(f"""\
        - targets: ["127.0.0.1:{port}"]
          labels:
            name: {name}
            dbname: {HIW_DB}
            user: hiw_monitor
            password_file: {path.parent.parent / "pw"}
            fleet: test
        """) for name, port in targets.items())
    if half:  # "  use", mid-key, then EOF; swapped in whole, so that the agent never
        # reads the moment before it (an empty file, another reason: "empty")
        text = text[: text.rindex("user:") + 3]
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def agent_value(agent, name: str, **labels: str) -> float | None:
    """A sample of the agent's own families (hiw_target_info, discovery, shard), read
    from the store (what the exposition serves beside the collectors' records)."""
    for family in agent.store.agent_families():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def target_series(text: str, target: str) -> list[str]:
    return [name for (name, labels), _ in samples(text).items()
            if ("target", target) in labels]


def ok_runs(text: str, target: str, collector: str = "connections") -> float:
    """Successful runs of the collector on the target so far."""
    return successes(text, collector).get(target, 0.0)


def successes(text: str, collector: str = "connections") -> dict[str, float]:
    """Target -> successful runs of the collector so far (one parse for every target)."""
    runs: dict[str, float] = {}
    for (name, labels), value in samples(text).items():
        found = dict(labels)
        if found.get("collector") != collector:
            continue
        if name == "hiw_collector_runs_total":
            runs[found["target"]] = runs.get(found["target"], 0.0) + value
        elif name == "hiw_collector_errors_total":
            runs[found["target"]] = runs.get(found["target"], 0.0) - value
    return runs


def up_targets(run) -> set[str]:
    return {dict(labels)["target"] for (name, labels), value in samples(run.metrics()).items()
            if name == "hiw_up" and value == 1}


def resets(text: str, target: str) -> float:
    return sum(value for (name, labels), value in samples(text).items()
               if name == "hiw_statements_resets_detected_total"
               and ("target", target) in labels)


# --- (a) discovery while running -----------------------------------------------------


def test_targets_come_and_go_with_the_discovery_files(pg, tmp_path):
    config = load(Overrides(config=str(write_config(
        tmp_path, collectors=("connections", "statements")))), environ={})
    fleet = tmp_path / "targets" / "fleet.yaml"
    port = pg.cluster.port
    fleet_file(fleet, {"a": port, "b": port, "c": port})
    proxy = StallingProxy(port)  # forwards: b moves behind it (a changed address)
    with pg.admin() as admin, running_agent(config) as run:
        for name in ("a", "b", "c"):
            wait_for(lambda n=name: run.value("hiw_up", target=n) == 1, what=f"{name} up")
        for name in ("a", "b", "c"):  # a baseline of pg_stat_statements on each
            wait_for(lambda n=name: ok_runs(run.metrics(), n, "statements") >= 2,
                     what=f"two statements runs on {name}")
        assert agent_connections(admin) == 3
        agent = run.agent
        kept = {name: agent._by_name[name] for name in ("a", "b")}
        generation = kept["a"].generation
        state = agent.states[("a", "statements")]
        before = run.metrics()
        runs_a = ok_runs(before, "a", "statements")
        assert agent_value(agent, "hiw_target_info", target="a", fleet="test") == 1
        assert agent_value(agent, "hiw_discovery_file_valid", file=str(fleet)) == 1

        # added, in a file of its own
        fleet_file(tmp_path / "targets" / "more.yaml", {"d": port})
        wait_for(lambda: run.value("hiw_up", target="d") == 1, what="d added and up")
        wait_for_agent_connections(admin, 4)

        # removed: its series go, its connection is closed; changed: b behind the proxy
        fleet_file(fleet, {"a": port, "b": proxy.port})
        wait_for(lambda: not target_series(run.metrics(), "c"), what="c's series gone")
        wait_for(lambda: agent._by_name["b"] is not kept["b"], what="b replaced")
        wait_for(lambda: run.value("hiw_up", target="b") == 1, what="b up again")
        wait_for_agent_connections(admin, 3)  # a, b (new), d: c's and b's old one closed
        assert agent_value(agent, "hiw_target_info", target="c") is None
        assert agent.states[("b", "statements")] is not None
        assert ("c", "statements") not in agent.states

        # half-written: the last good list stays, and the file is reported invalid
        fleet_file(fleet, {"a": port, "b": proxy.port, "e": port}, half=True)
        wait_for(lambda: agent_value(agent, "hiw_discovery_file_valid", file=str(fleet)) == 0,
                 what="the half-written file reported")
        assert agent_value(agent, "hiw_discovery_errors_total", reason="syntax") == 1
        text = run.metrics()
        assert [sample(text, "hiw_up", target=n) for n in ("a", "b", "d", "e")] == \
            [1, 1, 1, None]
        assert agent_connections(admin) == 3
        fleet_file(fleet, {"a": port, "b": proxy.port, "e": port})  # written whole
        wait_for(lambda: run.value("hiw_up", target="e") == 1, what="e added")
        assert agent_value(agent, "hiw_discovery_file_valid", file=str(fleet)) == 1

        # a never left: the same Target, connection, statements baseline and counters
        wait_for(lambda: ok_runs(run.metrics(), "a", "statements") >= runs_a + 2,
                 what="a's statements collected twice more")
        after = run.metrics()
        assert agent._by_name["a"] is kept["a"]
        assert kept["a"].generation == generation  # never reconnected
        assert agent.states[("a", "statements")] is state
        assert resets(after, "a") == resets(before, "a")

        # a deleted file takes its targets with it
        (tmp_path / "targets" / "more.yaml").unlink()
        wait_for(lambda: run.value("hiw_up", target="d") is None, what="d removed")
        wait_for_agent_connections(admin, 3)  # a, b, e
    proxy.close()
    with pg.admin() as admin:
        wait_for_agent_connections(admin, 0)


def test_sighup_reloads_the_discovery_files(pg, tmp_path):
    """The reload SIGHUP asks for (Agent.request_reload), with polling out of the way."""
    config = load(Overrides(config=str(write_config(tmp_path, refresh="1h"))), environ={})
    fleet = tmp_path / "targets" / "fleet.yaml"
    fleet_file(fleet, {"a": pg.cluster.port})
    with running_agent(config) as run:
        wait_for(lambda: run.value("hiw_up", target="a") == 1, what="a up")
        fleet_file(fleet, {"a": pg.cluster.port, "b": pg.cluster.port})
        run.agent.request_reload()
        wait_for(lambda: run.value("hiw_up", target="b") == 1, what="b after the reload")


def test_a_real_sighup_to_hiw_monitor_run(pg, tmp_path):
    config = write_config(tmp_path, refresh="1h")
    fleet = tmp_path / "targets" / "fleet.yaml"
    fleet_file(fleet, {"a": pg.cluster.port})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiw_monitor", "run", "--config", str(config), "--listen",
         f"127.0.0.1:{port}", "--log-format", "json"],
        env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def up(name: str) -> bool:
            try:
                return sample(http_get(url + "/metrics", timeout=5).text, "hiw_up",
                              target=name) == 1
            except OSError:
                return False

        wait_for(lambda: up("a"), what="a up")
        fleet_file(fleet, {"a": pg.cluster.port, "b": pg.cluster.port})
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: up("b"), what="b after SIGHUP")
        assert proc.poll() is None  # SIGHUP reloads, it does not end the agent
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # a hang guard
        _, stderr = proc.communicate(timeout=30)
        assert '"signal": "SIGHUP"' in stderr
        assert '"targets_changed"' in stderr
        assert "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# --- (b) fairness ------------------------------------------------------------------------


def test_a_stalled_target_never_delays_the_other_nineteen(pg, tmp_path):
    """20 discovered targets, one behind a proxy that stalls: while the stalled target's
    one run hangs (its client deadline is 305 s), each of the other 19 completes at least
    3 more runs of its 1 s collector, and the stalled one completes none (a pool that let
    it hold up the others would give them none until its deadline); then removing it from
    the file takes it out."""
    config = load(Overrides(config=str(write_config(
        tmp_path, timeout="300s"))), environ={})
    fleet = tmp_path / "targets" / "fleet.yaml"
    proxy = StallingProxy(pg.cluster.port)
    others = [f"t{i:02d}" for i in range(19)]
    fleet_file(fleet, {**dict.fromkeys(others, pg.cluster.port), "stalled": proxy.port})
    try:
        with running_agent(config) as run:
            wait_for(lambda: up_targets(run) == {*others, "stalled"}, what="all 20 up")
            proxy.stall()
            pool = run.agent._pool
            wait_for(lambda: "stalled" in pool.busy(), what="a run of the stalled target")
            start = run.metrics()
            before = successes(start)

            def three_more() -> bool:
                now = successes(run.metrics())
                return all(now[n] >= before[n] + 3 for n in others)

            # the hang guard stays below the stalled run's deadline (305 s): the verdict
            # is "while that one run hangs", not a speed (57 runs of a 1 s collector on
            # 16 workers fit in it on a very slow machine)
            wait_for(three_more, timeout=290, what="3 more runs of each other target")
            assert "stalled" in pool.busy()
            assert run.value("hiw_collector_runs_total", target="stalled") == \
                sample(start, "hiw_collector_runs_total", target="stalled")

            fleet_file(fleet, dict.fromkeys(others, pg.cluster.port))
            wait_for(lambda: not target_series(run.metrics(), "stalled"),
                     what="the stalled target removed")
            assert up_targets(run) == set(others)
            proxy.resume()  # its hung run ends; then its queue closes its connection
            with pg.admin() as admin:
                wait_for_agent_connections(admin, len(others))
        with pg.admin() as admin:
            wait_for_agent_connections(admin, 0)
    finally:
        proxy.close()


# --- (c) sharding ------------------------------------------------------------------------


NAMES = [f"shard-{i:02d}" for i in range(30)]


def collected_by_shards(pg, tmp_path: Path, count: int) -> list[set[str]]:
    """Run ``count`` agents (shards 0..count-1) over the 30 names until each has collected
    every target it owns; the names each collected, per shard."""
    config_file = write_config(tmp_path)
    fleet_file(tmp_path / "targets" / "fleet.yaml", dict.fromkeys(NAMES, pg.cluster.port))
    agents = [running_agent(load(Overrides(config=str(config_file), shard=f"{i}/{count}"),
                                 environ={})) for i in range(count)]
    runs = [agent.__enter__() for agent in agents]
    try:
        for run in runs:
            wait_for(lambda r=run: all(
                s.runs_total >= 1 for s in r.agent.store.view()[2]),
                what="each owned target collected")
        with pg.admin() as admin:
            assert agent_connections(admin) == len(NAMES)  # each target by one agent
        collected = []
        for index, run in enumerate(runs):
            _, targets, sample_records = run.agent.store.view()
            names = {s.target for s in sample_records if s.runs_total >= 1}
            assert names == {t.name for t in targets}  # nothing it does not own
            assert agent_value(run.agent, "hiw_shard_targets",
                               shard=f"{index}/{count}") == len(names)
            collected.append(names)
        return collected
    finally:
        for agent in agents:
            agent.__exit__(None, None, None)
        with pg.admin() as admin:
            wait_for_agent_connections(admin, 0)


def test_sharding_over_three_then_four_agents(pg, tmp_path):
    three = collected_by_shards(pg, tmp_path, 3)
    assert set().union(*three) == set(NAMES)
    assert sum(len(names) for names in three) == len(NAMES)  # each by exactly one
    assert three == [
        {n for n in NAMES if owner(n, 3) == i} for i in range(3)]

    four = collected_by_shards(pg, tmp_path, 4)
    assert set().union(*four) == set(NAMES)
    assert sum(len(names) for names in four) == len(NAMES)
    moved = {n for n in NAMES if next(i for i in range(3) if n in three[i]) !=
             next(i for i in range(4) if n in four[i])}
    assert moved == four[3]  # only to the new shard, and all it owns came from the others
    for index in range(3):
        assert four[index] == three[index] - moved
