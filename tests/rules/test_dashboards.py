"""Static checks of the bundled Grafana dashboards (dashboards/*.json): structure, the
`datasource`/`target` variables, layout, and that every query reads cataloged metrics (or
recording rules of alerts/) of the selected targets only. No network: the queries are run
against a real Prometheus by the end-to-end tests, through dashboards_lib.panel_queries()."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from dashboards_lib import (
    DASHBOARDS,
    DATASOURCE,
    PROMQL_FUNCTIONS,
    TARGET_MATCHER,
    Selector,
    all_panels,
    catalog,
    dashboard_files,
    load,
    panel_queries,
    parse,
    query_panels,
    recording_rules,
    substitute,
)

EXPECTED = {
    "hiw-overview.json": ("hiw-overview", "HiW — Overview"),
    "hiw-query-performance.json": ("hiw-query-performance", "HiW — Query performance"),
    "hiw-backups.json": ("hiw-backups", "HiW — Backups and DR"),
    "hiw-maintenance.json": ("hiw-maintenance", "HiW — Bloat and maintenance"),
    "hiw-connections.json": ("hiw-connections", "HiW — Connections"),
    "hiw-replication.json": ("hiw-replication", "HiW — Replication"),
    "hiw-pgbouncer.json": ("hiw-pgbouncer", "HiW — PgBouncer"),
}
FILES = dashboard_files()
README = DASHBOARDS / "README.md"
GRID_COLUMNS = 24
# Labels every series may carry besides the cataloged ones: Prometheus adds job and instance.
SCRAPE_LABELS = {"job", "instance", "__name__"}


def targets_of(panel: dict) -> list[dict]:
    return [t for t in panel.get("targets", []) if t.get("expr")]


def exprs(path: Path) -> list[tuple[str, str]]:
    """(panel title, expr) of one dashboard."""
    return [(p["title"], t["expr"]) for p in query_panels(load(path)) for t in targets_of(p)]


def test_the_five_dashboards_exist_with_stable_uids_and_titles():
    found = {path.name: (load(path)["uid"], load(path)["title"]) for path in FILES}
    assert found == EXPECTED


def test_dashboard_uids_are_unique():
    uids = [load(path)["uid"] for path in FILES]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_dashboard_settings(path):
    dashboard = load(path)
    assert "hiw-monitor" in dashboard["tags"]
    assert 36 <= dashboard["schemaVersion"] <= 41, "Grafana 10/11 schema"
    assert dashboard["time"] == {"from": "now-6h", "to": "now"}
    assert dashboard["refresh"] == "30s"
    assert dashboard.get("description"), "a dashboard says what it is for"
    assert "id" not in dashboard or dashboard["id"] is None, "provisioned by uid, not id"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_datasource_and_target_variables(path):
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    target = variables["target"]
    assert target["type"] == "query"
    assert target["datasource"] == DATASOURCE
    query = target["query"]["query"] if isinstance(target["query"], dict) else target["query"]
    assert re.sub(r"\s", "", query) == "label_values(hiw_up,target)"
    assert target["multi"] is True
    assert target["includeAll"] is True


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_panel_uses_the_datasource_variable(path):
    dashboard = load(path)
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            assert not targets_of(panel), f"row {panel['title']!r} has queries"
            continue
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert targets_of(panel), f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_panels_have_a_title_description_unit_and_unique_refids(path):
    for panel in query_panels(load(path)):
        title = panel.get("title", "")
        assert title.strip(), f"panel {panel.get('id')} has no title"
        assert len(panel.get("description", "")) >= 20, f"{title!r} needs a description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title!r} has no unit"
        refids = [t["refId"] for t in panel["targets"]]
        assert len(refids) == len(set(refids)), f"{title!r} repeats a refId"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_threshold_steps_start_at_base_and_ascend(path):
    for panel in query_panels(load(path)):
        field_config = panel["fieldConfig"]
        configs = [field_config["defaults"]] + [
            {p["id"]: p["value"] for p in override["properties"]}
            for override in field_config.get("overrides", [])
        ]
        for config in configs:
            if "thresholds" not in config:
                continue
            steps = config["thresholds"]["steps"]
            assert steps[0]["value"] is None, f"{panel['title']!r}: first step is the base"
            values = [step["value"] for step in steps[1:]]
            assert values == sorted(values), f"{panel['title']!r}: steps out of order"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_panel_ids_are_unique(path):
    ids = [panel["id"] for panel in all_panels(load(path)["panels"])]
    assert len(ids) == len(set(ids))


def overlaps(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def assert_no_overlap(panels: list[dict]) -> None:
    for i, a in enumerate(panels):
        for b in panels[i + 1:]:
            assert not overlaps(a["gridPos"], b["gridPos"]), (
                f"{a['title']!r} {a['gridPos']} overlaps {b['title']!r} {b['gridPos']}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_layout_fits_the_grid_without_overlap(path):
    dashboard = load(path)
    for panel in all_panels(dashboard["panels"]):
        pos = panel["gridPos"]
        assert min(pos["x"], pos["y"]) >= 0, panel["title"]
        assert pos["w"] > 0, panel["title"]
        assert pos["x"] + pos["w"] <= GRID_COLUMNS, f"{panel['title']!r} is off the grid"
        if panel["type"] == "row":
            assert (pos["h"], pos["w"]) == (1, GRID_COLUMNS), panel["title"]
        else:
            assert 6 <= pos["h"] <= 9, f"{panel['title']!r}: height {pos['h']}"
    assert_no_overlap(dashboard["panels"])
    for row in dashboard["panels"]:  # a collapsed row keeps its panels inside
        assert_no_overlap(row.get("panels", []))


def test_gridpos_overlap_is_detected():
    a = {"title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}}
    b = {"title": "b", "gridPos": {"x": 11, "y": 7, "w": 4, "h": 8}}
    c = {"title": "c", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 8}}
    assert_no_overlap([a, c])
    with pytest.raises(AssertionError, match="overlaps"):
        assert_no_overlap([a, b, c])


# ---- the queries -------------------------------------------------------------------------

@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_selector_filters_on_the_target_variable(path):
    for title, expr in exprs(path):
        selectors = parse(expr).selectors
        assert selectors, f"{title!r}: no metric in {expr!r}"
        for selector in selectors:
            assert TARGET_MATCHER in selector.matchers, (
                f"{title!r}: {selector.name} is not filtered on target=~\"$target\" in {expr!r}")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_metric_is_cataloged_or_a_recording_rule(path):
    known = set(catalog()) | recording_rules()
    for title, expr in exprs(path):
        for selector in parse(expr).selectors:
            assert selector.name in known, (
                f"{title!r}: {selector.name!r} is neither in docs/metrics.md nor recorded by "
                f"alerts/*.rules.yml")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_label_matchers_use_the_metrics_labels(path):
    labels = catalog()
    for title, expr in exprs(path):
        for selector in parse(expr).selectors:
            if selector.name not in labels:
                continue  # a recording rule: its labels are whatever its expression keeps
            allowed = labels[selector.name] | SCRAPE_LABELS
            for label, _, _ in selector.matchers:
                assert label in allowed, f"{title!r}: {selector.name} has no label {label!r}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_only_promql_functions_are_called(path):
    for title, expr in exprs(path):
        unknown = parse(expr).functions - PROMQL_FUNCTIONS
        assert not unknown, f"{title!r}: {sorted(unknown)} in {expr!r}"


@pytest.mark.parametrize(("expr", "names"), [
    ('hiw_up{target=~"$target"}', ["hiw_up"]),
    ('sum by (target, state) (hiw_connections{target=~"$target", state="idle"})',
     ["hiw_connections"]),
    ('histogram_quantile(0.95, sum by (target, le) '
     '(rate(hiw_query_duration_seconds_bucket{target=~"$target"}[5m])))',
     ["hiw_query_duration_seconds_bucket"]),
    ('topk(10, rate(hiw_statement_calls_total{target=~"$target",queryid!="other"}'
     '[$__rate_interval])) > bool 0', ["hiw_statement_calls_total"]),
    ('label_replace(hiw_a{target=~"$target"}, "rate", "$1", "sum", "(.*)") '
     '/ ignoring (kind) group_left (x) hiw:b:ratio{target=~"$target"} offset 1h',
     ["hiw_a", "hiw:b:ratio"]),
    ('time() - hiw_ts{target=~"$target"} unless on (target) hiw_c{target=~"$target"}',
     ["hiw_ts", "hiw_c"]),
    ('{__name__="hiw_named", target=~"$target"} * 1e3', ["hiw_named"]),
])
def test_metric_names_are_read_from_promql(expr, names):
    assert [s.name for s in parse(expr).selectors] == names


def test_a_selector_without_the_target_filter_is_found():
    parsed = parse('hiw_a{target=~"$target"} / hiw_b{target="x"} + hiw_c')
    assert [TARGET_MATCHER in s.matchers for s in parsed.selectors] == [True, False, False]
    assert parsed.selectors[2] == Selector("hiw_c")


def test_catalog_is_read_with_histogram_series():
    metrics = catalog()
    assert len(metrics) > 50
    assert metrics["hiw_backup_status"] == {"target", "backup_name", "type", "status"}
    assert "le" in metrics["hiw_query_duration_seconds_bucket"]
    assert {"hiw_query_duration_seconds_sum", "hiw_query_duration_seconds_count"} <= set(metrics)
    assert "hiw_up_bucket" not in metrics


def test_panel_queries_replace_grafana_variables():
    queries = list(panel_queries())
    expected = sum(len(exprs(path)) for path in FILES)
    assert len(queries) == expected > 0
    assert {title for title, _, _ in queries} == {title for _, title in EXPECTED.values()}
    for dashboard, panel, expr in queries:
        assert not re.search(r"\$\{?[A-Za-z_]", expr), f"{dashboard} / {panel}: {expr}"
    assert substitute('x{target=~"$target"}[$__interval]') == 'x{target=~".*"}[1m]'


# ---- docs and provisioning ---------------------------------------------------------------

def readme_sections() -> dict[str, str]:
    """Dashboard title -> its section of dashboards/README.md (### heading to the next)."""
    parts = re.split(r"^### ", README.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {part.splitlines()[0]: part for part in parts[1:]}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_readme_lists_every_panel_under_its_dashboard(path):
    dashboard = load(path)
    sections = [text for heading, text in readme_sections().items()
                if dashboard["title"] in heading]
    assert len(sections) == 1, f"dashboards/README.md needs one '### {dashboard['title']}'"
    for panel in all_panels(dashboard["panels"]):
        # a panel is listed as "- **Title** ...", a row as a "#### Title" heading
        entry = (f"\n#### {panel['title']}\n" if panel["type"] == "row"
                 else f"\n- **{panel['title']}**")
        assert entry in sections[0], f"README does not list {panel['title']!r}"


def test_provisioning_files():
    provider = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards.yml").read_text())
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"]
    sources = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources.yml").read_text())
    (source,) = sources["datasources"]
    assert (source["type"], source["uid"], source["isDefault"]) == ("prometheus", "prometheus",
                                                                    True)
