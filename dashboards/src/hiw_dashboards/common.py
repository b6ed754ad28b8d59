"""Shared builders of the hiw-monitor dashboards, on top of grafana-foundation-sdk.

Every panel is made by one of the helpers below (``stat``, ``gauge``, ``bargauge``,
``timeseries``, ``state_timeline``, ``table``), which encode the house rules once:

- the data source is the ``datasource`` variable (``DATASOURCE``), on the panel and on
  every query;
- each query's refId is A, B, C... in order; stat, gauge and bar gauge queries are instant,
  time series queries are range queries, table queries are instant and in table format;
- a unit is always set (``short`` unless a panel says otherwise);
- thresholds are ``Thresholds`` values (a base colour, then ascending steps);
- panels are laid out by the SDK's grid flow: each panel gives its width and height only.

A dashboard module builds a ``Spec`` (uid, title, description, then rows and panels) and
``render()`` turns it into the JSON that Grafana loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeAlias

from grafana_foundation_sdk.builders import bargauge as sdk_bargauge
from grafana_foundation_sdk.builders import common as sdk_common
from grafana_foundation_sdk.builders import dashboard as sdk_dashboard
from grafana_foundation_sdk.builders import gauge as sdk_gauge
from grafana_foundation_sdk.builders import prometheus as sdk_prometheus
from grafana_foundation_sdk.builders import stat as sdk_stat
from grafana_foundation_sdk.builders import statetimeline as sdk_statetimeline
from grafana_foundation_sdk.builders import table as sdk_table
from grafana_foundation_sdk.builders import timeseries as sdk_timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

# ---- constants ---------------------------------------------------------------------------

DATASOURCE_VARIABLE = "datasource"
TARGET_VARIABLE = "target"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${" + DATASOURCE_VARIABLE + "}")
TARGET = '{target=~"$target"}'  # the matcher every selector carries (see tests)
TAG = "hiw-monitor"
# The grafana-foundation-sdk release the committed JSON was generated with: another release
# may write other defaults, and then the files need regenerating (and the diff a review).
SDK_VERSION = "1769699998!10.1.0"
SCHEMA_VERSION = 39  # Grafana 10.4 / 11; the SDK's model defaults to 36
GRID_COLUMNS = 24

# Labels of the one-hot and per-object tables, in the column order the tables show them.
LABEL_ORDER: dict[str, int] = {
    label: index
    for index, label in enumerate(
        (
            "target",
            "backup_name",
            "collector",
            "type",
            "status",
            "reason",
            "datname",
            "schema",
            "table",
            "index",
            "duplicate_of",
            "phase",
        )
    )
}
# Columns a Prometheus table query returns that the tables never show.
SCRAPE_COLUMNS = ("Time", "__name__", "job", "instance")

PanelBuilder: TypeAlias = cogbuilder.Builder[dm.Panel]


# ---- queries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A PromQL expression and its legend. Every selector filters on ``TARGET``."""

    expr: str
    legend: str = "{{target}}"


def q(expr: str, legend: str = "{{target}}") -> Query:
    return Query(expr, legend)


def ref_id(index: int) -> str:
    """A, B, ... Z: the refId of a panel's index-th query."""
    if not 0 <= index < 26:
        raise ValueError(f"a panel has at most 26 queries, not {index + 1}")
    return chr(ord("A") + index)


def _targets(queries: Sequence[Query], *, kind: str) -> list[sdk_prometheus.Dataquery]:
    """The panel's Prometheus queries: kind is "instant", "range" or "table"."""
    out = []
    for index, query in enumerate(queries):
        target = (
            sdk_prometheus.Dataquery()
            .ref_id(ref_id(index))
            .datasource(DATASOURCE)
            .expr(query.expr)
            .editor_mode(pm.QueryEditorMode.CODE)
        )
        if kind == "range":
            target = target.range().legend_format(query.legend)
        elif kind == "instant":
            target = target.instant().legend_format(query.legend)
        else:
            target = target.instant().format(pm.PromQueryFormat.TABLE).legend_format("__auto")
        out.append(target)
    return out


