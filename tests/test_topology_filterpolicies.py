"""spec.filter.eventTypes → SNS filter policy: never narrower than the worker's filter, else tight.

Properties, over globs and Genesys-shaped event types: an event the worker keeps (its type or
its concrete topic matches a glob, as ``workers.filtering`` matches) passes the derived policy,
wherever SNS reads the event type (an attribute, EventBridge's ``detail-type``, a Genesys
``topicName``); and our evaluator of a policy agrees with moto's, the SNS stand-in the e2e
tests deliver through.
"""

from __future__ import annotations

import fnmatch
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto.sns import utils as moto_sns

from fanout_core import filterpolicies, spec

TEMPLATE = filterpolicies.EventTypeSource()
CONCRETE = filterpolicies.EventTypeSource(field=spec.EventTypeField.TOPIC_NAME)
ATTRIBUTE = filterpolicies.EventTypeSource(attribute="eventType")
SOURCES = [TEMPLATE, CONCRETE, ATTRIBUTE]

WORDS = [
    "v2",
    "detail",
    "events",
    "conversation",
    "customer",
    "start",
    "end",
    "acw",
    "users",
    "routingStatus",
]
segments = st.sampled_from([*WORDS, "{id}"])
event_types = st.lists(segments, min_size=2, max_size=7).map(".".join)
glob_pieces = st.sampled_from([*WORDS, "{id}", "*", "?", "conv", "1a2b-3c", "[ab]"])
globs = st.lists(glob_pieces, min_size=1, max_size=6).flatmap(
    lambda pieces: st.lists(st.sampled_from([".", ""]), min_size=len(pieces), max_size=len(pieces)).map(
        lambda joins: "".join(piece + join for piece, join in zip(pieces, joins, strict=True))
    )
)


def _kept(event_type: str, patterns: list[str]) -> bool:
    """What the worker keeps: the glob matches the type (template) or the concrete topic."""
    topic = event_type.replace("{id}", filterpolicies.SAMPLE_ID)
    return any(fnmatch.fnmatchcase(event_type, p) or fnmatch.fnmatchcase(topic, p) for p in patterns)


@pytest.mark.parametrize(
    ("pattern", "source", "expected"),
    [
        ("v2.detail.events.conversation.*", TEMPLATE, {"prefix": "v2.detail.events.conversation."}),
        ("v2.detail.events.conversation.{id}.acw", TEMPLATE, "v2.detail.events.conversation.{id}.acw"),
        # the concrete topic holds the id, not "{id}": only the part before it can be required
        ("v2.detail.events.conversation.{id}.acw", CONCRETE, {"prefix": "v2.detail.events.conversation."}),
        ("v2.users.*.routingStatus", ATTRIBUTE, {"suffix": ".routingStatus"}),
        ("*.acw", TEMPLATE, {"suffix": ".acw"}),
        # a concrete id in a glob: SNS never sees it in a template, so it is left out
        ("v2.detail.events.conversation.1a2b-3c.*", TEMPLATE, {"prefix": "v2.detail.events.conversation."}),
        ("v2.detail.events.conv*", TEMPLATE, {"prefix": "v2.detail.events."}),
        ("v2.detail.events.conv*", CONCRETE, {"prefix": "v2.detail.events.conv"}),
        ("*", TEMPLATE, None),
        ("*acw", TEMPLATE, None),
    ],
)
def test_a_glob_becomes_the_tightest_condition_sns_can_express(
    pattern: str, source: filterpolicies.EventTypeSource, expected: object
) -> None:
    assert filterpolicies.condition(pattern, source) == expected


def test_the_derived_policy_names_its_scope_and_key() -> None:
    patterns = ["v2.detail.events.conversation.*", "v2.detail.events.conversation.{id}.acw"]
    body = filterpolicies.derive(patterns, TEMPLATE)
    assert body is not None
    # the exact value is covered by the prefix, so only the prefix is left
    assert body.document == {"detail-type": [{"prefix": "v2.detail.events.conversation."}]}
    assert body.scope is spec.FilterPolicyScope.MESSAGE_BODY
    attributes = filterpolicies.derive(patterns, ATTRIBUTE)
    assert attributes is not None
    assert attributes.scope is spec.FilterPolicyScope.MESSAGE_ATTRIBUTES
    assert list(attributes.document) == ["eventType"]
    # a glob SNS cannot narrow, or no glob at all: no policy, every event goes to the queue
    assert filterpolicies.derive(["v2.users.*", "*"], TEMPLATE) is None
    assert filterpolicies.derive(None, TEMPLATE) is None


