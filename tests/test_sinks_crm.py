"""The CRM sink against the Salesforce-compatible simulator over loopback: every upsert
outcome (201/200/204/300/400/404), the 401 token refresh (OAuth and mounted file), the
request-limit throttle, the outage, and the proactive slow-down from Sforce-Limit-Info."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
from typing import Any

import pytest

from fanout_core import spec
from fanout_lab.simulators import crm
from workers import events, fleet, throttling
from workers.sinks import crm as crm_sink

CONVERSATION = "5f1c7c1e-0000-4000-8000-00000000c0de"


def _event(n: int = 1, key: str | None = CONVERSATION, **body: Any) -> events.Event:
    event_body = {"conversationId": key, "eventTime": 1_700_000_000_000 + n, "queueId": "q-1", **body}
    payload = {"topicName": f"v2.detail.events.conversation.{key}.acw", "eventBody": event_body}
    return events.Event(
        events.EventId(f"evt-{n}"),
        "v2.detail.events.conversation.{id}.acw",
        payload,
        key,
        event_time_ms=1_700_000_000_000 + n,
    )


def _spec(url: str, crm_spec: dict[str, Any], **extra: Any) -> spec.SinkSpec:
    return spec.SinkSpec.model_validate({"type": "crm", "url": url, "crm": crm_spec, **extra})


def _write(path: pathlib.Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def token_file(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "token"


async def _sink(sim: crm.CrmSimulator, token_file: pathlib.Path, **crm_spec: Any) -> crm_sink.CrmSink:
    _write(token_file, sim.token + "\n")
    return crm_sink.CrmSink(
        _spec(sim.url, {"token": {"file": str(token_file)}, **crm_spec}), replicas=fleet.FixedReplicas(1)
    )


async def test_upsert_creates_then_updates_with_the_mapped_body(token_file: pathlib.Path) -> None:
    mapping = {
        "Last_Event__c": "eventType",
        "Last_Event_Time__c": "eventTime",
        "Queue__c": "queueId",
        "Conversation_Id__c": "orderingKey",  # the external id: never in the body
        "Missing__c": "no.such.path",
    }
    async with crm.CrmSimulator() as sim:
        sink = await _sink(sim, token_file, field_mapping=mapping)
        assert isinstance(await sink.deliver(_event(1)), events.Delivered)
        assert isinstance(await sink.deliver(_event(2)), events.Delivered)
        await sink.aclose()
    assert sim.status_counts == {201: 1, 200: 1}
    record = sim.records[("Genesys_Conversation__c", CONVERSATION)]
    assert record["Queue__c"] == "q-1"
    assert record["Last_Event__c"] == "v2.detail.events.conversation.{id}.acw"
    assert record["Last_Event_Time__c"] == "2023-11-14T22:13:20.002Z"
    body = json.loads(sim.accepted[0].body)
    assert set(body) == {"Last_Event__c", "Last_Event_Time__c", "Queue__c"}
    assert sim.accepted[0].path.endswith(
        f"/services/data/v60.0/sobjects/Genesys_Conversation__c/Conversation_Id__c/{CONVERSATION}"
    )
    assert [item.event_id for item in sim.accepted] == ["evt-1", "evt-2"]
    assert not sim.order_violations()


async def test_update_before_v46_answers_204(token_file: pathlib.Path) -> None:
    async with crm.CrmSimulator() as sim:
        sink = await _sink(sim, token_file, api_version="v45.0")
        outcomes = [await sink.deliver(_event(n)) for n in (1, 2)]
        await sink.aclose()
    assert all(isinstance(outcome, events.Delivered) for outcome in outcomes)
    assert sim.status_counts == {201: 1, 204: 1}


@pytest.mark.parametrize(
    ("simulator", "crm_spec", "expected"),
    [
        ({"ambiguous": {CONVERSATION}}, {}, "HTTP 300 MULTIPLE_CHOICES"),
        ({"objects": {"Account"}}, {}, "HTTP 404 NOT_FOUND"),
        ({"fields": {"Last_Event__c"}}, {}, "HTTP 400 INVALID_FIELD"),
    ],
)
async def test_permanent_answers_carry_the_reason(
    token_file: pathlib.Path, simulator: dict[str, Any], crm_spec: dict[str, Any], expected: str
) -> None:
    async with crm.CrmSimulator(**simulator) as sim:
        sink = await _sink(sim, token_file, **crm_spec)
        outcome = await sink.deliver(_event())
        await sink.aclose()
    assert isinstance(outcome, events.Permanent)
    assert outcome.reason.startswith(expected)
    assert not sim.accepted


async def test_an_event_without_ordering_key_is_permanent(token_file: pathlib.Path) -> None:
    async with crm.CrmSimulator() as sim:
        sink = await _sink(sim, token_file)
        outcome = await sink.deliver(_event(key=None))
        await sink.aclose()
    assert outcome == events.Permanent("no external id: the event has no ordering key")
    assert sim.requests_total == 0


async def test_401_rereads_the_mounted_token_and_retries_once(token_file: pathlib.Path) -> None:
    async with crm.CrmSimulator() as sim:
        sink = await _sink(sim, token_file)
        assert isinstance(await sink.deliver(_event(1)), events.Delivered)
        _write(token_file, sim.rotate_token())  # the rotated Secret shows up in the mount
        assert isinstance(await sink.deliver(_event(2)), events.Delivered)
        await sink.aclose()
    assert sim.unauthorized_count == 1
    assert len(sim.accepted) == 2


async def test_401_refreshes_through_oauth_client_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    async with crm.CrmSimulator() as sim:
        monkeypatch.setenv("CRM_CLIENT_ID", sim.client_id)
        monkeypatch.setenv("CRM_CLIENT_SECRET", sim.client_secret)
        sink = crm_sink.CrmSink(
            _spec(
                sim.url,
                {
                    "tokenUrl": sim.url + "/services/oauth2/token",
                    "clientId": {"env": "CRM_CLIENT_ID"},
                    "clientSecret": {"env": "CRM_CLIENT_SECRET"},
                },
            ),
            replicas=fleet.FixedReplicas(1),
        )
        assert isinstance(await sink.deliver(_event(1)), events.Delivered)
        assert sim.token_requests == 1  # the first token
        sim.expire_tokens()
        assert isinstance(await sink.deliver(_event(2)), events.Delivered)
        await sink.aclose()
    assert sim.token_requests == 2
    assert sim.unauthorized_count == 1
    assert sim.requests_total == 3  # the refused try, and one upsert per event


async def test_a_401_that_survives_the_refresh_is_refused_and_a_rotated_token_recovers(
    token_file: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with crm.CrmSimulator() as sim:
        _write(token_file, "not-a-valid-token")
        sink = crm_sink.CrmSink(
            _spec(sim.url, {"token": {"file": str(token_file)}}, circuitOpenSeconds=0.2),
            replicas=fleet.FixedReplicas(1),
        )
        outcome = await sink.deliver(_event())
        assert isinstance(outcome, events.Refused)  # our credential: never dead-lettered
        assert "INVALID_SESSION_ID" in outcome.reason
        assert sim.unauthorized_count == 2  # one refresh, not a loop
        assert not sink.accepting
        _write(token_file, sim.token)
        await asyncio.wait_for(sink.wait_accepting(), 5)
        assert isinstance(await sink.deliver(_event()), events.Delivered)  # the probe re-read it
        await sink.aclose()
    assert any(record.levelno == logging.ERROR for record in caplog.records)
    assert "not-a-valid-token" not in caplog.text


async def test_request_limit_exceeded_throttles_the_sink(token_file: pathlib.Path) -> None:
    async with crm.CrmSimulator(throttle_ratio=1.0) as sim:
        sink = await _sink(sim, token_file)
        sink.limiter.core.set_rate(10, sink.limiter.now())
        before = sink.limiter.snapshot()
        outcome = await sink.deliver(_event())
        after = sink.limiter.snapshot()
        await sink.deliver(_event())  # a second one in a row: excess
        again = sink.limiter.snapshot()
        await sink.aclose()
    assert isinstance(outcome, events.Retry)
    assert outcome.throttled
    assert outcome.reason.startswith("HTTP 403 REQUEST_LIMIT_EXCEEDED")
    assert outcome.delay_seconds is None  # Salesforce sends no Retry-After here
    assert after.rate is not None
    assert before.rate is not None
    assert after.rate < before.rate
    assert again.concurrency < before.concurrency


async def test_503_outage_is_throttled_with_retry_after(token_file: pathlib.Path) -> None:
    async with crm.CrmSimulator(outage_retry_after=3) as sim:
        sim.set_outage(True)
        sink = await _sink(sim, token_file)
        outcome = await sink.deliver(_event())
        assert not sink.accepting
        await sink.aclose()
    assert isinstance(outcome, events.Retry)
    assert outcome.throttled
    assert outcome.delay_seconds == 3


async def test_sforce_limit_info_slows_down_near_the_daily_limit(token_file: pathlib.Path) -> None:
    async with crm.CrmSimulator(api_limit=1000, api_used=899) as sim:
        _write(token_file, sim.token)
        sink = crm_sink.CrmSink(
            _spec(
                sim.url,
                {"token": {"file": str(token_file)}, "slowDownAtUsage": 0.8},
                rateLimit={"requestsPerSecond": 40, "burst": 4},
                maxConcurrency=10,
            ),
            replicas=fleet.FixedReplicas(2),
        )
        assert sink.limiter.snapshot().rate == pytest.approx(20)
        await sink.deliver(_event(1))  # usage 900/1000: half-way from 0.8 to the limit
        assert sink.api_usage == pytest.approx(0.9)
        slowed = sink.limiter.snapshot()
        sim.api_used = 100
        await sink.deliver(_event(2))
        recovered = sink.limiter.snapshot()
        await sink.aclose()
    assert slowed.rate == pytest.approx(10, rel=0.05)
    assert slowed.concurrency == 5
    assert recovered.rate == pytest.approx(20, rel=0.05)
    assert recovered.circuit is throttling.CircuitState.CLOSED


def test_usage_scale() -> None:
    assert crm_sink.usage_scale(0.5, 0.8) == 1.0
    assert crm_sink.usage_scale(0.9, 0.8) == pytest.approx(0.5)
    assert crm_sink.usage_scale(1.2, 0.8) == crm_sink.MIN_SCALE


def test_config_errors_name_the_field() -> None:
    with pytest.raises(spec.ConfigError, match="tokenUrl"):
        crm_sink.CrmSink(_spec("http://127.0.0.1:9", {}), replicas=fleet.FixedReplicas(1))
    with pytest.raises(spec.ConfigError, match=r"spec\.sink\.crm\.token"):
        crm_sink.CrmSink(
            _spec("http://127.0.0.1:9", {"token": {"env": "NO_SUCH_VARIABLE_FOR_FANOUT"}}),
            replicas=fleet.FixedReplicas(1),
        )
