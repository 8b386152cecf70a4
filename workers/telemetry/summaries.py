"""Successful deliveries in the log at INFO: one ``delivered_summary`` line per interval.

Every other state change keeps its own line at its level (``received``, ``retried``,
``dead_lettered``, ``duplicate``, ``filtered``, ...); a delivery that succeeded is the one
state a busy worker reaches thousands of times a second, and its line was ~3% of the worker's
CPU per event (the record, the JSON, a write to stderr). At INFO those lines are aggregated:
every :data:`INTERVAL_SECONDS` in which something was delivered, one line per queue with the
count and the processing and end-to-end times (mean and max). At DEBUG each delivery has its
own ``delivered`` line (at INFO, with its identifiers) as before. The metrics count every
delivery either way (``fanout_events_delivered_total``, the histograms).

The line is written by :meth:`DeliveredSummary.take` from the worker's summary task (and at
shutdown), outside any message's span, so its ``trace_id`` is null: it belongs to no event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

INTERVAL_SECONDS: Final = 10.0


class DeliveredSummary:
    """Counts and times of the deliveries since the last line."""

    __slots__ = ("_clock", "_count", "_e2e_count", "_e2e_max", "_e2e_sum", "_max", "_since", "_sum")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since = clock()
        self._reset()

    def _reset(self) -> None:
        self._count = 0
        self._sum = 0.0
        self._max = 0.0
        self._e2e_count = 0
        self._e2e_sum = 0.0
        self._e2e_max = 0.0

    def add(self, processing_seconds: float, end_to_end_seconds: float | None) -> None:
        self._count += 1
        self._sum += processing_seconds
        if processing_seconds > self._max:
            self._max = processing_seconds
        if end_to_end_seconds is not None:
            self._e2e_count += 1
            self._e2e_sum += end_to_end_seconds
            if end_to_end_seconds > self._e2e_max:
                self._e2e_max = end_to_end_seconds

    def take(self) -> dict[str, Any] | None:
        """The fields of the line for the deliveries since the last one (None: there were none);
        starts the next interval."""
        now = self._clock()
        if not self._count:
            self._since = now
            return None
        fields: dict[str, Any] = {
            "count": self._count,
            "interval_seconds": round(now - self._since, 3),
            "processing_seconds_mean": round(self._sum / self._count, 6),
            "processing_seconds_max": round(self._max, 6),
        }
        if self._e2e_count:
            fields["end_to_end_seconds_mean"] = round(self._e2e_sum / self._e2e_count, 3)
            fields["end_to_end_seconds_max"] = round(self._e2e_max, 3)
        self._since = now
        self._reset()
        return fields
