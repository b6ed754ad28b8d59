"""The exposition writes plain families itself (hiw_monitor/exposition.py ``_fast``): it
must write exactly what client_python writes, in both formats, for any family, and hand
anything it does not write to client_python. Compared byte for byte on generated
families (hostile help texts and label values, every value Go formats its own way,
OpenMetrics-only samples, units, every type), and on the demo's real families through a
strict parser in the integration tests."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from hiw_monitor.exposition import _client_render, _plain, render

NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True)
ODD_NAMES = st.sampled_from(["a:b", "é", "with space", "9lead", ""])
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
HOSTILE = st.sampled_from(['"', "\\", "\n", '\\"', "a\nb", "…", "\\n", "x" * 300, ""])
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0.0, -0.0, 1e22, 12345678.0, 1234567.0, 5e-324, math.inf, -math.inf]),
)
TYPES = st.sampled_from(["gauge", "counter", "summary", "histogram", "unknown", "stateset",
                         "gaugehistogram", "info"])


@st.composite
def families(draw, odd: bool = False) -> Metric:
    name = draw(NAMES)
    kind = draw(TYPES)
    unit = draw(st.sampled_from(["", "seconds", "bytes"])) if kind in ("gauge", "counter") \
        else ""
    if unit and not name.endswith("_" + unit):
        name = f"{name}_{unit}"
    family = Metric(name, draw(st.one_of(TEXT, HOSTILE)), kind, unit)
    for _ in range(draw(st.integers(0, 4))):
        suffix = draw(st.sampled_from(["", "", "_total", "_created", "_gsum", "_gcount",
                                       "_sum", "_count", "_bucket"]))
        labels = draw(st.dictionaries(NAMES if not odd else st.one_of(NAMES, ODD_NAMES),
                                      st.one_of(TEXT, HOSTILE), max_size=4))
        timestamp = draw(st.one_of(st.none(), st.floats(0, 2e9))) if odd else None
        family.add_sample(name + suffix, labels, draw(VALUES), timestamp)
    return family


@given(st.lists(families(), max_size=4), st.booleans())
def test_plain_families_are_written_as_client_python_writes_them(fams, openmetrics_format):
    assert render(fams, openmetrics_format=openmetrics_format) == _client_render(
        fams, openmetrics_format=openmetrics_format)


@given(st.lists(families(odd=True), max_size=3), st.booleans())
def test_any_other_family_goes_to_client_python(fams, openmetrics_format):
    try:
        expected = _client_render(fams, openmetrics_format=openmetrics_format)
    except Exception as exc:  # noqa: BLE001 - render must raise what client_python raises
        with pytest.raises(type(exc)):
            render(fams, openmetrics_format=openmetrics_format)
        return
    assert render(fams, openmetrics_format=openmetrics_format) == expected


def test_plain_is_the_common_case_and_the_output_parses():
    family = Metric("hiw_table_live_tuples", 'Rows "live"\nand \\ more.', "gauge")
    family.add_sample("hiw_table_live_tuples", {"target": "t", "datname": "d",
                                                "table": 'a"b\\c\nd'}, 12.0)
    counter = Metric("hiw_x", "X.", "counter")
    counter.add_sample("hiw_x_total", {"target": "t"}, 3)
    assert _plain(family, True)
    assert _plain(counter, False)
    body = render([family, counter], openmetrics_format=True).decode()
    (parsed, parsed_counter) = text_string_to_metric_families(body)
    assert parsed.samples[0].labels["table"] == 'a"b\\c\nd'
    assert parsed_counter.samples[0].value == 3
    odd = Metric("hiw_y", "Y.", "gauge")
    odd.add_sample("hiw_y", {"target": None}, 1.0)  # type: ignore[dict-item]
    assert not _plain(odd, True)  # left to client_python, which refuses it
