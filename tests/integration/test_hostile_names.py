"""Hostile identifiers in the database produce valid exposition text and an escaped
landing page: quotes, backslashes, newlines, HTML, unusual Unicode, 10 kB names."""

from __future__ import annotations

import pytest
from conftest import MONITOR_PASSWORD
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from hiw_monitor.collect import run_collection
from hiw_monitor.collectors import ALL
from hiw_monitor.config import ConnectionSettings, TargetConfig, load
from hiw_monitor.exposition import MAX_LABEL_VALUE, Exposition
from hiw_monitor.snapshot import SnapshotStore
from hiw_monitor.target import Target
from hiw_monitor.web import App

pytestmark = pytest.mark.integration
HOSTILE = ['quote"d', "back\\slash", "new\nline", "<script>alert(1)</script>",
           "zero\u200bwidth \u202eevil", "\U0001f9b8 hero", "x" * 10_000]
TARGET = '<img src=x onerror="alert(1)">'


@pytest.fixture
def hostile_db(pg):
    name = "hostile_names"
    pg.cluster.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg.cluster.execute(f'CREATE DATABASE "{name}"')
    with pg.admin(name) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("""
            CREATE TABLE backup_configurations (id serial PRIMARY KEY, backup_name text,
                                                backup_type text);
            CREATE TABLE backup_execution_log (backup_config_id int, status text,
                start_time timestamptz, end_time timestamptz, backup_size_bytes bigint);
            CREATE SCHEMA "<b>sch""ema</b>";
        """)
        for index, text in enumerate(HOSTILE):
            conn.execute("INSERT INTO backup_configurations (backup_name, backup_type) "
                         "VALUES (%s, %s)", [text, text[:20]])
            conn.execute("INSERT INTO backup_execution_log VALUES (%s, 'completed', "
                         "now() - interval '2 hours', now() - interval '1 hour', 1)",
                         [index + 1])
            table = text[:60].replace('"', '""')
            conn.execute(f'CREATE TABLE "<b>sch""ema</b>"."{table}" (id int PRIMARY KEY)')
        conn.execute('GRANT USAGE ON SCHEMA public, "<b>sch""ema</b>" TO hiw_monitor')
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO hiw_monitor")
    yield name
    pg.cluster.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_hostile_identifiers_render_valid_and_escaped(pg, hostile_db):
    # an application_name full of quotes and markup is connected while collecting
    app = pg.cluster.connect(hostile_db, application_name='app "x" <b>\\')
    settings = load(environ={}, require_targets=False).collectors
    store = SnapshotStore()
    target = Target(TargetConfig(TARGET, pg.cluster.dsn(hostile_db, user="hiw_monitor"),
                                 password=MONITOR_PASSWORD), ConnectionSettings())
    try:
        for collector in ALL:
            store.register(TARGET, target.redacted, collector.name, 60, 180)
            state = collector.new_state() if collector.new_state else None
            sample = run_collection(target, collector, settings[collector.name], store, state)
            assert sample.error is None, (collector.name, sample.error)
    finally:
        target.close()
        app.close()
    exposition = Exposition(store)
    text = exposition.get().body.decode()
    families = list(parse_text(text))  # raises on any invalid line
    om_families = list(parse_om(exposition.get(openmetrics_format=True).body.decode()))
    assert len(om_families) == len(families)

    names = {s.labels["backup_name"] for f in families if f.name == "hiw_backup_status"
             for s in f.samples}
    for hostile in HOSTILE[:-1]:
        assert hostile in names  # escaped on the wire, the same after parsing
    long_names = [n for n in names if n.startswith("xxx")]
    assert long_names == ["x" * (MAX_LABEL_VALUE - 1) + "…"]
    apps = {s.labels["application_name"] for f in families
            if f.name == "hiw_connections_by_application" for s in f.samples}
    assert 'app "x" <b>\\' in apps
    for family in families:
        for s in family.samples:
            assert s.labels["target"] == TARGET
            assert all(len(v) <= MAX_LABEL_VALUE for v in s.labels.values())

    page = App(store, exposition).landing()
    assert TARGET not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "<script>" not in page
