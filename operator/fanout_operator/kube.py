"""A small asynchronous Kubernetes API client for what kopf does not do for us.

kopf watches FanoutConsumers and patches them from handlers; creating and patching children,
scaling Deployments, writing status from the scaling daemon and posting Events need a client of
our own. This one is deliberately small (get / list / create / merge-patch / delete on paths),
rides on the credentials kopf's login produced (``handlers`` stores them in a
:class:`Credentials` holder, refreshed whenever kopf logs in again), and speaks only JSON merge
patch, which every API server and the ``kmock`` test server understand alike.

Errors are translated where they enter::

    KubeError(status, reason, message)
    ├── NotFound   404
    └── Conflict   409 (already exists / resourceVersion mismatch)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

MERGE_PATCH = "application/merge-patch+json"
USER_AGENT = "fanout-operator"


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class NotLoggedIn(KubeError):
    def __init__(self) -> None:
        super().__init__(0, "NotLoggedIn", "no Kubernetes credentials yet")


class Credentials:
    """Holds the latest credentials from kopf's login; the client reads them per session."""

    def __init__(self, info: kopf.ConnectionInfo | None = None) -> None:
        self.info = info


class KubeClient:
    """``client = KubeClient(credentials); await client.get('/api/v1/namespaces/ns/pods/x')``."""

    def __init__(
        self, credentials: Credentials, *, timeout: float = 30.0, user_agent: str = USER_AGENT
    ) -> None:
        self._credentials = credentials
        self._user_agent = user_agent
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._session_info: kopf.ConnectionInfo | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _ensure_session(self) -> tuple[aiohttp.ClientSession, str]:
        info = self._credentials.info
        if info is None:
            raise NotLoggedIn()
        if self._session is None or self._session_info is not info:
            await self.close()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
                headers={**info.as_http_headers(), "User-Agent": self._user_agent},
                timeout=self._timeout,
            )
            self._session_info = info
        return self._session, info.server.rstrip("/")

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        session, server = await self._ensure_session()
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        try:
            async with session.request(
                method, server + path, data=data, params=params, headers=headers
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeError(0, type(error).__name__, str(error) or repr(error)) from error
        try:
            payload = json.loads(text) if text else {}
        except ValueError:
            payload = {"message": text[:200]}
        if not isinstance(payload, dict):
            payload = {}
        if status >= 400:
            reason = str(payload.get("reason", "")) or str(status)
            message = str(payload.get("message", "")) or text[:200]
            error_type = {404: NotFound, 409: Conflict}.get(status, KubeError)
            raise error_type(status, reason, message)
        return payload

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except NotFound:
            return None

    async def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        items = (await self.request("GET", path, params=params)).get("items") or []
        return [item for item in items if isinstance(item, dict)]

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(self, path: str) -> None:
        with contextlib.suppress(NotFound):
            await self.request("DELETE", path)


def collection_path(api_version: str, plural: str, namespace: str) -> str:
    """``/api/v1/namespaces/ns/configmaps`` or ``/apis/apps/v1/namespaces/ns/deployments``."""
    prefix = "/api" if "/" not in api_version else "/apis"
    return f"{prefix}/{api_version}/namespaces/{namespace}/{plural}"


def object_path(api_version: str, plural: str, namespace: str, name: str, subresource: str = "") -> str:
    path = f"{collection_path(api_version, plural, namespace)}/{name}"
    return f"{path}/{subresource}" if subresource else path
