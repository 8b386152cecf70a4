"""What ``fanout dlq`` prints: the summary, the message list, the export records, the progress
bar and the redrive's closing report. Formatting only; ``fanout_cli.dlq`` decides what.

Payload values never appear unless asked for (``show --show-payload``, ``export``): bodies
carry phone numbers and names. Reasons are printed as the worker wrote them (they never
quote a body).
"""

from __future__ import annotations

import base64
import datetime
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from fanout_core import deadletters, redrive_reports, redriving

BAR_WIDTH = 28
PLAIN_INTERVAL = 5.0
TTY_INTERVAL = 0.2


def _count(value: int) -> str:
    return f"{value:,}"


def _table(stream: TextIO, title: str, rows: Mapping[str, int]) -> None:
    if not rows:
        return
    print(title, file=stream)
    width = max(len(label) for label in rows)
    for label, count in rows.items():
        print(f"  {label:<{width}}  {_count(count):>7}", file=stream)
    print(file=stream)


def _kind(url: str) -> str:
    return "FIFO" if redriving.is_fifo(url) else "standard"


def peek_line(url: str, peek: redriving.Peek) -> str:
    """What the peek did to the queue: nothing deleted, receive counts up by one."""
    return (
        f"Peeking received each message once and made it visible again at once; nothing was "
        f"deleted, but every receive adds one to a message's receive count (a redrive policy on "
        f"{redriving.queue_name(url)} itself would count it)."
    )


def print_summary(
    stream: TextIO, *, url: str, config: str, peek: redriving.Peek, summary: deadletters.Summary
) -> None:
    queue = redriving.queue_name(url)
    counts = peek.counts
    read = f"{_count(summary.total)} messages read"
    if not peek.complete:
        read += " (the --limit; there are more)"
    print(
        f"{queue} ({_kind(url)}): {read}; SQS counted ~{_count(counts.visible)} visible and "
        f"{_count(counts.in_flight)} in flight before the peek.",
        file=stream,
    )
    print(peek_line(url, peek) + f" Highest receive count now: {summary.max_receive_count}.", file=stream)
    if redriving.is_fifo(url):
        print(
            "FIFO: SQS shows at most the first messages of a group per receive; a group with more "
            "than ten may be under-counted.",
            file=stream,
        )
    print(file=stream)
    if not summary.total:
        print("The dead-letter queue is empty.", file=stream)
        return
    _table(stream, "by reason class", dict(summary.by_reason_class))
    _table(stream, "by reason", dict(summary.by_reason))
    _table(stream, "by event type", dict(summary.by_event_type))
    _table(stream, "by age in the dead-letter queue", dict(summary.by_age))
    line = ""
    if summary.oldest_age_seconds is not None and summary.newest_age_seconds is not None:
        line = (
            f"oldest {deadletters.format_age(summary.oldest_age_seconds)}, "
            f"newest {deadletters.format_age(summary.newest_age_seconds)}"
        )
        retention = counts.retention_seconds
        if retention:
            left = retention - summary.oldest_age_seconds
            line += (
                f"; the queue keeps messages {deadletters.format_age(retention)}: "
                f"the oldest expire in {deadletters.format_age(max(0.0, left))}"
            )
        print(line + ".", file=stream)
    top_class = next(iter(summary.by_reason_class))
    print(
        f"Next: fanout dlq show --config {config} --reason-class {top_class}; after fixing the cause, "
        f"fanout dlq redrive --config {config} --reason-class {top_class} --dry-run",
        file=stream,
    )


def summary_json(url: str, peek: redriving.Peek, summary: deadletters.Summary) -> dict[str, Any]:
    return {
        "queueUrl": url,
        "fifo": redriving.is_fifo(url),
        "readThrough": peek.complete,
        "approximateVisible": peek.counts.visible,
        "approximateInFlight": peek.counts.in_flight,
        "retentionSeconds": peek.counts.retention_seconds,
        "receiveCountsGrew": True,
        **summary.as_json(),
    }


def _timestamp(ms: int | None) -> str:
    if ms is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def print_letters(
    stream: TextIO, letters: Sequence[deadletters.DeadLetter], *, show_payload: bool, now_ms: int
) -> None:
    for letter in letters:
        age = letter.age_seconds(now_ms)
        identity = letter.identity
        print(
            f"{letter.message_id}  {letter.reason_class}  "
            f"dead-lettered {_timestamp(letter.sent_at_ms)}"
            f" ({deadletters.format_age(age) + ' ago' if age is not None else 'age unknown'})"
            f"  attempts {letter.attempts if letter.attempts is not None else '-'}",
            file=stream,
        )
        if identity is not None:
            print(
                f"  event {identity.event_type}  id {identity.event_id or '-'}"
                f"  key {identity.ordering_key or '-'}",
                file=stream,
            )
        else:
            print("  event (undecodable body)", file=stream)
        if letter.group_id:
            print(f"  group {letter.group_id}", file=stream)
        print(f"  reason {letter.reason or '(none: moved by a redrive policy)'}", file=stream)
        if show_payload:
            print(f"  body {letter.body}", file=stream)
        else:
            print(f"  body {len(letter.body.encode('utf-8'))} bytes (hidden; --show-payload)", file=stream)


