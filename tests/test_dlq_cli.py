"""``fanout dlq`` end to end on moto (standard and FIFO queues), as a user runs it: a real
``fanout`` process, a dead-letter queue filled in the worker's own format.

Summary and show peek without changing the queue (messages visible again at once, receive
counts up by one); redrive moves exactly the selection, keeps FIFO group order, paces, and
survives a SIGKILL mid-way: rerun, nothing lost, nothing doubled (FIFO: deduplicated by SQS;
standard: the worker's idempotency store delivers a repeat once). Bad input gets one line.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import pathlib
import signal
import sys
import uuid
from typing import Any

import pytest

from fanout_cli import dlq, main
from fanout_core import deadletters, pacing, redriving
from fanout_lab import harness
from fanout_lab.simulators import aws, webhook
from tests import dead_letters
from workers import running

pytestmark = pytest.mark.timeout(180)

FIFO = pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])


@dataclasses.dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def fanout(capsys: pytest.CaptureFixture[str]) -> Any:
    """``fanout ARGS`` in this process (a thread of its own: it runs its own event loop); the
    SIGKILL test and one bad-input case run the real console process instead."""

    async def run(*args: str) -> Ran:
        capsys.readouterr()
        code = await asyncio.to_thread(main.main, list(args))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


async def fanout_process(*args: str, timeout: float = 90) -> Ran:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fanout_cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@dataclasses.dataclass
class Setup:
    source: str
    dead: str
    config: pathlib.Path


async def setup(sqs: Any, tmp_path: pathlib.Path, *, fifo: bool, rate: float | None = 20) -> Setup:
    suffix = ".fifo" if fifo else ""
    name = f"crm-{uuid.uuid4().hex[:8]}"
    source = await aws.create_queue(sqs, f"{name}{suffix}", fifo=fifo, visibility=5)
    dead = await aws.create_queue(sqs, f"{name}-dlq{suffix}", fifo=fifo, visibility=5)
    overrides: dict[str, Any] = {}
    if rate is not None:
        overrides["sink"] = {"rateLimit": {"requestsPerSecond": rate, "burst": 5}}
    document = harness.manifest(
        queue_url=source, sink_url="http://127.0.0.1:9/", dead_letter_url=dead, **overrides
    )
    return Setup(source, dead, harness.write_manifest(tmp_path / "consumer.yaml", document))


async def take_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive and delete everything in ``url``, in the order SQS hands it out (FIFO: group order)."""
    taken: list[dict[str, Any]] = []
    quiet = 0
    while quiet < 2:
        reply = await sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0 if not quiet else 1,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        messages = reply.get("Messages", [])
        if not messages:
            quiet += 1
            continue
        quiet = 0
        taken.extend(messages)
        await sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return taken


# --- summary, show, export -----------------------------------------------------------------


@FIFO
async def test_summary_counts_and_gives_every_message_back_at_once(
    sqs: Any, tmp_path: pathlib.Path, fifo: bool, fanout: Any
) -> None:
    queues = await setup(sqs, tmp_path, fifo=fifo)
    await dead_letters.incident(sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=4)

    ran = await fanout("dlq", "summary", "--config", str(queues.config), "--json")
    assert ran.code == 0, ran.err
    summary = json.loads(ran.out)
    assert summary["total"] == 10 and summary["readThrough"] is True
    assert summary["byReasonClass"] == {"exhausted": 4, "permanent": 4, "poison": 2}
    assert summary["byEventType"] == {
        "v2.detail.events.conversation.{id}.acw": 4,
        "v2.detail.events.conversation.{id}.customer.end": 4,
        "(undecodable)": 2,
    }
    assert summary["byReason"][f"permanent: {dead_letters.PERMANENT_REASON}"] == 4
    assert summary["byAge"] == {"< 1h": 10}
    assert summary["receiveCountsGrew"] is True

    # Visible again at once, nothing deleted; each receive counted.
    assert await harness.queue_counts(sqs, queues.dead) == (10, 0)
    text = await fanout("dlq", "summary", "--config", str(queues.config))
    assert text.code == 0
    assert "receive count" in text.out and "nothing was deleted" in text.out
    assert "permanent" in text.out and "v2.detail.events.conversation.{id}.acw" in text.out
    remaining = await take_all(sqs, queues.dead)
    assert len(remaining) == 10
    assert min(int(m["Attributes"]["ApproximateReceiveCount"]) for m in remaining) >= 3


