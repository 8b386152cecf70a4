"""The S3 pointer format of AWS's extended client libraries, written and read in one place.

A body too large for SNS or SQS (256 KiB) travels through S3: the object holds the body and
the message carries a pointer instead, exactly as AWS's SQS and SNS extended clients (Java
and Python) write it::

    ["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "<bucket>", "s3Key": "<key>"}]

with the message attribute ``ExtendedPayloadSize`` (Number) = the body's size in bytes.
Older clients write the class ``com.amazon.sqs.javamessaging.MessageS3Pointer`` and the
attribute ``SQSLargePayloadSize``; both are read.

The front door (``fanout_ingest``) writes pointers with :func:`pointer_body`; the worker
finds them with :func:`locate` — a pointer sent straight to SQS, published to SNS with raw
delivery, or inside an SNS notification (raw delivery off: the pointer is the ``Message``
string) — fetches the object (``workers.payloads``), rebuilds the body the event would have
had with :func:`resolved_body`, and hands the decoder a :class:`Resolution`. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

POINTER_CLASS = "software.amazon.payloadoffloading.PayloadS3Pointer"
LEGACY_POINTER_CLASS = "com.amazon.sqs.javamessaging.MessageS3Pointer"
SIZE_ATTRIBUTE = "ExtendedPayloadSize"
LEGACY_SIZE_ATTRIBUTE = "SQSLargePayloadSize"
MESSAGE_LIMIT_BYTES = 262_144
"""SNS's message limit (body and attributes), and the extended clients' default threshold."""

_POINTER_CLASSES = frozenset({POINTER_CLASS, LEGACY_POINTER_CLASS})
_MAX_POINTER_CHARS = 4096
"""A pointer is a class name, a bucket name (≤ 63) and a key (≤ 1024 bytes): anything longer is not one."""


@dataclasses.dataclass(frozen=True, slots=True)
class Pointer:
    """Where an offloaded body lives."""

    bucket: str
    key: str


@dataclasses.dataclass(frozen=True, slots=True)
class Located:
    """A pointer found in a message body, and the SNS notification around it, if any."""

    pointer: Pointer
    sns_envelope: Mapping[str, Any] | None = None


def pointer_body(pointer: Pointer) -> str:
    """The message body that stands for an offloaded payload (the extended clients' format)."""
    return json.dumps([POINTER_CLASS, {"s3BucketName": pointer.bucket, "s3Key": pointer.key}])


def parse_pointer(text: str) -> Pointer | None:
    """The pointer ``text`` is, or None when it is anything else (never raises)."""
    if len(text) > _MAX_POINTER_CHARS or not text.lstrip().startswith("["):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
        return None
    if value[0] not in _POINTER_CLASSES:
        return None
    details = value[1]
    if not isinstance(details, dict):
        return None
    bucket, key = details.get("s3BucketName"), details.get("s3Key")
    if not (isinstance(bucket, str) and bucket and isinstance(key, str) and key):
        return None
    return Pointer(bucket=bucket, key=key)


def locate(body: str) -> Located | None:
    """The pointer a message body carries — the body itself, or an SNS notification's
    ``Message`` — or None (a cheap look first: most bodies are events, not pointers)."""
    if "S3Pointer" not in body:
        return None
    direct = parse_pointer(body)
    if direct is not None:
        return Located(direct)
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("Type") != "Notification":
        return None
    message = document.get("Message")
    if not isinstance(message, str):
        return None
    inner = parse_pointer(message)
    return None if inner is None else Located(inner, sns_envelope=document)


def resolved_body(located: Located, payload: str) -> str:
    """The body as it would have been had the payload not been offloaded."""
    if located.sns_envelope is None:
        return payload
    envelope = dict(located.sns_envelope)
    envelope["Message"] = payload
    return json.dumps(envelope)


@dataclasses.dataclass(frozen=True, slots=True)
class Resolution:
    """What became of a message's pointer: the body with the payload in, or why there is none."""

    pointer: Pointer
    body: str | None = None
    failure: str | None = None