# ---- thresholds and value mappings -------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """A base colour, then (value, colour) steps in ascending order."""

    base: str
    steps: tuple[tuple[float, str], ...] = ()

    def __post_init__(self) -> None:
        values = [value for value, _ in self.steps]
        if values != sorted(values):
            raise ValueError(f"threshold steps must ascend: {values}")

    def model(self) -> dm.ThresholdsConfig:
        return dm.ThresholdsConfig(
            mode=dm.ThresholdsMode.ABSOLUTE,
            steps=[dm.Threshold(value=None, color=self.base)]
            + [dm.Threshold(value=value, color=color) for value, color in self.steps],
        )

    def builder(self) -> sdk_dashboard.ThresholdsConfig:
        model = self.model()
        return sdk_dashboard.ThresholdsConfig().mode(model.mode).steps(model.steps)


def steps(base: str, *more: tuple[float, str]) -> Thresholds:
    return Thresholds(base, tuple(more))


# Common colour schemes: a constant colour, "1 is good", "any is bad".
BLUE = steps("blue")
GREEN = steps("green")
ONE_IS_GOOD = steps("red", (1, "green"))
ANY_IS_BAD = steps("green", (1, "red"))
ANY_IS_A_WARNING = steps("green", (1, "orange"))
# The DBA review's SLA: p95 < 100 ms.
LATENCY_SLA = steps("green", (0.1, "red"))
# The review's default backup thresholds: 24 h warning, 48 h critical.
BACKUP_AGE = steps("green", (86400, "orange"), (172800, "red"))
# The review's score: orange below 8.5 (the review's own), red below 7 (HiwHealthScoreLow).
HEALTH_SCORE = steps("red", (7, "orange"), (8.5, "green"))
# Alert thresholds of alerts/hiw_monitor.rules.yml that panels draw or colour by.
GIB = 1024**3
CONNECTIONS_HIGH = steps("green", (0.8, "red"))  # HiwConnectionsHigh: 80 % of max_connections
IDLE_IN_TRANSACTION_LONG = steps("green", (300, "orange"))  # HiwIdleInTransactionLong: 5 min
REPLICATION_LAG_SECONDS = steps("green", (300, "red"))  # HiwReplicationLagSecondsHigh: 5 min
WAL_RETAINED_HIGH = steps("green", (GIB, "red"))  # HiwReplicationLagBytesHigh, ...SlotInactive


Mapping: TypeAlias = tuple[str, str, str | None]  # value, text, colour (None: no colour)


def value_map(*entries: Mapping) -> list[dm.ValueMapping]:
    """One value mapping: each value shows its text (and colour), in the order given."""
    return [
        dm.ValueMap(
            options={
                value: dm.ValueMappingResult(text=text, color=color, index=index)
                for index, (value, text, color) in enumerate(entries)
            }
        )
    ]


UP_DOWN = value_map(("1", "UP", "green"), ("0", "DOWN", "red"))
MET_BREACHED = value_map(("1", "met", "green"), ("0", "breached", "red"))
YES_NO = value_map(("1", "yes", "green"), ("0", "no", "red"))
ON_OFF = value_map(("1", "on", "green"), ("0", "off", "red"))
DUE_NO = value_map(("1", "due", "orange"), ("0", "no", "green"))
STALE_NO = value_map(("0", "no", "green"), ("1", "stale", "red"))
ACTIVE_YES_NO = value_map(("0", "no", "orange"), ("1", "yes", "green"))

# Colours of the values of the agent's one-hot ``status`` (and ``mode``) labels.
STATUS_COLORS: dict[str, str] = {
    "healthy": "green",
    "warning": "orange",
    "critical": "red",
    "unknown": "purple",
    "failing": "red",
    "disabled": "orange",
    "success": "green",
    "failure": "red",
    "running": "blue",
    "on": "green",
    "always": "green",
    "off": "orange",
}
# The review's check statuses (hiw_review_check_status).
REVIEW_STATUS_COLORS: dict[str, str] = {"fail": "red", "warn": "orange", "pass": "green"}


