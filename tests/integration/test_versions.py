"""Every claimed server version, and what differs between them, on real servers.

- 13, 15, 17, 18 (the shared ``pg`` servers): each is the version it claims to be; the
  statements collector says whether it can leave nested statements out
  (``hiw_statements_toplevel_tracked``), and on 13 with ``track = all`` nested statements
  really do enter the SLA latency.
- 13: a role whose password is stored as md5 (13's default) cannot log in through the
  scram-sha-256 line of pg_hba.conf; the agent's hint names that cause and its fix, and
  the fix works. The fixtures set passwords as SCRAM, so their roles log in.
- 16 (pgserver wheel, no contrib): every collector that needs no extension works; the
  statements collector fails alone with its reason and the fix.
- 13 and 17 run from Debian roots through chroot: as the root's own user, in its own
  mount namespace, with no mount ever visible on the host, none left after destroy.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from conftest import HIW_DB, MATRIX, Server, start_server
from helpers import wait_for
from psycopg import sql
from test_catalog import FLEET, exported_names

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import ALL, BY_NAME
from hiw_monitor.collectors.statements import new_state
from hiw_monitor.config import ConnectionSettings, TargetConfig, load
from hiw_monitor.demo import chroot
from hiw_monitor.exposition import self_metrics
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target

pytestmark = pytest.mark.integration
PG_VERSIONS = MATRIX  # the shared `pg` server of every version with contrib
DEFAULTS = load(environ={}, require_targets=False).collectors


def collect(target: Target, name: str, state=None):
    store = SnapshotStore()
    store.register(target.name, target.redacted, name, 60, 180)
    return run_collection(target, BY_NAME[name], DEFAULTS[name], store, state), store


def families(sample) -> dict[str, object]:
    assert sample.error is None, sample.error
    return {f.name: f for f in sample.families}


def one(sample, name: str, **labels: str) -> float | None:
    for family in sample.families:
        for s in family.samples:
            if s.name in (name, f"{name}_total") and \
                    all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


# ------------------------------------------------------------------ every version

def test_each_server_is_the_version_it_claims(pg):
    wanted = int(pg.version.removeprefix("pg"))
    assert pg.major == wanted
    with pg.admin() as conn:
        number = int(conn.execute("SHOW server_version_num").fetchone()[0])
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        extensions = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
    assert number // 10000 == wanted
    assert "pg_stat_statements" in preload
    assert {"pg_stat_statements", "pgstattuple"} <= extensions
    # the agent's role logs in through the scram-sha-256 line (13 stores md5 by default:
    # the fixture sets its password as SCRAM)
    target = pg.target("versions")
    try:
        sample, _ = collect(target, "connections")
        assert sample.error is None, sample.error
        assert target.server is not None
        assert target.server.version.startswith(f"{wanted}.")
    finally:
        target.close()


NESTED_FUNCTION = """
CREATE TABLE public.hiw_nested_probe (x int);
CREATE FUNCTION public.hiw_nested_probe() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT count(*) FROM public.hiw_nested_probe);
END $$;
"""


def test_nested_statements_enter_the_sla_only_where_toplevel_is_missing(pg):
    """13 (pg_stat_statements 1.8, no ``toplevel``) with ``track = all``: the statement
    inside the function is counted beside the call, in the counters and in the SLA
    histogram, and ``hiw_statements_toplevel_tracked`` says so. 14+: only the call."""
    calls = 200
    with pg.admin() as admin:
        assert admin.execute("SHOW pg_stat_statements.track").fetchone()[0] == "all"
        admin.execute(NESTED_FUNCTION)
    target = pg.target("nested")
    state = new_state()
    try:
        polls = [collect(target, "statements", state)[0]]
        for _ in range(2):
            with pg.admin() as admin:
                for _ in range(calls):
                    admin.execute("SELECT public.hiw_nested_probe()")
            polls.append(collect(target, "statements", state)[0])
        with pg.admin() as admin:
            nested = admin.execute(
                "SELECT queryid FROM pg_stat_statements "
                "WHERE query LIKE '%(SELECT count(*) FROM public.hiw_nested_probe)'"
            ).fetchall()
        assert len(nested) == 1, nested  # pg_stat_statements sees it on every version
        nested_id = str(nested[0][0])
        last = polls[-1]
        assert "hiw_statements_toplevel_tracked" in families(last)
        # SLA scope: calls counted by the histogram in the last interval
        counted = (one(last, "hiw_query_duration_seconds_count")
                   - one(polls[-2], "hiw_query_duration_seconds_count"))
        # a statement new to the top N starts at 0 (so rate() sees it), then counts
        series = [one(poll, "hiw_statement_calls", queryid=nested_id) for poll in polls[1:]]
        if pg.major == 13:
            assert one(last, "hiw_statements_toplevel_tracked") == 0
            assert series[0] is not None
            assert series[1] - series[0] == calls
            assert counted >= 2 * calls  # the calls and the statements inside them
        else:
            assert one(last, "hiw_statements_toplevel_tracked") == 1
            assert series == [None, None]  # the nested statement is left out
            assert calls <= counted < 2 * calls
    finally:
        target.close()
        with pg.admin() as admin:
            admin.execute("DROP FUNCTION public.hiw_nested_probe(); "
                          "DROP TABLE public.hiw_nested_probe")


# ------------------------------------------------------------------ 13: md5 passwords

@pytest.mark.parametrize("pg", ["pg13"], indirect=True)
def test_an_md5_password_under_scram_is_named_with_its_fix(pg, tmp_path):
    role, password = "hiw_md5_probe", "md5-probe-Pa55"
    # a plain session, as a DBA's psql would be: 13's default stores the password as md5
    with psycopg.connect(pg.cluster.dsn(HIW_DB), autocommit=True) as raw:
        assert raw.execute("SHOW password_encryption").fetchone()[0] == "md5"
        raw.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}; GRANT pg_monitor TO {}").format(
            sql.Identifier(role), sql.Literal(password), sql.Identifier(role)))
        stored = raw.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                             [role]).fetchone()[0]
    assert stored.startswith("md5")
    log_size = pg.cluster.logfile.stat().st_size
    target = Target(TargetConfig("md5", pg.cluster.dsn(HIW_DB, user=role), password=password),
                    ConnectionSettings())
    try:
        sample, store = collect(target, "connections")
        assert sample.error is not None
        assert sample.error.code == "auth_failed"
        text = sample.error.text
        assert "password authentication failed" in text
        assert "md5" in text
        assert "scram-sha-256" in text
        assert (f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {role} PASSWORD"
                in text)
        assert password not in text
        # the landing page and /metrics get the same reason
        _, targets, _ = store.view()
        assert targets[0].error is not None
        assert "md5" in targets[0].error.text
        # the real cause, which the server keeps to its log
        wait_for(lambda: "does not have a valid SCRAM secret" in
                 pg.cluster.logfile.read_text(errors="replace")[log_size:],
                 what="the server's log line")

        # the hint's fix works
        with psycopg.connect(pg.cluster.dsn(HIW_DB), autocommit=True) as raw:
            raw.execute("SET password_encryption = 'scram-sha-256'")
            raw.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)))
        # (after the reconnect backoff the failure started)
        wait_for(lambda: collect(target, "connections")[0].error is None,
                 what="the role's login after the fix")
    finally:
        target.close()
        with psycopg.connect(pg.cluster.dsn(HIW_DB), autocommit=True) as raw:
            raw.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# ------------------------------------------------------------------ 16: no contrib

NEEDS_NO_EXTENSION = ("connections", "database", "wal_archiving", "backups", "vacuum",
                      "indexes", "bloat", "replication", "review")


@pytest.fixture(scope="module")
def pg16():
    server = start_server("pg16")
    yield server
    server.cluster.destroy()


def test_pg16_without_contrib_collects_all_but_statements(pg16: Server):
    assert pg16.major == 16
    assert {c.name for c in ALL} == {*NEEDS_NO_EXTENSION, "statements"}
    with pg16.admin() as conn:
        available = {r[0] for r in conn.execute("SELECT name FROM pg_available_extensions")}
    assert "pg_stat_statements" not in available  # the wheel really has no contrib
    store = SnapshotStore()
    target = pg16.target("pg16")
    try:
        for collector in ALL:
            store.register(target.name, target.redacted, collector.name, 60, 180)
            state = collector.new_state() if collector.new_state else None
            sample = run_collection(target, collector, DEFAULTS[collector.name], store, state)
            if collector.name == "statements":
                error = sample.error
                assert error is not None
                assert error.code in ("not_preloaded", "extension_missing")
                # the fix, in full: preload, restart, create the extension
                assert "shared_preload_libraries = 'pg_stat_statements'" in error.text
                assert "CREATE EXTENSION pg_stat_statements" in error.text
            else:
                assert sample.error is None, (collector.name, sample.error)
                assert sample.families, collector.name
    finally:
        target.close()
    _, targets, samples = store.view()
    up = {s.labels["collector"]: s.value
          for f in self_metrics(targets, samples, 0.0) if f.name == "hiw_collector_up"
          for s in f.samples}
    assert up == {**dict.fromkeys(NEEDS_NO_EXTENSION, 1.0), "statements": 0.0}
    reasons = {s.labels["reason"]
               for f in self_metrics(targets, samples, 0.0)
               if f.name == "hiw_collector_last_error_info" for s in f.samples}
    assert reasons == {"not_preloaded"}


# ------------------------------------------------------------------ chroot hygiene

def host_mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with Path("/proc/self/mountinfo").open() as mounts:
        return [line.split()[4] for line in mounts
                if line.split()[4] == str(path) or line.split()[4].startswith(prefix)]


@pytest.mark.parametrize("version", ["pg13", "pg17"])
def test_a_chroot_server_runs_as_the_roots_user_and_leaves_no_mount(version):
    major = int(version.removeprefix("pg"))
    root = chroot.root_of(major)
    server = start_server(version)
    try:
        pid = server.cluster.postmaster_pid()
        assert pid is not None
        assert Path(f"/proc/{pid}/root").resolve() == root.resolve()
        uid = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("Uid:")).split()[1])
        assert uid != 0
        assert (uid, server.cluster.datadir.stat().st_gid) == server.cluster.owner
        # its /proc, /dev and /tmp live in the server's own mount namespace only
        assert host_mounts_under(root) == []
        assert Path(f"/proc/{pid}/ns/mnt").resolve() != Path("/proc/self/ns/mnt").resolve()
        with server.admin() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.cluster.destroy()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the postmaster's exit")
    assert host_mounts_under(root) == []
    assert not server.cluster.base.exists()


# ------------------------------------------------------------------ 13: the catalog's gap

CATALOG = Path(__file__).parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(hiw_[a-z0-9_]+)` \|(.*)$", re.MULTILINE)
ONLY_14_PLUS = re.compile(r"\((?:PostgreSQL )?14\+")


@pytest.mark.parametrize("pg", ["pg13"], indirect=True)
def test_on_13_exactly_the_families_documented_as_14_plus_are_absent(pg):
    """test_catalog's check on 13: every family exported is documented, and the documented
    ones not exported are exactly those the catalog marks (14+)."""
    # the PostgreSQL side: the pgbouncer collector's families are test_pgbouncer's
    rows = {name: text for name, text in ROW.findall(CATALOG.read_text())
            if not name.startswith("hiw_pgbouncer_") and name not in FLEET}
    names = exported_names(pg)
    assert names - rows.keys() == set(), "exported but missing from docs/metrics.md"
    only_14 = {name for name, text in rows.items() if ONLY_14_PLUS.search(text)}
    assert only_14  # the catalog does mark them
    assert rows.keys() - names == only_14
