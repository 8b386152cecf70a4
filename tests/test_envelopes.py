"""envelopes.decode: the composed examples, every envelope, poison bodies, and properties."""

from __future__ import annotations

import json
import pathlib
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout_core import keying
from workers import envelopes, events

DATA = pathlib.Path(__file__).parent / "data"
CONVERSATION = "0b6f8c1e-3d2a-4c5b-9e8f-7a6b5c4d3e2f"


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DATA / name).read_text())
    return document


def eventbridge(detail: Any, *, envelope_id: str | None = None) -> dict[str, Any]:
    topic = detail.get("topicName") if isinstance(detail, dict) else None
    return {
        "version": "0",
        "id": envelope_id or str(uuid.uuid4()),
        "detail-type": keying.topic_template(topic) if isinstance(topic, str) else "x.{id}",
        "source": "aws.partner/genesys.com.test/cloud/org/suffix",
        "account": "123456789012",
        "time": "2025-03-14T15:09:26Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def sns(message: Any, *, message_id: str | None = None, attributes: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:genesys",
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": "2025-03-14T15:09:27.034Z",
    }
    if attributes is not None:
        body["MessageAttributes"] = attributes
    return body


def decode(document: Any, **kwargs: Any) -> events.Event:
    return envelopes.decode(json.dumps(document), **kwargs)


# --- the composed examples -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "event_time_ms"),
    [
        ("customer-start.eventbridge.json", 1741964966123),
        ("customer-end.eventbridge.json", 1741965290011),
        ("acw.eventbridge.json", 1741965312456),
        # The snapshot has no eventTime and no detail.timestamp: EventBridge `time` it is.
        ("queue-conversations.eventbridge.json", 1741964966000),
    ],
)
def test_eventbridge_examples(name: str, event_time_ms: int) -> None:
    document = load(name)
    event = envelopes.decode((DATA / name).read_bytes())
    assert event.envelope is events.EnvelopeKind.EVENTBRIDGE
    assert event.event_type == document["detail-type"]
    assert event.topic == document["detail"]["topicName"]
    assert event.payload == document["detail"]
    assert event.event_id == document["detail"]["metadata"]["CorrelationId"]
    assert event.ordering_key == CONVERSATION
    assert event.event_time_ms == event_time_ms
    assert event.attributes == {}


def test_sns_envelope_example_keeps_attributes() -> None:
    event = envelopes.decode(
        (DATA / "customer-start.sns-envelope.json").read_text(),
        message_attributes={"eventCategory": "from-sqs", "source": "sqs"},
    )
    direct = envelopes.decode((DATA / "customer-start.eventbridge.json").read_text())
    assert event.envelope is events.EnvelopeKind.SNS_EVENTBRIDGE
    assert event.payload == direct.payload
    assert event.event_id == direct.event_id == "8e7d6c5b-4a39-4281-b0c9-d8e7f6a5b4c3"
    assert event.event_type == "v2.detail.events.conversation.{id}.customer.start"
    assert event.ordering_key == CONVERSATION
    assert event.event_time_ms == 1741964966123
    # SQS message attributes win over SNS ones of the same name.
    assert event.attributes == {
        "eventCategory": "from-sqs",
        "source": "sqs",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }


def test_raw_genesys_notification_is_its_own_payload() -> None:
    detail = load("acw.eventbridge.json")["detail"]
    event = decode(detail)
    assert event.envelope is events.EnvelopeKind.RAW
    assert event.payload == detail
    assert event.event_type == "v2.detail.events.conversation.{id}.acw"
    assert event.topic == detail["topicName"]
    assert event.ordering_key == CONVERSATION
    # detail.timestamp is only the fallback: eventBody.eventTime wins.
    assert event.event_time_ms == 1741965312456


def test_sns_with_a_raw_event_inside() -> None:
    inner = {"eventType": "order.created", "conversationId": "c-1", "extra": {"kept": True}}
    event = decode(sns(inner, attributes={"a": {"Type": "String", "Value": "1"}, "bad": "x"}))
    assert event.envelope is events.EnvelopeKind.SNS
    assert event.payload == inner
    assert event.event_type == "order.created"
    assert event.ordering_key == "c-1"
    assert event.topic is None
    assert event.attributes == {"a": "1"}