def status_map(colors: dict[str, str]) -> list[dm.ValueMapping]:
    """A status label's values shown as themselves, in their colours."""
    return value_map(*((status, status, color) for status, color in colors.items()))


STATUS = status_map(STATUS_COLORS)


# ---- field overrides ---------------------------------------------------------------------

Property: TypeAlias = dm.DynamicConfigValue


def unit(name: str) -> Property:
    return dm.DynamicConfigValue(id_val="unit", value=name)


def fixed_color(color: str) -> Property:
    return dm.DynamicConfigValue(
        id_val="color", value=dm.FieldColor(mode=dm.FieldColorModeId.FIXED, fixed_color=color)
    )


def color_scheme(mode: dm.FieldColorModeId) -> Property:
    return dm.DynamicConfigValue(id_val="color", value=dm.FieldColor(mode=mode))


def mappings(value: list[dm.ValueMapping]) -> Property:
    return dm.DynamicConfigValue(id_val="mappings", value=value)


def thresholds(value: Thresholds) -> Property:
    return dm.DynamicConfigValue(id_val="thresholds", value=value.model())


def minimum(value: float) -> Property:
    return dm.DynamicConfigValue(id_val="min", value=value)


def maximum(value: float) -> Property:
    return dm.DynamicConfigValue(id_val="max", value=value)


def cell(cell_type: str, **options: str) -> Property:
    """A table column's cell display: color-background, color-text, gauge (mode=basic)."""
    return dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": cell_type, **options})


DASHED = dm.DynamicConfigValue(
    id_val="custom.lineStyle", value=cm.LineStyle(fill="dash", dash=[10, 10])
)
DOTTED = dm.DynamicConfigValue(
    id_val="custom.lineStyle", value=cm.LineStyle(fill="dot", dash=[2, 6])
)
NO_FILL = dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0)
NOT_STACKED = dm.DynamicConfigValue(
    id_val="custom.stacking", value=cm.StackingConfig(mode=cm.StackingMode.NONE, group="A")
)


@dataclass(frozen=True)
class Override:
    """Field properties for the fields a matcher selects: byName, byRegexp, byFrameRefID."""

    matcher: str
    option: str
    properties: tuple[Property, ...]

    def builder(self) -> sdk_dashboard.DashboardFieldConfigSourceOverrides:
        return (
            sdk_dashboard.DashboardFieldConfigSourceOverrides()
            .matcher(dm.MatcherConfig(id_val=self.matcher, options=self.option))
            .properties(list(self.properties))
        )


def by_name(name: str, *properties: Property) -> Override:
    return Override("byName", name, properties)


def by_regexp(regexp: str, *properties: Property) -> Override:
    return Override("byRegexp", regexp, properties)


def by_query(ref: str, *properties: Property) -> Override:
    return Override("byFrameRefID", ref, properties)


def reference(
    ref: str, color: str = "red", *, style: Property = DASHED, fill: bool = False
) -> Override:
    """A reference line (an SLA target, an alert's threshold): query ``ref`` drawn in a
    fixed colour, dashed (or dotted), not filled."""
    properties = (fixed_color(color), style) if fill else (fixed_color(color), style, NO_FILL)
    return by_query(ref, *properties)


def colors_by_suffix(colors: dict[str, str]) -> list[Override]:
    """One-hot stats shown by name ("target: status"): a fixed colour per status."""
    return [by_regexp(f".*: {status}", fixed_color(color)) for status, color in colors.items()]


# ---- table transformations ---------------------------------------------------------------


def organize(
    exclude: Sequence[str] = (),
    rename: dict[str, str] | None = None,
    order: dict[str, int] | None = None,
) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(exclude, True),
            "renameByName": rename or {},
            "indexByName": order if order is not None else {},
        },
    )


MERGE = dm.DataTransformerConfig(id_val="merge", options={})


