"""The worker's three hot SQS calls spoken directly in SQS's JSON protocol, on our HTTP/1.1 pool.

``ReceiveMessage``, ``DeleteMessageBatch`` and ``ChangeMessageVisibilityBatch`` are nearly all
the SQS calls a busy worker makes. Through aiobotocore each one pays botocore's per-call
machinery (the service model's serialiser and parser, the event hooks, the endpoint ruleset
resolved again, parameter handling): about half the CPU of the call. :class:`WireClient`
satisfies ``workers.sqs.SqsApi`` by sending those three as SQS documents them (AWS JSON 1.0:
a POST of the request's JSON with ``X-Amz-Target: AmazonSQS.<Operation>``) and hands the rare
calls (``SendMessage``, ``GetQueueAttributes``) to the aiobotocore client it was made from.

Everything hard is still AWS's library, taken from that client and its session: the endpoint
URL (``AWS_ENDPOINT_URL_SQS``/``AWS_ENDPOINT_URL``/region/FIPS/dual-stack, resolved by
botocore), the region, the credential chain (the same refreshable object the client signs
with, asked for frozen credentials on every attempt, so a rotated or renewed credential is
picked up exactly as before), the CA bundle (``AWS_CA_BUNDLE``), and the exception classes.
The SigV4 signature is :mod:`workers.sigv4`'s: the one ``botocore.auth.SigV4Auth`` makes
(its tests require the same fields for the same request) at a fifth of its CPU. What botocore
does on these three calls and this module therefore does too, read from botocore's source:

- replies: the JSON as it comes, blobs (``BinaryValue``, ``BinaryListValues`` of message
  attributes) base64-decoded, a ``ResponseMetadata``; botocore checks no MD5 of SQS bodies;
- errors: the code as botocore's JSON parser derives it (``__type`` after ``#``, replaced by
  the first part of ``x-amzn-query-error`` for SQS's query-compatible codes, e.g.
  ``AWS.SimpleQueueService.NonExistentQueue``), its message, the HTTP status, raised as the
  client's own ``ClientError`` class, so ``workers.sqs.call`` reads them unchanged;
- network failures raised as botocore's exceptions (``EndpointConnectionError``,
  ``ReadTimeoutError``, ``SSLError``, ...), as aiobotocore translates aiohttp's same failures;
- retries as botocore's ``standard`` mode with ``max_attempts: 3`` (which botocore reads as
  3 retries, 4 attempts in all): transient codes, 500/502/503/504,
  throttling codes and connection failures, after ``random() * min(scale * 2**(n-1), 20)``
  seconds (scale 1 when throttled, 0.05 otherwise; ``x-amz-retry-after`` honoured), within
  the same retry quota (500, a retry costs 14, or 5 when throttled; a success returns it).

The bytes travel on :mod:`workers.http11`'s keep-alive pool (the sinks' HTTP/1.1 client:
~25 µs of CPU per POST where aiohttp's ``ClientSession`` costs ~70-90 µs), ``max_connections``
to the endpoint, connect timeout 5 s, read timeout 70 s, idle connections kept 12 s, TLS
verified against botocore's CA bundle; a kept connection the endpoint closed before any byte
of the answer is sent again once at once (these three calls are safe to resend), not counted
as a retry. When botocore's ``proxies`` or the environment (``HTTPS_PROXY``, ``NO_PROXY``...)
give a proxy for the endpoint they go through aiohttp instead, which speaks to proxies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import random as random_module
import socket
import ssl
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import botocore.awsrequest
import botocore.exceptions
import botocore.httpsession
import botocore.retries.quota
import botocore.utils
import httptools
import httpx

from workers import retrying, sigv4
from workers.http11 import pool

RETRIES = 3
"""botocore's ``retries.max_attempts`` for the client: retries after the first attempt."""
_ATTEMPTS = RETRIES + 1
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 70.0  # above the 20 s long poll, with room
KEEPALIVE_SECONDS = 12.0  # aiobotocore's

