"""``fanout dlq summary|show|redrive|export``: read a consumer's dead-letter queue and send it back.

FILE is the FanoutConsumer manifest, as for ``fanout-worker``; AWS endpoint, region and
credentials come from the standard variables. The queues are ``spec.deadLetter.queueUrl``
(read) and ``spec.queue.url`` (where a redrive puts messages back). The rules — selection,
rate, copy-then-delete, FIFO groups — live in ``fanout_core`` (``deadletters``, ``pacing``,
``redriving``), shared with the operator's declarative redrive; this module parses the
command line, decodes event identities with the worker's own decoder
(``workers.envelopes``), and prints (``fanout_cli.dlq_output``).

Exit codes: 0 done (a redrive: everything selected moved); 1 not everything selected moved,
or AWS refused a call (one line saying what is missing); 2 a bad manifest (one line per
problem, naming the field) or bad arguments; 130 interrupted. Never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from fanout_cli import dlq_output
from fanout_core import deadletters, pacing, redriving
from fanout_core import spec as spec_model
from workers import envelopes, sqs

EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
SUMMARY_LIMIT = 10_000
SHOW_LIMIT = 20
EXPORT_LIMIT = 100_000


class UsageError(Exception):
    """A bad argument or an unusable manifest; the message is what to print."""


# --- the manifest and the event decoder ----------------------------------------------


def load(prog: str, path: str) -> spec_model.FanoutConsumer:
    try:
        return spec_model.load_manifest(path)
    except spec_model.ConfigError as error:
        raise UsageError("\n".join(spec_model.config_error_lines(prog, path, error))) from None


def dead_letter_url(prog: str, path: str, consumer: spec_model.FanoutConsumer) -> str:
    url = consumer.spec.dead_letter.queue_url
    if not url:
        raise UsageError(
            f"{prog}: {path}: spec.deadLetter.queueUrl is not set: this consumer has no dead-letter "
            "queue to read (set it to the queue its workers dead-letter to)"
        )
    return url


def identifier(consumer: spec_model.FanoutConsumer) -> deadletters.Identify:
    """The worker's decoder, reduced to what a dead letter's summary and selection need."""
    ordering_key = consumer.spec.ordering.key

    def identify(body: str, attributes: Mapping[str, str]) -> deadletters.EventIdentity | None:
        try:
            event = envelopes.decode(body, ordering_key=ordering_key, message_attributes=attributes)
        except envelopes.PoisonMessage:
            return None
        return deadletters.EventIdentity(event.event_type, event.event_id, event.ordering_key)

    return identify


def selection_from(args: argparse.Namespace, *, limit: int | None) -> deadletters.Selection:
    classes: set[str] = set()
    for value in args.reason_class or []:
        classes.update(part.strip() for part in value.split(",") if part.strip())
    try:
        older = deadletters.parse_duration(args.older_than) if args.older_than else None
        return deadletters.Selection(
            reason_classes=frozenset(classes) if classes else None,
            reason_match=args.reason_match,
            event_type=args.event_type,
            older_than_seconds=older,
            limit=limit,
        )
    except ValueError as error:
        raise UsageError(f"{args.prog}: {error}") from None


# --- running -------------------------------------------------------------------------


def _run(prog: str, consumer: spec_model.FanoutConsumer, work: Callable[[Any], Awaitable[int]]) -> int:
    """Open an SQS client from the standard AWS environment and run ``work`` with it."""
    try:
        region = sqs.resolve_region(consumer.spec.queue.url, consumer.spec.queue.region)
    except spec_model.ConfigError as error:
        raise UsageError(f"{prog}: {error}") from None

    async def main() -> int:
        async with sqs.client(region=region, max_connections=4) as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except redriving.RedriveError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_INCOMPLETE


async def _peek(client: Any, url: str, consumer: spec_model.FanoutConsumer, *, limit: int) -> redriving.Peek:
    # Hold what was read long enough to read the rest (about 20 receives of ten a second).
    hold = min(spec_model.SQS_MAX_VISIBILITY_SECONDS, max(redriving.PEEK_HOLD_SECONDS, limit // 20))
    return await redriving.peek(client, url, identifier(consumer), limit=limit, hold_seconds=hold)


async def summary(args: argparse.Namespace, consumer: spec_model.FanoutConsumer, client: Any) -> int:
    url = dead_letter_url(args.prog, args.config, consumer)
    seen = await _peek(client, url, consumer, limit=args.limit)
    result = deadletters.summarize(seen.letters, int(time.time() * 1000))
    if args.json:
        print(json.dumps(dlq_output.summary_json(url, seen, result), indent=2))
    else:
        dlq_output.print_summary(sys.stdout, url=url, config=args.config, peek=seen, summary=result)
    return 0


def _selected(
    args: argparse.Namespace, consumer: spec_model.FanoutConsumer, seen: redriving.Peek, limit: int
) -> Iterator[deadletters.DeadLetter]:
    selection = selection_from(args, limit=None)
    now_ms = int(time.time() * 1000)
    count = 0
    for letter in seen.letters:
        if count >= limit:
            return
        if deadletters.matches(letter, selection, now_ms):
            count += 1
            yield letter


async def show(args: argparse.Namespace, consumer: spec_model.FanoutConsumer, client: Any) -> int:
    url = dead_letter_url(args.prog, args.config, consumer)
    selection_from(args, limit=None)  # argument errors before any receive
    seen = await _peek(client, url, consumer, limit=max(args.limit, SUMMARY_LIMIT))
    letters = list(_selected(args, consumer, seen, args.limit))
    dlq_output.print_letters(
        sys.stdout, letters, show_payload=args.show_payload, now_ms=int(time.time() * 1000)
    )
    dlq_output.print_peek_note(sys.stderr, url=url, peek=seen, shown=len(letters))
    return 0


async def export(args: argparse.Namespace, consumer: spec_model.FanoutConsumer, client: Any) -> int:
    url = dead_letter_url(args.prog, args.config, consumer)
    selection_from(args, limit=None)
    seen = await _peek(client, url, consumer, limit=max(args.limit, SUMMARY_LIMIT))
    written = 0
    for letter in _selected(args, consumer, seen, args.limit):
        sys.stdout.write(json.dumps(dlq_output.export_record(letter), ensure_ascii=False) + "\n")
        written += 1
    sys.stdout.flush()
    print(
        f"{args.prog}: exported {written} messages from {redriving.queue_name(url)} "
        "(bodies included: the file holds personal data)",
        file=sys.stderr,
    )
    dlq_output.print_peek_note(sys.stderr, url=url, peek=seen, shown=written)
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def redrive(args: argparse.Namespace, consumer: spec_model.FanoutConsumer, client: Any) -> int:
    url = dead_letter_url(args.prog, args.config, consumer)
    selection = selection_from(args, limit=args.limit)
    limit = consumer.spec.sink.rate_limit
    try:
        choice = pacing.choose_rate(
            explicit=args.rate, rate_limit=limit.requests_per_second if limit is not None else None
        )
    except ValueError as error:
        raise UsageError(f"{args.prog}: --rate: {error}") from None
    stop = asyncio.Event()
    bar = dlq_output.ProgressBar(sys.stderr)
    engine = redriving.Redrive(
        client,
        dead_letter_url=url,
        source_url=consumer.spec.queue.url,
        selection=selection,
        rate=choice,
        identify=identifier(consumer),
        dry_run=args.dry_run,
        visibility_seconds=args.visibility_timeout,
        on_progress=bar.update,
        stop=stop,
    )
    with _stop_on_signals(stop):
        try:
            report = await engine.run()
        finally:
            bar.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        dlq_output.print_report(sys.stdout, report, config=args.config, now_ms=int(time.time() * 1000))
    if report.interrupted:
        return EXIT_INTERRUPTED
    return 0 if report.complete else EXIT_INCOMPLETE


ACTIONS: Mapping[str, Callable[[argparse.Namespace, spec_model.FanoutConsumer, Any], Awaitable[int]]] = {
    "summary": summary,
    "show": show,
    "redrive": redrive,
    "export": export,
}


# --- the command line ----------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason-class",
        action="append",
        metavar="C",
        help=f"only this reason class ({', '.join(deadletters.REASON_CLASSES)}); repeat or comma-separate",
    )
    parser.add_argument("--reason-match", metavar="TEXT", help="only reasons containing TEXT (any case)")
    parser.add_argument("--event-type", metavar="GLOB", help="only event types matching GLOB")
    parser.add_argument(
        "--older-than", metavar="D", help="only messages dead-lettered at least D ago (90s, 15m, 2h, 3d)"
    )


class Dlq:
    """The ``dlq`` command and its four actions."""

    help = "see, export and redrive a consumer's dead-letter queue"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")
        config_help = "FanoutConsumer manifest (YAML or JSON), as for fanout-worker"

        summary_parser = actions.add_parser(
            "summary", help="counts by reason class, reason, event type and age (deletes nothing)"
        )
        summary_parser.add_argument("--config", required=True, metavar="FILE", help=config_help)
        summary_parser.add_argument("--json", action="store_true", help="one JSON document")
        summary_parser.add_argument(
            "--limit", type=_positive_int, default=SUMMARY_LIMIT, metavar="N", help="read at most N messages"
        )

        show_parser = actions.add_parser("show", help="messages with their reason and event identity")
        show_parser.add_argument("--config", required=True, metavar="FILE", help=config_help)
        _add_selection(show_parser)
        show_parser.add_argument(
            "--limit", type=_positive_int, default=SHOW_LIMIT, metavar="N", help="show at most N messages"
        )
        show_parser.add_argument(
            "--show-payload", action="store_true", help="print the bodies too (they hold personal data)"
        )

        redrive_parser = actions.add_parser(
            "redrive", help="move selected messages back to spec.queue.url, paced, copy then delete"
        )
        redrive_parser.add_argument("--config", required=True, metavar="FILE", help=config_help)
        _add_selection(redrive_parser)
        redrive_parser.add_argument(
            "--rate",
            type=_positive_float,
            metavar="R",
            help="messages per second (default: what sink.rateLimit leaves room for)",
        )
        redrive_parser.add_argument(
            "--limit", type=_positive_int, metavar="N", help="move at most N messages"
        )
        redrive_parser.add_argument(
            "--dry-run", action="store_true", help="say what would move; move nothing"
        )
        redrive_parser.add_argument("--json", action="store_true", help="the final report as JSON")
        redrive_parser.add_argument(
            "--visibility-timeout",
            type=_positive_int,
            default=30,
            metavar="S",
            help="seconds a message being moved stays hidden (a killed run's messages return after it)",
        )

        export_parser = actions.add_parser("export", help="selected messages as NDJSON on stdout (forensics)")
        export_parser.add_argument("--config", required=True, metavar="FILE", help=config_help)
        _add_selection(export_parser)
        export_parser.add_argument(
            "--limit", type=_positive_int, default=EXPORT_LIMIT, metavar="N", help="export at most N messages"
        )

    def run(self, args: argparse.Namespace, rest: Sequence[str]) -> int:
        args.prog = f"fanout dlq {args.dlq_action}"
        if rest:
            print(f"{args.prog}: unrecognised arguments: {' '.join(rest)}", file=sys.stderr)
            return EXIT_USAGE
        action = ACTIONS[args.dlq_action]
        try:
            consumer = load(args.prog, args.config)
            dead_letter_url(args.prog, args.config, consumer)
            return _run(args.prog, consumer, lambda client: action(args, consumer, client))
        except UsageError as error:
            print(str(error), file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"{args.prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


COMMAND = Dlq()