def labels_table(
    rename: dict[str, str] | None = None, order: dict[str, int] | None = None
) -> list[dm.DataTransformerConfig]:
    """A one-hot query (``metric == 1``): its labels as columns, the value hidden."""
    return [organize((*SCRAPE_COLUMNS, "Value"), rename, LABEL_ORDER if order is None else order)]


def value_table(rename: dict[str, str] | None = None) -> list[dm.DataTransformerConfig]:
    """One query: its labels and its value (renamed, e.g. to "Size")."""
    return [organize(SCRAPE_COLUMNS, rename, LABEL_ORDER)]


def columns_table(
    names: Sequence[str],
    hidden: Sequence[str] = (),
    *,
    labels: dict[str, str] | None = None,
    pre_organize: bool = True,
    order: dict[str, int] | None = None,
) -> list[dm.DataTransformerConfig]:
    """Several queries merged on their labels, query A's value in column ``names[0]``...;
    ``hidden`` refIds are merged but not shown; ``labels`` renames label columns."""
    rename = {
        **(labels or {}),
        **{f"Value #{ref_id(index)}": name for index, name in enumerate(names) if name},
    }
    exclude = (*SCRAPE_COLUMNS, *(f"Value #{ref}" for ref in hidden))
    final = organize(exclude, rename, LABEL_ORDER if order is None else order)
    if pre_organize:
        return [organize(["__name__"]), MERGE, final]
    return [MERGE, final]


# ---- panels ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    w: int
    h: int


def _common(
    builder: Any,
    title: str,
    description: str,
    unit_name: str,
    size: Size,
    *,
    thresholds_: Thresholds | None,
    value_mappings: list[dm.ValueMapping] | None,
    decimals: float | None,
    min_: float | None,
    max_: float | None,
    overrides: Sequence[Override],
) -> Any:
    """What every panel has: title, description, the datasource variable, unit, size,
    thresholds, mappings, overrides. ``builder`` is any SDK panel builder (they share
    these methods but no base class)."""
    if not unit_name:
        raise ValueError(f"{title!r}: every panel has a unit")
    builder = (
        builder.title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit_name)
        .span(size.w)
        .height(size.h)
        .mappings(value_mappings or [])
        .thresholds((thresholds_ or GREEN).builder())
    )
    if decimals is not None:
        builder = builder.decimals(decimals)
    if min_ is not None:
        builder = builder.min(min_)
    if max_ is not None:
        builder = builder.max(max_)
    return builder.overrides([override.builder() for override in overrides])


def _reduce_last() -> sdk_common.ReduceDataOptions:
    return sdk_common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def _thresholds_colors() -> sdk_dashboard.FieldColor:
    return sdk_dashboard.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS)


def _palette_colors() -> sdk_dashboard.FieldColor:
    return sdk_dashboard.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC)


def stat(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    thresholds: Thresholds = BLUE,
    mappings: list[dm.ValueMapping] | None = None,
    color_mode: cm.BigValueColorMode = cm.BigValueColorMode.BACKGROUND,
    text_mode: cm.BigValueTextMode = cm.BigValueTextMode.AUTO,
    decimals: float | None = None,
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    overrides: Sequence[Override] = (),
    w: int = 4,
    h: int = 6,
) -> sdk_stat.Panel:
    """A single value per series, coloured by its thresholds (the background by default)."""
    builder: sdk_stat.Panel = _common(
        sdk_stat.Panel(),
        title,
        description,
        unit,
        Size(w, h),
        thresholds_=thresholds,
        value_mappings=mappings,
        decimals=decimals,
        min_=min,
        max_=max,
        overrides=overrides,
    )
    return (
        builder.targets(list(_targets(queries, kind="instant")))
        .color_scheme(_thresholds_colors())
        .reduce_options(_reduce_last())
        .orientation(cm.VizOrientation.AUTO)
        .text_mode(text_mode)
        .color_mode(color_mode)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
    )


