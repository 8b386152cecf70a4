"""Worker memory: peak RSS while holding 1,000 messages in flight, and RSS over a long run.

``fanout-worker`` (a child process, the real CLI) consumes a queue on the moto server and
delivers to a receiver in another process. Measured from outside (``/proc/<pid>/status``):

1. **holding** — ``maxInFlight: 1000`` and a receiver that answers nothing: the worker
   receives 1,000 messages, 64 of them wait in the sink, the rest in their lanes, all
   heartbeated. Prints idle RSS, RSS and peak RSS while holding, and the cost per message.
   (Filling takes most of a minute: moto scans its whole queue, in flight included, for
   every message it moves, and this queue holds a thousand.)
2. **long run** — the receiver lets go and answers at once; then rounds of events stream
   through with a short idempotency TTL (so the store's records expire as they would over
   a day). Prints RSS after each round and the growth per 1,000 events after the first
   round (warm-up), which must stay near zero: no leak.

    .venv/bin/python bench/memory.py [--hold 1000] [--rounds 3] [--round-events 400]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import _common

from fanout_lab.simulators import genesys
from workers import events


def traffic(count: int, seed: int) -> list[str]:
    generator = genesys.Generator(seed=seed)
    return [
        generator.body(event, events.EnvelopeKind.EVENTBRIDGE)
        for event in generator.day(conversations=(count + 9) // 10)
    ][:count]


async def wait_for(predicate: object, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def run(hold: int, rounds: int, round_events: int) -> int:
    mib = _common.mib
    with _common.aws_endpoint(), _common.Receiver(hold=True) as receiver:
        async with _common.sqs_client() as sqs:
            queue_url = await _common.make_queue(sqs, "memory", visibility=300)
            spec = {
                "queue": {
                    "url": queue_url,
                    "waitTimeSeconds": 1,
                    "maxMessages": 10,
                    "visibilityTimeoutSeconds": 300,
                    "pollers": 2,
                    "maxInFlight": hold,
                },
                "sink": {"type": "webhook", "url": receiver.url, "maxConcurrency": 64, "timeoutSeconds": 300},
                "idempotency": {"store": "memory", "ttlSeconds": 5},
                "workload": {"logLevel": "WARNING"},
            }
            worker = _common.WorkerProcess(_common.write_manifest(spec, "memory"), name="memory")
            with worker:
                worker.wait_ready()
                await asyncio.sleep(1.0)
                idle = worker.rss_bytes()

                # 1. holding: everything received, nothing answered.
                await _common.feed(sqs, queue_url, traffic(hold, seed=21), max_backlog=100)
                deadline = time.monotonic() + 90
                while (await _common.queue_counts(sqs, queue_url))[0] > 0:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the worker did not take {hold} messages; see {worker.log_path}")
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)
                holding = worker.rss_bytes()
                held = receiver.stats()["held"]
                in_flight = (await _common.queue_counts(sqs, queue_url))[1]

                # 2. long run: release, then stream rounds through.
                receiver.release()
                await wait_for(
                    lambda: _common.wait_until_empty(sqs, queue_url, timeout=0.5), timeout=90, what="release"
                )
                after_release = worker.rss_bytes()
                per_round: list[int] = []
                for round_index in range(rounds):
                    await _common.feed(
                        sqs, queue_url, traffic(round_events, seed=100 + round_index), max_backlog=50
                    )
                    await wait_for(
                        lambda: _common.wait_until_empty(sqs, queue_url, timeout=0.5),
                        timeout=90,
                        what="a round",
                    )
                    await asyncio.sleep(0.5)
                    per_round.append(worker.rss_bytes())
                peak = worker.peak_rss_bytes()

    print(f"bench/memory.py: fanout-worker, maxInFlight {hold}, maxConcurrency 64, moto SQS")
    print(_common.figure_line("RSS idle (ready, nothing received)", mib(idle)))
    print(
        _common.figure_line(f"RSS holding {in_flight} messages in flight ({held} in the sink)", mib(holding))
    )
    print(_common.figure_line("peak RSS over the whole run", mib(peak)))
    print(
        _common.figure_line("RSS per message held", f"{(holding - idle) / max(in_flight, 1) / 1024:.1f} KiB")
    )
    print(_common.figure_line("RSS after the held messages were delivered", mib(after_release)))
    print(
        _common.figure_line(
            f"RSS after each round of {round_events} events", " ".join(mib(v) for v in per_round)
        )
    )
    if len(per_round) >= 2:
        growth = (per_round[-1] - per_round[0]) / ((len(per_round) - 1) * round_events / 1000)
        print(
            _common.figure_line(
                "RSS growth per 1,000 events after the first round", f"{growth / 1024:+.0f} KiB"
            )
        )
        print(
            _common.ratio_line(
                "last round RSS / first round RSS", per_round[-1] / per_round[0], target="~1.0"
            )
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-events", type=int, default=400)
    args = parser.parse_args()
    return asyncio.run(run(args.hold, args.rounds, args.round_events))


if __name__ == "__main__":
    sys.exit(main())
