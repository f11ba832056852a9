"""Kubernetes API client: config and auth from kubernetes_asyncio, bytes decoded by msgspec.

kubernetes_asyncio loads kubeconfig or in-cluster config (TLS, client certificates, bearer tokens,
exec credential plugins with refresh) and owns the aiohttp session. We ask it for raw responses
(``_preload_content=False``) and decode the bytes ourselves straight into slim models, skipping
its generated model classes, which cost far more time and memory at scale.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import msgspec
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from kube_router.k8s import models
from kube_router.k8s.resources import Resource

log = logging.getLogger(__name__)

T = TypeVar("T")

Params = Sequence[tuple[str, str]]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_AUTH_SETTINGS = ["BearerToken"]
_DEFAULT_TIMEOUT_S = 60.0
_STATUS_DECODER = msgspec.json.Decoder(models.Status)
_HTTP_NOT_FOUND = 404
_HTTP_CONFLICT = 409
_HTTP_GONE = 410


class ConfigError(Exception):
    """The client configuration (kubeconfig, in-cluster, --master) could not be loaded."""


class ApiError(Exception):
    """An API request failed; carries the HTTP status and the server's Status reason/message."""

    def __init__(self, method: str, path: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(ApiError):
    """404: the object does not exist."""


class ConflictError(ApiError):
    """409: a write lost an optimistic-concurrency race, or the object already exists."""


class GoneError(ApiError):
    """410: the resourceVersion or continue token is too old; relist."""


def error_for(method: str, path: str, status: int, body: bytes) -> ApiError:
    """Build the matching ApiError subclass from a failed response."""
    reason, message = "", body[:500].decode("utf-8", "replace")
    try:
        st = _STATUS_DECODER.decode(body)
        reason, message = st.reason, st.message or message
    except msgspec.DecodeError:
        pass
    cls = {_HTTP_NOT_FOUND: NotFoundError, _HTTP_CONFLICT: ConflictError, _HTTP_GONE: GoneError}
    return cls.get(status, ApiError)(method, path, status, reason, message)


async def load_configuration(kubeconfig: str, master: str) -> k8s_client.Configuration:
    """Resolve the client configuration the way upstream kube-router does.

    ``--kubeconfig`` (with ``--master`` overriding its server), else ``--master`` with the
    in-cluster credentials when present, else in-cluster config.
    """
    cfg = k8s_client.Configuration()
    try:
        if kubeconfig:
            await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException:
                if not master:
                    raise
                log.info("no in-cluster credentials; talking to %s without them", master)
    except (k8s_config.ConfigException, OSError, ValueError) as err:
        source = kubeconfig or "in-cluster config"
        raise ConfigError(f"loading Kubernetes client config from {source}: {err}") from err
    if master:
        cfg.host = master.rstrip("/")
    return cfg


class KubeClient:
    """Thin async client: raw bytes in and out, errors mapped to ApiError subclasses."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self._api = api

    @classmethod
    async def from_flags(cls, kubeconfig: str = "", master: str = "") -> KubeClient:
        cfg = await load_configuration(kubeconfig, master)
        return cls(k8s_client.ApiClient(configuration=cfg))

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    async def close(self) -> None:
        await self._api.close()

    async def _send(
        self,
        method: str,
        path: str,
        params: Params = (),
        body: Any = None,
        content_type: str = JSON,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": JSON, "Content-Type": content_type}
        try:
            resp: aiohttp.ClientResponse = await self._api.call_api(
                path,
                method,
                query_params=list(params),
                header_params=headers,
                body=body,
                auth_settings=_AUTH_SETTINGS,
                _preload_content=False,
                _request_timeout=timeout or aiohttp.ClientTimeout(total=_DEFAULT_TIMEOUT_S),
            )
        except (aiohttp.ClientError, TimeoutError) as err:
            raise ApiError(
                method, path, 0, "ConnectionError", str(err) or type(err).__name__
            ) from err
        if resp.status >= 300:
            data = await resp.read()
            resp.release()
            raise error_for(method, path, resp.status, data)
        return resp

    async def request(
        self,
        method: str,
        path: str,
        params: Params = (),
        body: Any = None,
        content_type: str = JSON,
    ) -> bytes:
        """Send one request and return the response body."""
        resp = await self._send(method, path, params, body, content_type)
        try:
            return await resp.read()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise ApiError(method, path, resp.status, "ConnectionError", str(err)) from err
        finally:
            resp.release()

    async def stream_lines(
        self, path: str, params: Params, read_timeout: float
    ) -> AsyncIterator[bytes]:
        """Yield the newline-delimited lines of a streaming (watch) response.

        Lines may be far longer than aiohttp's readline limit (a large EndpointSlice), so split
        chunks ourselves.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=_DEFAULT_TIMEOUT_S, sock_read=read_timeout
        )
        resp = await self._send("GET", path, params, timeout=timeout)
        buf = b""
        try:
            async for chunk in resp.content.iter_any():
                buf += chunk
                if b"\n" not in chunk:
                    continue
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield line
            if buf.strip():
                yield buf
        except (aiohttp.ClientError, TimeoutError) as err:
            raise ApiError("WATCH", path, resp.status, "ConnectionError", str(err)) from err
        finally:
            resp.release()

    # --- typed helpers for single objects --------------------------------------------------------

    async def get(self, res: Resource, namespace: str | None, name: str) -> Any:
        data = await self.request("GET", res.object_path(namespace, name))
        return msgspec.json.decode(data, type=res.model)

    async def create(self, res: Resource, namespace: str | None, body: Mapping[str, Any]) -> Any:
        data = await self.request("POST", res.collection_path(namespace), body=dict(body))
        return msgspec.json.decode(data, type=res.model)

    async def replace(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        subresource: str = "",
    ) -> Any:
        path = res.object_path(namespace, name, subresource)
        data = await self.request("PUT", path, body=dict(body))
        return msgspec.json.decode(data, type=res.model)

    async def get_raw(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        """Fetch the full object as a dict (for read-modify-write of fields we do not model)."""
        data = await self.request("GET", res.object_path(namespace, name))
        obj: dict[str, Any] = msgspec.json.decode(data)
        return obj

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str = MERGE_PATCH,
        subresource: str = "",
    ) -> Any:
        path = res.object_path(namespace, name, subresource)
        data = await self.request("PATCH", path, body=patch, content_type=content_type)
        return msgspec.json.decode(data, type=res.model)

    async def delete(self, res: Resource, namespace: str | None, name: str) -> None:
        await self.request("DELETE", res.object_path(namespace, name))