def gauge(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "percentunit",
    thresholds: Thresholds = GREEN,
    min: float = 0,  # noqa: A002
    max: float = 1,  # noqa: A002
    w: int = 4,
    h: int = 6,
) -> sdk_gauge.Panel:
    """A ratio on a dial, 0 to 1 by default, with threshold markers."""
    builder: sdk_gauge.Panel = _common(
        sdk_gauge.Panel(),
        title,
        description,
        unit,
        Size(w, h),
        thresholds_=thresholds,
        value_mappings=None,
        decimals=None,
        min_=min,
        max_=max,
        overrides=(),
    )
    return (
        builder.targets(list(_targets(queries, kind="instant")))
        .color_scheme(_thresholds_colors())
        .reduce_options(_reduce_last())
        .orientation(cm.VizOrientation.AUTO)
        .show_threshold_labels(False)
        .show_threshold_markers(True)
    )


def bargauge(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    thresholds: Thresholds = GREEN,
    decimals: float | None = None,
    min: float = 0,  # noqa: A002
    max: float | None = None,  # noqa: A002
    w: int = 6,
    h: int = 8,
) -> sdk_bargauge.Panel:
    """Horizontal bars, one per series, coloured by the thresholds."""
    builder: sdk_bargauge.Panel = _common(
        sdk_bargauge.Panel(),
        title,
        description,
        unit,
        Size(w, h),
        thresholds_=thresholds,
        value_mappings=None,
        decimals=decimals,
        min_=min,
        max_=max,
        overrides=(),
    )
    return (
        builder.targets(list(_targets(queries, kind="instant")))
        .color_scheme(_thresholds_colors())
        .reduce_options(_reduce_last())
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .value_mode(cm.BarGaugeValueMode.COLOR)
        .show_unfilled(True)
        .min_viz_width(8)
        .min_viz_height(16)
    )


@dataclass(frozen=True)
class Legend:
    """A time series legend: a list, or a table with calculations (e.g. mean, max)."""

    calcs: tuple[str, ...] = ()
    table: bool = False

    def builder(self) -> sdk_common.VizLegendOptions:
        mode = cm.LegendDisplayMode.TABLE if self.table else cm.LegendDisplayMode.LIST
        return (
            sdk_common.VizLegendOptions()
            .display_mode(mode)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(list(self.calcs))
        )


LIST_LEGEND = Legend()
TABLE_LEGEND = Legend(("mean", "max"), table=True)


def timeseries(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    thresholds: Thresholds = GREEN,
    dashed_thresholds: bool = False,
    stacked: bool = False,
    bars: bool = False,
    steps_after: bool = False,
    min: float | None = 0,  # noqa: A002
    max: float | None = None,  # noqa: A002
    legend: Legend = LIST_LEGEND,
    overrides: Sequence[Override] = (),
    w: int = 12,
    h: int = 8,
) -> sdk_timeseries.Panel:
    """Lines over time, from 0 by default. ``dashed_thresholds`` draws the threshold steps
    as dashed lines (an alert's threshold); ``stacked`` stacks the series, filled."""
    builder: sdk_timeseries.Panel = _common(
        sdk_timeseries.Panel(),
        title,
        description,
        unit,
        Size(w, h),
        thresholds_=thresholds,
        value_mappings=None,
        decimals=None,
        min_=min,
        max_=max,
        overrides=overrides,
    )
    fill = 80 if bars else 30 if stacked else 10
    threshold_style = (
        cm.GraphTresholdsStyleMode.DASHED if dashed_thresholds else cm.GraphTresholdsStyleMode.OFF
    )
    return (
        builder.targets(list(_targets(queries, kind="range")))
        .color_scheme(_palette_colors())
        .draw_style(cm.GraphDrawStyle.BARS if bars else cm.GraphDrawStyle.LINE)
        .line_interpolation(
            cm.LineInterpolation.STEP_AFTER if steps_after else cm.LineInterpolation.LINEAR
        )
        .line_width(1)
        .fill_opacity(fill)
        .gradient_mode(cm.GraphGradientMode.NONE)
        .show_points(cm.VisibilityMode.NEVER)
        .point_size(4)
        .span_nulls(False)
        .axis_placement(cm.AxisPlacement.AUTO)
        .axis_label("")
        .axis_centered_zero(False)
        .scale_distribution(sdk_common.ScaleDistributionConfig().type(cm.ScaleDistribution.LINEAR))
        .stacking(
            sdk_common.StackingConfig()
            .group("A")
            .mode(cm.StackingMode.NORMAL if stacked else cm.StackingMode.NONE)
        )
        .thresholds_style(sdk_common.GraphThresholdsStyleConfig().mode(threshold_style))
        .hide_from(sdk_common.HideSeriesConfig().legend(False).tooltip(False).viz(False))
        .legend(legend.builder())
        .tooltip(
            sdk_common.VizTooltipOptions()
            .mode(cm.TooltipDisplayMode.MULTI)
            .sort(cm.SortOrder.DESCENDING)
        )
    )


