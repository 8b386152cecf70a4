"""The Grafana dashboard shipped in the chart: well-formed, laid out without overlaps, portable.

The queries themselves are parsed by promtool and checked against the exported metric names
in test_telemetry_promtool.py.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

DASHBOARD = (
    pathlib.Path(__file__).resolve().parent.parent / "helm/fanout-consumer/files/grafana-dashboard.json"
)


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_every_query_uses_the_datasource_variable_and_the_filters() -> None:
    dashboard = _dashboard()
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "queue", "sink", "consumer"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert 'namespace=~"$namespace"' in target["expr"], target["expr"]


def test_no_instance_specific_values_are_baked_in() -> None:
    text = DASHBOARD.read_text()
    dashboard = _dashboard()
    assert dashboard["uid"] == "fanout-consumer"
    assert "id" not in dashboard or dashboard["id"] is None
    for forbidden in ("127.0.0.1", "localhost", "amazonaws.com", "123456789012"):
        assert forbidden not in text
