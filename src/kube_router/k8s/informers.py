"""The shared set of informers every controller reads from (one per resource, as upstream)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from kube_router.k8s import models, resources
from kube_router.k8s.client import KubeClient
from kube_router.k8s.informer import Informer

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVICE_NAME_INDEX = "service-name"


def slice_service(es: models.EndpointSlice) -> str | None:
    """``namespace/name`` of a slice's Service: label, then owner, then generateName (the one
    reader of it: the index below, the proxy and the routing controller all use this)."""
    meta = es.metadata
    name = meta.labels.get(SERVICE_NAME_LABEL)
    if not name:
        owners = [o.name for o in meta.owner_references if o.kind == "Service"]
        name = owners[0] if owners else meta.generate_name.rstrip("-")
    return f"{meta.namespace}/{name}" if name else None


def endpointslice_service(es: models.EndpointSlice) -> Iterable[str]:
    """Index EndpointSlices by ``<namespace>/<service name>`` (upstream's ``service-name``)."""
    key = slice_service(es)
    return (key,) if key else ()


class CacheSyncTimeoutError(Exception):
    """The caches did not sync within --cache-sync-timeout."""


class Informers:
    """Nodes, Pods, Services, EndpointSlices, Namespaces and NetworkPolicies."""

    def __init__(self, client: KubeClient) -> None:
        self.nodes: Informer[models.Node] = Informer(client, resources.NODES)
        self.pods: Informer[models.Pod] = Informer(client, resources.PODS)
        self.services: Informer[models.Service] = Informer(client, resources.SERVICES)
        self.endpointslices: Informer[models.EndpointSlice] = Informer(
            client,
            resources.ENDPOINTSLICES,
            indexers={SERVICE_NAME_INDEX: endpointslice_service},
        )
        self.namespaces: Informer[models.Namespace] = Informer(client, resources.NAMESPACES)
        self.networkpolicies: Informer[models.NetworkPolicy] = Informer(
            client, resources.NETWORKPOLICIES
        )
        self._tasks: list[asyncio.Task[None]] = []

    def all(
        self,
    ) -> list[
        Informer[models.Node]
        | Informer[models.Pod]
        | Informer[models.Service]
        | Informer[models.EndpointSlice]
        | Informer[models.Namespace]
        | Informer[models.NetworkPolicy]
    ]:
        return [
            self.nodes,
            self.pods,
            self.services,
            self.endpointslices,
            self.namespaces,
            self.networkpolicies,
        ]

    def start(self) -> list[asyncio.Task[None]]:
        """Start every informer as its own task; the tasks run until cancelled."""
        self._tasks = [
            asyncio.create_task(inf.run(), name=f"informer-{inf.name}") for inf in self.all()
        ]
        return self._tasks

    async def wait_for_cache_sync(self, timeout: float) -> None:
        """Wait until every informer has listed once; raise CacheSyncTimeoutError otherwise."""
        results = await asyncio.gather(*(inf.wait_synced(timeout) for inf in self.all()))
        missing = [inf.name for inf, ok in zip(self.all(), results, strict=True) if not ok]
        if missing:
            raise CacheSyncTimeoutError(
                f"caches not synced after {timeout:g}s: {', '.join(missing)}"
            )
        log.info("informer caches synced")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