def state_timeline(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    thresholds: Thresholds = ONE_IS_GOOD,
    mappings: list[dm.ValueMapping] | None = None,
    w: int = 8,
    h: int = 8,
) -> sdk_statetimeline.Panel:
    """States over time, coloured by the value mappings (no legend, no values drawn)."""
    builder: sdk_statetimeline.Panel = _common(
        sdk_statetimeline.Panel(),
        title,
        description,
        unit,
        Size(w, h),
        thresholds_=thresholds,
        value_mappings=mappings,
        decimals=None,
        min_=None,
        max_=None,
        overrides=(),
    )
    return (
        builder.targets(list(_targets(queries, kind="range")))
        .color_scheme(_thresholds_colors())
        .show_value(cm.VisibilityMode.NEVER)
        .row_height(0.9)
        .merge_values(True)
        .align_value(cm.TimelineValueAlignment.LEFT)
        .fill_opacity(80)
        .line_width(0)
        .legend(
            sdk_common.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(False)
        )
        .tooltip(
            sdk_common.VizTooltipOptions()
            .mode(cm.TooltipDisplayMode.SINGLE)
            .sort(cm.SortOrder.NONE)
        )
    )


def table(
    title: str,
    description: str,
    queries: Sequence[Query],
    transformations: list[dm.DataTransformerConfig],
    *,
    overrides: Sequence[Override] = (),
    sort_by: str | None = None,
    w: int = 12,
    h: int = 8,
) -> sdk_table.Panel:
    """Instant queries in table format; ``transformations`` pick and name the columns
    (``labels_table``, ``value_table``, ``columns_table``); ``sort_by`` a column, descending."""
    builder: sdk_table.Panel = _common(
        sdk_table.Panel(),
        title,
        description,
        "short",
        Size(w, h),
        thresholds_=GREEN,
        value_mappings=None,
        decimals=None,
        min_=None,
        max_=None,
        overrides=overrides,
    )
    builder = (
        builder.targets(list(_targets(queries, kind="table")))
        .color_scheme(_palette_colors())
        .transformations(transformations)
        .show_header(True)
        .cell_height(cm.TableCellHeight.SM)
        .footer(sdk_common.TableFooterOptions().show(False).reducer(["sum"]).count_rows(False))
    )
    if sort_by is not None:
        builder = builder.sort_by(
            [sdk_common.TableSortByFieldState().display_name(sort_by).desc(True)]
        )
    return builder


# ---- dashboards --------------------------------------------------------------------------


@dataclass
class Row:
    """A row heading and the panels under it; a collapsed row keeps its panels inside."""

    title: str
    panels: list[PanelBuilder]
    collapsed: bool = False


@dataclass
class Spec:
    """One dashboard: identity, then rows (or, for a dashboard without rows, panels)."""

    uid: str
    title: str
    description: str
    rows: list[Row] = field(default_factory=list)
    panels: list[PanelBuilder] = field(default_factory=list)
    tags: tuple[str, ...] = (TAG, "postgresql")


class DatasourceVariable(sdk_dashboard.DatasourceVariable):
    """The SDK's data source variable builder, with the two fields its model has but its
    builder does not set."""

    def refresh(self, refresh: dm.VariableRefresh) -> Self:
        self._internal.refresh = refresh
        return self

    def options(self, options: list[dm.VariableOption]) -> Self:
        self._internal.options = options
        return self


