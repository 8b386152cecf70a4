"""Declarative redrives: the request annotation, what to do about it, and its ``status.redrive``.

A user asks the operator to redrive a consumer's dead-letter queue by annotating the
FanoutConsumer (the filters of ``fanout dlq redrive``, as JSON)::

    kubectl annotate fc crm-sync --overwrite fanout.dev/redrive-request='{"id": "crm-fix-1",
        "reasonClass": ["permanent"], "olderThan": "10m", "dryRun": false}'

Why an annotation and not a spec field: a redrive is a one-off action, not a desired state.
A spec field would bump ``metadata.generation``, land in the workers' ConfigMap and roll the
worker pods for nothing, and would stay "desired" after it ran; an annotation changes
nothing the workers see, is set with one ``kubectl annotate``, and ``status.redrive`` says
what became of it. The price: the API server does not validate it, so the operator does,
and reports a bad request in ``status.redrive`` and a Warning Event.

Run once: a request is known by its ``id`` (else a hash of its text). ``redrives`` runs a
request whose key differs from ``status.redrive.request``; the same key again does nothing,
so re-applying a manifest with the annotation does not redrive twice (use a new ``id`` to run
the same filters again). While one runs, another is refused — recorded in
``status.redrive.refused`` and a Warning Event — and stays refused after the first one ends.
A run found ``Running`` in the status with nothing running in this process (the operator
restarted, or a peer took over) is started again: copy-then-delete makes that safe.

Everything here is pure: :func:`decide` takes the annotation's text and the status and
returns a :class:`Decision`; the status values are built by the functions at the end.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from typing import Any

import pydantic
import pydantic.alias_generators

from fanout_core import deadletters, pacing, redrive_reports
from fanout_core import spec as spec_model
from fanout_operator import status

ANNOTATION = f"{spec_model.API_GROUP}/redrive-request"


class RequestError(ValueError):
    """A request that cannot be run; the message names the field."""


class Request(pydantic.BaseModel):
    """The annotation's JSON: the filters of ``fanout dlq redrive``."""

    model_config = pydantic.ConfigDict(
        alias_generator=pydantic.alias_generators.to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    id: str | None = pydantic.Field(None, min_length=1, max_length=63)
    reason_class: list[str] | None = None
    reason_match: str | None = None
    event_type: str | None = None
    older_than: str | None = None
    rate: float | None = pydantic.Field(None, gt=0)
    limit: int | None = pydantic.Field(None, ge=1)
    dry_run: bool = False

    def selection(self) -> deadletters.Selection:
        if self.event_type is not None:
            raise RequestError(
                "eventType: the operator does not decode event bodies; select by reasonClass, "
                "reasonMatch or olderThan, or run fanout dlq redrive --event-type"
            )
        try:
            older = deadletters.parse_duration(self.older_than) if self.older_than is not None else None
        except ValueError as error:
            raise RequestError(f"olderThan: {error}") from error
        try:
            return deadletters.Selection(
                reason_classes=frozenset(self.reason_class) if self.reason_class else None,
                reason_match=self.reason_match,
                older_than_seconds=older,
                limit=self.limit,
            )
        except ValueError as error:
            raise RequestError(f"reasonClass: {error}") from error


def parse(text: str) -> Request:
    """The annotation's value → :class:`Request` (its selection checked too)."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise RequestError(f"not JSON ({error})") from error
    if not isinstance(document, dict):
        raise RequestError('expected a JSON object, e.g. {"reasonClass": ["permanent"]}')
    try:
        request = Request.model_validate(document)
    except pydantic.ValidationError as error:
        raise RequestError(spec_model.describe_validation_error(error).replace("\n", "; ")) from error
    request.selection()
    return request


def key_of(text: str) -> str:
    """A request's identity: its ``id``, else a hash of its text."""
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("id"), str) and document["id"]:
        return str(document["id"])[:63]
    return "sha256:" + hashlib.sha256(text.strip().encode()).hexdigest()[:16]


# --- the decision --------------------------------------------------------------------


State = status.RedriveState
RedriveStatus = status.RedriveStatus


