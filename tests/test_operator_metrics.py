"""The operator's metrics: what a poll's depth and scaling decision write, removal, serving.

The recorder is driven with real ``scaling.decide`` decisions and read back through its own
registry (no global state shared between tests); the server is a real aiohttp listener on
127.0.0.1, scraped over HTTP. promtool's verdict on the exposition, and the check that the
chart's rules and dashboard only query exported names, live in test_telemetry_promtool.py.
"""

from __future__ import annotations

import socket

import aiohttp
import hypothesis
import hypothesis.strategies as st
import prometheus_client.parser
import pytest

from fanout_operator import cli, metrics, queues, scaling, settings

NAMESPACE = "calls"
NAME = "crm-sync"
POLICY = scaling.Policy(min_replicas=0, max_replicas=10, target_backlog_per_replica=10)


def _value(families: metrics.OperatorMetrics, name: str, **labels: str) -> float | None:
    return families.registry.get_sample_value(name, {"namespace": NAMESPACE, "consumer": NAME, **labels})


def _decide(visible: int, current: int, state: scaling.State, now: float) -> scaling.Decision:
    observation = scaling.Observation(visible=visible, in_flight=0, current_replicas=current)
    return scaling.decide(POLICY, observation, state, now)


def _operator_series(exposition: bytes) -> list[tuple[str, dict[str, str]]]:
    return [
        (sample.name, dict(sample.labels))
        for family in prometheus_client.parser.text_string_to_metric_families(exposition.decode())
        for sample in family.samples
        if sample.name.startswith("fanout_operator_")
    ]


def test_a_scale_up_then_hold_then_scale_down_is_recorded() -> None:
    families = metrics.OperatorMetrics()
    recorder = families.consumer(NAMESPACE, NAME)

    recorder.queue_depth(queues.Depth(visible=35, in_flight=0, delayed=2))
    up = _decide(35, 0, scaling.State(), now=100.0)
    assert up.replicas == 4
    recorder.decided(0, up, ready=0)
    assert _value(families, "fanout_operator_backlog_messages") == 35
    assert _value(families, "fanout_operator_in_flight_messages") == 0
    assert _value(families, "fanout_operator_delayed_messages") == 2
    assert _value(families, "fanout_operator_desired_replicas") == 4
    assert _value(families, "fanout_operator_actual_replicas") == 0
    assert _value(families, "fanout_operator_scaling_decisions_total", direction="up") == 1

    hold = _decide(35, 4, up.state, now=110.0)
    recorder.decided(4, hold, ready=3)
    assert _value(families, "fanout_operator_actual_replicas") == 3
    assert _value(families, "fanout_operator_scaling_decisions_total", direction="hold") == 1

    # After the stabilization window the fleet shrinks to what 15 messages need.
    down = _decide(15, 4, hold.state, now=110.0 + POLICY.scale_down_stabilization_seconds + 1)
    assert down.replicas == 2
    recorder.decided(4, down, ready=4)
    assert _value(families, "fanout_operator_desired_replicas") == 2
    assert _value(families, "fanout_operator_scaling_decisions_total", direction="down") == 1
    assert _value(families, "fanout_operator_scaling_decisions_total", direction="up") == 1


def test_unknown_values_are_removed_not_kept_stale() -> None:
    families = metrics.OperatorMetrics()
    recorder = families.consumer(NAMESPACE, NAME)
    recorder.queue_depth(queues.Depth(visible=5, in_flight=1, delayed=0))
    recorder.sink(scaling.SinkReport(throttled=True))
    recorder.dead_letters(7)
    assert _value(families, "fanout_operator_sink_throttled") == 1
    assert _value(families, "fanout_operator_dead_letter_messages") == 7
    recorder.sink(scaling.SinkReport(throttled=False))
    assert _value(families, "fanout_operator_sink_throttled") == 0

    recorder.queue_error(queues.QueueAccessDenied("denied"), metrics.QueueRole.SOURCE)
    recorder.queue_depth(None)
    recorder.sink(None)
    recorder.dead_letters(None)
    for name in (
        "fanout_operator_backlog_messages",
        "fanout_operator_in_flight_messages",
        "fanout_operator_delayed_messages",
        "fanout_operator_sink_throttled",
        "fanout_operator_dead_letter_messages",
    ):
        assert _value(families, name) is None, name
    errors = "fanout_operator_queue_errors_total"
    assert _value(families, errors, queue_role="source", reason="QueueAccessDenied") == 1


