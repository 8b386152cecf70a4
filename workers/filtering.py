"""``spec.filter.eventTypes`` → keep or skip one event; no I/O.

``running`` asks :meth:`EventFilter.keep` after decoding and before deduplication; a
skipped event is acknowledged without delivery and counted. The patterns are
``fnmatch`` globs, case-sensitive, matched against the event type (the topic template,
``v2.detail.events.conversation.{id}.acw``) and against the concrete topic; either
matching keeps the event. ``*`` crosses dots, so ``v2.detail.events.conversation.*``
means every conversation detail event.

All patterns compile once into a single regular expression, so the per-event cost does
not grow with the number of patterns beyond what the regex engine does.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from workers import events


class EventFilter:
    """Keep the events whose type or topic matches one of ``patterns``.

    ``None`` or an empty list keeps everything: an absent filter means "all events", and
    a filter that drops every event is never what a consumer wants.
    """

    def __init__(self, patterns: Sequence[str] | None) -> None:
        self.patterns: tuple[str, ...] = tuple(patterns or ())
        self._regex: re.Pattern[str] | None = None
        if self.patterns:
            alternatives = "|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in self.patterns)
            self._regex = re.compile(alternatives)

    @property
    def keeps_everything(self) -> bool:
        return self._regex is None

    def keep(self, event: events.Event) -> bool:
        if self._regex is None:
            return True
        if self._regex.match(event.event_type):
            return True
        return event.topic is not None and self._regex.match(event.topic) is not None

    def __repr__(self) -> str:
        return f"EventFilter({list(self.patterns)!r})"