def test_too_many_values_mean_no_policy_rather_than_one_sns_refuses() -> None:
    names = [chr(97 + i // 26) + chr(97 + i % 26) for i in range(200)]
    patterns = [f"v2.detail.events.conversation.{{id}}.{name}" for name in names]
    assert filterpolicies.derive(patterns[:150], TEMPLATE) is not None
    assert filterpolicies.derive(patterns, TEMPLATE) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(globs, min_size=1, max_size=4), event_types, st.sampled_from(SOURCES))
def test_an_event_the_worker_keeps_always_passes_the_derived_policy(
    patterns: list[str], event_type: str, source: filterpolicies.EventTypeSource
) -> None:
    policy = filterpolicies.derive(patterns, source)
    if policy is None or not _kept(event_type, patterns):
        return
    assert filterpolicies.evaluate(policy, filterpolicies.sample(event_type, source)) is True


def _moto_matches(policy: filterpolicies.FilterPolicy, message: filterpolicies.Sample) -> bool:
    attributes = {name: {"Type": "String", "Value": value} for name, value in message.attributes.items()}
    matcher = moto_sns.FilterPolicyMatcher(dict(policy.document), str(policy.scope))
    return bool(matcher.matches(attributes, json.dumps(message.body)))


@settings(max_examples=200, deadline=None)
@given(st.lists(globs, min_size=1, max_size=4), event_types, st.sampled_from(SOURCES))
def test_our_reading_of_a_derived_policy_is_what_the_sns_stand_in_does(
    patterns: list[str], event_type: str, source: filterpolicies.EventTypeSource
) -> None:
    policy = filterpolicies.derive(patterns, source)
    if policy is None:
        return
    message = filterpolicies.sample(event_type, source)
    assert filterpolicies.evaluate(policy, message) is _moto_matches(policy, message)


@pytest.mark.parametrize(
    ("document", "scope", "expected"),
    [
        ({"eventType": ["v2.users.{id}.routingStatus"]}, "MessageAttributes", False),
        ({"eventType": [{"anything-but": ["v2.users.{id}.routingStatus"]}]}, "MessageAttributes", True),
        (
            {"eventType": [{"equals-ignore-case": "V2.DETAIL.EVENTS.CONVERSATION.{ID}.ACW"}]},
            "MessageAttributes",
            True,
        ),
        ({"eventType": [{"exists": True}]}, "MessageAttributes", True),
        # a key the sample cannot know (only the publisher sets it): nobody can tell from here
        ({"eventCategory": ["conversation"]}, "MessageAttributes", None),
        ({"eventCategory": ["x"], "eventType": ["nope"]}, "MessageAttributes", False),
        ({"$or": [{"eventCategory": ["x"]}, {"eventType": [{"prefix": "v2."}]}]}, "MessageAttributes", True),
        ({"detail": {"topicName": [{"prefix": "v2.detail."}]}}, "MessageBody", True),
        ({"detail-type": [{"suffix": ".end"}]}, "MessageBody", False),
    ],
)
def test_evaluate_answers_true_false_or_cannot_tell(
    document: dict[str, object], scope: str, expected: object
) -> None:
    event_type = "v2.detail.events.conversation.{id}.acw"
    source = ATTRIBUTE if scope == "MessageAttributes" else TEMPLATE
    policy = filterpolicies.FilterPolicy(document=document, scope=spec.FilterPolicyScope(scope))
    assert filterpolicies.evaluate(policy, filterpolicies.sample(event_type, source)) is expected


def test_policies_equal_in_meaning_compare_equal() -> None:
    one = filterpolicies.FilterPolicy({"a": ["x", {"prefix": "y"}], "b": ["z"]})
    two = filterpolicies.FilterPolicy({"b": ["z"], "a": [{"prefix": "y"}, "x"]})
    assert one.same_as(two)
    assert not one.same_as(
        filterpolicies.FilterPolicy(dict(two.document), spec.FilterPolicyScope.MESSAGE_BODY)
    )
