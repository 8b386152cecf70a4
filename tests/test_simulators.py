"""The downstream simulators, driven over loopback with a plain httpx client.

They are the referee for the sinks, so each behaviour a sink test relies on (the rate
limit, Retry-After formats, outage, faults, recording, order and duplicate checks, the
webhook signature, HEC and CRM wire formats) is pinned here first.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fanout_lab.simulators import crm, hec, ratelimit, webhook


def _event(key: str, seq: int) -> dict[str, Any]:
    return {"eventBody": {"conversationId": key, "eventTime": 1_700_000_000_000 + seq}}


async def _post(
    client: httpx.AsyncClient, url: str, body: Any, event_id: str, **headers: str
) -> httpx.Response:
    return await client.post(
        url + "/events",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": event_id, **headers},
    )


@given(
    rate=st.floats(0.5, 100),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_gcra_admits_at_most_burst_plus_rate_times_window(rate: float, burst: int, gaps: list[float]) -> None:
    bucket = ratelimit.Gcra(rate, burst)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            assert j - i + 1 <= burst + rate * window + 1e-6


def test_gcra_says_how_long_to_wait() -> None:
    bucket = ratelimit.Gcra(2.0, 2)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0


async def test_webhook_records_accepted_events_and_checks_order_and_duplicates() -> None:
    async with webhook.WebhookSimulator() as sim, httpx.AsyncClient() as client:
        for event_id, key, seq in [
            ("a", "c1", 1),
            ("b", "c1", 3),
            ("c", "c2", 1),
            ("d", "c1", 2),
            ("b", "c1", 3),
        ]:
            response = await _post(client, sim.url, _event(key, seq), event_id)
            assert response.status_code == 200
        assert [item.event_id for item in sim.accepted] == ["a", "b", "c", "d", "b"]
        assert sim.duplicates() == {"b": 2}
        violations = sim.order_violations()
        assert [(v.key, v.event_id) for v in violations] == [("c1", "d")]
        assert [item.event_id for item in sim.by_key()["c1"]] == ["a", "b", "d", "b"]
        assert sim.requests_total == 5
        assert sim.status_counts[200] == 5


async def test_webhook_rate_limit_answers_429_with_retry_after() -> None:
    async with webhook.WebhookSimulator(rate=1, burst=2) as sim, httpx.AsyncClient() as client:
        statuses = [(await _post(client, sim.url, _event("k", i), f"e{i}")).status_code for i in range(3)]
        assert statuses == [200, 200, 429]
        throttled = await _post(client, sim.url, _event("k", 9), "e9")
        assert throttled.status_code == 429
        assert int(throttled.headers["Retry-After"]) >= 1
        assert sim.throttled_count == 2
        assert len(sim.accepted) == 2


async def test_webhook_http_date_retry_after_and_outage_switch() -> None:
    async with (
        webhook.WebhookSimulator(
            throttle_ratio=1.0, retry_after=30, retry_after_format="http-date", outage_retry_after=5
        ) as sim,
        httpx.AsyncClient() as client,
    ):
        throttled = await _post(client, sim.url, _event("k", 1), "e1")
        assert throttled.status_code == 429
        assert email.utils.parsedate_to_datetime(throttled.headers["Retry-After"]) is not None
        sim.set_outage(True)
        down = await _post(client, sim.url, _event("k", 1), "e1")
        assert down.status_code == 503
        assert sim.outage_count == 1
        sim.set_outage(False)
        sim.throttle_ratio = 0
        assert (await _post(client, sim.url, _event("k", 1), "e1")).status_code == 200


async def test_webhook_faults_are_seeded() -> None:
    async def statuses(seed: int) -> list[int]:
        async with webhook.WebhookSimulator(fail_ratio=0.5, seed=seed) as sim, httpx.AsyncClient() as client:
            return [(await _post(client, sim.url, _event("k", i), f"e{i}")).status_code for i in range(20)]

    first = await statuses(7)
    assert first == await statuses(7)
    assert set(first) == {200, 500}


async def test_webhook_verifies_the_signature() -> None:
    async with webhook.WebhookSimulator(signing_secret="s3cret") as sim, httpx.AsyncClient() as client:
        body = json.dumps(_event("k", 1)).encode()
        good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        ok = await client.post(
            sim.url, content=body, headers={"X-Fanout-Signature": good, "Idempotency-Key": "1"}
        )
        bad = await client.post(sim.url, content=body, headers={"X-Fanout-Signature": "sha256=00"})
        assert (ok.status_code, bad.status_code) == (200, 401)
        assert sim.signature_failures == 1
        assert len(sim.accepted) == 1


async def test_hec_parses_concatenated_objects_and_reports_the_invalid_event_number() -> None:
    async with hec.HecSimulator(token="t", reject_event_ids={"b"}) as sim, httpx.AsyncClient() as client:
        body = b"".join(
            json.dumps({"event": {"n": n}, "fields": {"event_id": event_id, "ordering_key": "k"}}).encode()
            for n, event_id in enumerate(["a", "b", "c"])
        )
        unauthorized = await client.post(sim.url + "/services/collector/event", content=body)
        bad_token = await client.post(
            sim.url + "/services/collector/event", content=body, headers={"Authorization": "Splunk x"}
        )
        partial = await client.post(
            sim.url + "/services/collector/event", content=body, headers={"Authorization": "Splunk t"}
        )
        health = await client.get(sim.url + "/services/collector/health")
    assert (unauthorized.status_code, unauthorized.json()["code"]) == (401, 2)
    assert (bad_token.status_code, bad_token.json()["code"]) == (403, 4)
    assert partial.status_code == 400
    assert partial.json() == {"text": "Invalid data format", "code": 6, "invalid-event-number": 1}
    assert [item.event_id for item in sim.accepted] == ["a"]
    assert health.json()["code"] == 17


async def test_hec_busy_is_503_code_9() -> None:
    async with hec.HecSimulator(token="t", rate=1, burst=1) as sim, httpx.AsyncClient() as client:
        headers = {"Authorization": "Splunk t"}
        body = b'{"event": "x"}{"event": "y"}'
        first = await client.post(sim.url + "/services/collector/event", content=body, headers=headers)
        second = await client.post(sim.url + "/services/collector/event", content=body, headers=headers)
    assert first.json() == {"text": "Success", "code": 0}
    assert (second.status_code, second.json()["code"]) == (503, 9)
    assert "Retry-After" in second.headers
    assert hec.split_events(b'{"a": 1} {"b": [1, 2]}\n') == [
        (b'{"a": 1}', {"a": 1}),
        (b'{"b": [1, 2]}', {"b": [1, 2]}),
    ]
    assert hec.split_events(b'{"a": 1},{"b": 2}') is None


async def test_crm_issues_tokens_only_for_the_right_client_and_reports_usage() -> None:
    async with crm.CrmSimulator(api_limit=50, api_used=10) as sim, httpx.AsyncClient() as client:
        token_url = sim.url + "/services/oauth2/token"
        refused = await client.post(token_url, data={"grant_type": "client_credentials", "client_id": "x"})
        granted = await client.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": sim.client_id,
                "client_secret": sim.client_secret,
            },
        )
        url = sim.url + "/services/data/v60.0/sobjects/Case/Ext__c/k1"
        upsert = await client.patch(
            url, json={"Subject": "hi"}, headers={"Authorization": f"Bearer {granted.json()['access_token']}"}
        )
        sim.expire_tokens()
        expired = await client.patch(
            url, json={"Subject": "hi"}, headers={"Authorization": f"Bearer {granted.json()['access_token']}"}
        )
    assert refused.status_code == 400
    assert upsert.status_code == 201
    assert upsert.headers["Sforce-Limit-Info"] == "api-usage=11/50"
    assert expired.status_code == 401
    assert expired.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    assert sim.requests_total == 2  # token requests are not data requests