async def test_show_hides_payloads_unless_asked(sqs: Any, tmp_path: pathlib.Path, fanout: Any) -> None:
    queues = await setup(sqs, tmp_path, fifo=False)
    incident = await dead_letters.incident(
        sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=3, poison=0
    )
    hidden = await fanout("dlq", "show", "--config", str(queues.config), "--reason-class", "permanent")
    assert hidden.code == 0, hidden.err
    assert hidden.out.count("  reason ") == 3
    assert hidden.out.count("customer.end") == 3 and "acw" not in hidden.out
    for item in incident.of("permanent"):
        assert item.correlation_id in hidden.out
    assert "tel:+" not in hidden.out and "(hidden; --show-payload)" in hidden.out
    assert "receive count" in hidden.err

    shown = await fanout(
        "dlq",
        "show",
        "--config",
        str(queues.config),
        "--reason-class",
        "exhausted",
        "--limit",
        "2",
        "--show-payload",
    )
    assert shown.code == 0
    assert shown.out.count("  body {") == 2 and "tel:+" in shown.out


async def test_export_writes_one_record_per_message_with_its_body(
    sqs: Any, tmp_path: pathlib.Path, fanout: Any
) -> None:
    queues = await setup(sqs, tmp_path, fifo=False)
    incident = await dead_letters.incident(
        sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=3
    )
    ran = await fanout("dlq", "export", "--config", str(queues.config))
    assert ran.code == 0, ran.err
    records = [json.loads(line) for line in ran.out.splitlines()]
    assert sorted(record["body"] for record in records) == sorted(item.body for item in incident.written)
    assert {record["reasonClass"] for record in records} == {"permanent", "exhausted", "poison"}
    assert "personal data" in ran.err
    assert await harness.queue_counts(sqs, queues.dead) == (8, 0)


# --- redrive -----------------------------------------------------------------------------------


@FIFO
async def test_redrive_moves_exactly_the_selection(
    sqs: Any, tmp_path: pathlib.Path, fifo: bool, fanout: Any
) -> None:
    queues = await setup(sqs, tmp_path, fifo=fifo)
    incident = await dead_letters.incident(
        sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=4
    )
    config = str(queues.config)

    ran = await fanout("dlq", "redrive", "--config", config, "--reason-class", "permanent")
    assert ran.code == 0, ran.err
    assert "moved 4 messages" in ran.out and "complete" in ran.out
    moved = await take_all(sqs, queues.source)
    assert sorted(m["Body"] for m in moved) == sorted(item.body for item in incident.of("permanent"))
    for message in moved:
        attributes = message.get("MessageAttributes", {})
        assert not any(name in attributes for name in ("fanout.reason", "fanout.reason-class"))
        history = json.loads(attributes["fanout.redrive-history"]["StringValue"])
        assert history["reasonClass"] == "permanent" and history["reason"] == dead_letters.PERMANENT_REASON
        if fifo:
            assert message["Attributes"]["MessageGroupId"] in {item.group for item in incident.written}

    nothing = await fanout("dlq", "redrive", "--config", config, "--older-than", "1h", "--json")
    assert nothing.code == 0 and json.loads(nothing.out)["moved"] == 0

    acw = await fanout(
        "dlq", "redrive", "--config", config, "--event-type", "*.acw", "--reason-match", "503", "--json"
    )
    assert acw.code == 0, acw.err
    assert json.loads(acw.out)["movedByReasonClass"] == {"exhausted": 4}
    assert sorted(m["Body"] for m in await take_all(sqs, queues.source)) == sorted(
        item.body for item in incident.of("exhausted")
    )
    left = await take_all(sqs, queues.dead)
    assert sorted(m["Body"] for m in left) == sorted(item.body for item in incident.of("poison"))


async def test_a_dry_run_moves_nothing_and_says_what_would_move(
    sqs: Any, tmp_path: pathlib.Path, fanout: Any
) -> None:
    queues = await setup(sqs, tmp_path, fifo=False)
    await dead_letters.incident(sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=3)
    ran = await fanout(
        "dlq", "redrive", "--config", str(queues.config), "--reason-class", "exhausted", "--dry-run"
    )
    assert ran.code == 0, ran.err
    assert "would move 3 messages" in ran.out and ran.out.count("v2.detail.events.conversation.{id}.acw") == 3
    assert "nothing was sent or deleted" in ran.out
    assert await harness.queue_counts(sqs, queues.source) == (0, 0)
    assert await harness.queue_counts(sqs, queues.dead) == (8, 0)