class Action(enum.StrEnum):
    NOTHING = "nothing"
    START = "start"
    REFUSE = "refuse"
    INVALID = "invalid"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    key: str | None = None
    request: Request | None = None
    message: str = ""


def decide(text: str | None, current: RedriveStatus | None, *, running: str | None) -> Decision:
    """What to do about the annotation's ``text``, given ``status.redrive`` and the key of the
    request this process is running (None: none)."""
    if text is None or not text.strip():
        return Decision(Action.NOTHING)
    key = key_of(text)
    if running is not None:
        if key == running or (current is not None and current.refused == key):
            return Decision(Action.NOTHING)
        return Decision(
            Action.REFUSE,
            key,
            message=f"redrive request {key} refused: request {running} is running; "
            "apply it again with a new id once that one has finished",
        )
    if current is not None and current.refused == key:
        return Decision(Action.NOTHING)
    if current is not None and current.request == key and current.state is not State.RUNNING:
        return Decision(Action.NOTHING)  # done; a run left Running by a stopped operator starts again
    try:
        request = parse(text)
    except RequestError as error:
        return Decision(Action.INVALID, key, message=f"redrive request {key} is invalid: {error}")
    return Decision(Action.START, key, request)


# --- status values -------------------------------------------------------------------


def started(
    key: str, request: Request, choice: pacing.RateChoice, *, now: float, previous: RedriveStatus | None
) -> RedriveStatus:
    return RedriveStatus(
        request=key,
        state=State.RUNNING,
        selection=request.selection().describe(),
        dry_run=request.dry_run,
        rate=choice.rate,
        rate_why=choice.why,
        started_at=status.rfc3339(now),
        refused=previous.refused if previous is not None else None,
    )


def progressed(current: RedriveStatus, progress: redrive_reports.Progress) -> RedriveStatus:
    return current.model_copy(
        update={
            "moved": progress.moved,
            "skipped": progress.skipped,
            "held": progress.held,
            "failed": progress.failed,
            "message": "paused: the source queue's backlog is high" if progress.paused else None,
        }
    )


def finished(current: RedriveStatus, report: redrive_reports.Report, *, now: float) -> RedriveStatus:
    verb = "would move" if report.dry_run else "moved"
    message = f"{verb} {report.moved} in {report.elapsed_seconds:.0f}s"
    if not report.complete:
        problems = []
        if report.failed:
            problems.append(f"{report.failed} copies refused")
        if report.not_deleted:
            problems.append(f"{report.not_deleted} copied but not deleted")
        if report.unseen_in_flight:
            problems.append(f"{report.unseen_in_flight} in flight in the DLQ never came back")
        if report.interrupted:
            problems.append("interrupted")
        message += "; " + ", ".join(problems)
    return current.model_copy(
        update={
            "state": State.SUCCEEDED if report.complete else State.INCOMPLETE,
            "moved": report.moved,
            "skipped": report.skipped,
            "held": report.held,
            "failed": report.failed,
            "finished_at": status.rfc3339(now),
            "message": message,
        }
    )


def failed(current: RedriveStatus, message: str, *, now: float) -> RedriveStatus:
    return current.model_copy(
        update={"state": State.FAILED, "finished_at": status.rfc3339(now), "message": message}
    )


def invalid(key: str, message: str, *, now: float, previous: RedriveStatus | None) -> RedriveStatus:
    return RedriveStatus(
        request=key,
        state=State.INVALID,
        finished_at=status.rfc3339(now),
        message=message,
        refused=previous.refused if previous is not None else None,
    )


def refused(current: RedriveStatus, key: str) -> RedriveStatus:
    return current.model_copy(update={"refused": key})


def read(raw_status: Any) -> RedriveStatus | None:
    """``status.redrive`` off an object, or None."""
    if not isinstance(raw_status, dict) or not isinstance(raw_status.get("redrive"), dict):
        return None
    try:
        return RedriveStatus.model_validate(raw_status["redrive"])
    except pydantic.ValidationError:
        return None


def dump(value: RedriveStatus) -> dict[str, Any]:
    return value.model_dump(mode="json", by_alias=True, exclude_none=True)