_CONTENT_TYPE = "application/x-amz-json-1.0"
_TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
_TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
_MAX_BACKOFF_SECONDS = 20.0
_RETRY_AFTER_MAX_ADDITIONAL_SECONDS = 5.0
_RETRY_COST = 14
_THROTTLED_RETRY_COST = 5


class WireClient:
    """An ``SqsApi``: three calls on the wire, every other call and attribute the aiobotocore
    ``client``'s."""

    def __init__(
        self,
        client: Any,
        credentials: Any,
        post: Post,
        *,
        user_agent: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self._client = client
        self._credentials = credentials
        self._post = post
        self._url = client.meta.endpoint_url
        self._region = client.meta.region_name
        self._user_agent = user_agent
        self._sleep = sleep
        self._random = random
        self._quota = botocore.retries.quota.RetryQuota()  # botocore's own, 500 units
        self._signer = sigv4.Signer(self._url, region=self._region, service="sqs")

    # -- the rare calls: aiobotocore's -----------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Whatever else a caller of ``workers.sqs.client`` uses (``fanout dlq``'s
        # ``send_message_batch``, ``meta``, ``exceptions``) is the aiobotocore client's.
        if name.startswith("_"):  # never ours half-made (copy, pickle) nor its private parts
            raise AttributeError(name)
        return getattr(self._client, name)

    def send_message(self, **kwargs: Any) -> Awaitable[dict[str, Any]]:
        result: Awaitable[dict[str, Any]] = self._client.send_message(**kwargs)
        return result

    def get_queue_attributes(self, **kwargs: Any) -> Awaitable[dict[str, Any]]:
        result: Awaitable[dict[str, Any]] = self._client.get_queue_attributes(**kwargs)
        return result

    # -- the hot calls: on the wire --------------------------------------------------------

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        reply = await self._call("ReceiveMessage", kwargs)
        for message in reply.get("Messages", ()):
            attributes = message.get("MessageAttributes")
            if attributes:
                _decode_blobs(attributes)
        return reply

    async def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        return await self._call("DeleteMessageBatch", kwargs)

    async def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        return await self._call("ChangeMessageVisibilityBatch", kwargs)

    # -- internals -------------------------------------------------------------------------

    async def _call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        body = json.dumps(params).encode()
        invocation = str(uuid.uuid4())
        acquired = 0
        attempt = 1
        while True:
            status, payload = 0, b""
            headers: Mapping[str, str] = {}
            failure: BaseException | None = None
            try:
                status, headers, payload = await self._send(operation, body, invocation, attempt)
            except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as error:
                failure = error
            if failure is None and status < 300:
                self._quota.release(acquired or 1)
                reply = _json(payload)
                reply["ResponseMetadata"] = _metadata(status, headers, attempt)
                return reply
            parsed = _error(status, headers, payload, attempt) if failure is None else None
            code = parsed["Error"]["Code"] if parsed is not None else ""
            throttled = code in _THROTTLING_CODES
            retry = (
                failure is not None or code in _TRANSIENT_CODES or throttled or status in _TRANSIENT_STATUSES
            )
            if retry and attempt < _ATTEMPTS:
                delay = self._delay(attempt, throttled, headers)
                cost = _THROTTLED_RETRY_COST if throttled else _RETRY_COST
                if self._quota.acquire(cost):
                    acquired = cost
                    await self._sleep(delay)
                    attempt += 1
                    continue
                if operation == "ReceiveMessage":
                    await self._sleep(delay)  # botocore's: a long poll out of quota still waits
            if failure is not None:
                raise failure
            assert parsed is not None
            raise self._client_error(parsed, operation)

    async def _send(self, operation: str, body: bytes, invocation: str, attempt: int) -> Reply:
        if self._credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        # Every attempt: a refreshable credential renews itself here when it is due.
        frozen = await self._credentials.get_frozen_credentials()
        fields = {
            "X-Amz-Target": f"AmazonSQS.{operation}",
            "Content-Type": _CONTENT_TYPE,
            "x-amzn-query-mode": "true",
        }
        fields.update(self._signer.sign(fields, body, frozen))
        # Unsigned, as botocore adds them.
        fields["User-Agent"] = self._user_agent
        fields["amz-sdk-invocation-id"] = invocation
        fields["amz-sdk-request"] = f"attempt={attempt}; max={_ATTEMPTS}"
        fields["Accept-Encoding"] = "identity"
        return await self._post(fields, body)

    def _delay(self, attempt: int, throttled: bool, headers: Mapping[str, str]) -> float:
        step = retrying.exponential_delay(attempt, base=1.0 if throttled else 0.05, cap=_MAX_BACKOFF_SECONDS)
        delay = self._random() * step
        retry_after = _retry_after(headers.get("x-amz-retry-after"))
        if retry_after is not None:
            return max(delay, min(retry_after, _RETRY_AFTER_MAX_ADDITIONAL_SECONDS + delay))
        return delay

    def _client_error(self, parsed: dict[str, Any], operation: str) -> botocore.exceptions.ClientError:
        error = parsed["Error"]
        error_class = self._client.exceptions.from_code(error.get("QueryErrorCode") or error["Code"])
        made: botocore.exceptions.ClientError = error_class(parsed, operation)
        return made


def _json(payload: bytes) -> dict[str, Any]:
    """A success reply's members; botocore reads a body that is not a JSON object as one
    without members, and so does this."""
    try:
        parsed = json.loads(payload) if payload else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _error(status: int, headers: Mapping[str, str], payload: bytes, attempt: int) -> dict[str, Any]:
    """An error reply as botocore's JSON parser reads it (``parsers.BaseJSONParser``; a 5xx
    with an empty or HTML body as ``ResponseParser._do_generic_error_parse``)."""
    metadata = _metadata(status, headers, attempt)
    if status >= 500 and (not payload.strip() or payload.strip().startswith(b"<html>")):
        return {
            "Error": {"Code": str(status), "Message": http.client.responses.get(status, "")},
            "ResponseMetadata": metadata,
        }
    try:
        body = json.loads(payload.decode("utf-8")) if payload else {}
    except ValueError:
        body = {"message": payload.decode("utf-8", "replace")}
    if not isinstance(body, dict):
        body = {}
    error: dict[str, Any] = {"Message": body.get("message", body.get("Message", "")), "Code": ""}
    code = body.get("__type", str(status) if status else None)
    if isinstance(code, str):
        code = code.split(":", 1)[0].rsplit("#", 1)[-1]
        query = headers.get("x-amzn-query-error")
        if query is not None:
            parts = query.split(";")
            if len(parts) == 2 and parts[0]:
                error["QueryErrorCode"] = code
                error["Type"] = parts[1]
                code = parts[0]
        error["Code"] = code
    return {"Error": error, "ResponseMetadata": metadata}


def _metadata(status: int, headers: Mapping[str, str], attempt: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "HTTPStatusCode": status,
        "HTTPHeaders": {name.lower(): value for name, value in headers.items()},
        "RetryAttempts": attempt - 1,
    }
    if attempt >= _ATTEMPTS:
        metadata["MaxAttemptsReached"] = True  # botocore's, in its error message too
    request_id = headers.get("x-amzn-requestid")
    if request_id is not None:
        metadata["RequestId"] = request_id
    return metadata


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = int(value) / 1000.0
    except (ValueError, OverflowError):
        return None
    return seconds if seconds >= 0 else None


def _decode_blobs(attributes: dict[str, Any]) -> None:
    """Message attributes' binary values as bytes, as botocore's parser gives them."""
    for value in attributes.values():
        if not isinstance(value, dict):
            continue
        binary = value.get("BinaryValue")
        if isinstance(binary, str):
            value["BinaryValue"] = base64.b64decode(binary)
        listed = value.get("BinaryListValues")
        if isinstance(listed, list):
            value["BinaryListValues"] = [
                base64.b64decode(item) if isinstance(item, str) else item for item in listed
            ]


def _proxy(client: Any) -> tuple[str | None, dict[str, str]]:
    """The proxy (and its headers) botocore would use for the endpoint: the client's
    configured ``proxies``, else ``HTTP(S)_PROXY``/``NO_PROXY``."""
    url = client.meta.endpoint_url
    config = client.meta.config
    proxies = config.proxies or botocore.utils.get_environ_proxies(url)
    settings = botocore.httpsession.ProxyConfiguration(
        proxies=proxies, proxies_settings=config.proxies_config
    )
    proxy_url: str | None = settings.proxy_url_for(url)
    return proxy_url, (settings.proxy_headers_for(proxy_url) if proxy_url else {})


def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """TLS as botocore verifies it: ``AWS_CA_BUNDLE``/``ca_bundle`` when set, else its default."""
    return ssl.create_default_context(cafile=botocore.httpsession.get_cert_path(ca_bundle or True))


# -- the connections under the calls ----------------------------------------------------------------


Reply = tuple[int, Mapping[str, str], bytes]
Post = Callable[[Mapping[str, str], bytes], Awaitable[Reply]]
"""Send a signed request (header fields, body) to the endpoint: (status, header fields readable
by lower-case name, body), or botocore's exception."""


def _request(url: str, headers: Mapping[str, str], body: bytes) -> botocore.awsrequest.AWSRequest:
    """The request as botocore's exceptions carry it (made only when one is raised)."""
    return botocore.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=dict(headers))


