"""What the demo shows: live progress while it runs, the report table at the end.

``fanout_lab.demo.command.main`` creates a :class:`Progress` (a ``rich`` live table on a terminal;
one plain line per consumer every few seconds otherwise, so a CI log stays readable) and
passes its :meth:`Progress.update` to the session; at the end :func:`report` prints the
verdicts and says, in words, what broke.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import TextIO

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fanout_lab.demo import session

PLAIN_INTERVAL = 5.0


def _progress_table(snapshot: session.Snapshot) -> Table:
    table = Table(box=box.SIMPLE_HEAD, expand=False)
    for column, justify in (
        ("consumer", "left"),
        ("downstream limit", "right"),
        ("delivered", "right"),
        ("backlog", "right"),
        ("in flight", "right"),
        ("throttled (429/503)", "right"),
        ("duplicates suppressed", "right"),
        ("DLQ", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for state in snapshot.consumers:
        plan = state.plan
        table.add_row(
            f"{plan.name} x{plan.replicas}",
            f"{plan.rate:g}/s",
            f"{len(state.delivered & state.expected_events)}/{len(state.expected_events)}",
            str(state.visible),
            str(state.in_flight),
            str(state.refused),
            str(int(state.metric("fanout_duplicates_suppressed_total"))),
            str(state.dead),
        )
    return table


def _headline(snapshot: session.Snapshot) -> str:
    parts = [
        f"{snapshot.elapsed:5.1f}s",
        f"day {snapshot.clock}",
        f"published {snapshot.published}/{snapshot.total}",
    ]
    if snapshot.catching_up:
        parts.append("CATCH-UP: CRM and SIEM workers back, draining 07:00-08:00")
    if snapshot.burst:
        parts.append("INCIDENT BURST")
    if snapshot.outage:
        parts.append("SIEM BUSY (503)")
    if snapshot.paused_seconds >= 0.5:
        parts.append(f"publishing paused {snapshot.paused_seconds:.1f}s for backlog")
    if snapshot.redrive:
        parts.append(snapshot.redrive)
    elif snapshot.published >= snapshot.total:
        parts.append("draining")
    return " · ".join(parts)


class Progress:
    """Live progress; use as a context manager and feed :meth:`update`."""

    def __init__(self, *, live: bool, stream: TextIO) -> None:
        self._console = Console(file=stream, force_terminal=live or None, highlight=False)
        self._live: Live | None = (
            Live(console=self._console, refresh_per_second=4, transient=False) if live else None
        )
        self._stream = stream
        self._last_plain = 0.0

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def update(self, snapshot: session.Snapshot) -> None:
        if self._live is not None:
            self._live.update(Group(Text(_headline(snapshot), style="bold"), _progress_table(snapshot)))
            return
        now = time.monotonic()
        if now - self._last_plain < PLAIN_INTERVAL:
            return
        self._last_plain = now
        lines = [_headline(snapshot)]
        for state in snapshot.consumers:
            lines.append(
                f"  {state.plan.name:<11} delivered {len(state.delivered & state.expected_events)}"
                f"/{len(state.expected_events)}  backlog {state.visible}  in flight {state.in_flight}"
                f"  throttled {state.refused}  DLQ {state.dead}"
            )
        print("\n".join(lines), file=self._stream, flush=True)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _reasons(dead_letters: dict[str, int]) -> Iterator[str]:
    for label, count in sorted(dead_letters.items()):
        yield f"{count} x {label}"


def _dead_summary(dead_letters: dict[str, int]) -> str:
    """``3 (poison)``: the count and the reason classes; the reasons follow the table."""
    classes: dict[str, int] = {}
    for label, count in dead_letters.items():
        reason_class = label.split(":", 1)[0]
        classes[reason_class] = classes.get(reason_class, 0) + count
    if not classes:
        return "0"
    return ", ".join(f"{count} {reason_class}" for reason_class, count in sorted(classes.items()))


def report(outcome: session.Outcome, *, stream: TextIO, color: bool) -> None:
    """The verdict table, then one line per broken invariant (or that all held)."""
    console = Console(
        file=stream, force_terminal=color or None, highlight=False, width=None if color else 140
    )
    table = Table(title="fanout demo: report", box=box.SIMPLE_HEAD)
    table.add_column("", style="bold")
    for plan in outcome.plans:
        table.add_column(f"{plan.name} ({plan.title}, x{plan.replicas})", justify="right")

    def row(label: str, values: list[str]) -> None:
        table.add_row(label, *values)

    verdicts = [outcome.verdicts[plan.name] for plan in outcome.plans]
    row("events delivered", [str(v.delivered) for v in verdicts])
    row("delivered twice / missing", [f"{v.delivered_twice} / {v.missing}" for v in verdicts])
    row("duplicates suppressed", [str(outcome.duplicates_suppressed[p.name]) for p in outcome.plans])
    row("filtered by spec.filter", [str(outcome.filtered[p.name]) for p in outcome.plans])
    row("dead-lettered (left at the end)", [_dead_summary(dict(v.dead_letters)) for v in verdicts])
    row("redriven after the fix", [str(v.redriven) for v in verdicts])
    row("ordering violations", [str(v.order_violations) for v in verdicts])
    row(
        "reordered at source (back in event order)",
        [f"{v.reordered_at_source} ({v.reordered_repaired})" for v in verdicts],
    )
    row("end-to-end latency p50", [_seconds(v.latency_p50) for v in verdicts])
    row("end-to-end latency p99", [_seconds(v.latency_p99) for v in verdicts])
    row(
        "goodput / downstream limit (saturated)",
        [
            f"{v.goodput_share:.2f} ({v.saturated_seconds:.0f} s at {p.rate:g}/s)"
            if v.goodput_share is not None
            else f"- (never saturated; limit {p.rate:g}/s)"
            for v, p in zip(verdicts, outcome.plans, strict=True)
        ],
    )
    row("429/503/403 answers received", [_refusals(outcome, p.name) for p in outcome.plans])
    row("verdict", ["ok" if v.ok else "BROKEN" for v in verdicts])
    console.print(table)
    for plan in outcome.plans:
        for line in _reasons(dict(outcome.verdicts[plan.name].dead_letters)):
            console.print(f"  {plan.name} dead letter: {line}")
    console.print(_publications(outcome))
    door = outcome.door
    console.print(
        f"front door: {door.accepted} signed webhooks answered 202 ({door.offloaded} transcripts over "
        f"SNS's 256 KiB offloaded to S3, {door.retried} retried after a 503), "
        f"{door.refused_forged} with a stale signature refused (401); the poison bodies were "
        "published to SNS by another producer."
    )
    for figures in outcome.redrives.values():
        console.print(
            f"{figures.consumer}: the CRM held two records for a few conversations (a botched import), so "
            f"{len(figures.refused)} of their events were refused (300 Multiple Choices) and dead-lettered "
            f"as permanent; with the duplicates merged, `{figures.command}` moved {figures.moved} back in "
            f"{figures.seconds:.1f} s at {figures.rate_why}; the poison stayed."
        )
    if outcome.log_path is not None:
        console.print(f"worker logs (JSON lines): {outcome.log_path}")
    problems = [
        f"{plan.name}: {problem}" for plan in outcome.plans for problem in outcome.verdicts[plan.name].broken
    ]
    if outcome.timed_out:
        problems.insert(0, "the consumers did not finish within the drain timeout")
    if problems:
        for problem in problems:
            console.print(f"BROKEN: {problem}", style="bold red")
    else:
        console.print(
            "every invariant held: each event delivered exactly once (the redriven ones too), "
            "no ordering violation, every poison message dead-lettered with its reason, every queue empty",
            style="bold green",
        )


def _publications(outcome: session.Outcome) -> str:
    """What was published, when, and how long it all took."""
    day = outcome.day
    published = len(day.backlog) + len(day.publications)
    catch_up = (
        f"first {len(day.backlog)} from the hour before the day, queued while the CRM and SIEM workers "
        f"were down, which they caught up on in {outcome.catch_up_seconds:.1f} s at their downstreams' "
        "limits (the goodput line; their wait is left out of the latencies); then "
        if day.backlog
        else ""
    )
    return (
        f"{published} SNS publications ({len(day.events)} unique events, "
        f"{published - len(day.events) - len(day.poison)} redeliveries, {len(day.poison)} poison, "
        f"{day.reordered_pairs} pairs published out of event order): {catch_up}"
        f"the day's over {outcome.publishing_seconds:.1f} s for a {day.seconds:g}-second day "
        f"(the moto server sets the pace; {outcome.paused_seconds:.1f} s paused to keep queues short); "
        f"{outcome.elapsed:.1f} s in all."
    )


def _refusals(outcome: session.Outcome, name: str) -> str:
    counts = outcome.status_counts[name]
    shown = [f"{counts[status]} x {status}" for status in (429, 503, 403) if counts.get(status)]
    return ", ".join(shown) or "0"
