"""CPU per event of the worker against what a user would run instead, side by side.

Every consumer runs as a child process, measured from outside (``/proc/<pid>/stat``, user +
system CPU), over the same traffic: Genesys events in EventBridge envelopes fed into its own
queue on one moto server while it runs, delivered to one zero-latency HTTP receiver in
another process (neither's CPU is counted). moto is served by waitress, which keeps
connections alive as AWS does (``--moto-closes-connections``: moto's own server, which makes
every SQS call of every consumer pay a TCP connect). Rounds alternate the consumers, the order turned
by one each round, so a busy moment of the shared machine falls on all of them alike; ratios
are of CPU seconds summed over the rounds.

Per sink, the consumers (the bare loops and the peer: ``bench/_baselines.py``):

* **webhook** — ``fanout-worker`` (webhook sink, memory idempotency store, the spec's
  defaults: 2 pollers of 10 messages, 20 s long polls, INFO logs — one JSON line per state
  change, successful deliveries summed per 10 s —, metrics; no OTLP endpoint, so no span
  is recorded) against a bare aiobotocore + **aiohttp** loop (the goal: worker ≤ 1.0x its
  CPU per event), a bare aiobotocore + **httpx** loop (httpx's default transport) and the
  PyPI peer **sqs-workers** (boto3 + sync httpx, one message at a time; the goal: worker ≤
  0.5x). ``--transports`` adds the bare
  loop with httpx on the worker's sinks' transport (httpx on our HTTP/1.1 client: what
  httpx's API costs over aiohttp's, and what the worker costs beyond the same I/O) and on
  the PyPI adapter ``httpx-aiohttp``.
* **crm** — the worker's Salesforce upsert sink against a bare aiohttp loop sending the
  same PATCH per event (goal ≤ 1.0x).
* **siem** — the worker's Splunk HEC sink (batches of up to 100 events, 0.2 s linger)
  against a bare aiohttp loop posting each receive of 10 as one batch (goal ≤ 1.0x).

``--against DIR`` (A/B of a change): per sink, only this checkout's worker and the worker of
the checkout in DIR (e.g. ``git archive main | tar -x -C DIR``), the same rounds.

Also printed: the CPU each consumer spends starting (process start → serving, its pollers
started) and idle CPU per second (an empty queue, 20 s long polls, every consumer at once).

    .venv/bin/python bench/overhead.py [--events N] [--rounds R] [--sinks webhook,crm,siem]
                                       [--transports] [--idle-seconds S]
                                       [--moto-closes-connections] [--against DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import _baselines
import _common

from fanout_lab.simulators import genesys
from workers import events

MAX_BACKLOG = 60
TOKEN_VARIABLE = "FANOUT_BENCH_TOKEN"
BASELINES = str(_common.REPO / "bench" / "_baselines.py")


@dataclasses.dataclass
class Variant:
    """One consumer of one sink's traffic, and what it cost."""

    label: str
    sink: str
    kind: str  # worker | bare | peer
    client: str = "aiohttp"
    target: tuple[str, float] | None = None
    """(goal text, highest ratio worker / this allowed) when a goal names this consumer."""
    source: pathlib.Path | None = None
    """Another checkout whose worker this runs (``--against``)."""
    child: _common.Child | None = None
    queue_url: str = ""
    startup_cpu: float = 0.0
    idle_cpu_per_second: float = 0.0
    cpu: float = 0.0
    wall: float = 0.0
    rounds: list[float] = dataclasses.field(default_factory=list)

    @property
    def is_worker(self) -> bool:
        return self.kind == "worker"


def variants(sinks: Sequence[str], *, transports: bool, against: pathlib.Path | None = None) -> list[Variant]:
    found: list[Variant] = []
    for sink in sinks:
        if against is not None:  # A/B: this checkout's worker against another's, nothing else
            found.append(Variant(f"fanout-worker ({sink} sink), this checkout", sink, "worker"))
            found.append(
                Variant(f"fanout-worker ({sink} sink), {against.name}", sink, "worker-b", source=against)
            )
            continue
        found.append(Variant(f"fanout-worker ({sink} sink, memory store, defaults)", sink, "worker"))
        found.append(
            Variant(
                f"bare aiobotocore + aiohttp loop ({sink} wire)", sink, "bare", "aiohttp", ("<= 1.0", 1.0)
            )
        )
        if sink == "webhook":
            found.append(
                Variant("bare aiobotocore + httpx loop (httpx's default transport)", sink, "bare", "httpx")
            )
            if transports:
                found.append(Variant("bare loop, httpx on the sinks' transport", sink, "bare", "httpx-sinks"))
                found.append(
                    Variant("bare loop, httpx on httpx-aiohttp (PyPI)", sink, "bare", "httpx-aiohttp")
                )
            found.append(
                Variant("sqs-workers (PyPI; boto3 + sync httpx)", sink, "peer", target=("<= 0.5", 0.5))
            )
    return found


