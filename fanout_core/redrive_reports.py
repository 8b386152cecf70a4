"""A redrive's progress and its end, as values: what ``fanout_core.redriving`` reports.

The ``fanout dlq redrive`` command draws a progress bar from :class:`Progress` and prints
:class:`Report`; the operator writes both into ``status.redrive`` and its metrics. Pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from fanout_core import deadletters, pacing


@dataclasses.dataclass(frozen=True)
class Progress:
    """A redrive so far."""

    moved: int
    skipped: int
    held: int
    failed: int
    estimated_total: int
    """Visible messages in the dead-letter queue when the run started."""
    elapsed_seconds: float
    rate: float
    paused: bool
    dry_run: bool

    @property
    def seen(self) -> int:
        return self.moved + self.skipped + self.held + self.failed


@dataclasses.dataclass(frozen=True)
class Report:
    """A finished (or stopped) redrive."""

    dead_letter_queue: str
    source_queue: str
    selection: deadletters.Selection
    rate: pacing.RateChoice
    dry_run: bool
    moved: int
    """Copied to the source queue and deleted from the dead-letter queue (dry run: would be)."""
    moved_by_class: Mapping[str, int]
    skipped: int
    """Not selected."""
    held: int
    """Selected but behind a message of their FIFO group that stays, or over the limit."""
    failed: int
    """Selected, but the source queue refused the copy: still in the dead-letter queue."""
    not_deleted: int
    """Copied, but the delete failed: they reappear in the dead-letter queue and a rerun
    removes them (FIFO: the copy is deduplicated; standard: the worker absorbs the repeat)."""
    unseen_in_flight: int
    """Messages in flight in the dead-letter queue (another reader, or a killed run's hold)
    that never came back while this run waited for them."""
    interrupted: bool
    elapsed_seconds: float
    sample: Sequence[deadletters.DeadLetter]
    """Dry run: the first messages it would move."""

    @property
    def complete(self) -> bool:
        """Everything selected moved (or, for a dry run, was seen)."""
        return not (self.failed or self.not_deleted or self.unseen_in_flight or self.interrupted)

    def as_json(self) -> dict[str, Any]:
        return {
            "deadLetterQueue": self.dead_letter_queue,
            "sourceQueue": self.source_queue,
            "selection": self.selection.describe(),
            "rate": self.rate.rate,
            "rateWhy": self.rate.why,
            "dryRun": self.dry_run,
            "moved": self.moved,
            "movedByReasonClass": dict(self.moved_by_class),
            "skipped": self.skipped,
            "held": self.held,
            "failed": self.failed,
            "notDeleted": self.not_deleted,
            "unseenInFlight": self.unseen_in_flight,
            "interrupted": self.interrupted,
            "complete": self.complete,
            "elapsedSeconds": round(self.elapsed_seconds, 3),
        }