def test_forget_removes_every_series_of_one_consumer_only() -> None:
    families = metrics.OperatorMetrics()
    gone = families.consumer(NAMESPACE, NAME)
    kept = families.consumer(NAMESPACE, "siem")
    for recorder in (gone, kept):
        recorder.queue_depth(queues.Depth(visible=1, in_flight=2, delayed=3))
        recorder.decided(1, _decide(1, 1, scaling.State(), now=0.0), ready=1)
        recorder.sink(scaling.SinkReport(throttled=False))
        recorder.dead_letters(0)
        recorder.queue_error(queues.QueueNotFound("gone"), metrics.QueueRole.DEAD_LETTER)
        recorder.queue_error(queues.QueueUnreachable("down"), metrics.QueueRole.SOURCE)

    gone.forget()
    gone.forget()  # idempotent: the daemon may end more than once over a process' life
    series = _operator_series(families.exposition())
    consumers = {labels["consumer"] for _, labels in series}
    assert consumers == {"siem"}
    names = {name for name, _ in series}
    assert len(names) >= 10  # every family still there for the other consumer


@hypothesis.given(st.integers(0, 1000), st.integers(0, 1000))
def test_direction_follows_the_replica_change(current: int, replicas: int) -> None:
    direction = metrics.Direction.of(current, replicas)
    expected = {1: metrics.Direction.UP, -1: metrics.Direction.DOWN, 0: metrics.Direction.HOLD}
    assert direction is expected[(replicas > current) - (replicas < current)]


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(
    st.lists(
        st.tuples(st.integers(0, 5000), st.integers(0, 10), st.booleans(), st.integers(0, 3)),
        min_size=1,
        max_size=20,
    )
)
def test_label_values_stay_bounded(polls: list[tuple[int, int, bool, int]]) -> None:
    """However the polls go, labels are the resource, a direction, a queue role and a reason."""
    families = metrics.OperatorMetrics()
    recorder = families.consumer(NAMESPACE, NAME)
    state, now = scaling.State(), 0.0
    errors = [queues.QueueError, queues.QueueUnreachable, queues.QueueAccessDenied, queues.QueueNotFound]
    for visible, current, fails, which in polls:
        now += 15.0
        if fails:
            recorder.queue_error(errors[which]("x"), list(metrics.QueueRole)[which % 2])
            recorder.queue_depth(None)
            continue
        recorder.queue_depth(queues.Depth(visible=visible, in_flight=0, delayed=0))
        decision = _decide(visible, current, state, now)
        state = decision.state
        recorder.decided(current, decision, ready=current)
    allowed = {
        "namespace": {NAMESPACE},
        "consumer": {NAME},
        "direction": {d.value for d in metrics.Direction},
        "queue_role": {r.value for r in metrics.QueueRole},
        "reason": {e.reason for e in errors},
    }
    for _, labels in _operator_series(families.exposition()):
        for key, value in labels.items():
            assert value in allowed[key], (key, value)


async def test_server_serves_the_exposition_over_http() -> None:
    families = metrics.OperatorMetrics()
    families.consumer(NAMESPACE, NAME).queue_depth(queues.Depth(visible=12, in_flight=3, delayed=0))
    server = metrics.MetricsServer(families, host="127.0.0.1", port=0)
    await server.start()
    try:
        assert server.port
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.port}/metrics") as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
            text = await response.text()
    finally:
        await server.stop()
    assert 'fanout_operator_backlog_messages{consumer="crm-sync",namespace="calls"} 12.0' in text
    assert "fanout_messages_received" not in text  # the operator's registry only
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{server.port}/metrics")


async def test_a_port_in_use_is_an_error_not_a_silent_operator_without_metrics() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = metrics.MetricsServer(
            metrics.OperatorMetrics(), host="127.0.0.1", port=taken.getsockname()[1]
        )
        with pytest.raises(OSError, match="in use"):
            await server.start()
        await server.stop()


def test_metrics_endpoint_from_flags_then_environment() -> None:
    assert cli.parse([], {}).metrics == settings.MetricsEndpoint("0.0.0.0", 8082)
    flagged = cli.parse(["--metrics-port", "9100", "--metrics-address", "127.0.0.1"], {})
    assert flagged.metrics == settings.MetricsEndpoint("127.0.0.1", 9100)
    assert cli.parse(["--metrics-port", "0"], {}).metrics is None
    from_env = {"FANOUT_METRICS_PORT": "9000", "FANOUT_METRICS_ADDRESS": "::1"}
    assert cli.parse([], from_env).metrics == settings.MetricsEndpoint("::1", 9000)
    assert cli.parse([], {"FANOUT_METRICS_PORT": "0"}).metrics is None
    flag_wins = cli.parse(["--metrics-port", "9100"], from_env).metrics
    assert flag_wins is not None
    assert flag_wins.port == 9100
    with pytest.raises(SystemExit):
        cli.parse(["--metrics-port", "70000"], {})
    with pytest.raises(SystemExit):
        cli.parse([], {"FANOUT_METRICS_PORT": "http"})