class _Http11:
    """The calls on our HTTP/1.1 pool (:mod:`workers.http11`): when no proxy applies."""

    def __init__(self, connections: pool.Pool, url: str) -> None:
        self._pool = connections
        self._url = url
        parts = urllib.parse.urlsplit(url)
        port = parts.port or pool.DEFAULT_PORTS[parts.scheme]
        self._key: pool.Origin = (parts.scheme, parts.hostname or "", port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # The Host the signature covers (``sigv4.Signer`` signs this same one).
        self._head = f"POST {target} HTTP/1.1\r\nHost: {sigv4.canonical_host(url)}\r\n"

    async def __call__(self, headers: Mapping[str, str], body: bytes) -> Reply:
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        wire = f"{self._head}{fields}Content-Length: {len(body)}\r\n\r\n".encode() + body
        try:
            status, _, raw, payload = await self._pool.request(
                self._key, wire, connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS
            )
        except httpx.TransportError as error:
            raise _botocore_error(error, headers, body, self._url) from error
        answered = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}
        return status, answered, payload


def _botocore_error(
    error: httpx.TransportError, headers: Mapping[str, str], body: bytes, url: str
) -> botocore.exceptions.BotoCoreError:
    """The pool's error as botocore's, as aiobotocore translates the matching aiohttp error."""
    if isinstance(error, httpx.ConnectTimeout):
        return botocore.exceptions.ConnectTimeoutError(endpoint_url=url, error=error)
    if isinstance(error, httpx.ConnectError):
        if isinstance(error.__cause__, ssl.SSLError):  # handshake, certificate
            return botocore.exceptions.SSLError(endpoint_url=url, error=error)
        return botocore.exceptions.EndpointConnectionError(endpoint_url=url, error=error)
    if isinstance(error, httpx.TimeoutException):  # read (or write) silence
        return botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=error)
    if isinstance(error, httpx.RemoteProtocolError):
        if isinstance(error.__cause__, httptools.HttpParserError | httptools.HttpParserUpgrade):
            return botocore.exceptions.HTTPClientError(error=error)  # not HTTP, or a broken frame
        return botocore.exceptions.ConnectionClosedError(
            error=error, request=_request(url, headers, body), endpoint_url=url
        )
    if isinstance(error, httpx.NetworkError):  # reset
        return botocore.exceptions.EndpointConnectionError(endpoint_url=url, error=error)
    return botocore.exceptions.HTTPClientError(error=error)