def datasource_variable() -> DatasourceVariable:
    """``datasource``: any Prometheus data source; with no ``current`` value Grafana
    preselects the default one."""
    return (
        DatasourceVariable(DATASOURCE_VARIABLE)
        .label("Data source")
        .type("prometheus")
        .multi(False)
        .include_all(False)
        .options([])
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .regex("")
        .hide(dm.VariableHide.DONT_HIDE)
    )


def target_variable() -> sdk_dashboard.QueryVariable:
    """``target``: the hiw-monitor targets Prometheus knows (hiw_up's target label),
    multi-select, All by default (matched as ``.*``)."""
    query = f"label_values(hiw_up, {TARGET_VARIABLE})"
    return (
        sdk_dashboard.QueryVariable(TARGET_VARIABLE)
        .label("Target")
        .datasource(DATASOURCE)
        .query(
            {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"}
        )
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .hide(dm.VariableHide.DONT_HIDE)
        .include_all(True)
        .all_value(".*")
        .multi(True)
        .options([])
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .regex("")
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def dashboards_link() -> sdk_dashboard.DashboardLink:
    """The top-right "hiw-monitor dashboards" menu: every dashboard tagged ``TAG``."""
    return (
        sdk_dashboard.DashboardLink("hiw-monitor dashboards")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags([TAG])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
        .icon("external link")
        .target_blank(False)
        .tooltip("")
        .url("")
    )


def build(spec: Spec) -> dm.Dashboard:
    """The SDK model of a dashboard: settings, variables, link, panels laid out by the
    SDK's grid flow, panel ids 1, 2, ... in order (rows and the panels of collapsed rows
    included)."""
    builder = (
        sdk_dashboard.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(list(spec.tags))
        .timezone("browser")
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .fiscal_year_start_month(0)
        .live_now(False)
        .week_start("")
        .time("now-6h", "now")
        .refresh("30s")
        .timepicker(sdk_dashboard.TimePicker().refresh_intervals(["30s", "1m", "5m", "15m", "1h"]))
        .with_variable(datasource_variable())
        .with_variable(target_variable())
        .link(dashboards_link())
    )
    for panel in spec.panels:
        builder = builder.with_panel(panel)
    for row in spec.rows:
        if row.collapsed:
            row_builder = sdk_dashboard.Row(row.title)
            for panel in row.panels:
                row_builder = row_builder.with_panel(panel)
            builder = builder.with_row(row_builder.collapsed(True))
        else:
            builder = builder.with_row(sdk_dashboard.Row(row.title).collapsed(False))
            for panel in row.panels:
                builder = builder.with_panel(panel)
    model = builder.build()
    model.schema_version = SCHEMA_VERSION
    _number_panels(model)
    _check_layout(model)
    return model


def _all_panels(model: dm.Dashboard) -> list[dm.Panel | dm.RowPanel]:
    out: list[dm.Panel | dm.RowPanel] = []
    for panel in model.panels or []:
        out.append(panel)
        if isinstance(panel, dm.RowPanel):
            out.extend(panel.panels)
    return out


def _number_panels(model: dm.Dashboard) -> None:
    for number, panel in enumerate(_all_panels(model), start=1):
        panel.id_val = number


def _check_layout(model: dm.Dashboard) -> None:
    """The grid flow fills each line: a line of panels that does not add up to the grid's
    width would leave a hole and shift every panel after it."""
    for panel in _all_panels(model):
        pos = panel.grid_pos
        if pos is None or pos.x + pos.w > GRID_COLUMNS:
            raise ValueError(f"{panel.title!r} is off the grid: {pos}")


def to_json(spec: Spec) -> dict[str, Any]:
    """The dashboard as JSON data (what Grafana reads)."""
    data: dict[str, Any] = json.loads(json.dumps(build(spec), cls=JSONEncoder))
    return data


def render(spec: Spec) -> str:
    """The dashboard file's text: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(to_json(spec), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