def print_peek_note(stream: TextIO, *, url: str, peek: redriving.Peek, shown: int) -> None:
    more = "" if peek.complete else " (stopped at the read limit; there are more)"
    print(
        f"{shown} of {len(peek.letters)} messages read from {redriving.queue_name(url)}{more}. "
        + peek_line(url, peek),
        file=stream,
    )


def export_record(letter: deadletters.DeadLetter) -> dict[str, Any]:
    """One NDJSON line of ``fanout dlq export``."""
    identity = letter.identity
    attributes: dict[str, Any] = {}
    for name, value in letter.attributes.items():
        if value.binary_value is not None:
            attributes[name] = {
                "DataType": value.data_type,
                "BinaryValue": base64.b64encode(value.binary_value).decode("ascii"),
            }
        else:
            attributes[name] = {"DataType": value.data_type, "StringValue": value.string_value}
    return {
        "messageId": letter.message_id,
        "deadLetteredAt": _timestamp(letter.sent_at_ms),
        "sentTimestamp": letter.sent_at_ms,
        "receiveCount": letter.receive_count,
        "reasonClass": letter.reason_class,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "sourceQueue": letter.source_queue,
        "groupId": letter.group_id,
        "deduplicationId": letter.deduplication_id,
        "eventType": identity.event_type if identity else None,
        "eventId": identity.event_id if identity else None,
        "orderingKey": identity.ordering_key if identity else None,
        "attributes": attributes,
        "body": letter.body,
    }


class ProgressBar:
    """A redrive's progress on stderr: a bar redrawn in place on a terminal, else a line every
    few seconds."""

    def __init__(self, stream: TextIO, *, clock: Any = time.monotonic) -> None:
        self._stream = stream
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._clock = clock
        self._last = 0.0
        self._drawn = False

    def update(self, progress: redrive_reports.Progress) -> None:
        now = self._clock()
        if now - self._last < (TTY_INTERVAL if self._tty else PLAIN_INTERVAL):
            return
        self._last = now
        line = self.line(progress)
        if self._tty:
            self._stream.write("\r\x1b[2K" + line)
            self._drawn = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    @staticmethod
    def line(progress: redrive_reports.Progress) -> str:
        total = max(progress.estimated_total, progress.seen, 1)
        done = min(progress.seen, total)
        filled = round(BAR_WIDTH * done / total)
        verb = "would move" if progress.dry_run else "moved"
        rate = progress.moved / progress.elapsed_seconds if progress.elapsed_seconds > 0 else 0.0
        parts = [
            f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done:,}/~{total:,} read",
            f"{verb} {progress.moved:,}",
            f"{rate:.1f}/s (pace {progress.rate:g}/s)",
        ]
        if progress.skipped or progress.held:
            parts.append(f"stay {progress.skipped + progress.held:,}")
        if progress.failed:
            parts.append(f"refused {progress.failed:,}")
        if progress.paused:
            parts.append("paused: source queue backlog")
        return "  ".join(parts)

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def print_report(stream: TextIO, report: redrive_reports.Report, *, config: str, now_ms: int) -> None:
    source = redriving.queue_name(report.source_queue)
    dead = redriving.queue_name(report.dead_letter_queue)
    classes = ", ".join(f"{count:,} {name}" for name, count in sorted(report.moved_by_class.items()))
    verb = "would move" if report.dry_run else "moved"
    print(
        f"{verb} {report.moved:,} messages from {dead} to {source}"
        + (f" ({classes})" if classes else "")
        + f" in {report.elapsed_seconds:.1f}s; selection: {report.selection.describe()}; "
        f"pace {report.rate.why}.",
        file=stream,
    )
    stayed = []
    if report.skipped:
        stayed.append(f"{report.skipped:,} not selected")
    if report.held:
        stayed.append(
            f"{report.held:,} held back (behind a message of their FIFO group that stays, or over --limit)"
        )
    if stayed:
        print(f"stayed in {dead}: " + "; ".join(stayed) + ".", file=stream)
    if report.dry_run:
        print_letters(stream, report.sample, show_payload=False, now_ms=now_ms)
        if report.moved > len(report.sample):
            print(f"... and {report.moved - len(report.sample):,} more.", file=stream)
        print(
            "Dry run: nothing was sent or deleted; " + peek_line(report.dead_letter_queue, _NO_PEEK),
            file=stream,
        )
        return
    problems = []
    if report.failed:
        problems.append(f"{report.failed:,} copies refused by {source} (still in {dead})")
    if report.not_deleted:
        problems.append(
            f"{report.not_deleted:,} copied but not deleted from {dead} (a rerun removes them; the copy "
            + (
                "is deduplicated"
                if redriving.is_fifo(report.source_queue)
                else "is absorbed by the worker's idempotency store"
            )
            + ")"
        )
    if report.unseen_in_flight:
        problems.append(
            f"{report.unseen_in_flight:,} messages in flight in {dead} never came back (another reader, "
            "or an earlier run still holding them): run again once they are visible"
        )
    if report.interrupted:
        problems.append("interrupted: the batch under way finished; run again to go on")
    if problems:
        print("NOT COMPLETE: " + "; ".join(problems) + ".", file=stream)
    else:
        print(f"complete: everything selected is back in {source}.", file=stream)


_NO_PEEK = redriving.Peek(letters=[], complete=True, counts=redriving.QueueCounts(0, 0))
