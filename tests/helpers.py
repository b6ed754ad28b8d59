"""Small helpers shared by integration tests: a running agent, HTTP, polling."""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from hiw_monitor.config import Config
from hiw_monitor.exposition import Exposition
from hiw_monitor.scheduler import Agent
from hiw_monitor.web import App, serve


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> Response:
    """One GET; ``timeout`` is a hang guard (a loaded machine answers slowly, not never)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return Response(reply.status, dict(reply.headers), reply.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, dict(err.headers), err.read())


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset(labels.items())): value} of a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    for (sname, slabels), value in samples(text).items():
        if sname == name and all((k, v) in slabels for k, v in labels.items()):
            return value
    return None


def value(sample, name: str, **labels: str) -> float:
    """The value of one series in a collector run's families (AssertionError if absent)."""
    for family in sample.families:
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name}{labels} in {[f.name for f in sample.families]}")


def wait_for(check: Callable[[], bool], timeout: float = 60, every: float = 0.2,
             what: str = "condition") -> None:
    """Poll ``check`` until it holds. ``timeout`` bounds a hang, it is not the verdict:
    keep it generous (tens of seconds, well above what the condition needs on a slow
    machine) so that a busy or small CI runner never fails a test by being slow. A test
    asserts that something happens, never how fast; speed belongs to bench/."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass
class Running:
    agent: Agent
    url: str

    def metrics(self) -> str:
        return http_get(self.url + "/metrics").text

    def value(self, name: str, **labels: str) -> float | None:
        return sample(self.metrics(), name, **labels)


@contextlib.contextmanager
def running_agent(config: Config) -> Iterator[Running]:
    agent = Agent(config)
    app = App(agent.store, Exposition(agent.store, derived=agent.health.families),
              alive=agent.alive, health=agent.health)
    server, thread = serve(app, "127.0.0.1", 0)
    agent.start()
    try:
        yield Running(agent, f"http://127.0.0.1:{server.server_port}")
    finally:
        agent.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def agent_connections(admin_conn) -> int:
    row = admin_conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hiw_monitor'"
    ).fetchone()
    return int(row[0])


def wait_for_agent_connections(admin_conn, count: int, timeout: float = 60) -> None:
    """Wait until the agent holds ``count`` server-side connections. A backend leaves
    pg_stat_activity a moment after its client closes the connection, not at once, so
    "none left after stop" is checked by polling; a leaked connection stays and fails."""
    wait_for(lambda: agent_connections(admin_conn) == count, timeout=timeout,
             what=f"{count} agent connection(s) in pg_stat_activity")