def test_unknown_fields_are_kept_and_missing_ones_are_fine() -> None:
    event = decode({"topicName": "v2.something.new", "eventBody": {"novel": [1, 2]}, "surprise": 1})
    assert event.payload["surprise"] == 1
    assert event.event_type == "v2.something.new"
    assert event.ordering_key is None
    assert event.event_time_ms is None
    assert decode({}).event_type == keying.UNKNOWN_EVENT_TYPE


# --- derived fields ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "template"),
    [
        (f"v2.detail.events.conversation.{CONVERSATION}.acw", "v2.detail.events.conversation.{id}.acw"),
        (
            f"v2.detail.events.conversation.{CONVERSATION}.customer.start",
            "v2.detail.events.conversation.{id}.customer.start",
        ),
        (f"v2.routing.queues.{CONVERSATION}.conversations", "v2.routing.queues.{id}.conversations"),
        (f"v2.conversations.{CONVERSATION}.transcription", "v2.conversations.{id}.transcription"),
        ("v2.detail.events.conversation.conv-17.acw", "v2.detail.events.conversation.{id}.acw"),
        (f"v2.users.{CONVERSATION}.conversations.calls", "v2.users.{id}.conversations.calls"),
        ("v2.detail.events.conversation.{id}.acw", "v2.detail.events.conversation.{id}.acw"),
        ("plain.topic", "plain.topic"),
    ],
)
def test_topic_template(topic: str, template: str) -> None:
    assert keying.topic_template(topic) == template


def test_detail_type_wins_over_the_derived_template() -> None:
    document = eventbridge({"topicName": "a.b", "eventBody": {}})
    document["detail-type"] = "Custom Type"
    assert decode(document).event_type == "Custom Type"


def test_conversation_id_from_the_topic_when_the_body_lacks_it() -> None:
    detail = {"topicName": f"v2.detail.events.conversation.{CONVERSATION}.user.end", "eventBody": {}}
    assert decode(detail).ordering_key == CONVERSATION
    transcription = {
        "topicName": "v2.conversations.conv-9.transcription",
        "eventBody": {"eventTime": "2025-03-14T15:09:26.500Z"},
    }
    event = decode(transcription)
    assert event.ordering_key == "conv-9"
    assert event.event_time_ms == 1741964966500
    # Only the default key knows those places.
    assert decode(detail, ordering_key="queueId").ordering_key is None


def test_ordering_key_lookup_order_and_dotted_paths() -> None:
    detail = {
        "topicName": "t",
        "eventBody": {"conversationId": "from-body", "user": {"id": 42}},
        "conversationId": "from-payload",
        "tenant": "from-payload",
    }
    assert decode(detail).ordering_key == "from-body"
    assert decode(detail, ordering_key="user.id").ordering_key == "42"
    assert decode(detail, ordering_key="tenant").ordering_key == "from-payload"
    document = eventbridge(detail)
    assert decode(document, ordering_key="account").ordering_key == "123456789012"
    assert decode(detail, ordering_key="user").ordering_key is None  # an object is no key
    assert decode(detail, ordering_key="missing.path").ordering_key is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1741964966123, 1741964966123),
        (1741964966123.9, 1741964966123),
        ("1741964966123", 1741964966123),
        ("2025-03-14T15:09:26.123Z", 1741964966123),
        ("2025-03-14T16:09:26.123+01:00", 1741964966123),
        ("2025-03-14T15:09:26.123", 1741964966123),  # naive = UTC
        ("yesterday", None),
        (-5, None),
        (float("inf"), None),
        (True, None),
        (None, None),
        ({"ms": 1}, None),
    ],
)
def test_epoch_ms(value: Any, expected: int | None) -> None:
    assert envelopes.epoch_ms(value) == expected


