"""What one topology check means for a FanoutConsumer: its ``TopologyReady`` condition, its
``status.topology``, the Events to post and the metric to set; pure.

``topology`` (the operator's topology loop) runs provisioning and verification through
``fanout_core``, then hands the outcome here and writes what :func:`assess` returns. Kept pure
so the rules ("a new finding is a Warning Event once, not at every check"; "only unreadable
parts: Unknown, not False") are unit-tested without a cluster::

    no finding                      TopologyReady True     reason Verified
    an error or a warning           TopologyReady False    reason = the most severe finding's
    only unverifiable (denied)      TopologyReady Unknown  reason ReadDenied
    the check itself failed         TopologyReady Unknown  reason TopologyCheckFailed (findings kept)
"""

from __future__ import annotations

import collections
import dataclasses

from fanout_core import findings, topology
from fanout_operator import status

CONDITION_MESSAGE_LIMIT = 8_000
VERIFIED = "Verified"
CHECK_FAILED = "TopologyCheckFailed"
PROVISIONED = "TopologyProvisioned"


@dataclasses.dataclass(frozen=True)
class Assessment:
    state: bool | None
    reason: str
    message: str
    topology: status.TopologyStatus
    warnings: tuple[status.TopologyFinding, ...]
    """Findings not in the previous check: one Warning Event each."""
    announcement: str | None
    """What provisioning changed, for one Normal Event; None when nothing."""
    counts: dict[tuple[str, str], int]
    """Findings per (reason, severity), for the metric."""


def _record(finding: findings.Finding) -> status.TopologyFinding:
    return status.TopologyFinding(
        reason=str(finding.reason),
        severity=finding.severity.value,
        resource=finding.resource,
        message=finding.message,
        fix=finding.fix,
    )


def _created(
    previous: status.TopologyStatus | None, provisioned: topology.Provisioned | None
) -> list[status.TopologyResource]:
    known = list(previous.created) if previous else []
    for resource in provisioned.created if provisioned else ():
        record = status.TopologyResource(kind=resource.kind.value, id=resource.id)
        if record not in known:
            known.append(record)
    return known


def _counts(records: list[status.TopologyFinding]) -> dict[tuple[str, str], int]:
    return dict(collections.Counter((record.reason, str(record.severity)) for record in records))


def assess(
    report: findings.Report,
    *,
    provisioned: topology.Provisioned | None,
    previous: status.TopologyStatus | None,
    now: float,
) -> Assessment:
    """The outcome of a check that ran (whatever it found)."""
    records = [_record(finding) for finding in report.findings]
    seen = {(f.reason, f.resource) for f in previous.findings} if previous else set()
    warnings = tuple(r for r in records if (r.reason, r.resource) not in seen)
    topology = status.TopologyStatus(
        checked_at=status.rfc3339(now), findings=records, created=_created(previous, provisioned)
    )
    counts = _counts(records)
    announcement = "; ".join(provisioned.changes) if provisioned and provisioned.changes else None
    worst = report.worst
    if worst is None:
        state: bool | None = True
        reason = VERIFIED
        message = "queue, dead-letter queue, policies, subscription and table checked: no problem"
    else:
        state = None if worst is findings.Severity.UNKNOWN else False
        first = next(f for f in report.findings if f.severity is worst)
        reason = str(first.reason)
        message = "\n".join(f"{r.reason}: {r.message} Fix: {r.fix}" for r in records)
    return Assessment(
        state=state,
        reason=reason,
        message=message[:CONDITION_MESSAGE_LIMIT],
        topology=topology,
        warnings=warnings,
        announcement=announcement,
        counts=counts,
    )


def check_failed(error: str, previous: status.TopologyStatus | None) -> Assessment:
    """The check could not run (AWS unreachable, throttled, credentials): nothing is known now;
    the last findings stay in the status, and no Event repeats them."""
    kept = previous or status.TopologyStatus()
    return Assessment(
        state=None,
        reason=CHECK_FAILED,
        message=f"the topology could not be checked: {error}"[:CONDITION_MESSAGE_LIMIT],
        topology=kept,
        warnings=(),
        announcement=None,
        counts=_counts(kept.findings),
    )