async def test_the_redrive_keeps_its_pace(sqs: Any, tmp_path: pathlib.Path, fanout: Any) -> None:
    """Default: half of the sink's limit (here 16/s → 8/s); --rate overrides it. 20 messages
    at 5/s with a burst of 5 cannot take less than 3 s."""
    queues = await setup(sqs, tmp_path, fifo=False, rate=16)
    await dead_letters.incident(
        sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=10, poison=0
    )
    ran = await fanout("dlq", "redrive", "--config", str(queues.config), "--rate", "5", "--json")
    assert ran.code == 0, ran.err
    report = json.loads(ran.out)
    assert report["moved"] == 20 and report["complete"] is True
    assert report["elapsedSeconds"] >= 2.9

    await dead_letters.incident(
        sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=1, poison=0
    )
    default = await fanout("dlq", "redrive", "--config", str(queues.config), "--json")
    assert json.loads(default.out)["rate"] == 8
    assert "half of sink.rateLimit 16/s" in json.loads(default.out)["rateWhy"]


async def test_fifo_groups_come_back_in_their_order(sqs: Any, tmp_path: pathlib.Path, fanout: Any) -> None:
    queues = await setup(sqs, tmp_path, fifo=True)
    written: dict[str, list[str]] = collections.defaultdict(list)
    for index in range(30):
        group = f"conversation-{index % 5}"
        body = json.dumps({"conversationId": group, "seq": index})
        await dead_letters.write(
            sqs,
            dead_letter_url=queues.dead,
            source_url=queues.source,
            body=body,
            reason_class="permanent",
            reason="HTTP 422",
            group=group,
        )
        written[group].append(body)
    ran = await fanout("dlq", "redrive", "--config", str(queues.config), "--rate", "50")
    assert ran.code == 0, ran.err
    received: dict[str, list[str]] = collections.defaultdict(list)
    for message in await take_all(sqs, queues.source):
        received[message["Attributes"]["MessageGroupId"]].append(message["Body"])
    assert received == written


# --- crashes ------------------------------------------------------------------------------------


async def deliver_once(sqs: Any, queues: Setup, expected: set[str]) -> list[str]:
    """Run the real worker over the source queue; the correlation ids the downstream accepted."""
    async with webhook.WebhookSimulator() as sim:
        document = harness.manifest(
            queue_url=queues.source, sink_url=f"{sim.url}/events", dead_letter_url=queues.dead
        )
        worker = running.Worker(harness.consumer(document))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:

            async def settled() -> bool:
                counts = await harness.queue_counts(sqs, queues.source)
                return counts == (0, 0) and expected <= set(harness.accepted_correlation_ids(sim.accepted))

            assert await harness.wait_until(settled, timeout=60)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)
        return harness.accepted_correlation_ids(sim.accepted)