def test_event_time_falls_back_to_detail_timestamp_then_eventbridge_time() -> None:
    detail = {
        "topicName": "t",
        "eventBody": {"eventTime": "garbage"},
        "timestamp": "2025-03-14T15:09:26.187Z",
    }
    assert decode(eventbridge(detail)).event_time_ms == 1741964966187
    del detail["timestamp"]
    assert decode(eventbridge(detail)).event_time_ms == 1741964966000
    assert decode(detail).event_time_ms is None


# --- the event id --------------------------------------------------------------------


def test_event_id_without_correlation_id_hashes_topic_and_body() -> None:
    body = {"conversationId": "c", "eventTime": 1}
    one = decode({"topicName": "t.1", "eventBody": body, "timestamp": "a"})
    assert one.event_id.startswith("sha256:")
    # Key order and envelope-level fields outside eventBody do not matter...
    same = decode(
        {"eventBody": {"eventTime": 1, "conversationId": "c"}, "timestamp": "b", "topicName": "t.1"}
    )
    assert same.event_id == one.event_id
    # ...the topic and the body do.
    assert decode({"topicName": "t.2", "eventBody": body}).event_id != one.event_id
    assert decode({"topicName": "t.1", "eventBody": {**body, "eventTime": 2}}).event_id != one.event_id


def test_event_id_of_non_genesys_json_hashes_the_payload() -> None:
    assert decode({"a": 1, "b": 2}).event_id == decode({"b": 2, "a": 1}).event_id
    assert decode({"a": 1}).event_id != decode({"a": 2}).event_id


def test_long_correlation_ids_are_hashed() -> None:
    long_id = "x" * (keying.MAX_CORRELATION_ID_CHARS + 1)
    event = decode({"metadata": {"CorrelationId": long_id}})
    assert event.event_id.startswith("sha256:")
    assert event.event_id == decode({"metadata": {"CorrelationId": long_id}, "other": 1}).event_id


def test_event_id_is_never_the_envelope_id() -> None:
    detail = {"topicName": "t", "eventBody": {"n": 1}}
    first = decode(sns(json.dumps(eventbridge(detail, envelope_id="E1")), message_id="M1"))
    second = decode(sns(json.dumps(eventbridge(detail, envelope_id="E2")), message_id="M2"))
    assert first.event_id == second.event_id
    assert first.event_id not in {"E1", "E2", "M1", "M2"}


# --- poison --------------------------------------------------------------------------

SECRET = "tel:+13175550123"


