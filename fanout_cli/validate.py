"""``fanout validate FILE``: check a FanoutConsumer manifest exactly as ``fanout-worker`` loads it.

Exit 0 with one line naming the consumer; exit 2 with one line per problem, each naming the
field (the same report ``fanout-worker --config`` prints), so CI can gate a manifest before
``kubectl apply``.

``--aws`` also checks the consumer's AWS topology with the current credentials (the standard
``AWS_*`` variables), with the operator's own code (``fanout_core.inspecting`` and
``findings``): one finding per problem, each with its reason, what it costs and the fix, and
exit 1 when there is any — for CI pipelines and for topologies managed with Terraform. Only
read calls are made. An AWS error that stops the check (no credentials, an outage) is one
line and exit 1 as well: an unverified topology does not pass. ``--json`` prints the report
as one JSON document instead.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence

from fanout_core import awsclients, findings, inspecting, topology
from fanout_core import spec as spec_model

EXIT_CONFIG = 2
EXIT_PROBLEMS = 1


class Validate:
    """The ``validate`` command."""

    help = "check a FanoutConsumer manifest (and, with --aws, its AWS topology)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file")
        parser.add_argument(
            "--aws",
            action="store_true",
            help="also check the queue, dead-letter queue, SNS subscription, KMS key and table "
            "with the current AWS credentials (read-only); exit 1 on any problem",
        )
        parser.add_argument("--json", action="store_true", help="with --aws: the report as JSON")

    def run(self, args: argparse.Namespace, rest: Sequence[str]) -> int:
        path: str = args.file
        try:
            consumer = spec_model.load_manifest(path)
        except spec_model.ConfigError as error:
            print("\n".join(spec_model.config_error_lines("fanout validate", path, error)), file=sys.stderr)
            return EXIT_CONFIG
        if not args.aws:
            print(f"{path}: valid FanoutConsumer {consumer.metadata.name!r}")
            return 0
        try:
            report = asyncio.run(check_topology(consumer))
        except awsclients.TopologyError as error:
            print(f"fanout validate: cannot check the AWS topology of {path}: {error}", file=sys.stderr)
            return EXIT_PROBLEMS
        if args.json:
            print(json.dumps(report_document(path, consumer, report), indent=2))
        else:
            print("\n".join(report_lines(path, consumer, report)))
        return 0 if report.ok else EXIT_PROBLEMS


async def check_topology(consumer: spec_model.FanoutConsumer) -> findings.Report:
    """The findings about ``consumer``'s AWS topology, as the operator would report them."""
    spec = consumer.spec
    async with awsclients.open_clients(spec.queue.region) as clients:
        owner = f"{consumer.metadata.namespace or 'default'}/{consumer.metadata.name}"
        desired = topology.desired(spec, owner=owner, place=clients.place)
        observed = await inspecting.inspect(clients, desired)
    return findings.check(spec, desired, observed)


def report_lines(path: str, consumer: spec_model.FanoutConsumer, report: findings.Report) -> list[str]:
    name = consumer.metadata.name
    count = len(report.findings)
    if report.ok:
        lines = [f"{path}: valid FanoutConsumer {name!r}; its AWS topology has no problem"]
    else:
        lines = [
            f"{path}: FanoutConsumer {name!r}: {count} problem{'s' if count > 1 else ''} in its AWS topology"
        ]
    for finding in report.findings:
        lines.append(f"  {finding.severity} {finding.reason} {finding.resource}")
        lines.append(f"    {finding.message}")
        lines.append(f"    fix: {finding.fix}")
    lines.extend(f"  note: {note}" for note in report.notes)
    return lines


def report_document(
    path: str, consumer: spec_model.FanoutConsumer, report: findings.Report
) -> dict[str, object]:
    return {
        "file": path,
        "name": consumer.metadata.name,
        "ok": report.ok,
        "findings": [dataclasses.asdict(finding) for finding in report.findings],
        "notes": list(report.notes),
    }


COMMAND = Validate()
