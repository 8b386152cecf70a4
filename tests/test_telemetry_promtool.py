"""promtool on what we ship: the metrics exposition, the alert rules and their unit tests.

promtool comes from `make unit` (.ci/get-promtool). Outside CI a missing promtool skips these
tests with the command to get it; in CI (``CI`` set) it is a failure, never a silent skip.
Also checks that every ``fanout_*`` series the rules and the dashboard query is one this
project exports — the worker's or the operator's, each read off a real exposition in which
every metric has samples.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import prometheus_client
import prometheus_client.parser
import pytest
import yaml

from fanout_operator import metrics as operator_metrics
from fanout_operator import queues, scaling
from tests import external_tools
from workers import events, messages, telemetry

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES = ROOT / "helm" / "fanout-consumer" / "files" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "helm" / "fanout-consumer" / "files" / "grafana-dashboard.json"
RULE_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.yaml"))

_SERIES_NAME = re.compile(r"\bfanout_[a-z0-9_]+")


def promtool_path() -> str:
    """promtool's path; skips the calling test without it, except in CI where that fails."""
    return external_tools.find_tool("promtool", how_to_get=".ci/get-promtool (make unit does)")


@pytest.fixture(scope="module")
def promtool() -> str:
    return promtool_path()


def run_promtool(promtool: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=60
    )


def _exercised_exposition() -> bytes:
    """Every worker and sink metric with samples, as a scrape of /metrics would return them."""
    families = telemetry.WorkerMetrics()
    worker = telemetry.WorkerTelemetry(
        queue_url="http://127.0.0.1:4566/123456789012/promtool-calls",
        sink_name="crm",
        clock=lambda: 2000.0,
        metrics=families,
    )
    sink = telemetry.SinkTelemetry("crm", metrics=families)
    event = events.Event(
        event_id=events.EventId("evt-1"), event_type="customer.start", payload={}, event_time_ms=1_000_000
    )
    message = messages.parse(
        {"MessageId": "m-1", "ReceiptHandle": "r-1", "Attributes": {"SentTimestamp": "1500000"}}
    )
    worker.received(2)
    worker.received(0)
    worker.delivered(message, event, 0.12)
    worker.filtered(message, event)
    worker.duplicate(message, event)
    worker.retried(message, event, 1.0, telemetry.ReasonClass.THROTTLED, "429")
    worker.dead_lettered(message, None, telemetry.ReasonClass.POISON, "not JSON")
    worker.returned(1)
    worker.deleted(2)
    worker.delete_failed(1, "Receipt handle/is invalid!")
    worker.visibility_failed(1, "AWS.SimpleQueueService.ServiceUnavailable")
    worker.visibility_extended(1)
    worker.receipt_expired(1)
    worker.set_in_flight(3)
    worker.set_lanes(2)
    worker.set_ready(True)
    for outcome in telemetry.SinkOutcome:
        sink.request(outcome, 0.05)
    sink.limiter_state(rate=None, concurrency=8, paused=False, circuit=telemetry.CircuitState.HALF_OPEN)
    return families.exposition()


def _operator_exposition() -> bytes:
    """Every operator metric with samples, as a scrape of the operator's /metrics would return them."""
    families = operator_metrics.OperatorMetrics()
    recorder = families.consumer("calls", "promtool-crm")
    recorder.queue_depth(queues.Depth(visible=35, in_flight=4, delayed=1))
    observation = scaling.Observation(visible=35, in_flight=4, current_replicas=0)
    recorder.decided(0, scaling.decide(scaling.Policy(), observation, scaling.State(), 0.0), ready=0)
    recorder.sink(scaling.SinkReport(throttled=True))
    recorder.dead_letters(2)
    recorder.queue_error(queues.QueueAccessDenied("denied"), operator_metrics.QueueRole.SOURCE)
    recorder.queue_error(queues.QueueNotFound("gone"), operator_metrics.QueueRole.DEAD_LETTER)
    recorder.topology({("SnsCannotSendToQueue", "error"): 1})
    return families.exposition()


def test_exposition_passes_promtool_check_metrics(promtool: str) -> None:
    exposition = _exercised_exposition()
    result = run_promtool(promtool, "check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert b'fanout_delete_failures_total{code="Receipt_handle_is_invalid_",queue="promtool-calls"} 1.0' in (
        exposition
    )


def test_operator_exposition_passes_promtool_check_metrics(promtool: str) -> None:
    exposition = _operator_exposition()
    result = run_promtool(promtool, "check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert b'fanout_operator_desired_replicas{consumer="promtool-crm",namespace="calls"} 1.0' in exposition


def test_promtool_check_metrics_does_catch_problems(promtool: str) -> None:
    bad = b"# HELP fanout_bad_count a counter\n# TYPE fanout_bad_count counter\nfanout_bad_count 1\n"
    result = run_promtool(promtool, "check", "metrics", stdin=bad)
    assert result.returncode != 0
    assert "_total" in result.stdout + result.stderr


def test_alert_rules_pass_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS
    result = run_promtool(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {check["alertname"] for check in case.get("alert_rule_test", []) if check["exp_alerts"]}
    assert alerts - tested == set()


def _sample_names(exposition: bytes) -> set[str]:
    return {
        sample.name
        for family in prometheus_client.parser.text_string_to_metric_families(exposition.decode())
        for sample in family.samples
    }


def _queried_names() -> set[str]:
    """Every fanout_* series name the alert rules and the dashboard (queries, variables) use."""
    rules = yaml.safe_load(RULES.read_text())
    queried = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in _SERIES_NAME.findall(rule["expr"])
    }
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queried |= set(_SERIES_NAME.findall(target["expr"]))
    for variable in dashboard["templating"]["list"]:
        queried |= set(_SERIES_NAME.findall(json.dumps(variable.get("query", ""))))
    return queried


def test_rules_and_dashboard_query_only_exported_series() -> None:
    exported = _sample_names(_exercised_exposition()) | _sample_names(_operator_exposition())
    assert "fanout_operator_backlog_messages" in exported
    assert "fanout_messages_received_total" in exported
    queried = _queried_names()
    assert queried
    assert queried - exported == set()


def test_every_operator_metric_is_shown_or_alerted_on() -> None:
    # The operator's series exist for the dashboard and the alerts; one nobody reads is dead weight.
    exported = {
        name.removesuffix("_total")
        for name in _sample_names(_operator_exposition())
        if name.startswith("fanout_operator_") and not name.endswith("_created")
    }
    queried = {name.removesuffix("_total") for name in _queried_names()}
    assert exported
    assert exported - queried == set()


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: pathlib.Path) -> None:
    # Grafana's variables replaced by what it would substitute, then each query checked as a
    # recording rule: promtool parses it with Prometheus' own parser.
    substitutions = {"$__rate_interval": "5m", "$namespace": ".*", "$queue": ".*", "$sink": ".*"}
    substitutions["$consumer"] = ".*"
    rules = []
    for index, expr in enumerate(_dashboard_exprs()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    assert len(rules) > 20
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