@FIFO
async def test_sigkill_mid_redrive_then_rerun_loses_nothing_and_doubles_nothing(
    sqs: Any, tmp_path: pathlib.Path, fifo: bool
) -> None:
    queues = await setup(sqs, tmp_path, fifo=fifo)
    incident = await dead_letters.incident(
        sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=30, poison=0
    )
    total = len(incident.written)
    config = str(queues.config)
    args = ("dlq", "redrive", "--config", config, "--rate", "20", "--visibility-timeout", "3")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fanout_cli",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def half_way() -> bool:
        visible, _ = await harness.queue_counts(sqs, queues.source)
        return visible >= total // 3

    try:
        assert await harness.wait_until(half_way, timeout=60, interval=0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    dead_visible, _ = await harness.queue_counts(sqs, queues.dead)
    assert 0 < dead_visible < total, "the kill did not land mid-way"

    rerun = await fanout_process(*args)
    assert rerun.code == 0, rerun.out + rerun.err
    assert await harness.queue_counts(sqs, queues.dead) == (0, 0)

    if fifo:
        bodies = [message["Body"] for message in await take_all(sqs, queues.source)]
        assert sorted(bodies) == sorted(item.body for item in incident.written), "lost or doubled"
        return
    delivered = await deliver_once(sqs, queues, {str(item.correlation_id) for item in incident.written})
    assert sorted(delivered) == sorted(str(item.correlation_id) for item in incident.written)


class DiesAfterCopying:
    """An SQS client whose process dies right after its first copy reached the source queue
    (before the delete): the worst moment for copy-then-delete."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.copied = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self._client.send_message_batch(**kwargs)
        self.copied += len(reply.get("Successful", []))
        raise ProcessDied


class ProcessDied(Exception):
    pass


@FIFO
async def test_a_death_between_copy_and_delete_is_absorbed_on_rerun(
    sqs: Any, tmp_path: pathlib.Path, fifo: bool
) -> None:
    queues = await setup(sqs, tmp_path, fifo=fifo)
    incident = await dead_letters.incident(
        sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=10, poison=0
    )

    dying = DiesAfterCopying(sqs)
    with pytest.raises(ProcessDied):
        await redrive_engine(dying, queues).run()
    assert dying.copied == 10  # one batch in the source queue ...
    assert sum(await harness.queue_counts(sqs, queues.dead)) == len(incident.written)  # ... and still here
    report = await redrive_engine(sqs, queues).run()
    assert report.complete and report.moved == len(incident.written)
    assert await harness.queue_counts(sqs, queues.dead) == (0, 0)
    expected = sorted(str(item.correlation_id) for item in incident.written)
    if fifo:
        bodies = [message["Body"] for message in await take_all(sqs, queues.source)]
        assert len(bodies) == len(incident.written), "SQS should have dropped the repeated copies"
        return
    visible, _ = await harness.queue_counts(sqs, queues.source)
    assert visible == len(incident.written) + 10  # the repeat is in the queue ...
    assert sorted(await deliver_once(sqs, queues, set(expected))) == expected  # ... and delivered once


class AnotherRunsHold:
    """An SQS client beside which another run (a killed one) holds one dead letter; that hold
    runs out just before the redrive's ``runs_out_at``-th count of the dead-letter queue (the
    first opens the run, the later ones are its checks at the end, after a receive came back
    empty). A hold can run out at any instant on SQS; this picks the worst one. With
    ``end_check_delay`` the first check at the end is answered that much later (a slow
    answer, or a long run: the redrive's own holds may have run out by then)."""

    def __init__(
        self,
        client: Any,
        *,
        dead_letter_url: str,
        receipt: str,
        runs_out_at: int = 2,
        end_check_delay: float = 0.0,
    ) -> None:
        self._client = client
        self._dead = dead_letter_url
        self._receipt: str | None = receipt
        self._runs_out_at = runs_out_at
        self._end_check_delay = end_check_delay
        self._dead_counts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        if kwargs.get("QueueUrl") == self._dead:
            self._dead_counts += 1
            if self._dead_counts == 2:
                await asyncio.sleep(self._end_check_delay)
            if self._dead_counts >= self._runs_out_at and self._receipt is not None:
                await self._client.change_message_visibility(
                    QueueUrl=self._dead, ReceiptHandle=self._receipt, VisibilityTimeout=0
                )
                self._receipt = None
        reply: dict[str, Any] = await self._client.get_queue_attributes(**kwargs)
        return reply


async def hold_one(sqs: Any, url: str, reason_class: str) -> str:
    """Receive one dead letter of ``reason_class`` for a minute, as a killed run left it held;
    its receipt handle. The others received on the way are made visible again."""
    reply = await sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60, MessageAttributeNames=["All"]
    )
    messages = reply["Messages"]
    held = next(
        m for m in messages if m["MessageAttributes"]["fanout.reason-class"]["StringValue"] == reason_class
    )
    others = [m for m in messages if m is not held]
    if others:
        await sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(others)
            ],
        )
    return str(held["ReceiptHandle"])


def redrive_engine(
    client: Any,
    queues: Setup,
    selection: deadletters.Selection | None = None,
    *,
    visibility_seconds: int = 2,
) -> redriving.Redrive:
    """The engine ``fanout dlq redrive`` runs, over ``client``, at 100/s."""
    return redriving.Redrive(
        client,
        dead_letter_url=queues.dead,
        source_url=queues.source,
        selection=selection or deadletters.Selection(),
        rate=pacing.choose_rate(explicit=100, rate_limit=None),
        identify=dlq.identifier(
            harness.consumer(harness.manifest(queue_url=queues.source, sink_url="http://x/"))
        ),
        visibility_seconds=visibility_seconds,
    )