# ------------------------------------------------------------------------------ children
def worker_spec(sink: str, queue_url: str, receiver: _common.Receiver) -> dict[str, Any]:
    """The spec's defaults but for the queue, the sink and its credentials."""
    spec: dict[str, Any] = {"queue": {"url": queue_url}, "idempotency": {"store": "memory"}}
    token = {"env": TOKEN_VARIABLE}
    if sink == "webhook":
        spec["sink"] = {"type": "webhook", "url": receiver.url}
    elif sink == "crm":
        spec["sink"] = {"type": "crm", "url": receiver.base_url, "crm": {"token": token}}
    else:
        spec["sink"] = {"type": "siem", "url": receiver.base_url, "siem": {"token": token}}
    return spec


def start(variant: Variant, index: int, receiver: _common.Receiver) -> _common.Child:
    """Start ``variant``; when this returns it is serving and ``startup_cpu`` is known."""
    endpoint = receiver.url if variant.sink == "webhook" else receiver.base_url
    if variant.kind.startswith("worker"):
        name = f"overhead-{index}"
        manifest = _common.write_manifest(worker_spec(variant.sink, variant.queue_url, receiver), name)
        worker = _common.WorkerProcess(
            manifest, name=name, env={TOKEN_VARIABLE: _baselines.TOKEN}, source=variant.source
        )
        worker.wait_ready(probe="healthz")
        variant.startup_cpu = worker.cpu_seconds()
        return worker
    if variant.kind == "bare":
        command = [
            sys.executable,
            BASELINES,
            "bare",
            variant.client,
            variant.sink,
            variant.queue_url,
            endpoint,
        ]
    else:
        command = [sys.executable, BASELINES, "peer", variant.queue_url, endpoint]
    child = _common.Child(command, log_name=f"overhead-{index}")
    if child.read_line() != "ready":
        raise RuntimeError(f"{variant.label} did not start; see {child.log_path}")
    variant.startup_cpu = child.cpu_seconds()
    return child


