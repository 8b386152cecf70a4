"""AWS Signature Version 4 for the worker's SQS POSTs, with everything fixed per endpoint done once.

``botocore.auth.SigV4Auth`` builds a signature from an ``AWSRequest`` in about 60 µs, most of
it generic work redone on every request: the URL split and the Host derived again, the header
map rebuilt and re-sorted, the date's signing key derived again with four HMACs. The three hot
calls of ``workers.sqswire`` are always a POST to the same endpoint with the same few header
fields, so :class:`Signer` takes the endpoint once (its canonical Host, path and query string)
and keeps each day's signing key, leaving per request what SigV4 really asks per request: the
body's SHA-256, the canonical request's SHA-256 and one HMAC.

The algorithm is AWS's documented one, and the rules are botocore's where AWS leaves a choice
(the fields never signed, how a header value is trimmed, the Host without a default port, the
path's dot segments and repeated slashes removed, the payload always hashed). The tests
sign the same requests with botocore's ``SigV4Auth`` and require the very same
``Authorization``, ``X-Amz-Date`` and ``X-Amz-Security-Token``, over generated endpoints,
header fields, bodies and credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Mapping
from typing import Protocol

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_FIELDS = frozenset(
    {
        # botocore's SIGNED_HEADERS_BLACKLIST: fields a proxy or the HTTP client may change.
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Credentials(Protocol):
    """What signing reads of botocore's frozen credentials (``ReadOnlyCredentials``)."""

    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def token(self) -> str | None: ...


def canonical_host(url: str) -> str:
    """The Host a request to ``url`` carries and signs: lower case, no user info, the port
    only when it is not the scheme's default, an IPv6 address in brackets."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def canonical_path(path: str) -> str:
    """The endpoint's path as SigV4 signs it for every service but S3: its ``.`` and ``..``
    segments resolved and empty segments dropped (RFC 3986 5.2.4, and AWS's rule for
    repeated slashes), quoted with ``/`` and ``~`` safe; ``/`` when there is none."""
    if not path:
        return "/"
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    lead = "/" if path.startswith("/") else ""
    trail = "/" if path.endswith("/") and kept else ""
    return urllib.parse.quote(lead + "/".join(kept) + trail, safe="/~")


class Signer:
    """Signs POSTs to one endpoint for one region and service."""

    __slots__ = ("_day", "_key", "_path", "_query", "_scope_tail", "_secret", "host")

    def __init__(self, url: str, *, region: str, service: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = canonical_host(url)
        self._path = canonical_path(parts.path)
        # The endpoint's own query, its pairs sorted as they stand (they are already encoded).
        pairs = sorted(pair.partition("=")[::2] for pair in parts.query.split("&")) if parts.query else []
        self._query = "&".join(f"{key}={value}" for key, value in pairs)
        self._scope_tail = f"{region}/{service}/aws4_request"
        self._secret = ""
        self._day = ""
        self._key = b""

    def sign(
        self, fields: Mapping[str, str], body: bytes, credentials: Credentials, *, now: float | None = None
    ) -> dict[str, str]:
        """The fields to add to a POST of ``body`` with header ``fields`` (``now``: epoch
        seconds, default the clock): ``X-Amz-Date``, ``X-Amz-Security-Token`` with a session
        token, and ``Authorization``. Every field given is signed but for
        :data:`UNSIGNED_FIELDS`; ``Host`` is signed as :attr:`host` unless given."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        added = {"X-Amz-Date": stamp}
        if credentials.token:
            added["X-Amz-Security-Token"] = credentials.token
        signed = {"host": self.host}
        for name, value in (*fields.items(), *added.items()):
            lowered = name.lower()
            if lowered not in UNSIGNED_FIELDS:
                signed[lowered] = " ".join(value.split())
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical = "\n".join(
            (
                "POST",
                self._path,
                self._query,
                "".join(f"{name}:{signed[name]}\n" for name in names),
                signed_names,
                hashlib.sha256(body).hexdigest(),
            )
        )
        scope = f"{stamp[:8]}/{self._scope_tail}"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        key = self._signing_key(credentials.secret_key, stamp[:8])
        signature = hmac.new(key, f"{ALGORITHM}\n{stamp}\n{scope}\n{digest}".encode(), hashlib.sha256)
        added["Authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={signature.hexdigest()}"
        )
        return added

    def _signing_key(self, secret: str, day: str) -> bytes:
        """The day's key for this region and service; derived again when the day or the
        secret (a rotated credential) changes."""
        if secret != self._secret or day != self._day:
            key = f"AWS4{secret}".encode()
            for part in (day, *self._scope_tail.split("/")):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._secret, self._day, self._key = secret, day, key
        return self._key