@pytest.mark.parametrize(
    ("body", "reason_part"),
    [
        (b'{"ani": "' + SECRET.encode() + b'\xff"}', "not UTF-8"),
        ('{"ani": "' + SECRET + '"', "not JSON"),
        ("", "not JSON"),
        ('{"x": NaN}', "not JSON"),
        ('{"x": ' + "1" * 5000 + "}", "not JSON"),
        ('["' + SECRET + '"]', "array, not an object"),
        ('"' + SECRET + '"', "string, not an object"),
        ("null", "null, not an object"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (json.dumps({"Type": "Notification", "TopicArn": "arn"}), "without a string Message"),
        (json.dumps(sns("not json " + SECRET)), "SNS Message is not JSON"),
        (json.dumps(sns("[1, 2]")), "SNS Message is JSON array"),
        (json.dumps({"detail-type": "t", "detail": SECRET}), "detail is not an object"),
        (json.dumps(sns({"detail-type": "t", "detail": [SECRET]})), "detail is not an object"),
        ('{"pad": "' + "a" * envelopes.MAX_BODY_BYTES + '"}', "larger than"),
        (b'{"pad": "' + b"a" * envelopes.MAX_BODY_BYTES + b'"}', "larger than"),
        ('{"pad": "' + "é" * (envelopes.MAX_BODY_BYTES // 2) + '"}', "larger than"),
    ],
)
def test_poison_bodies(body: str | bytes, reason_part: str) -> None:
    with pytest.raises(envelopes.PoisonMessage) as caught:
        envelopes.decode(body)
    assert reason_part in caught.value.reason
    assert SECRET not in caught.value.reason
    assert "1317" not in str(caught.value)


def test_deeply_nested_but_valid_json_is_poison_not_a_crash() -> None:
    nested = '{"a":' * 50_000 + "1" + "}" * 50_000
    with pytest.raises(envelopes.PoisonMessage):
        envelopes.decode(nested)


def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    prefix, suffix = '{"pad": "', '"}'
    body = prefix + "a" * (envelopes.MAX_BODY_BYTES - len(prefix) - len(suffix)) + suffix
    assert len(body.encode()) == envelopes.MAX_BODY_BYTES
    assert envelopes.decode(body).event_type == keying.UNKNOWN_EVENT_TYPE


# --- properties ----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "Type",
        "Message",
        "MessageId",
        "MessageAttributes",
        "detail-type",
        "detail",
        "topicName",
        "eventBody",
        "metadata",
        "timestamp",
        "time",
        "conversationId",
        "eventTime",
        "CorrelationId",
        "id",
        "eventType",
        "type",
    ]
)
# Objects built from the field names decode cares about, with any values, nested a little.
shaped_objects = st.recursive(
    st.dictionaries(field_names, json_values, max_size=6),
    lambda children: st.dictionaries(
        field_names, children | json_values | children.map(json.dumps), max_size=6
    ),
    max_leaves=10,
)


def decodes_or_is_poison(body: str | bytes, ordering_key: str = "conversationId") -> None:
    try:
        event = envelopes.decode(body, ordering_key=ordering_key)
    except envelopes.PoisonMessage as poison:
        reason = poison.reason
    else:
        check_event(event)
        return
    assert reason


def check_event(event: events.Event) -> None:
    assert isinstance(event.event_id, str)
    assert event.event_id
    assert isinstance(event.event_type, str)
    assert event.event_type
    assert event.ordering_key is None or isinstance(event.ordering_key, str)
    assert event.event_time_ms is None or isinstance(event.event_time_ms, int)
    json.dumps(event.payload)  # a sink can always serialise what it is given


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_are_poison(body: bytes) -> None:
    decodes_or_is_poison(body)


@given(json_values)
def test_arbitrary_json_decodes_or_is_poison(value: Any) -> None:
    decodes_or_is_poison(json.dumps(value))


@given(shaped_objects, st.sampled_from(["conversationId", "eventBody.id", "metadata.CorrelationId", "a.b.c"]))
@settings(max_examples=300)
def test_envelope_shaped_json_decodes_or_is_poison(document: dict[str, Any], key: str) -> None:
    decodes_or_is_poison(json.dumps(document), key)
    decodes_or_is_poison(json.dumps(sns(json.dumps(document))), key)
    decodes_or_is_poison(json.dumps(sns(eventbridge(document))), key)


details = st.fixed_dictionaries(
    {"topicName": st.text(max_size=40), "eventBody": json_values},
    optional={
        "version": st.just("2"),
        "metadata": st.fixed_dictionaries({}, optional={"CorrelationId": st.text(max_size=300)}),
        "timestamp": st.text(max_size=30),
    },
)


@given(details, st.uuids(), st.uuids())
def test_event_id_is_the_same_through_every_envelope(
    detail: dict[str, Any], one: uuid.UUID, two: uuid.UUID
) -> None:
    deliveries = [
        detail,
        eventbridge(detail, envelope_id=str(one)),
        eventbridge(detail, envelope_id=str(two)),
        sns(detail, message_id=str(one)),
        sns(json.dumps(eventbridge(detail, envelope_id=str(one))), message_id=str(two)),
        sns(json.dumps(eventbridge(detail, envelope_id=str(two))), message_id=str(one)),
    ]
    decoded = [decode(delivery) for delivery in deliveries]
    assert {event.event_id for event in decoded} == {decoded[0].event_id}
    assert {event.ordering_key for event in decoded} == {decoded[0].ordering_key}
    assert all(event.payload == detail for event in decoded)
    assert [event.envelope for event in decoded] == [
        events.EnvelopeKind.RAW,
        events.EnvelopeKind.EVENTBRIDGE,
        events.EnvelopeKind.EVENTBRIDGE,
        events.EnvelopeKind.SNS,
        events.EnvelopeKind.SNS_EVENTBRIDGE,
        events.EnvelopeKind.SNS_EVENTBRIDGE,
    ]
