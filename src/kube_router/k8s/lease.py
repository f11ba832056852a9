"""Leader election over coordination.k8s.io/v1 Leases, and Service status writes with retry.

Semantics follow client-go's leaderelection with a LeaseLock: a candidate takes the lease when it
is free or expired, renews it every retry period while leading, steps down when it cannot renew
within the renew deadline, and releases it (empty holder) when cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kube_router.k8s import resources
from kube_router.k8s.client import ApiError, ConflictError, KubeClient, NotFoundError

log = logging.getLogger(__name__)

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
CONFLICT_RETRIES = 5


def _now() -> datetime:
    return datetime.now(UTC)


def _fmt(t: datetime) -> str:
    return t.strftime(_TIME_FORMAT)


def _parse(s: str | None) -> datetime | None:
    if not s:
        return None
    for fmt in (_TIME_FORMAT, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(s, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


@dataclass
class LeaderElectionConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class LeaderElector:
    """Campaign for a Lease; ``is_leader`` tells whether we hold it now."""

    def __init__(
        self,
        client: KubeClient,
        cfg: LeaderElectionConfig,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.clock = clock
        self.is_leader = False
        self.leader_changed = asyncio.Event()

    async def run(
        self,
        on_started: Callable[[], Awaitable[None]] | None = None,
        on_stopped: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Campaign until cancelled; the lease is released on cancellation."""
        last_renew = self.clock()
        try:
            while True:
                ok = await self._try_acquire_or_renew()
                now = self.clock()
                if ok:
                    last_renew = now
                    if not self.is_leader:
                        self._set_leader(True)
                        if on_started:
                            await on_started()
                elif (
                    self.is_leader and (now - last_renew).total_seconds() > self.cfg.renew_deadline
                ):
                    self._set_leader(False)
                    if on_stopped:
                        await on_stopped()
                await asyncio.sleep(self.cfg.retry_period)
        finally:
            if self.is_leader:
                await asyncio.shield(self._release())
                self._set_leader(False)

    def _set_leader(self, leader: bool) -> None:
        self.is_leader = leader
        log.info(
            "lease %s/%s: %s leader",
            self.cfg.namespace,
            self.cfg.name,
            "became" if leader else "no longer",
        )
        self.leader_changed.set()
        self.leader_changed.clear()

    def _spec(self, transitions: int, acquire: str) -> dict[str, Any]:
        return {
            "holderIdentity": self.cfg.identity,
            "leaseDurationSeconds": int(self.cfg.lease_duration),
            "acquireTime": acquire,
            "renewTime": _fmt(self.clock()),
            "leaseTransitions": transitions,
        }

    async def _try_acquire_or_renew(self) -> bool:
        res, ns, name = resources.LEASES, self.cfg.namespace, self.cfg.name
        try:
            raw = await self.client.get_raw(res, ns, name)
        except NotFoundError:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": ns},
                "spec": self._spec(0, _fmt(self.clock())),
            }
            return await self._write(self.client.create(res, ns, body))
        except ApiError as err:
            log.warning("lease %s/%s: %s", ns, name, err)
            return False
        spec = raw.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.cfg.identity:
            raw["spec"] = self._spec(transitions, spec.get("acquireTime") or _fmt(self.clock()))
        else:
            renewed = _parse(spec.get("renewTime"))
            duration = float(spec.get("leaseDurationSeconds") or self.cfg.lease_duration)
            expiry = renewed + timedelta(seconds=duration) if renewed else None
            if holder and expiry is not None and expiry > self.clock():
                return False
            raw["spec"] = self._spec(transitions + 1, _fmt(self.clock()))
        return await self._write(self.client.replace(res, ns, name, raw))

    async def _write(self, op: Awaitable[Any]) -> bool:
        try:
            await op
        except ApiError as err:
            log.debug("lease %s/%s write failed: %s", self.cfg.namespace, self.cfg.name, err)
            return False
        return True

    async def _release(self) -> None:
        res, ns, name = resources.LEASES, self.cfg.namespace, self.cfg.name
        try:
            raw = await self.client.get_raw(res, ns, name)
            if (raw.get("spec") or {}).get("holderIdentity") != self.cfg.identity:
                return
            raw["spec"]["holderIdentity"] = ""
            raw["spec"]["leaseDurationSeconds"] = 1
            await self.client.replace(res, ns, name, raw)
        except ApiError as err:
            log.warning("lease %s/%s: release failed: %s", ns, name, err)


async def update_service_status(
    client: KubeClient,
    namespace: str,
    name: str,
    mutate: Callable[[dict[str, Any]], bool],
    retries: int = CONFLICT_RETRIES,
) -> bool:
    """Read-modify-write ``services/{name}/status``, retrying on 409 Conflict.

    ``mutate`` edits the fetched object's ``status`` in place and returns False when no write is
    needed. Returns whether a write happened.
    """
    res = resources.SERVICES
    for attempt in range(retries):
        obj = await client.get_raw(res, namespace, name)
        obj.setdefault("status", {})
        if not mutate(obj):
            return False
        try:
            await client.replace(res, namespace, name, obj, subresource="status")
        except ConflictError:
            log.debug("service %s/%s status conflict (attempt %d)", namespace, name, attempt + 1)
            continue
        return True
    raise ConflictError(
        "PUT",
        res.object_path(namespace, name, "status"),
        409,
        "Conflict",
        f"still conflicting after {retries} attempts",
    )