# ----------------------------------------------------------------------------- measuring
def traffic(count: int) -> list[str]:
    generator = genesys.Generator(seed=7)
    bodies: list[str] = []
    for event in generator.day(conversations=(count + 9) // 10):
        bodies.append(generator.body(event, events.EnvelopeKind.EVENTBRIDGE))
    return bodies[:count]


async def measure(
    name: str, child: _common.Child, sqs: Any, queue_url: str, receiver: _common.Receiver, bodies: list[str]
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) the child spent on ``bodies``, from first send to empty queue.

    SQS is at-least-once (moto, like SQS, now and then hands one message to two concurrent
    receives): a bare loop may POST an event twice, which only makes it look slower.
    """
    answered = receiver.stats()["answered"]
    cpu_before = child.cpu_seconds()
    started = time.monotonic()
    await _common.feed(sqs, queue_url, bodies, max_backlog=MAX_BACKLOG)
    deadline = time.monotonic() + 120
    while receiver.stats()["answered"] < answered + len(bodies) or await _common.queue_counts(
        sqs, queue_url
    ) != (0, 0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: not done within 120 s; see {child.log_path}")
        await asyncio.sleep(0.05)
    return child.cpu_seconds() - cpu_before, time.monotonic() - started


async def run(
    count: int,
    rounds: int,
    sinks: Sequence[str],
    *,
    transports: bool,
    idle: float,
    closing_moto: bool,
    against: pathlib.Path | None = None,
) -> int:
    bodies = traffic(count)
    chunk = (len(bodies) + rounds - 1) // rounds
    chosen = variants(sinks, transports=transports, against=against)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_common.aws_endpoint() if closing_moto else _common.keep_alive_aws_endpoint())
        receiver = stack.enter_context(_common.Receiver())
        async with _common.sqs_client() as sqs:
            for index, variant in enumerate(chosen):
                variant.queue_url = await _common.make_queue(sqs, f"overhead-{index}")
                variant.child = stack.enter_context(start(variant, index, receiver))
            for round_index in range(rounds):
                part = bodies[round_index * chunk : (round_index + 1) * chunk]
                turn = round_index % len(chosen)
                for variant in chosen[turn:] + chosen[:turn]:
                    assert variant.child is not None
                    cpu, wall = await measure(
                        variant.label, variant.child, sqs, variant.queue_url, receiver, part
                    )
                    variant.cpu += cpu
                    variant.wall += wall
                    variant.rounds.append(cpu)
            # Idle: every consumer at once, nothing in any queue, the long polls running.
            await asyncio.sleep(2)
            before = {id(variant): variant.child.cpu_seconds() for variant in chosen if variant.child}
            await asyncio.sleep(idle)
            for variant in chosen:
                assert variant.child is not None
                variant.idle_cpu_per_second = (variant.child.cpu_seconds() - before[id(variant)]) / idle
    report(chosen, count, rounds, idle, closing_moto=closing_moto)
    return 0


# -------------------------------------------------------------------------------- output
def report(chosen: list[Variant], count: int, rounds: int, idle: float, *, closing_moto: bool) -> None:
    server = "moto's own server: a new connection per SQS call" if closing_moto else "keep-alive"
    print(
        f"bench/overhead.py — {count} events per consumer in {rounds} alternating rounds; moto SQS "
        f"({server}); zero-latency receiver in another process; CPU of each consumer process from /proc"
    )
    for sink in dict.fromkeys(variant.sink for variant in chosen):
        group = [variant for variant in chosen if variant.sink == sink]
        worker = next(variant for variant in group if variant.is_worker)
        print(f"\n{sink} sink")
        print(f"  {'consumer':<58} {'CPU-ms/event':>12} {'events/CPU-s':>12} {'worker/this':>11}")
        for variant in group:
            ratio = worker.cpu / variant.cpu
            print(
                f"  {variant.label:<58} {1000 * variant.cpu / count:>12.2f} {count / variant.cpu:>12,.0f}"
                f" {ratio:>11.2f}"
            )
        for variant in group:
            if variant.kind == "worker-b":
                pairs = zip(worker.rounds, variant.rounds, strict=True)
                by_round = " ".join(f"{w / v:.2f}" for w, v in pairs)
                print(_common.figure_line("  this checkout / the other, round by round", by_round))
            if variant.target is None:
                continue
            goal, limit = variant.target
            ratio = worker.cpu / variant.cpu
            verdict = "met" if ratio <= limit else "NOT met"
            print(
                _common.ratio_line(
                    f"worker / {variant.label.split(' (')[0]}", ratio, target=f"{goal}: {verdict}"
                )
            )
            by_round = " ".join(f"{w / v:.2f}" for w, v in zip(worker.rounds, variant.rounds, strict=True))
            print(_common.figure_line("  round by round", by_round))
    print("\nstartup CPU (process start → serving) and idle CPU (empty queue, 20 s long polls)")
    print(f"  {'consumer':<58} {'startup CPU-s':>13} {'idle CPU-ms/s':>13}")
    for variant in chosen:
        print(
            f"  {variant.label:<58} {variant.startup_cpu:>13.2f} {1000 * variant.idle_cpu_per_second:>13.2f}"
        )
    print(f"  (idle measured over {idle:.0f} s, every consumer running at once)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per consumer (default 2000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sinks", default="webhook,crm,siem", help="comma-separated: webhook, crm, siem")
    parser.add_argument(
        "--transports", action="store_true", help="also the bare httpx loop on other transports"
    )
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--against",
        type=pathlib.Path,
        metavar="DIR",
        help="A/B: only this checkout's worker and the worker of the checkout in DIR, per sink",
    )
    parser.add_argument(
        "--moto-closes-connections",
        action="store_true",
        help="serve moto with its own server, which closes every connection (AWS keeps them alive)",
    )
    args = parser.parse_args()
    sinks = [name.strip() for name in args.sinks.split(",") if name.strip()]
    unknown = set(sinks) - set(_baselines.WIRES)
    if unknown:
        parser.error(f"--sinks: unknown {', '.join(sorted(unknown))}")
    return asyncio.run(
        run(
            args.events,
            args.rounds,
            sinks,
            transports=args.transports,
            idle=args.idle_seconds,
            closing_moto=args.moto_closes_connections,
            against=args.against.resolve() if args.against else None,
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
