"""Dead letters as values: what the worker wrote, which ones a redrive takes, what it sends back.

The worker copies a message it gives up on to ``spec.deadLetter.queueUrl`` with the body
unchanged and four attributes (docs/contracts.md, "The dead-letter message")::

    fanout.reason         why (never quoting the body)
    fanout.reason-class   poison | permanent | exhausted
    fanout.attempts       its receive count when dead-lettered
    fanout.source-queue   the source queue URL

A message moved by the source queue's own redrive policy (``maxReceiveCount``) carries none
of them: its class is :data:`UNLABELLED`.

``fanout dlq`` (``fanout_cli.dlq``) and the operator's declarative redrive both go through
``fanout_core.redriving``, which receives SQS messages and asks this module, without any I/O:

* :func:`parse` — an SQS message → a frozen :class:`DeadLetter` (its event identity comes
  from an injected :data:`Identify`, so the caller decides how bodies are decoded);
* :class:`Selection` and :func:`matches` — the filters (reason class, reason text, event
  type glob, age);
* :class:`GroupGate` — a FIFO group is redriven in order or not at all past a message that
  stays behind;
* :func:`copy_of` — the ``SendMessage`` entry that puts a dead letter back: body unchanged,
  the reason attributes folded into one history attribute, FIFO group and deduplication id;
* :func:`summarize` — counts by reason class, reason, event type and age.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

REASON = "fanout.reason"
REASON_CLASS = "fanout.reason-class"
ATTEMPTS = "fanout.attempts"
SOURCE_QUEUE = "fanout.source-queue"
HISTORY = "fanout.redrive-history"
"""On a redriven copy: the reason it was dead-lettered for, as compact JSON (one attribute,
so a message keeps room for its own attributes under SQS's limit of ten)."""

REASON_ATTRIBUTES = frozenset({REASON, REASON_CLASS, ATTEMPTS, SOURCE_QUEUE})

DEAD_LETTER_CLASSES = ("poison", "permanent", "exhausted")
"""The reason classes the worker dead-letters with."""
UNLABELLED = "unlabelled"
"""The class of a message without ``fanout.reason-class`` (moved by a queue's redrive policy)."""
REASON_CLASSES = (*DEAD_LETTER_CLASSES, UNLABELLED)

FIFO_FALLBACK_GROUP = "fanout-redrive"
_MAX_HISTORY_REASON = 300
_MAX_SUMMARY_REASON = 120
_MAX_DEDUP_ID = 128

AGE_BUCKETS: tuple[tuple[float, str], ...] = (
    (3_600, "< 1h"),
    (6 * 3_600, "1h-6h"),
    (86_400, "6h-1d"),
    (3 * 86_400, "1d-3d"),
    (7 * 86_400, "3d-7d"),
    (math.inf, ">= 7d"),
)
UNKNOWN_AGE = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class EventIdentity:
    """What the body says about its event: type, deduplication id, ordering key."""

    event_type: str
    event_id: str | None
    ordering_key: str | None


Identify = Callable[[str, Mapping[str, str]], EventIdentity | None]
"""(body, string message attributes) → the event's identity, or None when undecodable."""


@dataclasses.dataclass(frozen=True, slots=True)
class MessageAttribute:
    """One SQS message attribute as it travels (``DataType`` and one of the two values)."""

    data_type: str
    string_value: str | None = None
    binary_value: bytes | None = None

    def wire(self) -> dict[str, Any]:
        value: dict[str, Any] = {"DataType": self.data_type}
        if self.binary_value is not None:
            value["BinaryValue"] = self.binary_value
        else:
            value["StringValue"] = self.string_value or ""
        return value


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of a dead-letter queue, parsed once."""

    message_id: str
    receipt_handle: str
    body: str
    reason_class: str
    reason: str | None
    attempts: int | None
    source_queue: str | None
    sent_at_ms: int | None
    """``SentTimestamp``: when it entered the dead-letter queue."""
    receive_count: int
    """``ApproximateReceiveCount`` in the dead-letter queue (every peek adds one)."""
    group_id: str | None
    deduplication_id: str | None
    attributes: Mapping[str, MessageAttribute]
    identity: EventIdentity | None

    @property
    def event_type(self) -> str | None:
        return self.identity.event_type if self.identity is not None else None

    def age_seconds(self, now_ms: int) -> float | None:
        if self.sent_at_ms is None:
            return None
        return max(0.0, (now_ms - self.sent_at_ms) / 1000)


def _int(value: Any) -> int | None:
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() else None


def _attributes(raw: Any) -> dict[str, MessageAttribute]:
    found: dict[str, MessageAttribute] = {}
    if not isinstance(raw, Mapping):
        return found
    for name, value in raw.items():
        if not isinstance(value, Mapping) or not isinstance(value.get("DataType"), str):
            continue
        string_value = value.get("StringValue")
        binary_value = value.get("BinaryValue")
        found[str(name)] = MessageAttribute(
            data_type=value["DataType"],
            string_value=string_value if isinstance(string_value, str) else None,
            binary_value=binary_value if isinstance(binary_value, bytes) else None,
        )
    return found


def parse(message: Mapping[str, Any], identify: Identify) -> DeadLetter:
    """An SQS message (``ReceiveMessage`` with all attributes) → :class:`DeadLetter`."""
    system = message.get("Attributes") or {}
    attributes = _attributes(message.get("MessageAttributes"))

    def text(name: str) -> str | None:
        attribute = attributes.get(name)
        return attribute.string_value if attribute is not None else None

    body = message.get("Body")
    body = body if isinstance(body, str) else ""
    strings = {
        name: attribute.string_value
        for name, attribute in attributes.items()
        if attribute.string_value is not None and name not in REASON_ATTRIBUTES
    }
    reason_class = (text(REASON_CLASS) or "").strip() or UNLABELLED
    return DeadLetter(
        message_id=str(message.get("MessageId", "")),
        receipt_handle=str(message.get("ReceiptHandle", "")),
        body=body,
        reason_class=reason_class,
        reason=text(REASON),
        attempts=_int(text(ATTEMPTS)),
        source_queue=text(SOURCE_QUEUE),
        sent_at_ms=_int(system.get("SentTimestamp")),
        receive_count=_int(system.get("ApproximateReceiveCount")) or 1,
        group_id=system.get("MessageGroupId") or None,
        deduplication_id=system.get("MessageDeduplicationId") or None,
        attributes=attributes,
        identity=identify(body, strings),
    )


# --- selection -----------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``3d``, ``1w`` → seconds; ValueError otherwise."""
    match = _DURATION.match(text.lower())
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 3d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which dead letters a command takes; every given filter must match (absent = any)."""

    reason_classes: frozenset[str] | None = None
    reason_match: str | None = None
    """Case-insensitive substring of ``fanout.reason``."""
    event_type: str | None = None
    """Glob over the event type (a body that cannot be decoded has none, and never matches)."""
    older_than_seconds: float | None = None
    """Only messages that entered the dead-letter queue at least this long ago."""
    limit: int | None = None
    """At most this many messages."""

    def __post_init__(self) -> None:
        if self.reason_classes is not None:
            unknown = self.reason_classes - set(REASON_CLASSES)
            if unknown:
                raise ValueError(
                    f"unknown reason class {', '.join(sorted(unknown))} (one of {', '.join(REASON_CLASSES)})"
                )
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if self.older_than_seconds is not None and self.older_than_seconds < 0:
            raise ValueError("older-than must not be negative")

    def describe(self) -> str:
        parts = []
        if self.reason_classes is not None:
            parts.append(f"reason class {'|'.join(sorted(self.reason_classes))}")
        if self.reason_match is not None:
            parts.append(f"reason containing {self.reason_match!r}")
        if self.event_type is not None:
            parts.append(f"event type {self.event_type}")
        if self.older_than_seconds is not None:
            parts.append(f"older than {format_age(self.older_than_seconds)}")
        return ", ".join(parts) or "everything"


def matches(letter: DeadLetter, selection: Selection, now_ms: int) -> bool:
    """Whether ``letter`` passes every filter of ``selection``."""
    if selection.reason_classes is not None and letter.reason_class not in selection.reason_classes:
        return False
    if selection.reason_match is not None and (
        letter.reason is None or selection.reason_match.casefold() not in letter.reason.casefold()
    ):
        return False
    if selection.event_type is not None and (
        letter.event_type is None or not fnmatch.fnmatchcase(letter.event_type, selection.event_type)
    ):
        return False
    if selection.older_than_seconds is not None:
        age = letter.age_seconds(now_ms)
        if age is None or age < selection.older_than_seconds:
            return False
    return True


class Verdict(enum.StrEnum):
    """What a redrive does with one received dead letter."""

    MOVE = "move"
    SKIP = "skip"
    """Not selected: it stays in the dead-letter queue."""
    HELD = "held"
    """Selected, but behind a message of its FIFO group that stays: it stays too, in order."""
    SEEN = "seen"
    """Received again in this run (its visibility ran out): already decided."""
    OVER_LIMIT = "over_limit"
    """Selected, but the run's ``limit`` is reached."""


class GroupGate:
    """Per run: turns :func:`matches` into a :class:`Verdict`, keeping FIFO groups in order.

    On a FIFO dead-letter queue, a message that stays behind (not selected, or over the
    limit) closes its group for the rest of the run: moving a later message of the group
    past it would deliver the group out of order. On a standard queue nothing is closed.
    """

    def __init__(self, selection: Selection, *, fifo: bool) -> None:
        self._selection = selection
        self._fifo = fifo
        self._closed: set[str] = set()
        self._decided: dict[str, Verdict] = {}
        self.moved = 0

    def decide(self, letter: DeadLetter, now_ms: int) -> Verdict:
        if letter.message_id in self._decided:
            return Verdict.SEEN
        group = letter.group_id if self._fifo else None
        if group is not None and group in self._closed:
            verdict = Verdict.HELD
        elif not matches(letter, self._selection, now_ms):
            verdict = Verdict.SKIP
        elif self._selection.limit is not None and self.moved >= self._selection.limit:
            verdict = Verdict.OVER_LIMIT
        else:
            verdict = Verdict.MOVE
            self.moved += 1
        if verdict is not Verdict.MOVE and group is not None:
            self._closed.add(group)
        self._decided[letter.message_id] = verdict
        return verdict

    def undo(self, letter: DeadLetter) -> None:
        """A MOVE that did not happen (the copy was refused): it stays, and closes its group."""
        if self._decided.get(letter.message_id) is Verdict.MOVE:
            self.moved -= 1
            if self._fifo and letter.group_id is not None:
                self._closed.add(letter.group_id)

    @property
    def closed_groups(self) -> int:
        return len(self._closed)


# --- what is sent back ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Copy:
    """The ``SendMessageBatch`` entry that puts one dead letter back into the source queue."""

    message_id: str
    """The dead letter's message id (its own deduplication id on a FIFO source queue)."""
    body: str
    attributes: Mapping[str, MessageAttribute]
    group_id: str | None
    deduplication_id: str | None

    def entry(self, entry_id: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"Id": entry_id, "MessageBody": self.body}
        if self.attributes:
            entry["MessageAttributes"] = {name: value.wire() for name, value in self.attributes.items()}
        if self.group_id is not None:
            entry["MessageGroupId"] = self.group_id
        if self.deduplication_id is not None:
            entry["MessageDeduplicationId"] = self.deduplication_id
        return entry


def history(letter: DeadLetter, *, redriven_at_ms: int) -> str:
    """The :data:`HISTORY` value: why it was dead-lettered, and how often it has come back."""
    previous = letter.attributes.get(HISTORY)
    count = 0
    if previous is not None and previous.string_value:
        try:
            earlier = json.loads(previous.string_value)
        except ValueError:
            earlier = None
        if isinstance(earlier, dict) and isinstance(earlier.get("redrives"), int):
            count = earlier["redrives"]
    record: dict[str, Any] = {
        "reasonClass": letter.reason_class,
        "reason": (letter.reason or "")[:_MAX_HISTORY_REASON],
        "attempts": letter.attempts,
        "deadLetteredAt": letter.sent_at_ms,
        "redrivenAt": redriven_at_ms,
        "redrives": count + 1,
    }
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def copy_of(letter: DeadLetter, *, source_fifo: bool, redriven_at_ms: int) -> Copy:
    """What goes back to the source queue for ``letter``.

    The body is unchanged; the reason attributes are removed and folded into one
    :data:`HISTORY` attribute; every other attribute is kept. For a FIFO source queue the
    group is the dead letter's own (the worker wrote the original group, else the ordering
    key), else the decoded ordering key; the deduplication id is the dead letter's message
    id, so a copy sent again after a crash within SQS's five-minute window is dropped.
    """
    attributes = {name: value for name, value in letter.attributes.items() if name not in REASON_ATTRIBUTES}
    attributes[HISTORY] = MessageAttribute("String", history(letter, redriven_at_ms=redriven_at_ms))
    group_id = dedup_id = None
    if source_fifo:
        key = letter.identity.ordering_key if letter.identity is not None else None
        group_id = (letter.group_id or key or FIFO_FALLBACK_GROUP)[:_MAX_DEDUP_ID]
        dedup_id = letter.message_id[:_MAX_DEDUP_ID]
    return Copy(
        message_id=letter.message_id,
        body=letter.body,
        attributes=attributes,
        group_id=group_id,
        deduplication_id=dedup_id,
    )


# --- summary -------------------------------------------------------------------------


def format_age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h 20m``, ``2d 4h``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3_600:
        return f"{seconds // 60}m"
    if seconds < 86_400:
        hours, rest = divmod(seconds, 3_600)
        return f"{hours}h {rest // 60}m" if rest >= 60 else f"{hours}h"
    days, rest = divmod(seconds, 86_400)
    return f"{days}d {rest // 3_600}h" if rest >= 3_600 else f"{days}d"


def age_bucket(age_seconds: float | None) -> str:
    if age_seconds is None:
        return UNKNOWN_AGE
    for bound, label in AGE_BUCKETS:
        if age_seconds < bound:
            return label
    return AGE_BUCKETS[-1][1]  # pragma: no cover - the last bound is infinite


def summary_reason(reason: str | None) -> str:
    """A reason as a summary groups it: one line, at most 120 characters."""
    if not reason:
        return "(no reason)"
    line = " ".join(reason.split())
    return line if len(line) <= _MAX_SUMMARY_REASON else line[: _MAX_SUMMARY_REASON - 1] + "…"


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a dead-letter queue holds, counted."""

    total: int
    by_reason_class: Mapping[str, int]
    by_reason: Mapping[str, int]
    """``class: reason`` → count."""
    by_event_type: Mapping[str, int]
    """Undecodable bodies count under ``(undecodable)``."""
    by_age: Mapping[str, int]
    """In :data:`AGE_BUCKETS` order."""
    oldest_age_seconds: float | None
    newest_age_seconds: float | None
    max_receive_count: int

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "byReasonClass": dict(self.by_reason_class),
            "byReason": dict(self.by_reason),
            "byEventType": dict(self.by_event_type),
            "byAge": dict(self.by_age),
            "oldestAgeSeconds": self.oldest_age_seconds,
            "newestAgeSeconds": self.newest_age_seconds,
            "maxReceiveCount": self.max_receive_count,
        }


UNDECODABLE = "(undecodable)"


def _ranked(counter: Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def summarize(letters: Iterable[DeadLetter], now_ms: int) -> Summary:
    """Counts by reason class, reason, event type and age bucket (largest first)."""
    classes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    types: Counter[str] = Counter()
    ages: Counter[str] = Counter()
    known_ages: list[float] = []
    total = max_receives = 0
    for letter in letters:
        total += 1
        classes[letter.reason_class] += 1
        reasons[f"{letter.reason_class}: {summary_reason(letter.reason)}"] += 1
        types[letter.event_type or UNDECODABLE] += 1
        age = letter.age_seconds(now_ms)
        ages[age_bucket(age)] += 1
        if age is not None:
            known_ages.append(age)
        max_receives = max(max_receives, letter.receive_count)
    order = [label for _, label in AGE_BUCKETS] + [UNKNOWN_AGE]
    return Summary(
        total=total,
        by_reason_class=_ranked(classes),
        by_reason=_ranked(reasons),
        by_event_type=_ranked(types),
        by_age={label: ages[label] for label in order if ages[label]},
        oldest_age_seconds=max(known_ages) if known_ages else None,
        newest_age_seconds=min(known_ages) if known_ages else None,
        max_receive_count=max_receives,
    )
