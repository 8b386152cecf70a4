"""Is a request signed by a sender we trust? HMAC-SHA256 over the raw body, in constant time.

``serving`` calls :func:`verify` with the bytes exactly as received, the request's headers,
the source's signature schemes and the secrets currently accepted (``credentials``). Two
schemes are configured by default:

* Genesys Open Messaging: ``X-Hub-Signature-256: sha256=<base64 of HMAC-SHA256(secret, body)>``;
* the project's own: ``X-Fanout-Signature: sha256=<lowercase hex>`` (what the workers' webhook
  sink sends, so one gateway can sit behind another).

A request is authentic when any scheme's header verifies with any accepted secret, so
during a rotation the old and the new secret both work. The digest a header carries is
decoded to bytes and compared with :func:`hmac.compare_digest`; a malformed header is
simply not a match. Pure: no I/O, nothing logged (a signature is a secret's witness).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from fanout_ingest import config

_PREFIX = "sha256="
_DIGEST_BYTES = hashlib.sha256().digest_size


def sign(secret: bytes, body: bytes, encoding: config.DigestEncoding) -> str:
    """The header value a sender holding ``secret`` puts on ``body``."""
    digest = hmac.new(secret, body, hashlib.sha256).digest()
    if encoding is config.DigestEncoding.BASE64:
        return _PREFIX + base64.b64encode(digest).decode("ascii")
    return _PREFIX + digest.hex()


def claimed_digest(value: str, encoding: config.DigestEncoding) -> bytes | None:
    """The 32 digest bytes a header value claims, or None when it is not ``sha256=<digest>``."""
    value = value.strip()
    if value[: len(_PREFIX)].lower() != _PREFIX:
        return None
    text = value[len(_PREFIX) :]
    try:
        if encoding is config.DigestEncoding.BASE64:
            digest = base64.b64decode(text, validate=True)
        else:
            digest = bytes.fromhex(text)
    except (binascii.Error, ValueError):
        return None
    return digest if len(digest) == _DIGEST_BYTES else None


def verify(
    body: bytes,
    headers: Mapping[str, str],
    schemes: Sequence[config.SignatureScheme],
    secrets: Sequence[bytes],
) -> bool:
    """True when a scheme's header on the request verifies ``body`` with one of ``secrets``.

    ``headers`` must look names up case-insensitively (aiohttp's do). Every secret is tried
    for every present header, with no early exit on the secret that matched, so the time
    taken does not tell which one did.
    """
    claims = []
    for scheme in schemes:
        value = headers.get(scheme.header)
        if value is not None:
            digest = claimed_digest(value, scheme.encoding)
            if digest is not None:
                claims.append(digest)
    if not claims or not secrets:
        return False
    matched = False
    for secret in secrets:
        expected = hmac.new(secret, body, hashlib.sha256).digest()
        for claim in claims:
            matched |= hmac.compare_digest(expected, claim)
    return matched
