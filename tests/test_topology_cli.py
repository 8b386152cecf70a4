"""``fanout validate --aws FILE``: the operator's topology findings, outside the cluster, for CI.

A topology with a problem exits 1 and prints each finding with its reason and fix; a healthy
one exits 0; an AWS endpoint that cannot be reached is one line and exit 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest

from fanout_cli import main
from fanout_core import awsclients, provisioning, spec, topology
from fanout_lab import harness
from fanout_lab.simulators import aws


def _manifest(tmp_path: pathlib.Path, server: aws.MotoServer, topic_arn: str) -> pathlib.Path:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    document = harness.manifest(
        queue_url=f"{server.endpoint_url}/123456789012/{name}", sink_url="http://127.0.0.1:1/"
    )
    document["spec"]["queue"]["visibilityTimeoutSeconds"] = 10
    document["spec"]["filter"] = {"eventTypes": ["v2.detail.events.conversation.*"]}
    document["spec"]["topology"] = {"topicArn": topic_arn}
    return harness.write_manifest(tmp_path / f"{name}.yaml", document)


async def _topic_and_provision(path: pathlib.Path | None) -> str:
    async with awsclients.open_clients() as clients:
        topic = await clients.sns_client.create_topic(Name=f"cli-{uuid.uuid4().hex[:8]}")
        if path is not None:
            consumer = spec.load_manifest(path)
            desired = topology.desired(consumer.spec, owner="contact-center/crm-sync", place=clients.place)
            await provisioning.provision(clients, desired)
        return str(topic["TopicArn"])


def test_a_topology_with_problems_exits_1_with_each_reason_and_fix(
    moto_server: aws.MotoServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic_arn = asyncio.run(_topic_and_provision(None))
    path = _manifest(tmp_path, moto_server, topic_arn)
    assert main.main(["validate", "--aws", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: FanoutConsumer 'crm-sync': 1 problem in its AWS topology"
    assert out[1].startswith("  error QueueMissing ")
    assert out[3].startswith("    fix: create it")
    assert main.main(["validate", "--aws", "--json", str(path)]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [f["reason"] for f in document["findings"]] == ["QueueMissing"]
    assert document["ok"] is False


def test_a_healthy_topology_exits_0(
    moto_server: aws.MotoServer, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic_arn = asyncio.run(_topic_and_provision(None))
    path = _manifest(tmp_path, moto_server, topic_arn)
    asyncio.run(_topic_and_provision(path))
    assert main.main(["validate", "--aws", str(path)]) == 0
    assert (
        capsys.readouterr().out
        == f"{path}: valid FanoutConsumer 'crm-sync'; its AWS topology has no problem\n"
    )


def test_an_unreachable_aws_is_one_line_and_exit_1(tmp_path: pathlib.Path) -> None:
    port = aws.free_port()
    document = harness.manifest(
        queue_url=f"http://127.0.0.1:{port}/123456789012/q", sink_url="http://127.0.0.1:1/"
    )
    path = harness.write_manifest(tmp_path / "q.yaml", document)
    environment = {
        **os.environ,
        **aws.MotoServer(port=port).environment(),
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    }
    done = subprocess.run(
        [sys.executable, "-m", "fanout_cli", "validate", "--aws", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"fanout validate: cannot check the AWS topology of {path}: sqs:GetQueueAttributes"
    )
