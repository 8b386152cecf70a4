"""``spec.filter.eventTypes`` as an SNS subscription filter policy, and what a policy lets through.

The topology code (``topology`` derives the subscription's policy; ``findings`` judges the
policy a subscription actually has) asks two questions here, both without I/O:

* :func:`derive` — the tightest SNS filter policy that never drops an event the worker's
  filter keeps. SNS cannot express every glob: ``prefix``, ``suffix`` and exact values are
  all it has for strings, so ``v2.detail.events.conversation.*.acw`` becomes the prefix
  ``v2.detail.events.conversation.`` or the suffix ``.acw`` (the longer literal wins) and the
  worker drops the rest. A policy that is *wider* costs the deliveries the worker discards; a
  policy that is *narrower* loses events before they reach the queue, so every widening
  errs on the side of letting through. A pattern with no literal SNS could match (``*``)
  means no policy at all.
* :func:`evaluate` — does a policy let a sample message through? ``findings`` builds one
  sample per kept pattern (:func:`samples`) and flags a policy that rejects one: events
  the consumer wants are dropped before the queue. The answer is ``None`` when the policy
  looks at something the sample does not model (an attribute such as ``eventCategory``
  that only the publisher knows): then nobody can tell from here.

Where the event type is: a message attribute the publisher sets (scope
``MessageAttributes``), or, "where attributes are missing", a body field (scope
``MessageBody``): EventBridge's ``detail-type`` (the topic template, ``{id}`` literal) or a
Genesys notification's ``topicName`` (the concrete topic, with the ids in it).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fanout_core import spec

MAX_VALUES = 150
"""SNS: at most 150 value combinations in one filter policy."""

ID_TEMPLATE = "{id}"
SAMPLE_ID = "00000000-0000-4000-8000-000000000000"
_META = re.compile(r"[*?\[]")
# A literal topic segment SNS sees the same way in every event of that type: a word (``acw``,
# ``routingStatus``) or a version (``v2``); anything else (digits, dashes: an id) varies.
_STABLE_SEGMENT = re.compile(r"^(?:[A-Za-z]+|v[0-9]+)$")


@dataclasses.dataclass(frozen=True)
class EventTypeSource:
    """Where SNS reads the event type: an attribute, else a body field."""

    attribute: str | None = None
    field: spec.EventTypeField = spec.EventTypeField.DETAIL_TYPE

    @classmethod
    def of(cls, subscription: spec.SubscriptionSpec) -> EventTypeSource:
        return cls(attribute=subscription.event_type_attribute, field=subscription.event_type_field)

    @property
    def scope(self) -> spec.FilterPolicyScope:
        if self.attribute is not None:
            return spec.FilterPolicyScope.MESSAGE_ATTRIBUTES
        return spec.FilterPolicyScope.MESSAGE_BODY

    @property
    def key(self) -> str:
        return self.attribute if self.attribute is not None else str(self.field)

    @property
    def concrete(self) -> bool:
        """True when the value carries the ids (``topicName``), not the ``{id}`` template."""
        return self.attribute is None and self.field is spec.EventTypeField.TOPIC_NAME


@dataclasses.dataclass(frozen=True)
class FilterPolicy:
    """An SNS filter policy (its JSON document) and its scope."""

    document: Mapping[str, Any]
    scope: spec.FilterPolicyScope = spec.FilterPolicyScope.MESSAGE_ATTRIBUTES

    def to_json(self) -> str:
        return json.dumps(self.document, sort_keys=True, separators=(",", ":"))

    def same_as(self, other: FilterPolicy) -> bool:
        """Equal in meaning as far as order goes: keys and values compared as sets."""
        return self.scope == other.scope and canonical(self.document) == canonical(other.document)


def canonical(document: Any) -> str:
    """A text equal for equal policies, whatever the order of keys and of values in a list."""
    return json.dumps(_sorted(document), sort_keys=True, separators=(",", ":"))


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _sorted(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [_sorted(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    return value


# --- derive ---------------------------------------------------------------------------


def condition(pattern: str, source: EventTypeSource) -> str | dict[str, str] | None:
    """One glob as one SNS value condition that matches at least what the glob keeps.

    An exact string when the glob is a stable literal; else ``{"prefix"}`` or ``{"suffix"}``
    of the longest stable literal at either end; ``None`` when nothing narrower than
    "everything" can be said.
    """
    metachar = _META.search(pattern)
    head = pattern[: metachar.start()] if metachar else pattern
    prefix = _stable_prefix(head, source, cut=metachar is not None)
    if metachar is None and prefix == pattern:
        return pattern
    suffix = _stable_suffix(pattern[_last_meta_end(pattern) :], source, cut=metachar is not None)
    if not prefix and not suffix:
        return None
    if len(suffix) > len(prefix):
        return {"suffix": suffix}
    return {"prefix": prefix}


def _last_meta_end(pattern: str) -> int:
    end = 0
    for found in _META.finditer(pattern):
        end = found.end()
        if found.group() == "[":
            closing = pattern.find("]", found.end() + 1)
            end = closing + 1 if closing >= 0 else len(pattern)
    return end


def _stable(segment: str, source: EventTypeSource) -> bool:
    if segment == ID_TEMPLATE:
        return not source.concrete
    return bool(_STABLE_SEGMENT.match(segment))


def _stable_piece(piece: str, source: EventTypeSource) -> bool:
    """May a segment cut short by a glob character stay in the literal?

    Only where SNS sees the concrete topic: the worker also matches a glob against the
    concrete topic, so against a template ``conv*`` might be meant for an id (``conv12-...``)
    SNS never sees there.
    """
    return piece == "" or (source.concrete and piece.isalpha())


def _stable_prefix(head: str, source: EventTypeSource, *, cut: bool) -> str:
    """The part of ``head`` before the first segment that varies between events of a type
    (``cut``: its last segment was cut short by a glob character)."""
    segments = head.split(".")
    kept: list[str] = []
    for index, segment in enumerate(segments):
        cut_short = cut and index == len(segments) - 1
        if _stable_piece(segment, source) if cut_short else _stable(segment, source):
            kept.append(segment)
            continue
        kept.append("")
        break
    return ".".join(kept)


def _stable_suffix(tail: str, source: EventTypeSource, *, cut: bool) -> str:
    """The part of ``tail`` after the last segment that varies (mirror of the prefix rule)."""
    segments = tail.split(".")
    kept: list[str] = []
    for index in range(len(segments) - 1, -1, -1):
        segment = segments[index]
        cut_short = cut and index == 0
        if _stable_piece(segment, source) if cut_short else _stable(segment, source):
            kept.append(segment)
            continue
        kept.append("")
        break
    return ".".join(reversed(kept))


def derive(patterns: Sequence[str] | None, source: EventTypeSource) -> FilterPolicy | None:
    """The tightest policy over ``source`` that keeps every event ``patterns`` keep; ``None``
    when only "no policy" does (no patterns, or one SNS cannot narrow)."""
    if not patterns:
        return None
    values: list[str | dict[str, str]] = []
    for pattern in patterns:
        found = condition(pattern, source)
        if found is None:
            return None
        values.append(found)
    values = _without_subsumed(values)
    if len(values) > MAX_VALUES:
        return None
    return FilterPolicy(document={source.key: values}, scope=source.scope)


def _without_subsumed(values: list[str | dict[str, str]]) -> list[str | dict[str, str]]:
    """Drop duplicates and values another value already lets through."""
    unique: list[str | dict[str, str]] = []
    for value in values:
        if value not in unique:
            unique.append(value)
    kept = []
    for value in unique:
        if not any(other is not value and _covers(other, value) for other in unique):
            kept.append(value)
    return kept


def _covers(wide: str | dict[str, str], narrow: str | dict[str, str]) -> bool:
    if wide == narrow or isinstance(wide, str):
        return False
    ((operator, literal),) = wide.items()
    if isinstance(narrow, str):
        return narrow.startswith(literal) if operator == "prefix" else narrow.endswith(literal)
    ((narrow_operator, narrow_literal),) = narrow.items()
    if operator != narrow_operator:
        return False
    if operator == "prefix":
        return narrow_literal.startswith(literal) and narrow_literal != literal
    return narrow_literal.endswith(literal) and narrow_literal != literal


# --- samples --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """A message as SNS filters it: its attributes (String values) and its JSON body."""

    event_type: str
    attributes: Mapping[str, str]
    body: Mapping[str, Any]


def samples(patterns: Sequence[str], source: EventTypeSource) -> list[Sample]:
    """Messages of event types each pattern keeps, shaped as ``source`` says they arrive."""
    found: list[Sample] = []
    for pattern in patterns:
        for event_type in _event_types(pattern):
            found.append(sample(event_type, source))
    return found


def _event_types(pattern: str) -> list[str]:
    """Event types (topic templates) the glob matches: its wildcards filled in two ways."""
    candidates = []
    for filling in ("", f"{ID_TEMPLATE}.acw"):
        text = re.sub(r"\[[^\]]*\]", "x", pattern).replace("?", "x").replace("*", filling)
        if fnmatch.fnmatchcase(text, pattern) and text not in candidates:
            candidates.append(text)
    return candidates


def sample(event_type: str, source: EventTypeSource) -> Sample:
    """A message of ``event_type`` (a topic template) as it reaches SNS from ``source``."""
    topic = event_type.replace(ID_TEMPLATE, SAMPLE_ID)
    if source.attribute is not None:
        return Sample(event_type, {source.attribute: event_type}, {"topicName": topic})
    if source.field is spec.EventTypeField.TOPIC_NAME:
        return Sample(event_type, {}, {"topicName": topic, "version": "2", "eventBody": {}})
    body = {"detail-type": event_type, "source": "aws.partner/genesys.com", "detail": {"topicName": topic}}
    return Sample(event_type, {}, body)


# --- evaluate -------------------------------------------------------------------------


def evaluate(policy: FilterPolicy, sample: Sample) -> bool | None:
    """Would SNS deliver ``sample`` under ``policy``? ``None`` when the policy reads a key the
    sample does not model, so the answer depends on what the publisher sends."""
    if policy.scope is spec.FilterPolicyScope.MESSAGE_ATTRIBUTES:
        return _match_object(policy.document, dict(sample.attributes), nested=False)
    return _match_object(policy.document, sample.body, nested=True)


def _match_object(rules: Mapping[str, Any], values: Mapping[str, Any], *, nested: bool) -> bool | None:
    """Every key must match (AND); unknown beats false only when nothing is definitely false."""
    unknown = False
    for key, rule in rules.items():
        if key == "$or" and isinstance(rule, list):
            branches = [branch for branch in rule if isinstance(branch, dict)]
            result = _any(_match_object(branch, values, nested=nested) for branch in branches)
        elif nested and isinstance(rule, Mapping):
            inner = values.get(key)
            result = _match_object(rule, inner, nested=True) if isinstance(inner, Mapping) else None
        elif isinstance(rule, list):
            result = _match_values(rule, key in values, values.get(key))
        else:
            result = None
        if result is False:
            return False
        unknown = unknown or result is None
    return None if unknown else True


def _any(results: Any) -> bool | None:
    unknown = False
    for result in results:
        if result is True:
            return True
        unknown = unknown or result is None
    return None if unknown else False


def _match_values(rule: list[Any], present: bool, value: Any) -> bool | None:
    """One key's list of conditions (OR); ``None`` for a key the sample does not carry."""
    exists_rules = [item for item in rule if isinstance(item, Mapping) and "exists" in item]
    if not present:
        if any(item.get("exists") is False for item in exists_rules):
            return True
        return None
    answers = [_match_one(item, value) for item in rule]
    return _any(answers)