class _Aiohttp:
    """The calls on an aiohttp pool: when botocore's settings or the environment give a proxy
    for the endpoint (our pool speaks to origins only). Errors as aiobotocore translates them."""

    def __init__(self, session: aiohttp.ClientSession, url: str, proxy: str, headers: dict[str, str]) -> None:
        self._session = session
        self._url = url
        self._proxy = proxy
        self._proxy_headers = headers

    async def __call__(self, headers: Mapping[str, str], body: bytes) -> Reply:
        url = self._url
        try:
            async with self._session.post(
                url, data=body, headers=headers, proxy=self._proxy, proxy_headers=self._proxy_headers
            ) as response:
                payload = await response.read()
                return response.status, response.headers, payload
        except aiohttp.ClientSSLError as error:
            raise botocore.exceptions.SSLError(endpoint_url=url, error=error) from error
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as error:
            raise botocore.exceptions.ConnectionClosedError(
                error=error, request=_request(url, headers, body), endpoint_url=url
            ) from error
        except aiohttp.ServerTimeoutError as error:
            if str(error).lower().startswith("connect"):
                raise botocore.exceptions.ConnectTimeoutError(endpoint_url=url, error=error) from error
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=error) from error
        except (aiohttp.ClientConnectionError, socket.gaierror) as error:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url=url, error=error) from error
        except TimeoutError as error:
            raise botocore.exceptions.ReadTimeoutError(endpoint_url=url, error=error) from error
        except aiohttp.ClientError as error:
            raise botocore.exceptions.HTTPClientError(error=error) from error


