"""filtering.EventFilter: the example of docs/contracts.md, type-or-topic matching, fnmatch semantics."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers import events, filtering

CONVERSATION = "0b6f8c1e-3d2a-4c5b-9e8f-7a6b5c4d3e2f"


def event(event_type: str, topic: str | None = None) -> events.Event:
    return events.Event(event_id=events.EventId("e"), event_type=event_type, payload={}, topic=topic)


ACW = event("v2.detail.events.conversation.{id}.acw", f"v2.detail.events.conversation.{CONVERSATION}.acw")
SNAPSHOT = event("v2.routing.queues.{id}.conversations", f"v2.routing.queues.{CONVERSATION}.conversations")
RAW = event("order.created")


@pytest.mark.parametrize("patterns", [None, []])
def test_no_patterns_keep_everything(patterns: list[str] | None) -> None:
    keep_all = filtering.EventFilter(patterns)
    assert keep_all.keeps_everything
    assert all(keep_all.keep(e) for e in (ACW, SNAPSHOT, RAW))


def test_documented_example_star_crosses_dots() -> None:
    conversation_events = filtering.EventFilter(["v2.detail.events.conversation.*"])
    assert conversation_events.keep(ACW)
    assert not conversation_events.keep(SNAPSHOT)
    assert not conversation_events.keep(RAW)


def test_exact_template_and_concrete_topic_both_match() -> None:
    by_template = filtering.EventFilter(["v2.detail.events.conversation.{id}.acw"])
    assert by_template.keep(ACW)
    assert not by_template.keep(event("v2.detail.events.conversation.{id}.acw.more"))
    by_topic = filtering.EventFilter([f"*.{CONVERSATION}.*"])
    assert by_topic.keep(ACW)
    assert by_topic.keep(SNAPSHOT)
    assert not by_topic.keep(RAW)


def test_several_patterns_any_match_keeps() -> None:
    either = filtering.EventFilter(["order.*", "v2.routing.queues.*"])
    assert either.keep(RAW)
    assert either.keep(SNAPSHOT)
    assert not either.keep(ACW)


def test_case_sensitive_and_character_classes() -> None:
    assert not filtering.EventFilter(["ORDER.*"]).keep(RAW)
    assert filtering.EventFilter(["order.[a-c]reated"]).keep(RAW)
    assert filtering.EventFilter(["order.?reated"]).keep(RAW)
    assert not filtering.EventFilter(["order.[!c]reated"]).keep(RAW)


segments = st.text(alphabet="abcXY{}.-*?[]!", max_size=12)


@given(st.lists(segments, max_size=4), segments, st.none() | segments)
def test_keep_agrees_with_fnmatchcase(patterns: list[str], event_type: str, topic: str | None) -> None:
    expected = not patterns or any(
        fnmatch.fnmatchcase(event_type, p) or (topic is not None and fnmatch.fnmatchcase(topic, p))
        for p in patterns
    )
    assert filtering.EventFilter(patterns).keep(event(event_type, topic)) is expected