def _match_one(condition_: Any, value: Any) -> bool | None:
    if isinstance(condition_, str):
        return isinstance(value, str) and value == condition_
    if isinstance(condition_, bool) or condition_ is None:
        return bool(value == condition_)
    if isinstance(condition_, (int, float)):
        return isinstance(value, (int, float)) and float(value) == float(condition_)
    if not isinstance(condition_, Mapping) or len(condition_) != 1:
        return None
    ((operator, operand),) = condition_.items()
    text = value if isinstance(value, str) else None
    if operator == "exists":
        return bool(operand)
    if operator == "prefix" and isinstance(operand, str):
        return text is not None and text.startswith(operand)
    if operator == "suffix" and isinstance(operand, str):
        return text is not None and text.endswith(operand)
    if operator == "equals-ignore-case" and isinstance(operand, str):
        return text is not None and text.lower() == operand.lower()
    if operator == "anything-but":
        inner = _anything_but(operand, value)
        return None if inner is None else not inner
    return None  # numeric, cidr, wildcard...: not something an event type is matched with


def _anything_but(operand: Any, value: Any) -> bool | None:
    """True when ``value`` is one of the excluded values."""
    if isinstance(operand, list):
        return bool(value in operand)
    if isinstance(operand, Mapping):
        return _match_one(operand, value)
    return bool(value == operand)