@contextlib.asynccontextmanager
async def _connections(
    client: Any, context: ssl.SSLContext | None, max_connections: int
) -> AsyncIterator[Post]:
    """How the calls reach the endpoint: our pool, or aiohttp's behind a proxy; closed on exit."""
    url = client.meta.endpoint_url
    proxy, proxy_headers = _proxy(client)
    if proxy is None:
        # Plain HTTP needs no TLS context; this one trusts nothing, so it could never verify a peer.
        tls = context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_SECONDS,
        )
        connections = pool.Pool(limits=limits, ssl_context=tls)
        try:
            yield _Http11(connections, url)
        finally:
            await connections.aclose()
        return
    connector = aiohttp.TCPConnector(
        limit=max_connections, keepalive_timeout=KEEPALIVE_SECONDS, ssl=context or True
    )
    timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=READ_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers={"Content-Type"}, auto_decompress=False
    ) as session:
        yield _Aiohttp(session, url, proxy, proxy_headers)


@contextlib.asynccontextmanager
async def open_client(
    client: Any, session: Any, *, user_agent: str, max_connections: int
) -> AsyncIterator[WireClient]:
    """A :class:`WireClient` over ``client`` (an open aiobotocore SQS client made by ``session``
    with ``user_agent`` as its fixed User-Agent), with its own keep-alive pool of
    ``max_connections``; closed on exit."""
    credentials = await session.get_credentials()  # the object the client signs with
    context: ssl.SSLContext | None = None
    if str(client.meta.endpoint_url).startswith("https:"):
        context = await asyncio.to_thread(_ssl_context, session.get_config_variable("ca_bundle"))
    async with _connections(client, context, max_connections) as post:
        # The header botocore sends with a fixed ``user_agent``: it, then the extras.
        header = " ".join(
            part
            for part in (user_agent, session.user_agent_extra, client.meta.config.user_agent_extra)
            if part
        )
        yield WireClient(client, credentials, post, user_agent=header)