@FIFO
async def test_a_hold_that_runs_out_as_the_run_ends_is_still_moved(
    sqs: Any, tmp_path: pathlib.Path, fifo: bool
) -> None:
    """A rerun after a kill waits for the killed run's holds; one that runs out between the
    rerun's last receive and its in-flight count must be moved, not reported "complete" and
    left behind (the SIGKILL test above hit this about one run in three)."""
    queues = await setup(sqs, tmp_path, fifo=fifo)
    incident = await dead_letters.incident(
        sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=3, poison=0
    )
    receipt = await hold_one(sqs, queues.dead, "permanent")
    report = await redrive_engine(
        AnotherRunsHold(sqs, dead_letter_url=queues.dead, receipt=receipt), queues
    ).run()

    assert await harness.queue_counts(sqs, queues.dead) == (0, 0), "left behind"
    assert report.complete and report.moved == len(incident.written)
    bodies = [message["Body"] for message in await take_all(sqs, queues.source)]
    assert sorted(bodies) == sorted(item.body for item in incident.written)


async def test_a_hold_of_its_own_that_ran_out_does_not_hide_another_runs(
    sqs: Any, tmp_path: pathlib.Path
) -> None:
    """At the end a redrive tells its own holds (what it leaves behind) from a killed run's by
    counting: a hold of its own that already ran out is no longer in flight, and must not be
    subtracted from what is, or the killed run's message is never waited for."""
    queues = await setup(sqs, tmp_path, fifo=False)
    incident = await dead_letters.incident(
        sqs, dead_letter_url=queues.dead, source_url=queues.source, conversations=3, poison=0
    )
    receipt = await hold_one(sqs, queues.dead, "permanent")
    client = AnotherRunsHold(
        sqs, dead_letter_url=queues.dead, receipt=receipt, runs_out_at=3, end_check_delay=1.5
    )
    selection = deadletters.Selection(reason_classes=frozenset({"permanent"}))
    report = await redrive_engine(client, queues, selection, visibility_seconds=1).run()

    assert report.complete and report.moved == len(incident.of("permanent")), "the killed run's message"
    assert report.skipped == len(incident.of("exhausted"))
    assert await harness.queue_counts(sqs, queues.dead) == (len(incident.of("exhausted")), 0)
    bodies = [message["Body"] for message in await take_all(sqs, queues.source)]
    assert sorted(bodies) == sorted(item.body for item in incident.of("permanent"))


# --- bad input ---------------------------------------------------------------------------------


async def test_bad_input_gets_one_line_and_no_traceback(
    sqs: Any, tmp_path: pathlib.Path, fanout: Any
) -> None:
    queues = await setup(sqs, tmp_path, fifo=False)
    no_dlq = harness.manifest(queue_url=queues.source, sink_url="http://127.0.0.1:9/")
    no_dlq_path = harness.write_manifest(tmp_path / "no-dlq.yaml", no_dlq)
    ran = await fanout("dlq", "summary", "--config", str(no_dlq_path))
    assert ran.code == 2 and ran.err.count("\n") == 1
    assert "spec.deadLetter.queueUrl is not set" in ran.err

    broken = harness.manifest(
        queue_url=queues.source, sink_url="http://127.0.0.1:9/", dead_letter_url=queues.dead
    )
    broken["spec"]["queue"]["maxMessages"] = 11
    broken_path = harness.write_manifest(tmp_path / "broken.yaml", broken)
    ran = await fanout("dlq", "redrive", "--config", str(broken_path))
    assert ran.code == 2 and "spec.queue.maxMessages" in ran.err

    gone = harness.manifest(
        queue_url=queues.source, sink_url="http://127.0.0.1:9/", dead_letter_url=queues.dead + "-missing"
    )
    gone_path = harness.write_manifest(tmp_path / "gone.yaml", gone)
    for action in ("summary", "redrive", "show", "export"):
        ran = await fanout("dlq", action, "--config", str(gone_path))
        assert ran.code == 1, (action, ran.err)
        assert ran.err.count("\n") == 1 and "does not exist" in ran.err
    # The console script itself: one line on stderr, nothing on stdout, no traceback.
    ran = await fanout_process("dlq", "redrive", "--config", str(gone_path))
    assert ran.code == 1 and ran.out == "" and ran.err.count("\n") == 1 and "does not exist" in ran.err

    ran = await fanout("dlq", "redrive", "--config", str(queues.config), "--reason-class", "bogus")
    assert ran.code == 2 and ran.err.strip() == (
        "fanout dlq redrive: unknown reason class bogus (one of poison, permanent, exhausted, unlabelled)"
    )
    ran = await fanout("dlq", "redrive", "--config", str(queues.config), "--older-than", "soon")
    assert ran.code == 2 and ran.err.count("\n") == 1 and "e.g. 90s" in ran.err
